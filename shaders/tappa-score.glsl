#version 450
// TAPPA's device cache for one layer: store, CAKE window score, per-head top-budget selection,
// in-place compaction. See grilly_kv/ops/tappa_score.py; reference grilly_kv/reference/tappa_score.py.
//
// Layer buffers: K, V float16 (nh, cap, D) two per word: KV heads [h0, h0 + nh) of the layer (a
// part of a layer split by heads, policies/kv_store.py; every pass is dispatched once per part); kpos (HKV, cap) uint position per slot
// (0xFFFFFFFF: empty); qwin (L, HQ, W, D) float32: a ring of the last W post-RoPE queries, the
// query at position p in row p % W. meta (uint): [0] pos0 of this step, [1] T, [2] n_win =
// min(W, pos0) (window rows held before this step); per (layer, KV head) at 8 + 4 (l HKV + h):
// [held before the step, held after its eviction (= store base), budget, streaming (0/1)].
// A head is cut this step iff held > budget (the host only sets budget < held on eviction steps).
//
// Passes (pass_id), per layer, in this order when evicting, else only STORE:
// Grids below are per part: a KV head index h means h0 + the grid coordinate.
//   1 STATS   (grid W x G nh): row max and sum of exp of q_r . k / sqrt(D) over the held keys with
//             position <= the row's position (ring row r holds position qp(r), valid iff < pos0).
//   2 SCORE   (grid ceil(cap / WG) x nh): per held key j older than the window (j < m =
//             held - n_win): mean over the G query heads of mean_r(A) + gamma var_r(A) (unbiased;
//             0 for one row), A = softmax row entries.
//   3 SELECT  (grid nh): 5-tap zero-padded box filter of the scores over j < m; keep the window
//             keys (j >= m) and the top (budget - n_win) scores, ties to the lower j (rank count);
//             a streaming head keeps j < min(sinks, budget) and the last budget - that; the
//             kept indices, ascending, go to kept[h, 0 .. budget).
//   4 COMPACT (grid nh): K, V and kpos rows kept[h, i] -> row i (in place: kept[i] >= i, rows
//             move in waves staged through shared memory, every read of a wave before its writes);
//             rows budget .. held-1 are marked empty.
//   0 STORE   (grid T): token t's K/V into slot base + t of the part's KV heads, kpos = pos0 + t;
//             the part with h0 = 0 also writes the last min(T, W) queries into the ring.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;      // head_dim, a multiple of 4
layout(constant_id = 2) const uint HQ = 9;
layout(constant_id = 3) const uint HKV = 3;
layout(constant_id = 4) const uint W = 32;      // window queries
const uint G = HQ / HKV;
const uint HW = D / 2u;                          // words per float16 row
const uint NV = D / 4u;
const uint ROW = (HQ + 2u * HKV) * D;           // floats per qkv row
const uint EMPTY = 0xFFFFFFFFu;
const uint HEADS_AT = 8u;
const uint STAGE = 4096u;                        // words staged per compaction wave
const uint MAX_SUBGROUPS = 128u;
const float NEG = -3.0e38;

layout(set = 0, binding = 0) readonly buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) buffer KC { uint kc[]; };
layout(set = 0, binding = 2) buffer VC { uint vc[]; };
layout(set = 0, binding = 3) buffer KPos { uint kpos[]; };
layout(set = 0, binding = 4) buffer QWin { float qwin[]; };
layout(set = 0, binding = 5) readonly buffer Meta { uint meta[]; };
layout(set = 0, binding = 6) buffer Stats { vec2 stats[]; };     // (HQ, W): (max, sum)
layout(set = 0, binding = 7) buffer Raw { float raw[]; };        // (2, HKV, cap): score, pooled
layout(set = 0, binding = 8) buffer Kept { uint kept[]; };       // (HKV, cap)

layout(push_constant) uniform Push {
    uint cap;        // slots per KV head
    uint layer;
    uint pass_id;
    uint sinks;      // first tokens a streaming head keeps
    uint gamma_bits; // variance weight (float)
    uint scale_bits; // 1/sqrt(D) (float)
    uint h0;         // first KV head held by the K/V buffers
    uint nh;         // KV heads held by the K/V buffers
} p;

shared float sh_m[MAX_SUBGROUPS];
shared float sh_s[MAX_SUBGROUPS];
shared uint sh_n[MAX_SUBGROUPS];
shared float sh_q[D];
shared uint sh_stage[STAGE];

uint head_word(uint h, uint i) { return meta[HEADS_AT + 4u * (p.layer * HKV + h) + i]; }
bool cut(uint h) { return head_word(h, 0u) > head_word(h, 2u); }

