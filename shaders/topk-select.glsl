#version 450
// Quest page scores and top-k page selection for a paged KV cache: see grilly_kv/ops/topk_select.py.
//
// Pass 0, score (grid: ceil(pages / PAGES_PER_WG) x B*H_kv): for each scored page pg < P - 1
//   (P = ceil(len / PAGE); the last, in-progress page is never scored) and each of the G query
//   heads of KV head bh, s_g = sum_d max(q_d kmin_pd, q_d kmax_pd) (no 1/sqrt(D)); the page score
//   is max_g s_g (REDUCE_MEAN = 0) or mean_g s_g, written to scores[bh * max_pages + pg].
// Pass 1, select (grid: B*H_kv): keeps the n_sink first pages, the k highest-scoring of the other
//   pages before the last (k = min(n_top, P - 1) - n_sink, ties to the lower index) and the last
//   page, written in ascending order to pages[bh * sel_stride + i], with their number in
//   counts[bh]. The k-th largest score is found by an MSB-first radix select over 8-bit digits of
//   order-preserving keys, starting below the bits that all keys share (one min/max pass, then at
//   most 4 histogram passes, fewer when a digit settles it), then one compaction pass: the cost
//   is linear in the number of pages, nothing is sorted. Each invocation owns a run of
//   consecutive pages and loads the keys of its run once, into KEYS_PER_LANE registers (a run
//   longer than that reads the rest from scores[] in every pass): every pass after the load
//   reads registers, not memory (the passes were bound by the latency of their loads).
// Pass 2, select dropping the unkept (grid: B*H_kv): pass 1, except that a page before the last
//   (not a sink) whose score is UNKEPT (-3.4e38, written by gaussian-select for the pages its rule
//   did not keep) is never taken, even when fewer than k pages score higher: the Gaussian
//   selector's budget cap in one pass.
// FUSED = 1: no pass 1; after scoring, each pass-0 workgroup of KV head bh adds 1 to counter[bh]
//   (after a buffer memory barrier), and the last one (the grid's x size reached) runs the
//   selection of bh itself (its workgroup of 256 covers the 256 histogram bins) and resets
//   counter[bh] to 0 (so the recording replays): one dispatch instead of two dependent ones. The
//   scoring runs over the whole grid (as pass 0); only the selection runs in one workgroup per
//   head, with the keys in registers (32 per invocation at 8192 pages, at most 64).
#include "common.glsl"
#include "cluster_reduce.glsl"
#include "page_select.glsl"
#include "quest_score.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 5) const uint REDUCE_MEAN = 0;
layout(constant_id = 6) const uint FUSED = 0;   // 1: the last scoring workgroup of a head selects
layout(constant_id = 7) const uint KEYS_PER_LANE = 8;   // keys of its run an invocation keeps in registers
const uint MAX_SUBGROUPS = 128u;

layout(set = 0, binding = 2) coherent buffer Scores { float scores[]; };   // (B*H_kv, max_pages)
layout(set = 0, binding = 3) writeonly buffer Pages { uint pages[]; };     // (B*H_kv, sel_stride)
layout(set = 0, binding = 4) writeonly buffer Counts { uint counts[]; };   // (B*H_kv,)
layout(set = 0, binding = 5) readonly buffer Meta { uint meta[]; };        // [length, ...]
layout(set = 0, binding = 6) coherent buffer Counter { uint counter[]; };  // (B*H_kv,) FUSED: scorers done

layout(push_constant) uniform Push {
    uint max_pages;   // page capacity per head
    uint n_top;       // token_budget / PAGE
    uint n_sink;      // first pages always kept
    uint sel_stride;  // room per head in pages[]
    uint pass_id;     // 0: score, 1: select, 2: select dropping UNKEPT pages
    uint kv_h0;       // pass 0: the stats buffer holds KV heads [kv_h0, kv_h0 + grid y) (a part of
                      // a layer split by heads, policies/kv_store.py); 0 when unsplit
} p;

