#version 450
// Top-k of each score row without sorting, indices in temporal order: see
// grilly_kv/ops/threshold_select.py.
//
// Scores map to order-preserving uint keys (protected positions: 0xFFFFFFFF). Three radix levels
// (bits 31..21, 20..10, 9..0) find the exact k-th largest key T and how many keys equal to T to
// keep (the earliest). Every level is a histogram over all chunks of the row (many workgroups,
// shared-memory bins flushed with atomics) and a pick by one workgroup per row. Then each chunk
// counts its keys > T and == T, and writes its kept positions at the offset the earlier chunks'
// counts give. Passes (pass_id):
//   0 clear (grid ceil(3*BINS/WG) x R)      1 histogram, level p.level (grid n_chunks x R)
//   2 pick, level p.level (grid R)          3 count (grid n_chunks x R)     4 write (grid n_chunks x R)
//   5 fused (grid R): all of it by one workgroup per row, histograms in shared memory (short rows:
//     one dispatch instead of nine).
// Work buffer per row: hist[3][BINS], prefix, remaining, count[n_chunks] (gt << 16 | eq).
#include "common.glsl"

layout(local_size_x_id = 0) in;                 // 256
layout(constant_id = 1) const uint CHUNK = 1024;   // keys per workgroup (< 65536), multiple of WG
const uint BINS = 2048u;
const uint MAX_SUBGROUPS = 128u;
const uint PROTECTED = 0xFFFFFFFFu;

layout(set = 0, binding = 0) readonly buffer Scores { float scores[]; };   // [rows, S]
layout(set = 0, binding = 1) writeonly buffer Kept { uint kept[]; };      // [R, k]
layout(set = 0, binding = 2) buffer Work { uint work[]; };

layout(push_constant) uniform Push {
    uint S;                 // keys per row
    uint k;                 // keys to keep, 1 <= k <= S
    uint row0;              // first score row used (row r of the grid reads row0 + r)
    uint protect_initial;   // positions [0, protect_initial) are always kept
    uint protect_recent;    // positions [S - protect_recent, S) are always kept
    uint n_chunks;
    uint pass_id;
    uint level;             // radix level of passes 1 and 2
} p;

shared uint sh_hist[BINS];
shared uint sh_sub[MAX_SUBGROUPS];
shared uint sh_total;
shared uint sh_prefix, sh_remaining;

uint order_key(float x) {            // larger float -> larger uint; -0.0 and +0.0 tie
    const uint b = x == 0.0 ? 0u : floatBitsToUint(x);
    return (b & 0x80000000u) != 0u ? ~b : b | 0x80000000u;
}

uint key_at(uint row, uint s) {
    if (s < p.protect_initial || s + p.protect_recent >= p.S) return PROTECTED;
    return order_key(scores[(p.row0 + row) * p.S + s]);
}

uint row_words() { return 3u * BINS + 2u + p.n_chunks; }
uint level_shift(uint level) { return level == 0u ? 21u : (level == 1u ? 10u : 0u); }
uint level_bins(uint level) { return level == 2u ? 1024u : BINS; }

// Inclusive prefix sum over the workgroup in invocation order; sh_total gets the total.
uint wg_inclusive_scan(uint v) {
    const uint incl = subgroupInclusiveAdd(v);
    if (gl_SubgroupInvocationID == gl_SubgroupSize - 1u) sh_sub[gl_SubgroupID] = incl;
    barrier();
    uint before = 0u;
    for (uint i = 0u; i < gl_SubgroupID; i++) before += sh_sub[i];
    if (gl_LocalInvocationIndex == gl_WorkGroupSize.x - 1u) sh_total = before + incl;
    barrier();
    const uint r = before + incl;
    barrier();                        // sh_sub and sh_total may be reused right after
    return r;
}

bool is_candidate(uint key, uint level, uint prefix) {
    if (level == 0u) return true;
    const uint decided = level_shift(level) + (level == 2u ? 10u : 11u);   // bits above this level
    return (key >> decided) == (prefix >> decided);
}

void clear_work(uint row) {
    const uint i = gl_WorkGroupID.x * gl_WorkGroupSize.x + gl_LocalInvocationIndex;
    if (i < 3u * BINS + 2u) work[row * row_words() + i] = 0u;
}

void histogram(uint row, uint c) {
    const uint WG = gl_WorkGroupSize.x;
    const uint base = row * row_words();
    const uint shift = level_shift(p.level);
    const uint prefix = work[base + 3u * BINS];
    for (uint b = gl_LocalInvocationIndex; b < BINS; b += WG) sh_hist[b] = 0u;
    barrier();
    const uint s1 = min(c * CHUNK + CHUNK, p.S);
    for (uint s = c * CHUNK + gl_LocalInvocationIndex; s < s1; s += WG) {
        const uint key = key_at(row, s);
        if (is_candidate(key, p.level, prefix)) atomicAdd(sh_hist[(key >> shift) & (level_bins(p.level) - 1u)], 1u);
    }
    barrier();
    for (uint b = gl_LocalInvocationIndex; b < level_bins(p.level); b += WG) {
        if (sh_hist[b] != 0u) atomicAdd(work[base + p.level * BINS + b], sh_hist[b]);
    }
}

