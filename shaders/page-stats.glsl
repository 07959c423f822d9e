#version 450
// Per-page key statistics of a paged KV cache: see grilly_kv/ops/page_stats.py.
//
// For page pg of head bh (tokens [16 pg, min(16 pg + 16, len)), page size PAGE) and each dim d:
// min, max, mean and population std (clamped at 1e-6) of K[t, d], stored as four rows of D values
// per page: stats[(bh * max_pages + pg) * 4 + r][d], r = 0 min, 1 max, 2 mean, 3 std; packed
// float16 (two dims per word) when F16 = 1, float32 otherwise (the cache's dtype).
// Only the pages touched by the last write are recomputed: pages meta[1] / PAGE onwards, for
// gl_NumWorkGroups.x pages at most, and none at or beyond the cache length meta[0].
// Grid: (pages to update, B * H_kv); a thread handles a pair of dims.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 128;    // head_dim (padded), a multiple of 2
layout(constant_id = 2) const uint F16 = 1;    // 1: K and stats are packed float16
layout(constant_id = 3) const uint PAGE = 16;  // tokens per page

layout(set = 0, binding = 0) readonly buffer K32 { vec2 k32[]; };
layout(set = 0, binding = 0) readonly buffer K16 { uint k16[]; };
layout(set = 0, binding = 1) writeonly buffer S32 { vec2 s32[]; };
layout(set = 0, binding = 1) writeonly buffer S16 { uint s16[]; };
layout(set = 0, binding = 2) readonly buffer Meta { uint meta[]; };  // [length after, length before]

layout(push_constant) uniform Push {
    uint capacity;   // rows per (b, h) in the cache
    uint max_pages;  // capacity / PAGE
} p;

const uint D2 = D / 2u;   // dim pairs per row

vec2 load_pair(uint row, uint j) {
    return F16 != 0u ? unpackHalf2x16(k16[row * D2 + j]) : k32[row * D2 + j];
}

void store_pair(uint stat_row, uint j, vec2 v) {
    if (F16 != 0u) s16[stat_row * D2 + j] = packHalf2x16(v);
    else s32[stat_row * D2 + j] = v;
}

void main() {
    const uint len = meta[0];
    const uint pg = meta[1] / PAGE + gl_WorkGroupID.x;
    const uint bh = gl_WorkGroupID.y;
    if (pg * PAGE >= len) return;
    const uint n = min(PAGE, len - pg * PAGE);
    const uint row0 = bh * p.capacity + pg * PAGE;
    const uint stat0 = (bh * p.max_pages + pg) * 4u;
    for (uint j = gl_LocalInvocationID.x; j < D2; j += gl_WorkGroupSize.x) {
        vec2 lo = vec2(3.0e38), hi = vec2(-3.0e38), sum = vec2(0.0);
        for (uint t = 0u; t < n; t++) {
            const vec2 x = load_pair(row0 + t, j);
            lo = min(lo, x); hi = max(hi, x); sum += x;
        }
        const vec2 mean = sum / float(n);
        vec2 ss = vec2(0.0);
        for (uint t = 0u; t < n; t++) {
            const vec2 e = load_pair(row0 + t, j) - mean;
            ss += e * e;
        }
        store_pair(stat0, j, lo);
        store_pair(stat0 + 1u, j, hi);
        store_pair(stat0 + 2u, j, mean);
        store_pair(stat0 + 3u, j, max(sqrt(ss / float(n)), vec2(1e-6)));
    }
}
