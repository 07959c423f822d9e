#version 450
// Copy prefetched K/V blocks from a contiguous incoming buffer into their cache slots.
// See grilly_kv/ops/kv_block_scatter.py.
//
// index[0] = n (blocks this step), index[1 + i] = destination block of incoming block i
// incoming: (max_blocks, 2, BW) words, K then V of each block (BW = words per block, a multiple of 4)
// k_cache, v_cache: (n_dest_blocks, BW) words
// Grid: (max_blocks,); workgroups i >= n return, so one recording serves any n.
// Push index_base: the list starts at index[index_base] (several lists, e.g. one per layer, share
// one index buffer); with_src = 1: index[index_base + 1] is the first incoming block of the list
// (the destinations follow it), so lists can share one incoming buffer.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint BW = 512;      // words of one block of K (or V)
const uint BV = BW / 4u;

layout(set = 0, binding = 0) readonly buffer Incoming { uvec4 incoming[]; };
layout(set = 0, binding = 1) readonly buffer Index { uint index[]; };
layout(set = 0, binding = 2) writeonly buffer K { uvec4 k_cache[]; };
layout(set = 0, binding = 3) writeonly buffer V { uvec4 v_cache[]; };

layout(push_constant) uniform Push { uint index_base; uint with_src; } p;

void main() {
    const uint i = gl_WorkGroupID.x;
    if (i >= index[p.index_base]) return;
    const uint first = p.with_src != 0u ? index[p.index_base + 1u] : 0u;
    const uint dst = index[p.index_base + 1u + p.with_src + i] * BV;
    const uint src = (first + i) * 2u * BV;
    for (uint w = gl_LocalInvocationIndex; w < BV; w += gl_WorkGroupSize.x) {
        k_cache[dst + w] = incoming[src + w];
        v_cache[dst + w] = incoming[src + BV + w];
    }
}
