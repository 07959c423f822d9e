#version 450
// Decode attention (one query token per head) over a paged KV cache, all pages (DENSE = 1) or
// the pages chosen by topk-select: see grilly_kv/ops/decode_attention.py.
//
// Pass 0 (grid: n_splits x B*H_kv), split-K: the attended tokens of KV head bh, in page order, are
//   numbered c = 0 .. n_tok-1 (token c is cache row pages[c / PAGE] * PAGE + c % PAGE; n_tok =
//   (count - 1) * PAGE + tokens in the last page, or the cache length when DENSE). Workgroup s takes
//   the s-th of n_splits equal chunks and, for each of the G query heads of bh (GQA: K/V rows
//   are read once for all of them), runs an online softmax of scale * q.k and writes
//   partial[(bhq * n_splits + s)] = [m, l, acc_0 .. acc_{D-1}] (max logit, sum of exp(logit - m),
//   sum of exp(logit - m) v). LPT lanes (a cluster within a subgroup) share one token row.
// Pass 1 (grid: B*H_q): the log-sum-exp merge of the n_splits partials into out[bhq, :].
#include "common.glsl"
#extension GL_KHR_shader_subgroup_shuffle : require

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 128;     // head_dim (padded), a multiple of 4 * LPT
layout(constant_id = 2) const uint F16 = 1;     // 1: K/V packed float16
layout(constant_id = 3) const uint PAGE = 16;
layout(constant_id = 4) const uint G = 1;       // query heads per KV head
layout(constant_id = 5) const uint DENSE = 0;   // 1: every page, pages[] unused
layout(constant_id = 6) const uint LPT = 8;     // lanes per token (power of 2, <= subgroup size)
const uint NV = D / 4u;          // vec4s per row
const uint NVL = NV / LPT;       // vec4s per lane
const uint SLOTS = gl_WorkGroupSize.x / LPT;   // tokens in flight per workgroup
const uint PSTRIDE = D + 2u;
const float NEG = -1.0e30;

layout(set = 0, binding = 0) readonly buffer Q { vec4 q[]; };              // (B, H_q, D) float32
layout(set = 0, binding = 1) readonly buffer K32 { uvec4 k32[]; };
layout(set = 0, binding = 1) readonly buffer K16 { uvec2 k16[]; };
layout(set = 0, binding = 2) readonly buffer V32 { uvec4 v32[]; };
layout(set = 0, binding = 2) readonly buffer V16 { uvec2 v16[]; };
layout(set = 0, binding = 3) readonly buffer Pages { uint pages[]; };      // (B*H_kv, sel_stride)
layout(set = 0, binding = 4) readonly buffer Counts { uint counts[]; };    // (B*H_kv,)
layout(set = 0, binding = 5) readonly buffer Meta { uint meta[]; };        // [length, ...]
layout(set = 0, binding = 6) buffer Partial { float partial[]; };
layout(set = 0, binding = 7) writeonly buffer Out { float out_[]; };       // (B, H_q, D) float32

layout(push_constant) uniform Push {
    uint capacity;    // rows per (b, h) in the cache
    uint sel_stride;  // room per head in pages[]
    uint n_splits;
    uint scale_bits;  // logit scale (float), 1/sqrt(D_original)
    uint pass_id;     // 0: partials, 1: merge
} p;

shared float sh_m[SLOTS];
shared float sh_l[SLOTS];
shared float sh_acc[SLOTS * D];

float cluster_add(float x) {
    for (uint o = 1u; o < LPT; o <<= 1) x += subgroupShuffleXor(x, o);
    return x;
}

