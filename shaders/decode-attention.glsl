#version 450
// Decode attention (one query token per head) over a paged KV cache, all pages (DENSE = 1) or
// the pages chosen by topk-select: see grilly_kv/ops/decode_attention.py.
//
// The attended tokens of KV head bh, in page order, are numbered c = 0 .. n_tok-1 (token c is
// cache row pages[c / PAGE] * PAGE + c % PAGE; n_tok = (count - 1) * PAGE + tokens in the last
// page, or the cache length when DENSE). Work is split over c into n_splits equal chunks, one
// workgroup each (split-K); a workgroup serves the G query heads of bh (GQA: each K/V row is
// read once for all of them), LPT lanes of a subgroup (a cluster) sharing one token row.
// Softmax (alpha = 1):
//   pass 0 (grid: n_splits x B*H_kv): online softmax of the chunk, written as
//     partial[bhq * n_splits + s] = [m, l, acc_0 .. acc_{D-1}] (max logit, sum of exp(logit - m),
//     sum of exp(logit - m) v);
//   pass 1 (grid: B*H_q): log-sum-exp merge of the partials into out[bhq, :].
//   FUSED = 1: no pass 1; the merge is done by the last workgroups to finish, found with atomic
//     counters (after a buffer memory barrier; each counter is reset to 0 by the workgroup that
//     completes it, so the recording replays); one dispatch per step instead of two dependent
//     ones. Counters of KV head bh: counter[bh * CS + 0 .. CS), CS = 1 + ceil(n_splits / MGROUP)
//     (host: decode_attention.counter_words). When the G heads' D/4 columns fit the workgroup
//     (G * D / 4 <= workgroup size), in two levels: the last of each group of MGROUP splits
//     merges the group's partials (all G heads at once, an invocation per head and column) into
//     the group's first partial (counter[bh * CS + 1 + group]); the last group to finish
//     (counter[bh * CS]) merges the groups' partials into out: the critical path reads
//     MGROUP + n_splits / MGROUP partials, not n_splits per head in turn. Otherwise the last
//     split to finish (counter[bh * CS]) merges the G heads one after the other.
// alpha-entmax (alpha in (1, 2], threshold by the entmax-tau shader between passes 2 and 3):
//   pass 2 (grid: n_splits x B*H_kv): logits[bhq * row_len + c] = scale * q.k for c < n_tok,
//     -1e30 (no mass) for n_tok <= c < row_len;
//   pass 3 (grid: n_splits x B*H_kv): p_c = [(alpha - 1) logit_c - tau]_+^beta from the stored
//     logits and tau (tau_buf[2 bhq], float bits), partial = [0, sum p, sum p v]; V rows of
//     tokens with p = 0 for every head of the group are not read;
//   pass 4 (grid: B*H_q): out = sum of the partials' sum p v (not renormalised).
#include "common.glsl"
#include "entmax.glsl"
#include "cluster_reduce.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 128;     // head_dim (padded), a multiple of 4 * LPT
layout(constant_id = 2) const uint F16 = 1;     // 1: K/V packed float16
layout(constant_id = 3) const uint PAGE = 16;
layout(constant_id = 4) const uint G = 1;       // query heads per KV head
layout(constant_id = 5) const uint DENSE = 0;   // 1: every page, pages[] unused
layout(constant_id = 6) const uint LPT = 8;     // lanes per token (power of 2, <= subgroup size)
layout(constant_id = 7) const uint FUSED = 0;   // 1: softmax partials and merge in one pass (header)
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
layout(set = 0, binding = 6) coherent buffer Partial { float partial[]; };  // coherent: read by the merging workgroup
layout(set = 0, binding = 7) writeonly buffer Out { float out_[]; };       // (B, H_q, D) float32
layout(set = 0, binding = 8) buffer Logits { float logits[]; };            // (B*H_q, row_len)
layout(set = 0, binding = 9) readonly buffer Tau { uint tau_buf[]; };      // (B*H_q, 2)
layout(set = 0, binding = 10) coherent buffer Counter { uint counter[]; };  // (B*H_kv,) FUSED: splits done

