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
// SELECT = 1 (Quest's decode step in one dispatch: pass 0 with FUSED = 1, grid n_splits x H_kv,
//   B = 1; decode_attention.record_quest_decode): every workgroup of KV head bh first scores the
//   pages 0 .. P-2 itself (Quest's bound from the page statistics of binding 11, with
//   topk-select's arithmetic: the same scores) into shared memory, and selects the pages
//   topk-select selects (the n_sink first, the k best of the others, ties to the lower index,
//   and the last page): up to a page per invocation by counting each candidate's rank, beyond
//   by a bitwise search of the k-th largest score key, then a compaction in page order. The
//   query token (position len - 1, binding 0 its
//   q/k/v row, (G + 2) H_kv D floats) is stored by the same dispatch: the last split of bh
//   writes its K and V rows, its page's key statistics (as kv-slot-store-stats), slot_pos[pos]
//   and the selected pages and their count (bindings 12-17). No workgroup reads what the
//   dispatch writes: the token's page is the last one (never scored), and readers take the
//   token's own K/V row from q/k/v (rounded to float16 as stored). Needs F16 = 1, LPT = 8 (the
//   scoring clusters of topk-select) and P <= MAX_SEL_PAGES (the shared arrays' size; the host
//   keeps the multi-dispatch path above it).
#include "common.glsl"
#include "entmax.glsl"
#include "cluster_reduce.glsl"
#include "quest_score.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 128;     // head_dim (padded), a multiple of 4 * LPT
layout(constant_id = 2) const uint F16 = 1;     // 1: K/V packed float16
layout(constant_id = 3) const uint PAGE = 16;
layout(constant_id = 4) const uint G = 1;       // query heads per KV head
layout(constant_id = 5) const uint DENSE = 0;   // 1: every page, pages[] unused
layout(constant_id = 6) const uint LPT = 8;     // lanes per token (power of 2, <= subgroup size)
layout(constant_id = 7) const uint FUSED = 0;   // 1: softmax partials and merge in one pass (header)
layout(constant_id = 8) const uint SELECT = 0;  // 1: Quest's scores, selection and store in pass 0 (header)
layout(constant_id = 9) const uint MAX_SEL_PAGES = 1;   // SELECT: most pages (sizes the shared arrays)
layout(constant_id = 10) const uint REDUCE_MEAN = 0;    // SELECT: a page's score is the mean (1) or max (0) over G
const uint NV = D / 4u;          // vec4s per row
const uint NVL = NV / LPT;       // vec4s per lane
const uint SLOTS = gl_WorkGroupSize.x / LPT;   // tokens in flight per workgroup
const uint PSTRIDE = D + 2u;
const float NEG = -1.0e30;

layout(set = 0, binding = 0) readonly buffer Q { vec4 q[]; };              // (B, H_q, D) float32
layout(set = 0, binding = 0) readonly buffer Q2 { vec2 q2[]; };            // SELECT: the q/k/v row
layout(set = 0, binding = 1) readonly buffer K1 { uint k1[]; };            // SELECT: a float16 pair
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
// SELECT only (other passes bind any buffers): page statistics of the part's heads
// (nh, sel_stride, 4, D) float16, read; and what the query token's store writes: K and V rows
// (the caches of bindings 1 and 2), its page's statistics (binding 11's buffer), slot_pos, the
// selected pages (H_kv, sel_stride) and their counts (H_kv,).
layout(set = 0, binding = 11) readonly buffer S32 { uvec4 st32[]; };
layout(set = 0, binding = 11) readonly buffer S16 { uvec2 st16[]; };
layout(set = 0, binding = 12) writeonly buffer KW { uint kw[]; };
layout(set = 0, binding = 13) writeonly buffer VW { uint vw[]; };
layout(set = 0, binding = 14) writeonly buffer StatsW { uint stats_w[]; };
layout(set = 0, binding = 15) writeonly buffer SlotPos { uint slot_pos[]; };
layout(set = 0, binding = 16) writeonly buffer PagesOut { uint pages_out[]; };
layout(set = 0, binding = 17) writeonly buffer CountsOut { uint counts_out[]; };

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
    uint n_top;       // SELECT: token_budget / PAGE
    uint n_sink;      // SELECT: first pages always kept
    uint n_kv;        // SELECT: KV heads of the layer (the q/k/v row's layout)
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
shared uint sh_key[MAX_SEL_PAGES];   // SELECT: the pages' score keys
shared uint sh_sel[MAX_SEL_PAGES];   // SELECT: the selected pages, ascending
shared uint sh_nsel;                 // SELECT: how many

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
    const uint count = SELECT != 0u ? sh_nsel : counts[bh];
    return (count - 1u) * PAGE + (len - last_page * PAGE);
}

