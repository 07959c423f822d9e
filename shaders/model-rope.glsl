#version 450
// Rotate-half RoPE, in place, on the q and k parts of fused qkv rows: see grilly_kv/ops/model_rope.py.
// Row t of QKV holds HQ query heads, then HKV key heads, then HKV value heads, D floats each.
// Dims i and i + D/2 of a head rotate by angle pos * theta^(-2i/D), read from a host-made table
// (row pos: D/2 cosines then D/2 sines). Workgroup t handles token t at position step[0] + t.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;
layout(constant_id = 2) const uint HQ = 9;
layout(constant_id = 3) const uint HKV = 3;
const uint HALF = D / 2u;
const uint ROW = (HQ + 2u * HKV) * D;

layout(set = 0, binding = 0) buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 2) readonly buffer Table { float table[]; };

void main() {
    const uint t = gl_WorkGroupID.x;
    const uint pos = step[0] + t;
    for (uint item = gl_LocalInvocationIndex; item < (HQ + HKV) * HALF; item += gl_WorkGroupSize.x) {
        const uint head = item / HALF, i = item % HALF;
        const uint a = t * ROW + head * D + i;
        const float c = table[pos * D + i], s = table[pos * D + HALF + i];
        const float x1 = qkv[a], x2 = qkv[a + HALF];
        qkv[a] = x1 * c - x2 * s;
        qkv[a + HALF] = x2 * c + x1 * s;
    }
}