// The bin at which `remaining` keys are reached, counting from the top, among this level's bins
// (shared sh_hist when LOCAL, else the row's global histogram). Invocation t owns `per` bins,
// [nb - per(t+1), nb - per t); the one whose block holds the bin scans it and writes the new
// (prefix, remaining) to sh_prefix / sh_remaining. Call from uniform control flow.
void select_bin(uint hist_base, bool local_hist, uint level, uint prefix, uint remaining) {
    const uint nb = level_bins(level);
    const uint per = nb / gl_WorkGroupSize.x;
    const uint hi = nb - per * gl_LocalInvocationIndex;       // one past this block's top bin
    uint v = 0u;
    for (uint b = hi - per; b < hi; b++) v += local_hist ? sh_hist[b] : work[hist_base + b];
    const uint at_or_above = wg_inclusive_scan(v);
    uint above = at_or_above - v;
    if (above < remaining && at_or_above >= remaining) {
        for (uint b = hi; b-- > hi - per;) {
            const uint h = local_hist ? sh_hist[b] : work[hist_base + b];
            if (above + h >= remaining) {
                sh_prefix = prefix | (b << level_shift(level));
                sh_remaining = remaining - above;
                break;
            }
            above += h;
        }
    }
    barrier();
}

void pick(uint row) {
    const uint base = row * row_words();
    const uint remaining = p.level == 0u ? p.k : work[base + 3u * BINS + 1u];
    select_bin(base + p.level * BINS, false, p.level, work[base + 3u * BINS], remaining);
    if (gl_LocalInvocationIndex == 0u) {
        work[base + 3u * BINS] = sh_prefix;
        work[base + 3u * BINS + 1u] = sh_remaining;
    }
}

void count_chunk(uint row, uint c) {
    const uint base = row * row_words();
    const uint T = work[base + 3u * BINS];
    const uint s1 = min(c * CHUNK + CHUNK, p.S);
    uint packed = 0u;
    for (uint s = c * CHUNK + gl_LocalInvocationIndex; s < s1; s += gl_WorkGroupSize.x) {
        const uint key = key_at(row, s);
        packed += key > T ? 0x10000u : (key == T ? 1u : 0u);
    }
    wg_inclusive_scan(packed);
    if (gl_LocalInvocationIndex == 0u) work[base + 3u * BINS + 2u + c] = sh_total;
}

// Write the kept positions of [s_begin, s_end): keys > T, and keys == T while fewer than
// `remaining` were kept before; n_out / n_eq: kept positions and keys == T before s_begin.
void write_range(uint row, uint T, uint remaining, uint s_begin, uint s_end, uint n_out, uint n_eq, uint out_base) {
    for (uint b0 = s_begin; b0 < s_end; b0 += gl_WorkGroupSize.x) {
        const uint s = b0 + gl_LocalInvocationIndex;
        const uint key = s < s_end ? key_at(row, s) : 0u;
        const bool is_gt = s < s_end && key > T;
        const bool is_eq = s < s_end && key == T;
        const uint packed = (uint(is_gt) << 16) | uint(is_eq);   // both counts fit 16 bits
        const uint incl = wg_inclusive_scan(packed);
        const uint total = sh_total;
        const uint excl = incl - packed;
        const uint gt_before = excl >> 16, eq_before = excl & 0xFFFFu;
        const uint eq_left = remaining > n_eq ? remaining - n_eq : 0u;
        if (is_gt || (is_eq && eq_before < eq_left)) {
            kept[out_base + n_out + gt_before + min(eq_before, eq_left)] = s;
        }
        n_out += (total >> 16) + min(total & 0xFFFFu, eq_left);
        n_eq += total & 0xFFFFu;
    }
}

void write_chunk(uint row, uint c) {
    const uint base = row * row_words();
    const uint T = work[base + 3u * BINS];
    const uint remaining = work[base + 3u * BINS + 1u];
    uint gt = 0u, eq = 0u;                       // counts of the chunks before this one
    for (uint i = gl_LocalInvocationIndex; i < c; i += gl_WorkGroupSize.x) {
        const uint packed = work[base + 3u * BINS + 2u + i];
        gt += packed >> 16;
        eq += packed & 0xFFFFu;
    }
    wg_inclusive_scan(gt);
    const uint gt_total = sh_total;
    wg_inclusive_scan(eq);
    const uint eq_total = sh_total;
    write_range(row, T, remaining, c * CHUNK, min(c * CHUNK + CHUNK, p.S),
                gt_total + min(eq_total, remaining), eq_total, row * p.k);
}

void fused_select(uint row) {
    uint prefix = 0u, remaining = p.k;
    for (uint level = 0u; level < 3u; level++) {
        for (uint b = gl_LocalInvocationIndex; b < BINS; b += gl_WorkGroupSize.x) sh_hist[b] = 0u;
        barrier();
        const uint shift = level_shift(level);
        for (uint s = gl_LocalInvocationIndex; s < p.S; s += gl_WorkGroupSize.x) {
            const uint key = key_at(row, s);
            if (is_candidate(key, level, prefix)) atomicAdd(sh_hist[(key >> shift) & (level_bins(level) - 1u)], 1u);
        }
        barrier();
        select_bin(0u, true, level, prefix, remaining);
        prefix = sh_prefix;
        remaining = sh_remaining;
        barrier();                                   // sh_hist, sh_prefix reused next level
    }
    write_range(row, prefix, remaining, 0u, p.S, 0u, 0u, row * p.k);
}

void main() {
    const uint row = gl_WorkGroupID.y;
    if (p.pass_id == 0u) clear_work(row);
    else if (p.pass_id == 1u) histogram(row, gl_WorkGroupID.x);
    else if (p.pass_id == 2u) pick(gl_WorkGroupID.x);
    else if (p.pass_id == 3u) count_chunk(row, gl_WorkGroupID.x);
    else if (p.pass_id == 4u) write_chunk(row, gl_WorkGroupID.x);
    else fused_select(gl_WorkGroupID.x);
}