// Position of ring row r before this step, and whether the row holds a window query.
bool ring_pos(uint r, out uint qp) {
    const uint pos0 = meta[0], n_win = meta[2];
    const uint q0 = pos0 - n_win;
    qp = q0 + (r + W - q0 % W) % W;
    return qp < pos0;
}

// First word of K/V row j of KV head h (global index) in this part's buffers.
uint kv_row(uint h, uint j) { return ((h - p.h0) * p.cap + j) * HW; }

uint qwin_row(uint hq, uint r) { return ((p.layer * HQ + hq) * W + r) * D; }

void store_pass(uint t) {
    const uint pos0 = meta[0], T = meta[1], tid = gl_LocalInvocationIndex;
    for (uint item = tid; item < p.nh * HW; item += gl_WorkGroupSize.x) {
        const uint h = p.h0 + item / HW, w = item % HW;
        const uint slot = head_word(h, 1u) + t;
        const uint src = t * ROW + (HQ + h) * D + 2u * w;
        const uint dst = kv_row(h, slot) + w;
        kc[dst] = packHalf2x16(vec2(qkv[src], qkv[src + 1u]));
        vc[dst] = packHalf2x16(vec2(qkv[src + HKV * D], qkv[src + HKV * D + 1u]));
        if (w == 0u) kpos[h * p.cap + slot] = pos0 + t;
    }
    if (p.h0 == 0u && t + W >= T) {
        const uint r = (pos0 + t) % W;
        for (uint item = tid; item < HQ * D; item += gl_WorkGroupSize.x)
            qwin[qwin_row(item / D, r) + item % D] = qkv[t * ROW + item];
    }
}

float key_dot_shared(uint h, uint j) {           // sh_q . K[h, j]
    const uint row = kv_row(h, j);
    float z = 0.0;
    [[unroll]] for (uint i = 0u; i < NV; i++) {
        const vec4 k = vec4(unpackHalf2x16(kc[row + 2u * i]), unpackHalf2x16(kc[row + 2u * i + 1u]));
        z += dot(vec4(sh_q[4u * i], sh_q[4u * i + 1u], sh_q[4u * i + 2u], sh_q[4u * i + 3u]), k);
    }
    return z;
}

void stats_pass(uint r, uint hq) {
    const uint h = hq / G, tid = gl_LocalInvocationIndex;
    uint qp;
    if (!cut(h) || head_word(h, 3u) != 0u || !ring_pos(r, qp)) return;   // uniform per workgroup
    const float scale = PUSH_F(p.scale_bits);
    for (uint d = tid; d < D; d += gl_WorkGroupSize.x) sh_q[d] = qwin[qwin_row(hq, r) + d] * scale;
    barrier();
    const uint n = head_word(h, 0u);
    float m = NEG, s = 0.0;
    for (uint j = tid; j < n; j += gl_WorkGroupSize.x) {
        if (kpos[h * p.cap + j] > qp) continue;
        const float z = key_dot_shared(h, j);
        if (z > m) { s = s * exp(m - z) + 1.0; m = z; } else { s += exp(z - m); }
    }
    const float mg = subgroupMax(m);
    s = subgroupAdd(s * exp(m - mg));
    if (subgroupElect()) { sh_m[gl_SubgroupID] = mg; sh_s[gl_SubgroupID] = s; }
    barrier();
    if (tid == 0u) {
        float mx = NEG, total = 0.0;
        for (uint k = 0u; k < gl_NumSubgroups; k++) mx = max(mx, sh_m[k]);
        for (uint k = 0u; k < gl_NumSubgroups; k++) total += sh_s[k] * exp(sh_m[k] - mx);
        stats[hq * W + r] = vec2(mx, total);
    }
}

void score_pass(uint jb, uint h) {
    if (!cut(h) || head_word(h, 3u) != 0u) return;
    const uint m = head_word(h, 0u) - meta[2];
    const uint j = jb * gl_WorkGroupSize.x + gl_LocalInvocationIndex;
    if (j >= m) return;
    const float scale = PUSH_F(p.scale_bits), gamma = PUSH_F(p.gamma_bits);
    vec4 k[NV];
    const uint row = kv_row(h, j);
    [[unroll]] for (uint i = 0u; i < NV; i++)
        k[i] = vec4(unpackHalf2x16(kc[row + 2u * i]), unpackHalf2x16(kc[row + 2u * i + 1u]));
    float total = 0.0;
    for (uint g = 0u; g < G; g++) {
        const uint hq = h * G + g;
        float a[W];
        uint cnt = 0u;
        float sum = 0.0;
        for (uint r = 0u; r < W; r++) {
            uint qp;
            if (!ring_pos(r, qp)) continue;
            const uint qr = qwin_row(hq, r);
            float z = 0.0;
            [[unroll]] for (uint i = 0u; i < NV; i++)
                z += dot(vec4(qwin[qr + 4u * i], qwin[qr + 4u * i + 1u], qwin[qr + 4u * i + 2u], qwin[qr + 4u * i + 3u]), k[i]);
            const vec2 st = stats[hq * W + r];
            a[cnt] = exp(z * scale - st.x) / st.y;
            sum += a[cnt];
            cnt++;
        }
        const float mean = sum / float(cnt);
        float var = 0.0;
        if (cnt > 1u) {
            for (uint i = 0u; i < cnt; i++) { const float dv = a[i] - mean; var += dv * dv; }
            var /= float(cnt - 1u);
        }
        total += mean + gamma * var;
    }
    raw[h * p.cap + j] = total / float(G);
}