layout(push_constant) uniform Push {
    uint capacity;    // rows per (b, h) in the cache
    uint sel_stride;  // room per head in pages[]
    uint n_splits;
    uint scale_bits;  // logit scale (float), 1/sqrt(D_original)
    uint pass_id;     // see the header
    uint alpha_bits;  // entmax alpha (float)
    uint row_len;     // entmax: logits per row (>= n_tok)
    uint kv_h0;       // passes 0, 2, 3: the K/V buffers hold KV heads [kv_h0, kv_h0 + grid y)
                      // (a part of a layer split by heads, policies/kv_store.py); 0 when unsplit
} p;

const uint MGROUP = 8u;                       // FUSED: splits per first-level merge group
const uint M_ITEMS = G * NV;                  // FUSED merge: (head, vec4 column) items
const uint M_ROWS = gl_WorkGroupSize.x / M_ITEMS;   // two levels (M_ROWS >= 1): invocations per item
shared float sh_mx[gl_WorkGroupSize.x];
shared float sh_lt[gl_WorkGroupSize.x];
shared vec4 sh_va[gl_WorkGroupSize.x];

shared float sh_m[SLOTS];
shared float sh_l[SLOTS];
shared float sh_acc[SLOTS * D];
shared bool sh_last;

// per invocation: its share of the G scaled queries and of the G accumulators, and the
// running softmax (or the entmax mass) of each head
vec4 qr[G * NVL];
vec4 acc[G * NVL];
float m[G], l[G], s[G];

uint lane_id() { return gl_LocalInvocationIndex % LPT; }
uint slot_id() { return gl_LocalInvocationIndex / LPT; }

uint attended_tokens(uint bh) {
    const uint len = meta[0];
    if (DENSE != 0u) return len;
    const uint last_page = ceil_div(len, PAGE) - 1u;
    return (counts[bh] - 1u) * PAGE + (len - last_page * PAGE);
}

// first vec4 of attended token c's cache row
uint token_row(uint bh, uint c) {
    const uint pg = DENSE != 0u ? c / PAGE : pages[bh * p.sel_stride + c / PAGE];
    return ((bh - p.kv_h0) * p.capacity + pg * PAGE + c % PAGE) * NV;
}

void init_heads(uint bh) {
    const float scale = PUSH_F(p.scale_bits);
    [[unroll]] for (uint g = 0u; g < G; g++) {
        [[unroll]] for (uint j = 0u; j < NVL; j++) {
            qr[g * NVL + j] = q[(bh * G + g) * NV + lane_id() + j * LPT] * scale;
            acc[g * NVL + j] = vec4(0.0);
        }
        m[g] = NEG; l[g] = 0.0;
    }
}

// this lane's share of the K (or V) row starting at vec4 `row`
#define LOAD_ROW(x32, x16, row, dst) \
    [[unroll]] for (uint j_ = 0u; j_ < NVL; j_++) dst[j_] = LOAD_VEC4(F16, x32, x16, (row) + lane_id() + j_ * LPT)

// s[g] = scaled q_g . k of the row (every lane of the cluster gets the sum)
void row_logits(vec4 kr[NVL]) {
    [[unroll]] for (uint g = 0u; g < G; g++) {
        float t = 0.0;
        [[unroll]] for (uint j = 0u; j < NVL; j++) t += dot(qr[g * NVL + j], kr[j]);
        s[g] = cluster_add(t, LPT);
    }
}

// acc[g] += w[g] * v of the row, w given in s[]
void add_values(vec4 vr[NVL]) {
    [[unroll]] for (uint j = 0u; j < NVL; j++) {
        [[unroll]] for (uint g = 0u; g < G; g++) acc[g * NVL + j] += s[g] * vr[j];
    }
}

