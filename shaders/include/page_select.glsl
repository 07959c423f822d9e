// Shared by the page selectors (topk-select, gaussian-select): the query group of a KV head and
// the page statistics of a paged KV cache. Include after common.glsl. Declares specialisation
// constants 1-4 and bindings 0 (queries) and 1 (page statistics).
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

shared float sh_q[G * D];

// Copy the G queries of KV head bh (query heads bh * G + g), times scale, to shared memory.
void load_group_queries(uint bh, float scale) {
    for (uint i = gl_LocalInvocationIndex; i < G * D; i += gl_WorkGroupSize.x) sh_q[i] = q[bh * G * D + i] * scale;
    barrier();
}

// Elements 4i .. 4i+3 of query g of the group.
vec4 group_query(uint g, uint i) {
    const uint o = g * D + 4u * i;
    return vec4(sh_q[o], sh_q[o + 1u], sh_q[o + 2u], sh_q[o + 3u]);
}

// Elements 4i .. 4i+3 of statistic `stat` of page pg of KV head bh.
vec4 page_stat(uint bh, uint max_pages, uint pg, uint stat, uint i) {
    return LOAD_VEC4(F16, st32, st16, ((bh * max_pages + pg) * 4u + stat) * NV + i);
}

#endif
