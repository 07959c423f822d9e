#version 450
// Block max-pool of the predictor twin's attention rows into the history ring, from the logits
// and softmax statistics of predictor-attention-split: see grilly_kv/ops/predictor_row_pool.py
// (the fast path; predictor-row-pool.glsl pools predictor-attention's probabilities, same result).
// logits: (HIST, HQ, CAP) float32 raw logits of one layer's last R queries (NEG: not visible);
// stats: (HIST, HQ, 2) (M, 1 / L) per row: the probability of slot j is exp(logit_j - M) / L.
// history: (N, HIST, C) float32, history n = layer * (HQ / GP) + j pools query heads
// [j GP, j GP + GP); its ring row (params[0] + r) % HIST was zeroed by predictor-attention-split.
// Thread (e, j, r): the max over the group's heads and the 16 slots of entry e, into the column
// of the block entry e holds by an atomic max (the bits of non-negative floats order as uints;
// a block can sit in a ring entry and a predicted entry at once).
#include "common.glsl"

layout(local_size_x = 64) in;
layout(constant_id = 0) const uint HQ = 9;
layout(constant_id = 1) const uint HKV = 3;
layout(constant_id = 2) const uint CAP = 1024;
layout(constant_id = 3) const uint GP = 3;
layout(constant_id = 4) const uint HIST = 64;
const uint G = HQ / HKV;
const float NEG = -1e30;

layout(set = 0, binding = 0) readonly buffer Logits { float logits[]; };
layout(set = 0, binding = 1) readonly buffer Stats { float stats[]; };
layout(set = 0, binding = 2) readonly buffer Table { uint table[]; };
layout(set = 0, binding = 3) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 4) readonly buffer Params { uint params[]; };
layout(set = 0, binding = 5) buffer History { uint hist[]; };

layout(push_constant) uniform Push { uint layer; uint ns; uint ring; uint k; uint C; } p;

#include "predictor_entries.glsl"

void main() {
    const uint e = gl_GlobalInvocationID.x, j = gl_WorkGroupID.y, r = gl_WorkGroupID.z;
    if (e >= CAP / BLK) return;
    const uint last = step[0] + step[1] - 1u;
    const uint h0 = j * GP, kvh = h0 / G;
    const uint c = entry_block(e, p.ns, p.ring, last, (p.layer * HKV + kvh) * p.k);
    if (c >= p.C) return;                                  // NONE: the entry holds no block
    float m = 0.0;
    for (uint g = 0u; g < GP; g++) {
        const uint row = r * HQ + h0 + g;
        const float mx = stats[row * 2u], inv = stats[row * 2u + 1u];
        for (uint o = 0u; o < BLK; o++) {
            const float x = logits[row * CAP + e * BLK + o];
            if (x > 0.5 * NEG) m = max(m, exp(x - mx) * inv);
        }
    }
    const uint n = p.layer * (HQ / GP) + j;
    if (m > 0.0) atomicMax(hist[(n * HIST + (params[0] + r) % HIST) * p.C + c], floatBitsToUint(m));
}
