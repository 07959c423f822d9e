#version 450
// Attention of this step's queries over a float16 slot cache: see grilly_kv/ops/kv_slot_attention.py.
// Query t (position pos0 + t) sees the key in slot j < n_scan holding position p iff
//   p <= pos0 + t  and  (p < sinks  or  pos0 + t - p < window).
// Pass 0 (grid n_splits x HQ x T): workgroup (s, h, t) runs an online softmax over its share of
//   the slots, one key per thread per tile, and writes (m, l, o[D]) to part.
// Pass 1 (grid HQ x T): merges the splits (log-sum-exp) into O[t, h, :].
// The workgroup has exactly D threads; thread d owns output dim d.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;
layout(constant_id = 2) const uint HQ = 9;
layout(constant_id = 3) const uint HKV = 3;
const uint ROW = (HQ + 2u * HKV) * D;
const uint HW = D / 2u;
const uint EMPTY = 0xFFFFFFFFu;
const float NEG = -1e30;
const uint PSTRIDE = D + 2u;

layout(set = 0, binding = 0) readonly buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) readonly buffer KC4 { uvec2 kc4[]; };
layout(set = 0, binding = 1) readonly buffer KC { uint kc[]; };
layout(set = 0, binding = 2) readonly buffer VC { uint vc[]; };
layout(set = 0, binding = 3) readonly buffer SlotPos { uint slot_pos[]; };
layout(set = 0, binding = 4) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 5) buffer Part { float part[]; };
layout(set = 0, binding = 6) writeonly buffer O { float o[]; };

layout(push_constant) uniform Push {
    uint cap;        // slots per (layer, kv head)
    uint layer;
    uint n_splits;
    uint pass_id;
    uint scale_bits; // 1/sqrt(D) (float)
} p;

shared vec4 sh_q[D / 4u];
shared float sh_w[D];

bool visible(uint pos, uint qpos, uint sinks, uint window) {
    return pos != EMPTY && pos <= qpos && (pos < sinks || qpos - pos < window);
}

void split_pass(uint s, uint h, uint t) {
    const uint tid = gl_LocalInvocationIndex;
    const uint qpos = step[0] + t, n_scan = step[2], sinks = step[3], window = step[4];
    const uint kvh = h / (HQ / HKV);
    const float scale = PUSH_F(p.scale_bits);
    if (tid < D / 4u) {
        const uint q = t * ROW + h * D + 4u * tid;
        sh_q[tid] = vec4(qkv[q], qkv[q + 1u], qkv[q + 2u], qkv[q + 3u]) * scale;
    }
    barrier();
    const uint chunk = ceil_div(ceil_div(n_scan, p.n_splits), D) * D;
    const uint a0 = min(s * chunk, n_scan), a1 = min(a0 + chunk, n_scan);
    const uint base = (p.layer * HKV + kvh) * p.cap;
    float m = NEG, l = 0.0, acc = 0.0;
    for (uint j0 = a0; j0 < a1; j0 += D) {
        const uint j = j0 + tid;
        float score = NEG;
        if (j < a1 && visible(slot_pos[j], qpos, sinks, window)) {
            score = 0.0;
            const uint r = (base + j) * (D / 4u);
            for (uint i = 0u; i < D / 4u; i++) {
                const uvec2 kw = kc4[r + i];
                score += dot(sh_q[i], vec4(unpackHalf2x16(kw.x), unpackHalf2x16(kw.y)));
            }
        }
        sh_w[tid] = score;
        barrier();
        float m_tile = NEG;
        for (uint jj = 0u; jj < D; jj++) m_tile = max(m_tile, sh_w[jj]);
        const float m_new = max(m, m_tile);
        barrier();
        sh_w[tid] = score > 0.5 * NEG ? exp(score - m_new) : 0.0;
        barrier();
        const float corr = exp(m - m_new);
        l *= corr;
        acc *= corr;
        const uint n_tile = min(D, a1 - j0);
        for (uint jj = 0u; jj < n_tile; jj++) {
            const float w = sh_w[jj];
            l += w;
            if (w != 0.0) {
                const uint vw = vc[(base + j0 + jj) * HW + tid / 2u];
                acc += w * unpackHalf2x16(vw)[tid & 1u];
            }
        }
        m = m_new;
        barrier();
    }
    const uint dst = ((t * HQ + h) * p.n_splits + s) * PSTRIDE;
    part[dst + 2u + tid] = acc;
    if (tid == 0u) { part[dst] = m; part[dst + 1u] = l; }
}

void merge_pass(uint h, uint t) {
    const uint tid = gl_LocalInvocationIndex;
    const uint b = (t * HQ + h) * p.n_splits;
    float m = NEG;
    for (uint s = 0u; s < p.n_splits; s++) m = max(m, part[(b + s) * PSTRIDE]);
    float l = 0.0, acc = 0.0;
    for (uint s = 0u; s < p.n_splits; s++) {
        const float f = exp(part[(b + s) * PSTRIDE] - m);
        l += f * part[(b + s) * PSTRIDE + 1u];
        acc += f * part[(b + s) * PSTRIDE + 2u + tid];
    }
    o[(t * HQ + h) * D + tid] = acc / l;
}

void main() {
    if (p.pass_id == 0u) split_pass(gl_WorkGroupID.x, gl_WorkGroupID.y, gl_WorkGroupID.z);
    else merge_pass(gl_WorkGroupID.x, gl_WorkGroupID.y);
}