shared uint sh_hist[256];
shared uint sh_lo[MAX_SUBGROUPS];
shared uint sh_prefix, sh_remaining;
shared bool sh_settled;
shared bool sh_last;

// A cluster of PAGE_LANES lanes scores one page at a time, the group's queries held in
// registers; the min and max rows are loaded before any arithmetic.
void score_pages(uint bh) {
    QUERY_SHARES(qr, bh, 1.0);
    const uvec2 range = cluster_pages(ceil_div(meta[0], PAGE) - 1u);
    for (uint pg = range.x; pg < range.y; pg += gl_WorkGroupSize.x / PAGE_LANES) {
        STAT_SHARES(lo, hi, bh - p.kv_h0, p.max_pages, pg, STAT_MIN, STAT_MAX);
        float score;
        QUEST_PAGE_SCORE(score, qr, lo, hi, NVP, PAGE_LANES)
        if (page_lane() == 0u) scores[bh * p.max_pages + pg] = score;
    }
}

// Workgroup-wide minimum of lo and maximum of hi; every invocation must call it.
uvec2 min_max(uint lo, uint hi) {
    lo = subgroupMin(lo);
    hi = subgroupMax(hi);
    if (subgroupElect()) { sh_lo[gl_SubgroupID] = lo; sh_hist[gl_SubgroupID] = hi; }
    barrier();
    uvec2 r = uvec2(0xFFFFFFFFu, 0u);
    for (uint s = 0u; s < gl_NumSubgroups; s++) r = uvec2(min(r.x, sh_lo[s]), max(r.y, sh_hist[s]));
    barrier();
    return r;
}

const uint DROPPED = 0u, KEPT = 1u, EQUAL = 2u;
const float UNKEPT = -3.4e38;        // pass 2: the score of a page another rule did not keep

// Whether page pg (order-preserving score key `key`) is kept (sinks, the last page, keys above
// the threshold), dropped, or EQUAL to the threshold; cut = (n_sink, n_before_last, mask, prefix).
uint page_class(uint pg, uint key, uvec4 cut) {
    if (pg < cut.x || pg == cut.y) return KEPT;
    if (p.pass_id == 2u && key == key_of(UNKEPT)) return DROPPED;
    key &= cut.z;
    return key > cut.w ? KEPT : (key == cut.w ? EQUAL : DROPPED);
}

// Keys equal to the threshold are kept in page order while their rank is below `remaining`.
bool kept(uint page_class, inout uint equal_rank, uint remaining) {
    if (page_class != EQUAL) return page_class == KEPT;
    return equal_rank++ < remaining;
}

// Runs BODY for each page pg of this invocation's run [c0, c1) with its score key `key`: the
// first KEYS_PER_LANE from the registers keys[], the rest (a run longer than that) from scores[].
#define FOR_RUN(BODY) \
    [[unroll]] for (uint i_ = 0u; i_ < KEYS_PER_LANE; i_++) { \
        const uint pg = c0 + i_; \
        if (pg < c1) { const uint key = keys[i_]; BODY } } \
    for (uint pg = c0 + KEYS_PER_LANE; pg < c1; pg++) { const uint key = key_of(scores[base + pg]); BODY }