// first vec4 of attended token c's cache row
uint token_row(uint bh, uint c) {
    const uint pg = DENSE != 0u ? c / PAGE
                  : (SELECT != 0u ? sh_sel[min(c / PAGE, MAX_SEL_PAGES - 1u)] : pages[bh * p.sel_stride + c / PAGE]);
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

// SELECT: this lane's share of the query token's own K (or V) row, starting at vec4 `row` of
// q/k/v, rounded to float16 as stored
vec4 half_round(vec4 x) { return f16_round4(x); }
#define FRESH_ROW(row, dst) \
    [[unroll]] for (uint j_ = 0u; j_ < NVL; j_++) dst[j_] = half_round(q[(row) + lane_id() + j_ * LPT])

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
    const uint n_tok = attended_tokens(bh);
    const uvec2 cr = chunk_of(split, n_tok);
    init_heads(bh);
    const uint iters = ceil_div(cr.y - cr.x, SLOTS);
    const uint fresh_k = (G * p.n_kv + bh) * NV;       // SELECT: the query token's K row in q/k/v
    for (uint it = 0u; it < iters; it++) {
        const uint c = cr.x + it * SLOTS + slot_id();
        const bool valid = c < cr.y;
        vec4 kr[NVL], vr[NVL];
        if (SELECT != 0u && (!valid || c + 1u == n_tok)) {   // the query token's row (being stored)
            FRESH_ROW(fresh_k, kr);
            FRESH_ROW(fresh_k + p.n_kv * NV, vr);
        } else {
            const uint row = token_row(bh, valid ? c : cr.x);   // keep the cluster's shuffles uniform
            LOAD_ROW(k32, k16, row, kr);
            LOAD_ROW(v32, v16, row, vr);   // issued with the K loads: one memory round trip per row
        }
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

// ---- SELECT: Quest's page scores, selection and the query token's store (header) ----------

const uint HW = D / 2u;    // float16 pairs per K/V row
const uint SEL_KPL = (MAX_SEL_PAGES + gl_WorkGroupSize.x - 1u) / gl_WorkGroupSize.x;   // keys per invocation
shared uvec2 sh_mm[REDUCE_MAX_SUBGROUPS];
shared uint sh_cnt[2u * REDUCE_MAX_SUBGROUPS];

// Quest's bound of pages 0 .. P-2 of KV head bh as order-preserving keys in sh_key, with
// topk-select's arithmetic (a cluster of 8 lanes per page, the queries unscaled).
void score_pages(uint bh) {
    const uint n_scored = min(ceil_div(meta[0], PAGE) - 1u, MAX_SEL_PAGES);
    const uint stat0 = (bh - p.kv_h0) * p.sel_stride * 4u;
    vec4 qs[G * NVL];
    [[unroll]] for (uint g = 0u; g < G; g++) {
        [[unroll]] for (uint j = 0u; j < NVL; j++) qs[g * NVL + j] = q[(bh * G + g) * NV + lane_id() + j * LPT];
    }
    for (uint pg = slot_id(); pg < n_scored; pg += SLOTS) {
        vec4 lo[NVL], hi[NVL];
        [[unroll]] for (uint j = 0u; j < NVL; j++) {
            lo[j] = LOAD_VEC4(F16, st32, st16, (stat0 + pg * 4u) * NV + lane_id() + j * LPT);
            hi[j] = LOAD_VEC4(F16, st32, st16, (stat0 + pg * 4u + 1u) * NV + lane_id() + j * LPT);
        }
        float score;
        QUEST_PAGE_SCORE(score, qs, lo, hi, NVL, LPT)
        if (lane_id() == 0u) sh_key[pg] = key_of(score);
    }
}

// Workgroup-wide (minimum of lo, maximum of hi); every invocation must call it.
uvec2 workgroup_min_max(uint lo, uint hi) {
    lo = subgroupMin(lo);
    hi = subgroupMax(hi);
    if (subgroupElect()) sh_mm[gl_SubgroupID] = uvec2(lo, hi);
    barrier();
    uvec2 r = uvec2(0xFFFFFFFFu, 0u);
    for (uint s = 0u; s < gl_NumSubgroups; s++) r = uvec2(min(r.x, sh_mm[s].x), max(r.y, sh_mm[s].y));
    barrier();
    return r;
}

// The sum of v over the workgroup with one barrier; every invocation must call it, with
// `parity` alternating between consecutive calls (a call's slots are written again two calls
// later, after the next call's barrier, when every invocation has read them).
uint workgroup_count(uint v, uint parity) {
    v = subgroupAdd(v);
    const uint base = parity * REDUCE_MAX_SUBGROUPS;
    if (subgroupElect()) sh_cnt[base + gl_SubgroupID] = v;
    barrier();
    uint total = 0u;
    for (uint s = 0u; s < gl_NumSubgroups; s++) total += sh_cnt[base + s];
    return total;
}

const uint SEL_DROPPED = 0u, SEL_KEPT = 1u, SEL_EQUAL = 2u;
const uint KEEP_NONE = 0u, KEEP_ALL = 1u, KEEP_ABOVE = 2u;   // what happens to the candidates

// Page pg (score key `key`): kept (a sink, the last page, a key above the threshold), dropped,
// or EQUAL to the threshold; cut = (n_sink, n_before_last, threshold key, KEEP_*).
uint sel_class(uint pg, uint key, uvec4 cut) {
    if (pg < cut.x || pg == cut.y) return SEL_KEPT;
    if (cut.w != KEEP_ABOVE) return cut.w == KEEP_ALL ? SEL_KEPT : SEL_DROPPED;
    return key > cut.z ? SEL_KEPT : (key == cut.z ? SEL_EQUAL : SEL_DROPPED);
}

// Keys equal to the threshold are kept in page order while their rank is below `remaining`.
bool sel_kept(uint cls, inout uint equal_rank, uint remaining) {
    if (cls != SEL_EQUAL) return cls == SEL_KEPT;
    return equal_rank++ < remaining;
}

// Runs BODY for each page pg of this invocation's run [c0, c1) with its key keys[i_].
#define FOR_SEL_RUN(BODY) \
    [[unroll]] for (uint i_ = 0u; i_ < SEL_KPL; i_++) { const uint pg = c0 + i_; if (pg < c1) { const uint key = keys[i_]; BODY } }

// topk-select's choice of pages from the keys in sh_key, into sh_sel / sh_nsel: the n_sink first
// pages, the k = min(n_top, P - 1) - n_sink best of the others before the last (ties to the
// lower index) and the last page, ascending. Up to a page per invocation, each candidate counts
// the candidates ranked before it; beyond, the k-th largest key is searched bit by bit (each
// invocation holding the keys of a run of pages), then the pages are compacted. Ends with a barrier.
void select_pages() {
    const uint n_pages = ceil_div(meta[0], PAGE);
    const uint nbl = n_pages - 1u;
    const uint n_sink = min(p.n_sink, nbl);
    const uint k = max(min(p.n_top, nbl), n_sink) - n_sink;
    const uint n_cand = nbl - n_sink;
    const uint keep = k == 0u ? KEEP_NONE : (k >= n_cand ? KEEP_ALL : KEEP_ABOVE);
    if (n_pages <= gl_WorkGroupSize.x) {       // a page per invocation: its rank by counting
        const uint pg = gl_LocalInvocationIndex;
        bool kept = pg < n_pages && (pg < n_sink || pg == nbl || keep == KEEP_ALL);
        if (keep == KEEP_ABOVE && pg >= n_sink && pg < nbl) {
            const uint key = sh_key[pg];
            uint rank = 0u;               // candidates before it: higher keys, equal keys lower pages
            for (uint j = n_sink; j < nbl; j++) {
                const uint other = sh_key[j];
                rank += other > key || (other == key && j < pg) ? 1u : 0u;
            }
            kept = rank < k;
        }
        uint n_kept;
        const uint at = exclusive_scan(kept ? 1u : 0u, n_kept);
        if (kept) sh_sel[at] = pg;
        if (gl_LocalInvocationIndex == 0u) sh_nsel = n_kept;
        barrier();
        return;
    }
    const uint per = ceil_div(n_pages, gl_WorkGroupSize.x);   // <= SEL_KPL (the host's page limit)
    const uint c0 = min(gl_LocalInvocationIndex * per, n_pages), c1 = min(c0 + per, n_pages);
    uint keys[SEL_KPL];
    [[unroll]] for (uint i = 0u; i < SEL_KPL; i++) {
        const uint pg = c0 + i;
        keys[i] = pg < c1 && pg < min(nbl, MAX_SEL_PAGES) ? sh_key[pg] : 0u;
    }
    uint thr = 0u, remaining = 0u;
    if (keep == KEEP_ABOVE) {
        // the k-th largest candidate key: the largest thr with at least k keys >= thr, bit by
        // bit below the bits all candidate keys share
        uint lo = 0xFFFFFFFFu, hi = 0u;
        FOR_SEL_RUN(if (pg >= n_sink && pg < nbl) { lo = min(lo, key); hi = max(hi, key); })
        const uvec2 range = workgroup_min_max(lo, hi);
        const int top = range.x == range.y ? -1 : findMSB(range.x ^ range.y);
        thr = top < 0 ? range.x : (top == 31 ? 0u : range.x & ~((2u << uint(top)) - 1u));
        for (int b = top; b >= 0; b--) {
            const uint cand = thr | (1u << uint(b));
            uint n_ge = 0u;
            FOR_SEL_RUN(n_ge += pg >= n_sink && pg < nbl && key >= cand ? 1u : 0u;)
            if (workgroup_count(n_ge, uint(b) & 1u) >= k) thr = cand;
        }
        uint n_above = 0u;
        FOR_SEL_RUN(n_above += pg >= n_sink && pg < nbl && key > thr ? 1u : 0u;)
        remaining = k - workgroup_count(n_above, 1u);   // the loop's last call had parity 0
    }
    // compaction in page order: one scan ranks the keys equal to the threshold, one places the pages
    const uvec4 cut = uvec4(n_sink, nbl, thr, keep);
    uint n_equal = 0u;
    FOR_SEL_RUN(n_equal += sel_class(pg, key, cut) == SEL_EQUAL ? 1u : 0u;)
    uint n_total;
    const uint equal_rank = exclusive_scan(n_equal, n_total);
    uint rank = equal_rank, n_keep = 0u;
    FOR_SEL_RUN(n_keep += sel_kept(sel_class(pg, key, cut), rank, remaining) ? 1u : 0u;)
    uint at = exclusive_scan(n_keep, n_total);
    rank = equal_rank;
    FOR_SEL_RUN(if (sel_kept(sel_class(pg, key, cut), rank, remaining)) {
                    if (at < MAX_SEL_PAGES) sh_sel[at] = pg;
                    at++;
                })
    if (gl_LocalInvocationIndex == 0u) sh_nsel = min(n_total, MAX_SEL_PAGES);
    barrier();
}

// Key pair w of the query token (KV head bh), rounded to float16 as stored.
vec2 fresh_key_pair(uint bh, uint w) {
    return f16_round2(q2[(G * p.n_kv + bh) * HW + w]);
}

// Statistics (min, max, mean, population std clamped at 1e-6) of key pair w over rows
// [page start, pos] of KV head bh, as kv-slot-store-stats computes them: the rows before pos
// from the cache, row pos from q/k/v.
void store_page_stats(uint bh, uint w, uint pos) {
    const uint hl = bh - p.kv_h0;
    const uint row0 = pos - pos % PAGE;
    const uint n = pos - row0 + 1u;
    vec2 lo = vec2(3.0e38), hi = vec2(-3.0e38), sum = vec2(0.0);
    for (uint r = 0u; r < n; r++) {
        const vec2 x = row0 + r == pos ? fresh_key_pair(bh, w)
                                       : unpackHalf2x16(k1[(hl * p.capacity + row0 + r) * HW + w]);
        lo = min(lo, x); hi = max(hi, x); sum += x;
    }
    const vec2 mean = sum / float(n);
    vec2 ss = vec2(0.0);
    for (uint r = 0u; r < n; r++) {
        const vec2 x = row0 + r == pos ? fresh_key_pair(bh, w)
                                       : unpackHalf2x16(k1[(hl * p.capacity + row0 + r) * HW + w]);
        const vec2 e = x - mean;
        ss += e * e;
    }
    const uint at = ((hl * p.sel_stride + pos / PAGE) * 4u) * HW + w;
    stats_w[at] = packHalf2x16(lo);
    stats_w[at + HW] = packHalf2x16(hi);
    stats_w[at + 2u * HW] = packHalf2x16(mean);
    stats_w[at + 3u * HW] = packHalf2x16(max(sqrt(ss / float(n)), vec2(1e-6)));
}

// The query token's store (one workgroup per KV head): its K/V row, its page's statistics,
// slot_pos (KV head 0), and the selected pages and their count.
void store_token(uint bh) {
    const uint pos = meta[0] - 1u;
    const uint hl = bh - p.kv_h0;
    const uint tid = gl_LocalInvocationIndex;
    for (uint w = tid; w < HW; w += gl_WorkGroupSize.x) {
        const uint src = (G * p.n_kv + bh) * HW + w;
        const uint dst = (hl * p.capacity + pos) * HW + w;
        kw[dst] = packHalf2x16(q2[src]);
        vw[dst] = packHalf2x16(q2[src + p.n_kv * HW]);
        store_page_stats(bh, w, pos);
    }
    if (bh == 0u && tid == 0u) slot_pos[pos] = pos;
    for (uint i = tid; i < sh_nsel; i += gl_WorkGroupSize.x) pages_out[bh * p.sel_stride + i] = sh_sel[i];
    if (tid == 0u) counts_out[bh] = sh_nsel;
}

// SELECT: the pages of KV head bh, chosen by this workgroup; the last split also stores the token.
void quest_select(uint bh, uint split) {
    score_pages(bh);
    barrier();
    select_pages();
    if (split + 1u == p.n_splits) store_token(bh);
}

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
            if (SELECT != 0u) quest_select(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x);
            softmax_partials(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x);
            if (FUSED != 0u) merge_if_last(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x);
            break;
        case 2u: entmax_logits(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x); break;
        case 3u: entmax_partials(p.kv_h0 + gl_WorkGroupID.y, gl_WorkGroupID.x); break;
        default: merge(gl_WorkGroupID.x); break;
    }
}