// Merge the SLOTS (m, l, acc) of the workgroup into partial[(bhq, split)], one head at a time.
// Entmax passes keep m = 0, so the slots are simply summed.
void write_partials(uint bh, uint split) {
    const uint slot = slot_id();
    [[unroll]] for (uint g = 0u; g < G; g++) {
        if (lane_id() == 0u) { sh_m[slot] = m[g]; sh_l[slot] = l[g]; }
        barrier();
        float mx = NEG;
        [[unroll]] for (uint t = 0u; t < SLOTS; t++) mx = max(mx, sh_m[t]);
        const float w = exp(m[g] - mx);
        [[unroll]] for (uint j = 0u; j < NVL; j++) {
            const uint d = 4u * (lane_id() + j * LPT);
            const vec4 a = acc[g * NVL + j] * w;
            sh_acc[slot * D + d] = a.x; sh_acc[slot * D + d + 1u] = a.y;
            sh_acc[slot * D + d + 2u] = a.z; sh_acc[slot * D + d + 3u] = a.w;
        }
        barrier();
        const uint base = ((bh * G + g) * p.n_splits + split) * PSTRIDE;
        for (uint d = gl_LocalInvocationIndex; d < D; d += gl_WorkGroupSize.x) {
            float a = 0.0;
            [[unroll]] for (uint t = 0u; t < SLOTS; t++) a += sh_acc[t * D + d];
            partial[base + 2u + d] = a;
        }
        if (gl_LocalInvocationIndex == 0u) {
            float lt = 0.0;
            [[unroll]] for (uint t = 0u; t < SLOTS; t++) lt += sh_l[t] * exp(sh_m[t] - mx);
            partial[base] = mx;
            partial[base + 1u] = lt;
        }
        barrier();
    }
}

// the chunk [c0, c1) of split `split` over n tokens
uvec2 chunk_of(uint split, uint n) {
    const uint chunk = ceil_div(n, p.n_splits);
    const uint c0 = min(split * chunk, n);
    return uvec2(c0, min(c0 + chunk, n));
}

void softmax_partials(uint bh, uint split) {
    const uvec2 cr = chunk_of(split, attended_tokens(bh));
    init_heads(bh);
    const uint iters = ceil_div(cr.y - cr.x, SLOTS);
    for (uint it = 0u; it < iters; it++) {
        const uint c = cr.x + it * SLOTS + slot_id();
        const bool valid = c < cr.y;
        const uint row = token_row(bh, valid ? c : cr.x);   // keep the cluster's shuffles uniform
        vec4 kr[NVL], vr[NVL];
        LOAD_ROW(k32, k16, row, kr);
        LOAD_ROW(v32, v16, row, vr);   // issued with the K loads: one memory round trip per row
        row_logits(kr);
        if (valid) {
            [[unroll]] for (uint g = 0u; g < G; g++) {
                const float m_new = max(m[g], s[g]);
                const float corr = exp(m[g] - m_new);
                s[g] = exp(s[g] - m_new);
                l[g] = l[g] * corr + s[g];
                m[g] = m_new;
                [[unroll]] for (uint j = 0u; j < NVL; j++) acc[g * NVL + j] *= corr;
            }
            add_values(vr);
        }
    }
    write_partials(bh, split);
}

void entmax_logits(uint bh, uint split) {
    const uint n_tok = attended_tokens(bh);
    const uvec2 cr = chunk_of(split, p.row_len);
    const uint c_end = min(cr.y, n_tok);
    init_heads(bh);
    const uint iters = ceil_div(max(c_end, cr.x) - cr.x, SLOTS);
    for (uint it = 0u; it < iters; it++) {
        const uint c = cr.x + it * SLOTS + slot_id();
        vec4 kr[NVL];
        LOAD_ROW(k32, k16, token_row(bh, min(c, c_end - 1u)), kr);   // keep the shuffles uniform
        row_logits(kr);
        if (c < c_end) {
            for (uint g = lane_id(); g < G; g += LPT) logits[(bh * G + g) * p.row_len + c] = s[g];
        }
    }
    // padding up to row_len: no mass
    for (uint c = max(cr.x, n_tok) + gl_LocalInvocationIndex; c < cr.y; c += gl_WorkGroupSize.x) {
        for (uint g = 0u; g < G; g++) logits[(bh * G + g) * p.row_len + c] = NEG;
    }
}

