#version 450
// Top-k block columns of the predictor's scores by radix select: see grilly_kv/ops/predictor_topk.py
// (the fast path; predictor-topk.glsl is the old quadratic one, same result).
// scores: (N, C) float32 (columns [s, e) valid; s = params[3], e = params[4]); sel: (N, K) uint.
// When e - s <= K every candidate is chosen (s, s+1, .., then NONE). Otherwise sel[n] holds the
// K best columns in descending order of score, ties to the lower column (rank of column j =
// #{j' : score_j' > score_j, or equal and j' < j}), as predictor-topk. from_hist = 1: the scores
// are the history ring (N, HIST, C), its newest row (params[2] - 1) % HIST.
// One workgroup per history n. Each invocation owns a run of consecutive candidates and keeps
// their order-preserving keys in registers (KEYS_PER_LANE; a longer run reads the rest from
// memory in every pass). The K-th largest key is found by an MSB-first radix select over 8-bit
// digits (at most 4 histogram passes in shared memory, fewer when a digit settles it); the kept
// columns are compacted in column order into shared memory, then each is placed at its rank
// among the K kept (K^2 / 256 comparisons): the work is linear in the candidates.
#include "common.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x = 256) in;
layout(constant_id = 0) const uint KEYS_PER_LANE = 8;
layout(constant_id = 1) const uint MAX_K = 1024;    // K <= MAX_K (the kept columns in shared memory)
const uint WG = 256u;

layout(set = 0, binding = 0) readonly buffer Scores { float scores[]; };
layout(set = 0, binding = 1) readonly buffer Params { uint params[]; };
layout(set = 0, binding = 2) writeonly buffer Sel { uint sel[]; };

layout(push_constant) uniform Push { uint C; uint K; uint from_hist; } p;

const uint NONE = 0xFFFFFFFFu;

shared uint sh_hist[256];
shared uint sh_prefix, sh_remaining;
shared bool sh_settled;
shared uint sh_col[MAX_K];
shared uint sh_key[MAX_K];

// Order-preserving map of a float to a uint (a > b <=> key(a) > key(b)); unlike common.glsl's
// key_of, -0.0 maps as +0.0, so equal scores have equal keys (the tie rule depends on it).
uint key_of_zero_equal(float f) {
    uint u = floatBitsToUint(f);
    if ((u & 0x7FFFFFFFu) == 0u) u = 0u;
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}

const uint DROPPED = 0u, KEPT = 1u, EQUAL = 2u;

uint key_class(uint key, uint mask, uint prefix) {
    key &= mask;
    return key > prefix ? KEPT : (key == prefix ? EQUAL : DROPPED);
}

// Runs BODY for each candidate j of this invocation's run [c0, c1) with its key `key`.
#define FOR_RUN(BODY) \
    [[unroll]] for (uint i_ = 0u; i_ < KEYS_PER_LANE; i_++) { \
        const uint j = c0 + i_; \
        if (j < c1) { const uint key = keys[i_]; BODY } } \
    for (uint j = c0 + KEYS_PER_LANE; j < c1; j++) { const uint key = key_of_zero_equal(scores[base + j]); BODY }

void main() {
    const uint n = gl_WorkGroupID.x, tid = gl_LocalInvocationIndex;
    const uint s = params[3], e = max(params[4], params[3]);
    const uint W = e - s, K = p.K;
    if (W <= K) {
        for (uint i = tid; i < K; i += WG) sel[n * K + i] = i < W ? s + i : NONE;
        return;
    }
    const uint newest = (params[2] + 63u) % 64u;
    const uint base = (p.from_hist != 0u ? n * 64u + newest : n) * p.C + s;
    const uint per = ceil_div(W, WG);
    const uint c0 = min(tid * per, W), c1 = min(c0 + per, W);
    uint keys[KEYS_PER_LANE];
    [[unroll]] for (uint i = 0u; i < KEYS_PER_LANE; i++)
        keys[i] = c0 + i < c1 ? key_of_zero_equal(scores[base + c0 + i]) : 0u;
    // threshold: keys whose masked value is above `prefix` are kept, and the first `remaining`
    // (by column) of those equal to it
    uint prefix = 0u, mask = 0u, remaining = K;
    for (int lo_bit = 24; lo_bit >= 0; lo_bit -= 8) {
        for (uint b = tid; b < 256u; b += WG) sh_hist[b] = 0u;
        barrier();
        // runs of equal digits (e.g. the many zero scores) add once per run
        uint run_bin = 0u, run_n = 0u;
        FOR_RUN(if ((key & mask) == prefix) {
                    const uint bin = (key >> uint(lo_bit)) & 255u;
                    if (bin != run_bin && run_n != 0u) { atomicAdd(sh_hist[run_bin], run_n); run_n = 0u; }
                    run_bin = bin;
                    run_n++; })
        if (run_n != 0u) atomicAdd(sh_hist[run_bin], run_n);
        barrier();
        // bin b holds the threshold: fewer than `remaining` keys lie above it, at least
        // `remaining` in those and b; invocation t looks at bin 255 - t
        const uint h = sh_hist[255u - tid];
        uint n_all;
        const uint above = exclusive_scan(h, n_all);
        if (above < remaining && remaining <= above + h) {
            sh_prefix = prefix | ((255u - tid) << uint(lo_bit));
            sh_remaining = remaining - above;
            sh_settled = h == remaining - above;
        }
        barrier();
        prefix = sh_prefix;
        remaining = sh_remaining;
        mask |= 255u << uint(lo_bit);
        const bool settled = sh_settled;
        barrier();
        if (settled) break;
    }
    // compaction in column order: rank the keys equal to the threshold, then place the kept ones
    uint n_equal = 0u;
    FOR_RUN(n_equal += key_class(key, mask, prefix) == EQUAL ? 1u : 0u;)
    uint n_total;
    const uint equal_rank = exclusive_scan(n_equal, n_total);
    uint rank = equal_rank, n_keep = 0u;
    FOR_RUN({ const uint c = key_class(key, mask, prefix);
              n_keep += (c == KEPT || (c == EQUAL && rank++ < remaining)) ? 1u : 0u; })
    uint pos = exclusive_scan(n_keep, n_total);
    rank = equal_rank;
    FOR_RUN({ const uint c = key_class(key, mask, prefix);
              if (c == KEPT || (c == EQUAL && rank++ < remaining)) {
                  sh_col[pos] = j; sh_key[pos] = key; pos++; } })
    barrier();
    // the kept columns are in column order: column i goes to its rank among them
    for (uint i = tid; i < K; i += WG) {
        const uint ki = sh_key[i];
        uint r = 0u;
        for (uint i2 = 0u; i2 < K; i2++) {
            const uint k2 = sh_key[i2];
            r += uint(k2 > ki || (k2 == ki && i2 < i));
        }
        sel[n * K + r] = s + sh_col[i];
    }
}
