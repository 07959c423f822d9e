#version 450
// Row gather for a K/V cache buffer [2, H_kv, cap, ROW_WORDS] of 32-bit words (K then V):
// see grilly_kv/ops/kv_compact.py.
//   dst[t, h, dst_row0 + j] = src[t, h, source(j)]   for j < n_rows,
//   source(j) = kept[h * idx_stride + j] (USE_IDX) or src_row0 + j.
// One workgroup per (head, K|V). Rows move in waves staged through shared memory: every read
// of a wave completes before any write of it. That makes an in-place compaction (src == dst,
// dst_row0 = 0, kept increasing so kept[j] >= j) safe: a wave writes rows below the first row
// any later wave reads.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint ROW_WORDS = 64;
layout(constant_id = 2) const uint USE_IDX = 1;
layout(constant_id = 3) const uint WAVE_ROWS = 64;   // rows per wave (stage: WAVE_ROWS * ROW_WORDS words)

layout(set = 0, binding = 0) readonly buffer Src { uint src[]; };
layout(set = 0, binding = 1) writeonly buffer Dst { uint dst[]; };
layout(set = 0, binding = 2) readonly buffer Kept { uint kept[]; };
layout(set = 0, binding = 3) readonly buffer Params { uint n_rows; uint src_row0; uint dst_row0; } prm;

layout(push_constant) uniform Push {
    uint src_cap;      // rows per head in src
    uint dst_cap;      // rows per head in dst
    uint n_heads;
    uint idx_stride;   // 0: one index list for all heads; else entries per head
} p;

shared uint stage[WAVE_ROWS * ROW_WORDS];

void main() {
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    const uint src_head = (t * p.n_heads + h) * p.src_cap;
    const uint dst_head = (t * p.n_heads + h) * p.dst_cap;
    const uint n = prm.n_rows;
    for (uint j0 = 0u; j0 < n; j0 += WAVE_ROWS) {
        const uint rows = min(WAVE_ROWS, n - j0);
        for (uint i = gl_LocalInvocationIndex; i < rows * ROW_WORDS; i += gl_WorkGroupSize.x) {
            const uint j = j0 + i / ROW_WORDS;
            const uint from = USE_IDX != 0u ? kept[h * p.idx_stride + j] : prm.src_row0 + j;
            stage[i] = src[(src_head + from) * ROW_WORDS + i % ROW_WORDS];
        }
        barrier();
        for (uint i = gl_LocalInvocationIndex; i < rows * ROW_WORDS; i += gl_WorkGroupSize.x) {
            dst[(dst_head + prm.dst_row0 + j0) * ROW_WORDS + i] = stage[i];
        }
        barrier();
    }
}