void entmax_partials(uint bh, uint split) {
    const uvec2 cr = chunk_of(split, attended_tokens(bh));
    const float a = PUSH_F(p.alpha_bits) - 1.0;
    const float beta = 1.0 / a;
    float tau[G];
    for (uint g = 0u; g < G; g++) {
        tau[g] = uintBitsToFloat(tau_buf[2u * (bh * G + g)]);
        for (uint j = 0u; j < NVL; j++) acc[g * NVL + j] = vec4(0.0);
        m[g] = 0.0; l[g] = 0.0;
    }
    const uint iters = ceil_div(cr.y - cr.x, SLOTS);
    for (uint it = 0u; it < iters; it++) {
        const uint c = cr.x + it * SLOTS + slot_id();
        if (c >= cr.y) continue;
        bool any_mass = false;
        [[unroll]] for (uint g = 0u; g < G; g++) {
            const float d = a * logits[(bh * G + g) * p.row_len + c] - tau[g];
            s[g] = d > 0.0 ? entmax_pow(d, beta) : 0.0;
            l[g] += s[g];
            any_mass = any_mass || d > 0.0;
        }
        if (any_mass) {
            vec4 vr[NVL];
            LOAD_ROW(v32, v16, token_row(bh, c), vr);
            add_values(vr);
        }
    }
    write_partials(bh, split);
}

// Invocation (r, c) of MERGE_ROWS x D/4 sums dims 4c .. 4c+3 over the splits r, r + MERGE_ROWS, ..
const uint MERGE_ROWS = gl_WorkGroupSize.x / NV;

void merge(uint bhq) {
    const bool entmax = p.pass_id == 4u;
    const uint base = bhq * p.n_splits * PSTRIDE;
    const uint tid = gl_LocalInvocationIndex;
    float mx = NEG;
    for (uint t = tid; t < p.n_splits; t += gl_WorkGroupSize.x) mx = max(mx, partial[base + t * PSTRIDE]);
    mx = workgroup_max(mx);
    float lt = 0.0;
    for (uint t = tid; t < p.n_splits; t += gl_WorkGroupSize.x) {
        lt += partial[base + t * PSTRIDE + 1u] * exp(partial[base + t * PSTRIDE] - mx);
    }
    lt = workgroup_sum(vec4(lt, 0.0, 0.0, 0.0)).x;
    const uint r = tid / NV, c = tid % NV;
    vec4 a = vec4(0.0);
    if (r < MERGE_ROWS) {
        for (uint t = r; t < p.n_splits; t += MERGE_ROWS) {
            const uint o = base + t * PSTRIDE;
            const vec4 x = vec4(partial[o + 2u + 4u * c], partial[o + 3u + 4u * c],
                                partial[o + 4u + 4u * c], partial[o + 5u + 4u * c]);
            a += x * exp(partial[o] - mx);
        }
        sh_acc[r * D + 4u * c] = a.x; sh_acc[r * D + 4u * c + 1u] = a.y;
        sh_acc[r * D + 4u * c + 2u] = a.z; sh_acc[r * D + 4u * c + 3u] = a.w;
    }
    barrier();
    for (uint d = tid; d < D; d += gl_WorkGroupSize.x) {
        float t = 0.0;
        for (uint rr = 0u; rr < MERGE_ROWS; rr++) t += sh_acc[rr * D + d];
        out_[bhq * D + d] = entmax ? t : t / lt;
    }
}

