// Shared by the page selectors (topk-select, gaussian-select): the query group of a KV head and
// the page statistics of a paged KV cache. Include after common.glsl. Declares specialisation
// constants 1-4 and bindings 0 (queries) and 1 (page statistics). Include after cluster_reduce.glsl.
#ifndef GRILLY_KV_PAGE_SELECT_GLSL
#define GRILLY_KV_PAGE_SELECT_GLSL

layout(constant_id = 1) const uint D = 128;     // head_dim (padded), a multiple of 4
layout(constant_id = 2) const uint F16 = 1;     // 1: stats are packed float16
layout(constant_id = 3) const uint PAGE = 16;
layout(constant_id = 4) const uint G = 1;       // query heads per KV head
const uint NV = D / 4u;
const uint PAGES_PER_WG = 64u;                  // pages per workgroup of a per-page pass
const uint STAT_MIN = 0u, STAT_MAX = 1u, STAT_MEAN = 2u, STAT_STD = 3u;   // rows of a page

layout(set = 0, binding = 0) readonly buffer Q { float q[]; };             // (B, H_q, D) float32
// (B*H_kv, max_pages, 4, D): rows min, max, mean, std per page, float32 or packed float16
layout(set = 0, binding = 1) readonly buffer S32 { uvec4 st32[]; };
layout(set = 0, binding = 1) readonly buffer S16 { uvec2 st16[]; };

// Elements 4i .. 4i+3 of statistic `stat` of page pg of KV head bh.
vec4 page_stat(uint bh, uint max_pages, uint pg, uint stat, uint i) {
    return LOAD_VEC4(F16, st32, st16, ((bh * max_pages + pg) * 4u + stat) * NV + i);
}

// Per-page passes give each page a cluster of PAGE_LANES subgroup lanes (cluster_reduce.glsl),
// each lane NVP vec4s of a row (D a multiple of 4 * PAGE_LANES).
const uint PAGE_LANES = 8u;
const uint NVP = NV / PAGE_LANES;
uint page_lane() { return gl_LocalInvocationIndex % PAGE_LANES; }
uint page_slot() { return gl_LocalInvocationIndex / PAGE_LANES; }

// Elements of query g of KV head bh (times scale) in this lane's j-th vec4 of a row.
vec4 query_share(uint bh, uint g, uint j, float scale) {
    const uint o = (bh * G + g) * D + 4u * (page_lane() + j * PAGE_LANES);
    return vec4(q[o], q[o + 1u], q[o + 2u], q[o + 3u]) * scale;
}

// Declares vec4 name[G * NVP]: this lane's shares of the G queries of KV head bh, times scale.
#define QUERY_SHARES(name, bh, scale) vec4 name[G * NVP]; \
    [[unroll]] for (uint g_ = 0u; g_ < G; g_++) { \
        [[unroll]] for (uint j_ = 0u; j_ < NVP; j_++) name[g_ * NVP + j_] = query_share(bh, g_, j_, scale); }

// This lane's j-th vec4 of statistic `stat` of page pg of KV head bh.
vec4 stat_share(uint bh, uint max_pages, uint pg, uint stat, uint j) {
    return page_stat(bh, max_pages, pg, stat, page_lane() + j * PAGE_LANES);
}

// Pages [x, y) of this workgroup's share of a per-page pass over n pages: a cluster takes page
// x, then every (workgroup size / PAGE_LANES)-th.
uvec2 cluster_pages(uint n) {
    const uint first = gl_WorkGroupID.x * PAGES_PER_WG;
    return uvec2(first + page_slot(), min(first + PAGES_PER_WG, n));
}

// Declares vec4 a[NVP], b[NVP] holding this lane's shares of rows stat_a and stat_b of page pg
// (all loads issued before any use).
#define STAT_SHARES(a, b, bh, max_pages, pg, stat_a, stat_b) vec4 a[NVP], b[NVP]; \
    [[unroll]] for (uint j_ = 0u; j_ < NVP; j_++) { \
        a[j_] = stat_share(bh, max_pages, pg, stat_a, j_); b[j_] = stat_share(bh, max_pages, pg, stat_b, j_); }

#endif
