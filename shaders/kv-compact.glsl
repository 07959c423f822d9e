#version 450
// Row gather for a K/V cache buffer [2, H_kv, cap, row] of 32-bit words (K then V), moved in
// units of 4 words (uvec4) when rows allow, else single words:
// see grilly_kv/ops/kv_compact.py.
//   dst[t, h, dst_row0 + j] = src[t, h, source(j)]   for j < n_rows,
//   source(j) = kept[h * idx_stride + j] (USE_IDX) or src_row0 + j.
// One workgroup per (head, K|V, slice of SLICE units of columns): slices never touch each other's
// words. Within a slice, rows move in waves staged through shared memory: every read of a wave
// completes before any write of it. That makes an in-place compaction (src == dst, dst_row0 = 0,
// kept increasing so kept[j] >= j) safe: a wave writes rows below the first row any later wave
// of the same slice reads.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint ROW_UNITS = 16;   // units per row: uvec4s (VEC4) or words
layout(constant_id = 2) const uint USE_IDX = 1;
layout(constant_id = 3) const uint SLICE = 2;        // units per workgroup; divides ROW_UNITS
layout(constant_id = 4) const uint WAVE_ROWS = 512;  // rows per wave (stage: WAVE_ROWS * SLICE units)
layout(constant_id = 5) const uint VEC4 = 1;         // 1: a unit is 4 words (rows of 4k words)

// Src and Dst may be the same buffer: no readonly / writeonly / restrict, so the compiler may not
// route reads through a non-coherent cache or assume the two bindings never alias.
layout(set = 0, binding = 0) buffer Src { uint src[]; };
layout(set = 0, binding = 0) buffer Src4 { uvec4 src4[]; };
layout(set = 0, binding = 1) buffer Dst { uint dst[]; };
layout(set = 0, binding = 1) buffer Dst4 { uvec4 dst4[]; };
layout(set = 0, binding = 2) readonly buffer Kept { uint kept[]; };
layout(set = 0, binding = 3) readonly buffer Params { uint n_rows; uint src_row0; uint dst_row0; } prm;

layout(push_constant) uniform Push {
    uint src_cap;      // rows per head in src
    uint dst_cap;      // rows per head in dst
    uint n_heads;
    uint idx_stride;   // 0: one index list for all heads; else entries per head
} p;

shared uvec4 stage[WAVE_ROWS * SLICE];

uvec4 load_unit(uint i) { return VEC4 != 0u ? src4[i] : uvec4(src[i], 0u, 0u, 0u); }
void store_unit(uint i, uvec4 v) { if (VEC4 != 0u) dst4[i] = v; else dst[i] = v.x; }

void main() {
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    const uint col0 = gl_WorkGroupID.z * SLICE;
    const uint src_head = (t * p.n_heads + h) * p.src_cap;
    const uint dst_head = (t * p.n_heads + h) * p.dst_cap;
    const uint n = prm.n_rows;
    for (uint j0 = 0u; j0 < n; j0 += WAVE_ROWS) {
        const uint units = min(WAVE_ROWS, n - j0) * SLICE;
        for (uint i = gl_LocalInvocationIndex; i < units; i += gl_WorkGroupSize.x) {
            const uint j = j0 + i / SLICE;
            const uint from = USE_IDX != 0u ? kept[h * p.idx_stride + j] : prm.src_row0 + j;
            stage[i] = load_unit((src_head + from) * ROW_UNITS + col0 + i % SLICE);
        }
        barrier();
        for (uint i = gl_LocalInvocationIndex; i < units; i += gl_WorkGroupSize.x) {
            store_unit((dst_head + prm.dst_row0 + j0 + i / SLICE) * ROW_UNITS + col0 + i % SLICE, stage[i]);
        }
        barrier();
    }
}