void select_pages(uint bh) {
    const uint n_pages = ceil_div(meta[0], PAGE);
    const uint n_before_last = n_pages - 1u;
    const uint n_sink = min(p.n_sink, n_before_last);
    const uint k = max(min(p.n_top, n_before_last), n_sink) - n_sink;   // pages to pick by score
    const uint n_cand = n_before_last - n_sink;
    const uint tid = gl_LocalInvocationIndex;
    const uint base = bh * p.max_pages;
    // this invocation's run of consecutive pages, its keys loaded once (all loads issued first)
    const uint per = ceil_div(n_pages, gl_WorkGroupSize.x);
    const uint c0 = min(tid * per, n_pages), c1 = min(c0 + per, n_pages);
    uint keys[KEYS_PER_LANE];
    [[unroll]] for (uint i = 0u; i < KEYS_PER_LANE; i++)
        keys[i] = c0 + i < c1 ? key_of(scores[base + c0 + i]) : 0u;
    // Find the threshold: the candidates whose key, masked to the bits in `mask`, is above
    // `prefix` are kept, and the first `remaining` (by page index) of those equal to it.
    uint prefix = 0u, mask = 0u, remaining = k;
    if (k == 0u) {
        prefix = 0xFFFFFFFFu; mask = 0xFFFFFFFFu; remaining = 0u;          // keep none
    } else if (k < n_cand) {
        uint lo = 0xFFFFFFFFu, hi = 0u;
        FOR_RUN(if (pg >= n_sink && pg < n_before_last) { lo = min(lo, key); hi = max(hi, key); })
        const uvec2 range = min_max(lo, hi);
        // the bits above the highest one where the keys differ are common: skip them, so the
        // first digit spreads the keys over the histogram instead of piling them in one bin
        int hi_bit = range.x == range.y ? -1 : findMSB(range.x ^ range.y);
        mask = hi_bit < 0 ? 0xFFFFFFFFu : (hi_bit == 31 ? 0u : ~((2u << uint(hi_bit)) - 1u));
        prefix = range.y & mask;
        while (hi_bit >= 0) {
            const int lo_bit = max(hi_bit - 7, 0);
            const uint digit_mask = (2u << uint(hi_bit - lo_bit)) - 1u;
            for (uint b = tid; b < 256u; b += gl_WorkGroupSize.x) sh_hist[b] = 0u;
            barrier();
            FOR_RUN(if (pg >= n_sink && pg < n_before_last && (key & mask) == prefix)
                        atomicAdd(sh_hist[(key >> uint(lo_bit)) & digit_mask], 1u);)
            barrier();
            // the bin b holding the threshold: fewer than `remaining` keys lie in the bins above
            // it, at least `remaining` in those and b; invocation t looks at bin 255 - t
            const uint h = tid < 256u ? sh_hist[255u - tid] : 0u;
            uint n_all;
            const uint above = exclusive_scan(h, n_all);
            if (tid < 256u && above < remaining && remaining <= above + h) {
                sh_prefix = prefix | ((255u - tid) << uint(lo_bit));
                sh_remaining = remaining - above;
                sh_settled = h == remaining - above;   // every key of bin b is kept
            }
            barrier();
            prefix = sh_prefix;
            remaining = sh_remaining;
            mask |= digit_mask << uint(lo_bit);
            const bool settled = sh_settled;
            barrier();
            if (settled) break;
            hi_bit = lo_bit - 1;
        }
    }
    // compaction in page order over the runs: one scan ranks the keys equal to the threshold,
    // one places the kept pages
    const uvec4 cut = uvec4(n_sink, n_before_last, mask, prefix);
    uint n_equal = 0u;
    FOR_RUN(n_equal += page_class(pg, key, cut) == EQUAL ? 1u : 0u;)
    uint n_total;
    const uint equal_rank = exclusive_scan(n_equal, n_total);
    uint rank = equal_rank, n_keep = 0u;
    FOR_RUN(n_keep += kept(page_class(pg, key, cut), rank, remaining) ? 1u : 0u;)
    uint pos = exclusive_scan(n_keep, n_total);
    rank = equal_rank;
    FOR_RUN(if (kept(page_class(pg, key, cut), rank, remaining)) {
                if (pos < p.sel_stride) pages[bh * p.sel_stride + pos] = pg;
                pos++;
            })
    if (tid == 0u) counts[bh] = n_total;
}

// FUSED: the last scoring workgroup of KV head bh selects its pages.
#include "last_workgroup.glsl"

void select_if_last(uint bh) {
    if (last_to_finish(bh, gl_NumWorkGroups.x)) select_pages(bh);
}

void main() {
    if (p.pass_id == 0u) {
        score_pages(p.kv_h0 + gl_WorkGroupID.y);
        if (FUSED != 0u) select_if_last(p.kv_h0 + gl_WorkGroupID.y);
    }
    else select_pages(gl_WorkGroupID.x);
}