// Folds the partial (mt, lt_, x) into the running (mx, lt, a) (log-sum-exp).
void fold(inout float mx, inout float lt, inout vec4 a, float mt, float lt_, vec4 x) {
    const float mn = max(mx, mt);
    const float w0 = exp(mx - mn), w1 = exp(mt - mn);
    lt = lt * w0 + lt_ * w1;
    a = a * w0 + x * w1;
    mx = mn;
}

// Two levels: merges the partials first, first + stride, .. (count of them) of the G heads of KV
// head bh at once: invocation (row, item) folds every M_ROWS-th of them for head item / NV,
// columns 4 (item % NV) .. +3; the rows are then folded in shared memory. to_out: out = a / l;
// else the result, a partial, replaces partial `first` (read before it is written).
void merge_heads(uint bh, uint first, uint count, uint stride, bool to_out) {
    const uint tid = gl_LocalInvocationIndex;
    const uint span = gl_WorkGroupSize.x / max(M_ROWS, 1u);   // >= M_ITEMS
    const uint row = tid / span, item = tid % span;
    const uint g = min(item / NV, G - 1u), c = item % NV;
    const uint base = ((bh * G + g) * p.n_splits + first) * PSTRIDE;
    float mx = NEG, lt = 0.0;
    vec4 a = vec4(0.0);
    if (row < M_ROWS && item < M_ITEMS) {
        for (uint t = row; t < count; t += M_ROWS) {
            const uint o = base + t * stride * PSTRIDE;
            const uint oc = o + 2u + 4u * c;
            fold(mx, lt, a, partial[o], partial[o + 1u],
                 vec4(partial[oc], partial[oc + 1u], partial[oc + 2u], partial[oc + 3u]));
        }
    }
    sh_mx[tid] = mx; sh_lt[tid] = lt; sh_va[tid] = a;
    barrier();
    if (row == 0u && item < M_ITEMS) {
        for (uint r = 1u; r < M_ROWS; r++) {
            const uint u = r * span + item;
            fold(mx, lt, a, sh_mx[u], sh_lt[u], sh_va[u]);
        }
        if (to_out) {
            const uint o = (bh * G + g) * D + 4u * c;
            const vec4 r = a / lt;
            out_[o] = r.x; out_[o + 1u] = r.y; out_[o + 2u] = r.z; out_[o + 3u] = r.w;
        } else {
            const uint oc = base + 2u + 4u * c;
            partial[oc] = a.x; partial[oc + 1u] = a.y; partial[oc + 2u] = a.z; partial[oc + 3u] = a.w;
            if (c == 0u) { partial[base] = mx; partial[base + 1u] = lt; }
        }
    }
    barrier();
}

#include "last_workgroup.glsl"

// FUSED: the last workgroups of KV head bh to finish their partials merge the group's heads.
void merge_if_last(uint bh, uint split) {
    const uint n_groups = ceil_div(p.n_splits, MGROUP);
    const uint cb = bh * (1u + n_groups);
    if (M_ITEMS > gl_WorkGroupSize.x) {                 // one level
        if (!last_to_finish(cb, p.n_splits)) return;
        for (uint g = 0u; g < G; g++) {
            merge(bh * G + g);
            barrier();
        }
        return;
    }
    const uint grp = split / MGROUP, first = grp * MGROUP;
    const uint n_in = min(MGROUP, p.n_splits - first);
    if (!last_to_finish(cb + 1u + grp, n_in)) return;
    if (n_groups == 1u) {
        merge_heads(bh, 0u, n_in, 1u, true);
        return;
    }
    merge_heads(bh, first, n_in, 1u, false);
    if (!last_to_finish(cb, n_groups)) return;
    merge_heads(bh, 0u, n_groups, MGROUP, true);
}

void main() {
    switch (p.pass_id) {
        case 0u:
            softmax_partials(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x);
            if (FUSED != 0u) merge_if_last(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x);
            break;
        case 2u: entmax_logits(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x); break;
        case 3u: entmax_partials(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x); break;
        default: merge(gl_WorkGroupID.x); break;
    }
}
