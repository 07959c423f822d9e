#version 450
// Scaled dot-product attention with masks and grouped KV heads; see grilly_kv/ops/nn_attention.py.
//
// q (B, H_q, S_q, D), k and v (B, H_kv, S_k, D), float32 or packed float16; query head h reads
// KV head h / (H_q / H_kv). With TOKEN_MAJOR, q and out are laid out (B, S_q, H_q, D) and k, v
// (B, S_k, H_kv, D) instead: the (B, S, E) rows that the projections read and write. Logit (i, j) = scale * q_i . k_j + attn_mask + key_padding_mask, and
// -inf where CAUSAL and j > i (top-left aligned, as torch). Grid: (S_q, H_q, B); one workgroup per
// query row: it writes the row's softmax probabilities to probs[(b, h, i), 0..S_k) (also used as
// the score scratch) and the output row out[b, h, i, 0..D). A row whose logits are all -inf gets
// probabilities 0 and output 0.
#include "common.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;          // head_dim
layout(constant_id = 2) const uint F16 = 0;         // 1: q, k, v are packed float16
layout(constant_id = 3) const uint MASK_MODE = 0;   // 0 none, 1 (S_q, S_k), 2 (B*H_q, S_q, S_k)
layout(constant_id = 4) const uint HAS_KPM = 0;     // 1: additive key padding mask (B, S_k)
layout(constant_id = 5) const uint CAUSAL = 0;
layout(constant_id = 6) const uint TOKEN_MAJOR = 0;

layout(set = 0, binding = 0) readonly buffer Q32 { float q32[]; };
layout(set = 0, binding = 0) readonly buffer Q16 { uint q16[]; };
layout(set = 0, binding = 1) readonly buffer K32 { float k32[]; };
layout(set = 0, binding = 1) readonly buffer K16 { uint k16[]; };
layout(set = 0, binding = 2) readonly buffer V32 { float v32[]; };
layout(set = 0, binding = 2) readonly buffer V16 { uint v16[]; };
layout(set = 0, binding = 3) readonly buffer Mask { float attn_mask[]; };
layout(set = 0, binding = 4) readonly buffer Kpm { float kpm[]; };
layout(set = 0, binding = 5) coherent buffer Probs { float probs[]; };
layout(set = 0, binding = 6) writeonly buffer Out { float outp[]; };

layout(push_constant) uniform Push {
    uint H_q;
    uint H_kv;
    uint S_q;
    uint S_k;
    uint scale_bits;   // float
} p;

shared float sh_q[D];

float load_q(uint i) { return LOAD_SCALAR(F16, q32, q16, i); }
float load_k(uint i) { return LOAD_SCALAR(F16, k32, k16, i); }
float load_v(uint i) { return LOAD_SCALAR(F16, v32, v16, i); }

// first element of row (batch b, head h, position t) of a tensor with H heads and S positions
uint row_start(uint b, uint h, uint t, uint H, uint S) {
    return (TOKEN_MAJOR != 0u ? (b * S + t) * H + h : (b * H + h) * S + t) * D;
}

void main() {
    const uint i = gl_WorkGroupID.x, h = gl_WorkGroupID.y, b = gl_WorkGroupID.z;
    const uint tid = gl_LocalInvocationIndex, nt = gl_WorkGroupSize.x;
    const uint bh = b * p.H_q + h;
    const uint hk = h / (p.H_q / p.H_kv);
    const uint q_row = row_start(b, h, i, p.H_q, p.S_q);
    const uint prow = (bh * p.S_q + i) * p.S_k;
    const float scale = PUSH_F(p.scale_bits);
    const float NEG_INF = uintBitsToFloat(0xFF800000u);

    for (uint d = tid; d < D; d += nt) sh_q[d] = load_q(q_row + d);
    barrier();

    // 1. logits, kept in probs; the row maximum
    float m = NEG_INF;
    for (uint j = tid; j < p.S_k; j += nt) {
        float s = NEG_INF;
        if (CAUSAL == 0u || j <= i) {
            float dot_qk = 0.0;
            const uint kr = row_start(b, hk, j, p.H_kv, p.S_k);
            for (uint d = 0u; d < D; d++) dot_qk += sh_q[d] * load_k(kr + d);
            s = dot_qk * scale;
            if (MASK_MODE == 1u) s += attn_mask[i * p.S_k + j];
            if (MASK_MODE == 2u) s += attn_mask[prow + j];
            if (HAS_KPM != 0u) s += kpm[b * p.S_k + j];
        }
        probs[prow + j] = s;
        m = max(m, s);
    }
    m = workgroup_max(m);
    const bool empty = isinf(m);   // every key masked out

    // 2. exponentials and their sum (each thread revisits its own j: no barrier needed)
    float l = 0.0;
    for (uint j = tid; j < p.S_k; j += nt) {
        const float e = empty ? 0.0 : exp(probs[prow + j] - m);
        probs[prow + j] = e;
        l += e;
    }
    l = workgroup_sum(vec4(l, 0.0, 0.0, 0.0)).x;
    const float inv = empty ? 0.0 : 1.0 / l;
    for (uint j = tid; j < p.S_k; j += nt) probs[prow + j] *= inv;
    memoryBarrierBuffer();
    barrier();

    // 3. output row: probabilities times values
    for (uint d = tid; d < D; d += nt) {
        float acc = 0.0;
        for (uint j = 0u; j < p.S_k; j++) acc += probs[prow + j] * load_v(row_start(b, hk, j, p.H_kv, p.S_k) + d);
        outp[q_row + d] = acc;
    }
}