void partials(uint bh, uint split) {
    const uint len = meta[0];
    const uint last_page = ceil_div(len, PAGE) - 1u;
    const uint n_tok = DENSE != 0u ? len : (counts[bh] - 1u) * PAGE + (len - last_page * PAGE);
    const uint chunk = ceil_div(n_tok, p.n_splits);
    const uint c0 = min(split * chunk, n_tok);
    const uint c1 = min(c0 + chunk, n_tok);
    const uint slot = gl_LocalInvocationIndex / LPT;
    const uint lane = gl_LocalInvocationIndex % LPT;
    const float scale = PUSH_F(p.scale_bits);

    vec4 qr[G * NVL];
    vec4 acc[G * NVL];
    float m[G], l[G];
    for (uint g = 0u; g < G; g++) {
        for (uint j = 0u; j < NVL; j++) {
            qr[g * NVL + j] = q[(bh * G + g) * NV + lane + j * LPT] * scale;
            acc[g * NVL + j] = vec4(0.0);
        }
        m[g] = NEG; l[g] = 0.0;
    }
    const uint iters = ceil_div(c1 - c0, SLOTS);
    for (uint it = 0u; it < iters; it++) {
        const uint c = c0 + it * SLOTS + slot;
        const bool valid = c < c1;
        const uint cc = valid ? c : c0;
        const uint pg = DENSE != 0u ? cc / PAGE : pages[bh * p.sel_stride + cc / PAGE];
        const uint row = (bh * p.capacity + pg * PAGE + cc % PAGE) * NV;
        float s[G];
        for (uint g = 0u; g < G; g++) s[g] = 0.0;
        for (uint j = 0u; j < NVL; j++) {
            const vec4 kv = LOAD_VEC4(F16, k32, k16, row + lane + j * LPT);
            for (uint g = 0u; g < G; g++) s[g] += dot(qr[g * NVL + j], kv);
        }
        for (uint g = 0u; g < G; g++) s[g] = cluster_add(s[g]);
        if (valid) {
            float w[G];
            for (uint g = 0u; g < G; g++) {
                const float m_new = max(m[g], s[g]);
                const float corr = exp(m[g] - m_new);
                w[g] = exp(s[g] - m_new);
                l[g] = l[g] * corr + w[g];
                m[g] = m_new;
                for (uint j = 0u; j < NVL; j++) acc[g * NVL + j] *= corr;
            }
            for (uint j = 0u; j < NVL; j++) {
                const vec4 vv = LOAD_VEC4(F16, v32, v16, row + lane + j * LPT);
                for (uint g = 0u; g < G; g++) acc[g * NVL + j] += w[g] * vv;
            }
        }
    }
    // merge the SLOTS running softmaxes of the workgroup, one query head at a time
    for (uint g = 0u; g < G; g++) {
        if (lane == 0u) { sh_m[slot] = m[g]; sh_l[slot] = l[g]; }
        barrier();
        float mx = NEG;
        for (uint t = 0u; t < SLOTS; t++) mx = max(mx, sh_m[t]);
        const float w = exp(m[g] - mx);
        for (uint j = 0u; j < NVL; j++) {
            const uint d = 4u * (lane + j * LPT);
            const vec4 a = acc[g * NVL + j] * w;
            sh_acc[slot * D + d] = a.x; sh_acc[slot * D + d + 1u] = a.y;
            sh_acc[slot * D + d + 2u] = a.z; sh_acc[slot * D + d + 3u] = a.w;
        }
        barrier();
        const uint base = ((bh * G + g) * p.n_splits + split) * PSTRIDE;
        for (uint d = gl_LocalInvocationIndex; d < D; d += gl_WorkGroupSize.x) {
            float a = 0.0;
            for (uint t = 0u; t < SLOTS; t++) a += sh_acc[t * D + d];
            partial[base + 2u + d] = a;
        }
        if (gl_LocalInvocationIndex == 0u) {
            float lt = 0.0;
            for (uint t = 0u; t < SLOTS; t++) lt += sh_l[t] * exp(sh_m[t] - mx);
            partial[base] = mx;
            partial[base + 1u] = lt;
        }
        barrier();
    }
}

void merge(uint bhq) {
    const uint base = bhq * p.n_splits * PSTRIDE;
    float mx = NEG;
    for (uint s = 0u; s < p.n_splits; s++) mx = max(mx, partial[base + s * PSTRIDE]);
    float lt = 0.0;
    for (uint s = 0u; s < p.n_splits; s++) {
        lt += partial[base + s * PSTRIDE + 1u] * exp(partial[base + s * PSTRIDE] - mx);
    }
    for (uint d = gl_LocalInvocationIndex; d < D; d += gl_WorkGroupSize.x) {
        float a = 0.0;
        for (uint s = 0u; s < p.n_splits; s++) {
            a += partial[base + s * PSTRIDE + 2u + d] * exp(partial[base + s * PSTRIDE] - mx);
        }
        out_[bhq * D + d] = a / lt;
    }
}

void main() {
    if (p.pass_id == 0u) partials(gl_WorkGroupID.y, gl_WorkGroupID.x);
    else merge(gl_WorkGroupID.x);
}
