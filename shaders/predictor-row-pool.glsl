#version 450
// Block max-pool of the predictor twin's attention rows (over its resident slots) into the
// history ring: see grilly_kv/ops/predictor_row_pool.py.
// rows: (R, HQ, CAP) float32 of one layer (predictor-attention's output, 0 where not visible);
// history: (N, HIST, C) float32, history n = layer * (HQ / GP) + j pools query heads
// [j GP, j GP + GP) (GP = 1: per query head; GP = HQ / HKV: per KV head). Thread (c, (j, r))
// writes ring row (params[0] + r) % HIST, column c: the max over the group's heads and over the
// slots of the entries that hold block c (0 if none) -- the row's block max over every key.
#include "common.glsl"

layout(local_size_x = 64) in;
layout(constant_id = 0) const uint HQ = 9;
layout(constant_id = 1) const uint HKV = 3;
layout(constant_id = 2) const uint CAP = 1024;
layout(constant_id = 3) const uint GP = 3;
layout(constant_id = 4) const uint HIST = 64;
const uint G = HQ / HKV;

layout(set = 0, binding = 0) readonly buffer Rows { float rows[]; };
layout(set = 0, binding = 1) readonly buffer Table { uint table[]; };
layout(set = 0, binding = 2) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 3) readonly buffer Params { uint params[]; };
layout(set = 0, binding = 4) buffer History { float hist[]; };

layout(push_constant) uniform Push { uint layer; uint ns; uint ring; uint k; uint C; uint R; } p;

#include "predictor_entries.glsl"

void main() {
    const uint c = gl_GlobalInvocationID.x;
    if (c >= p.C) return;
    const uint j = gl_WorkGroupID.y / p.R, r = gl_WorkGroupID.y % p.R;
    const uint last = step[0] + step[1] - 1u;
    const uint h0 = j * GP, kvh = h0 / G;
    const uint sel_base = (p.layer * HKV + kvh) * p.k;
    const uint E = CAP / BLK;
    float m = 0.0;
    for (uint e = 0u; e < E; e++) {
        if (entry_block(e, p.ns, p.ring, last, sel_base) != c) continue;
        for (uint g = 0u; g < GP; g++) {
            const uint base = (r * HQ + h0 + g) * CAP + e * BLK;
            for (uint o = 0u; o < BLK; o++) m = max(m, rows[base + o]);
        }
    }
    const uint n = p.layer * (HQ / GP) + j;
    hist[(n * HIST + (params[0] + r) % HIST) * p.C + c] = m;
}
