#version 450
// Top-k of each score row without sorting, indices in temporal order: see
// grilly_kv/ops/threshold_select.py.
//
// One workgroup per row. Scores map to order-preserving uint keys (protected positions get
// 0xFFFFFFFF). Four 8-bit radix passes (a shared-memory histogram each) find the exact k-th
// largest key T and how many keys equal to T to keep (the earliest ones). A last sweep writes the
// kept positions in increasing order with a workgroup prefix sum.
#include "common.glsl"

layout(local_size_x_id = 0) in;                 // 256 (one histogram bin per invocation)
const uint MAX_SUBGROUPS = 128u;
const uint PROTECTED = 0xFFFFFFFFu;

layout(set = 0, binding = 0) readonly buffer Scores { float scores[]; };   // [rows, S]
layout(set = 0, binding = 1) writeonly buffer Kept { uint kept[]; };      // [n_rows, k]

layout(push_constant) uniform Push {
    uint S;                 // keys per row
    uint k;                 // keys to keep, 1 <= k <= S
    uint row0;              // first score row used (workgroup r reads row row0 + r)
    uint protect_initial;   // positions [0, protect_initial) are always kept
    uint protect_recent;    // positions [S - protect_recent, S) are always kept
} p;

shared uint hist[256];
shared uint sh_sub[MAX_SUBGROUPS];
shared uint sh_prefix, sh_remaining, sh_total;

uint order_key(float x) {            // larger float -> larger uint; -0.0 and +0.0 tie
    const uint b = x == 0.0 ? 0u : floatBitsToUint(x);
    return (b & 0x80000000u) != 0u ? ~b : b | 0x80000000u;
}

uint key_at(uint base, uint s) {
    if (s < p.protect_initial || s + p.protect_recent >= p.S) return PROTECTED;
    return order_key(scores[base + s]);
}

// Inclusive prefix sum over the workgroup (in invocation order); sh_total gets the total.
uint wg_inclusive_scan(uint v) {
    const uint incl = subgroupInclusiveAdd(v);
    if (gl_SubgroupInvocationID == gl_SubgroupSize - 1u) sh_sub[gl_SubgroupID] = incl;
    barrier();
    uint before = 0u;
    for (uint i = 0u; i < gl_SubgroupID; i++) before += sh_sub[i];
    if (gl_LocalInvocationIndex == gl_WorkGroupSize.x - 1u) sh_total = before + incl;
    barrier();
    return before + incl;
}

void main() {
    const uint tid = gl_LocalInvocationIndex;
    const uint WG = gl_WorkGroupSize.x;
    const uint base = (p.row0 + gl_WorkGroupID.x) * p.S;
    uint prefix = 0u, mask = 0u, remaining = p.k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        hist[tid] = 0u;
        barrier();
        for (uint s = tid; s < p.S; s += WG) {
            const uint key = key_at(base, s);
            if ((key & mask) == prefix) atomicAdd(hist[(key >> shift) & 255u], 1u);
        }
        barrier();
        const uint bin = 255u - tid;                    // scan bins from the top
        const uint count = hist[bin];
        const uint at_or_above = wg_inclusive_scan(count);
        const uint above = at_or_above - count;
        if (above < remaining && at_or_above >= remaining) {
            sh_prefix = prefix | (bin << shift);
            sh_remaining = remaining - above;
        }
        barrier();
        prefix = sh_prefix;
        remaining = sh_remaining;
        mask |= 255u << shift;
    }
    // prefix = T, the k-th largest key; keep every key > T and the first `remaining` keys == T
    uint n_eq = 0u, n_out = 0u;
    const uint out_base = gl_WorkGroupID.x * p.k;
    for (uint b0 = 0u; b0 < p.S; b0 += WG) {
        const uint s = b0 + tid;
        const uint key = s < p.S ? key_at(base, s) : 0u;
        const bool gt = s < p.S && key > prefix;
        const bool eq = s < p.S && key == prefix;
        const uint packed = (uint(gt) << 16) | uint(eq);          // both counts fit 16 bits
        const uint incl = wg_inclusive_scan(packed);
        const uint total = sh_total;
        const uint excl = incl - packed;
        const uint gt_before = excl >> 16, eq_before = excl & 0xFFFFu;
        const uint eq_left = remaining > n_eq ? remaining - n_eq : 0u;
        if (gt || (eq && eq_before < eq_left)) {
            kept[out_base + n_out + gt_before + min(eq_before, eq_left)] = s;
        }
        n_out += (total >> 16) + min(total & 0xFFFFu, eq_left);
        n_eq += total & 0xFFFFu;
        barrier();                                       // sh_sub / sh_total reused next block
    }
}
