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
//   order-preserving keys (4 linear passes over the scores), then one compaction pass: the cost
//   is linear in the number of pages, nothing is sorted.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 128;        // head_dim (padded), a multiple of 4
layout(constant_id = 2) const uint F16 = 1;        // 1: stats are packed float16
layout(constant_id = 3) const uint PAGE = 16;
layout(constant_id = 4) const uint G = 1;          // query heads per KV head
layout(constant_id = 5) const uint REDUCE_MEAN = 0;
const uint NV = D / 4u;
const uint PAGES_PER_WG = 64u;
const uint MAX_SUBGROUPS = 128u;

layout(set = 0, binding = 0) readonly buffer Q { float q[]; };             // (B, H_q, D)
layout(set = 0, binding = 1) readonly buffer S32 { uvec4 st32[]; };        // page stats
layout(set = 0, binding = 1) readonly buffer S16 { uvec2 st16[]; };
layout(set = 0, binding = 2) buffer Scores { float scores[]; };            // (B*H_kv, max_pages)
layout(set = 0, binding = 3) writeonly buffer Pages { uint pages[]; };     // (B*H_kv, sel_stride)
layout(set = 0, binding = 4) writeonly buffer Counts { uint counts[]; };   // (B*H_kv,)
layout(set = 0, binding = 5) readonly buffer Meta { uint meta[]; };        // [length, ...]

layout(push_constant) uniform Push {
    uint max_pages;   // page capacity per head
    uint n_top;       // token_budget / PAGE
    uint n_sink;      // first pages always kept
    uint sel_stride;  // room per head in pages[]
    uint pass_id;     // 0: score, 1: select
} p;

shared float sh_q[G * D];
shared uint sh_hist[256];
shared uint sh_sub[MAX_SUBGROUPS];
shared uint sh_prefix, sh_remaining;

void score_pages(uint bh) {
    for (uint i = gl_LocalInvocationIndex; i < G * D; i += gl_WorkGroupSize.x) sh_q[i] = q[bh * G * D + i];
    barrier();
    const uint n_scored = ceil_div(meta[0], PAGE) - 1u;
    const uint first = gl_WorkGroupID.x * PAGES_PER_WG;
    for (uint k = gl_SubgroupID; k < PAGES_PER_WG; k += gl_NumSubgroups) {
        const uint pg = first + k;
        if (pg >= n_scored) break;
        const uint row = (bh * p.max_pages + pg) * 4u * NV;     // the page's min row, in vec4s
        float best = -3.0e38, total = 0.0;
        for (uint g = 0u; g < G; g++) {
            float s = 0.0;
            for (uint i = gl_SubgroupInvocationID; i < NV; i += gl_SubgroupSize) {
                const vec4 lo = LOAD_VEC4(F16, st32, st16, row + i);
                const vec4 hi = LOAD_VEC4(F16, st32, st16, row + NV + i);
                const vec4 qv = vec4(sh_q[g * D + 4u * i], sh_q[g * D + 4u * i + 1u],
                                     sh_q[g * D + 4u * i + 2u], sh_q[g * D + 4u * i + 3u]);
                const vec4 b = max(qv * lo, qv * hi);
                s += b.x + b.y + b.z + b.w;
            }
            s = subgroupAdd(s);
            best = max(best, s);
            total += s;
        }
        if (subgroupElect()) scores[bh * p.max_pages + pg] = REDUCE_MEAN != 0u ? total / float(G) : best;
    }
}

// Order-preserving map of a float to a uint: a > b as floats <=> key(a) > key(b).
uint key_of(float f) {
    const uint u = floatBitsToUint(f);
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}

// Workgroup-wide exclusive prefix sum of v; every invocation must call it. total: the sum of all v.
uint exclusive_scan(uint v, out uint total) {
    const uint within = subgroupExclusiveAdd(v);
    if (gl_SubgroupInvocationID == gl_SubgroupSize - 1u) sh_sub[gl_SubgroupID] = within + v;
    barrier();
    uint before = 0u;
    total = 0u;
    for (uint s = 0u; s < gl_NumSubgroups; s++) {
        if (s == gl_SubgroupID) before = total;
        total += sh_sub[s];
    }
    barrier();
    return before + within;
}

void select_pages(uint bh) {
    const uint n_pages = ceil_div(meta[0], PAGE);
    const uint n_before_last = n_pages - 1u;
    const uint n_sink = min(p.n_sink, n_before_last);
    const uint k = max(min(p.n_top, n_before_last), n_sink) - n_sink;   // pages to pick by score
    const uint n_cand = n_before_last - n_sink;
    const uint tid = gl_LocalInvocationIndex;
    const uint base = bh * p.max_pages;
    // threshold key T and how many keys equal to T to keep (the lowest-indexed ones)
    uint prefix = 0u, remaining = k;
    if (k > 0u && k < n_cand) {
        uint mask = 0u;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (uint b = tid; b < 256u; b += gl_WorkGroupSize.x) sh_hist[b] = 0u;
            barrier();
            for (uint pg = n_sink + tid; pg < n_before_last; pg += gl_WorkGroupSize.x) {
                const uint key = key_of(scores[base + pg]);
                if ((key & mask) == prefix) atomicAdd(sh_hist[(key >> uint(shift)) & 255u], 1u);
            }
            barrier();
            if (tid == 0u) {
                uint above = 0u;
                uint b = 255u;
                for (;; b--) {
                    if (above + sh_hist[b] >= remaining || b == 0u) break;
                    above += sh_hist[b];
                }
                sh_prefix = prefix | (b << uint(shift));
                sh_remaining = remaining - above;
            }
            barrier();
            prefix = sh_prefix;
            remaining = sh_remaining;
            mask |= 255u << uint(shift);
            barrier();
        }
    }
    const bool take_all = k >= n_cand;
    // compaction in page order: sinks, keys above T, the first `remaining` keys equal to T, last page
    uint n_out = 0u, n_equal_seen = 0u;
    for (uint c0 = 0u; c0 < n_pages; c0 += gl_WorkGroupSize.x) {
        const uint pg = c0 + tid;
        const bool cand = pg >= n_sink && pg < n_before_last && k > 0u;
        const uint key = cand ? key_of(scores[base + pg]) : 0u;
        const bool equal = cand && !take_all && key == prefix;
        uint n_equal;
        const uint equal_rank = n_equal_seen + exclusive_scan(equal ? 1u : 0u, n_equal);
        n_equal_seen += n_equal;
        const bool keep = pg < n_pages && (pg < n_sink || pg == n_before_last ||
                          (cand && (take_all || key > prefix || (equal && equal_rank < remaining))));
        uint n_keep;
        const uint pos = n_out + exclusive_scan(keep ? 1u : 0u, n_keep);
        if (keep && pos < p.sel_stride) pages[bh * p.sel_stride + pos] = pg;
        n_out += n_keep;
    }
    if (tid == 0u) counts[bh] = n_out;
}

void main() {
    if (p.pass_id == 0u) score_pages(gl_WorkGroupID.y);
    else select_pages(gl_WorkGroupID.x);
}