void select_pass(uint h) {
    if (!cut(h)) return;
    const uint tid = gl_LocalInvocationIndex, WG = gl_WorkGroupSize.x;
    const uint n = head_word(h, 0u), b = head_word(h, 2u), streaming = head_word(h, 3u);
    const uint n_win = meta[2], m = n - n_win;
    const uint pooled = (HKV + h) * p.cap, base = h * p.cap;
    if (streaming == 0u) {
        for (uint j = tid; j < m; j += WG) {
            float s = 0.0;
            for (uint i = max(j, 2u) - 2u; i <= min(j + 2u, m - 1u); i++) s += raw[base + i];
            raw[pooled + j] = s / 5.0;
        }
        memoryBarrierBuffer();
        barrier();
    }
    const uint n_top = b - n_win, n_sink = min(p.sinks, b);
    uint running = 0u;
    for (uint j0 = 0u; j0 < n; j0 += WG) {
        const uint j = j0 + tid;
        bool keep = false;
        if (j < n) {
            if (streaming != 0u) keep = j < n_sink || j + (b - n_sink) >= n;
            else if (j >= m) keep = true;
            else {
                const float sj = raw[pooled + j];
                uint rank = 0u;
                for (uint i = 0u; i < m; i++) {
                    const float si = raw[pooled + i];
                    rank += (si > sj || (si == sj && i < j)) ? 1u : 0u;
                }
                keep = rank < n_top;
            }
        }
        const uint v = keep ? 1u : 0u;
        const uint excl = subgroupExclusiveAdd(v);
        const uint sub_total = subgroupAdd(v);
        if (subgroupElect()) sh_n[gl_SubgroupID] = sub_total;
        barrier();
        uint before = 0u, total = 0u;
        for (uint k = 0u; k < gl_NumSubgroups; k++) {
            before += k < gl_SubgroupID ? sh_n[k] : 0u;
            total += sh_n[k];
        }
        if (keep) kept[base + running + before + excl] = j;
        running += total;
        barrier();
    }
}

void compact_pass(uint h) {
    if (!cut(h)) return;
    const uint tid = gl_LocalInvocationIndex, WG = gl_WorkGroupSize.x;
    const uint n = head_word(h, 0u), b = head_word(h, 2u), base = h * p.cap;
    const uint U = D + 1u;                        // words per row: K, V, position
    const uint R = STAGE / U;
    for (uint j0 = 0u; j0 < b; j0 += R) {
        const uint units = min(R, b - j0) * U;
        for (uint i = tid; i < units; i += WG) {
            const uint src = base + kept[base + j0 + i / U], u = i % U;
            const uint row = kv_row(h, kept[base + j0 + i / U]);
            sh_stage[i] = u < HW ? kc[row + u] : (u < D ? vc[row + u - HW] : kpos[src]);
        }
        barrier();
        for (uint i = tid; i < units; i += WG) {
            const uint dst = base + j0 + i / U, u = i % U;
            const uint row = kv_row(h, j0 + i / U);
            if (u < HW) kc[row + u] = sh_stage[i];
            else if (u < D) vc[row + u - HW] = sh_stage[i];
            else kpos[dst] = sh_stage[i];
        }
        barrier();
    }
    for (uint j = b + tid; j < n; j += WG) kpos[base + j] = EMPTY;
}

void main() {
    const uint x = gl_WorkGroupID.x, y = gl_WorkGroupID.y;
    if (p.pass_id == 0u) store_pass(x);
    else if (p.pass_id == 1u) stats_pass(x, p.h0 * G + y);
    else if (p.pass_id == 2u) score_pass(x, p.h0 + y);
    else if (p.pass_id == 3u) select_pass(p.h0 + x);
    else compact_pass(p.h0 + x);
}
