#version 450
// Y[t, n] (+)= sum_k X'[t, k] * W[n, k] for tokens t < T and rows n < N: see grilly_kv/ops/model_matmul.py.
// X' is the input row itself (MODE 0), its RMSNorm times a weight vector (MODE 1), or, for rows
// 2K wide, silu(X[t, :K]) * X[t, K:] (MODE 2: SwiGLU). Workgroup (x, y) computes rows
// [x*ROWS, x*ROWS + ROWS) for tokens [y*TT, y*TT + TT). The workgroup first issues each lane's
// first batch of weight loads, then stages X' of its TT tokens in shared memory once (g * x for
// RMSNorm, whose sum of squares is reduced once per workgroup; silu(gate) * up for SwiGLU), then
// one barrier. Each row is read by a cluster of LANES = WG / ROWS consecutive subgroup lanes
// (coalesced loads of E = 8 float16 (one uvec4) or 4 elements; LANES = 1 on CPU devices: one row
// per invocation), at most 16 / TT loads per lane in flight, partial sums met by shuffles; a
// cluster wider than the subgroup spans whole subgroups, whose sums meet in shared memory.
// RMSNorm is applied after the dot: y = rsqrt(mean(x^2) + eps) * sum_k w_k g_k x_k.
#include "common.glsl"
#include "cluster_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint K = 576;     // input width, a multiple of E
layout(constant_id = 2) const uint F16 = 1;     // 1: W is packed float16
layout(constant_id = 3) const uint ROWS = 4;    // output rows per workgroup (LANES = WG / ROWS: a power of 2 <= subgroup size)
layout(constant_id = 4) const uint TT = 1;      // tokens per workgroup
layout(constant_id = 5) const uint MODE = 0;    // 0 plain, 1 RMSNorm, 2 SwiGLU
layout(constant_id = 6) const uint ACC = 0;     // 1: add to Y instead of overwriting it
layout(constant_id = 7) const uint E = 4;       // elements per weight load: 8 (float16 as uvec4) or 4
const uint MAX_SG = 64u;                         // most subgroups per workgroup
const uint LANES = gl_WorkGroupSize.x / ROWS;       // a power of 2
const uint KV = K / 4u;                          // vec4s per (X') row
const uint KW = K / E;                           // weight loads per row
const uint H = E / 4u;                           // vec4 planes of X' in shared memory
const uint XV = (MODE == 2u) ? 2u * KV : KV;     // vec4s per input row
const uint NIT = (KW + LANES - 1u) / LANES;      // weight loads per lane
const uint BMAX = TT >= 16u ? 1u : 16u / TT;
const uint BATCH = NIT < BMAX ? NIT : BMAX;      // weight loads per lane issued together (x TT dots each)

layout(set = 0, binding = 0) readonly buffer W32 { uvec4 w32[]; };
layout(set = 0, binding = 0) readonly buffer W16 { uvec2 w16[]; };
layout(set = 0, binding = 1) readonly buffer X { vec4 x[]; };
layout(set = 0, binding = 2) readonly buffer G { vec4 g[]; };
layout(set = 0, binding = 3) buffer Y { float y[]; };

layout(push_constant) uniform Push {
    uint N;          // output rows
    uint T;          // tokens
    uint w_off;      // first vec4 of W (even when E == 8)
    uint x_off;      // first vec4 of X (row 0)
    uint g_off;      // first vec4 of the norm weight (MODE 1)
    uint eps_bits;   // RMSNorm epsilon (float)
} p;

// X' of token j, load i, plane h (elements E*i + 4h .. + 3) at xs[(h * TT + j) * KW + i]:
// the lanes of a cluster read consecutive vec4s of each plane.
shared vec4 xs[TT * KV];
shared float red[TT * MAX_SG];   // per-subgroup sums of squares (MODE 1)
shared float part[TT * MAX_SG];  // per-subgroup partial dots (clusters wider than a subgroup)

uvec4 load_w(uint n, uint i) {   // raw weight load i of row n (zeros past the row)
    if (i >= KW) return uvec4(0u);
    if (F16 == 0u) return w32[p.w_off + n * KW + i];
    if (E == 8u) return w32[p.w_off / 2u + n * KW + i];
    return uvec4(w16[p.w_off + n * KW + i], 0u, 0u);
}

float dot_w(uvec4 w, uint j, uint i) {
    const uint o = j * KW + i;
    if (F16 == 0u) return dot(uintBitsToFloat(w), xs[o]);
    float s = dot(unpack_half4(w.xy), xs[o]);
    if (E == 8u) s += dot(unpack_half4(w.zw), xs[TT * KW + o]);
    return s;
}

void main() {
    const uint WG = gl_WorkGroupSize.x;
    const uint tid = gl_LocalInvocationIndex;
    const uint SG = gl_SubgroupSize;
    const bool wide = LANES > SG;                   // a row spans LANES / SG whole subgroups
    const uint lane = wide ? (gl_SubgroupID % (LANES / SG)) * SG + gl_SubgroupInvocationID
                           : gl_SubgroupInvocationID % LANES;
    const uint r = wide ? gl_SubgroupID / (LANES / SG) : gl_SubgroupID * (SG / LANES) + gl_SubgroupInvocationID / LANES;
    const uint n_out = gl_WorkGroupID.x * ROWS + r;
    const uint n = min(n_out, p.N - 1u);            // rows past N compute row N-1, write nothing
    const uint t0 = gl_WorkGroupID.y * TT;

    uvec4 w[BATCH];                                  // first batch in flight during the staging
    [[unroll]] for (uint b = 0u; b < BATCH; b++) w[b] = load_w(n, lane + b * LANES);

    [[unroll]] for (uint j = 0u; j < TT; j++) {     // stage X' (tokens past T: token T-1)
        const uint xr = p.x_off + min(t0 + j, p.T - 1u) * XV;
        float ss = 0.0;
        for (uint v = tid; v < KV; v += WG) {
            vec4 a = x[xr + v];
            if (MODE == 1u) { ss += dot(a, a); a *= g[p.g_off + v]; }
            if (MODE == 2u) a = a / (1.0 + exp(-a)) * x[xr + KV + v];
            xs[((v % H) * TT + j) * KW + v / H] = a;
        }
        if (MODE == 1u) {
            ss = subgroupAdd(ss);
            if (subgroupElect()) red[j * MAX_SG + gl_SubgroupID] = ss;
        }
    }
    barrier();

    float acc[TT];
    [[unroll]] for (uint j = 0u; j < TT; j++) acc[j] = 0.0;
    for (uint b0 = 0u; b0 < NIT; b0 += BATCH) {
        if (b0 > 0u) {
            [[unroll]] for (uint b = 0u; b < BATCH; b++) w[b] = load_w(n, lane + (b0 + b) * LANES);
        }
        [[unroll]] for (uint j = 0u; j < TT; j++) {
            [[unroll]] for (uint b = 0u; b < BATCH; b++) {
                const uint i = lane + (b0 + b) * LANES;
                if (i < KW) acc[j] += dot_w(w[b], j, i);
            }
        }
    }
    if (wide) {                                      // uniform over the workgroup
        [[unroll]] for (uint j = 0u; j < TT; j++) {
            const float s = subgroupAdd(acc[j]);
            if (subgroupElect()) part[j * MAX_SG + gl_SubgroupID] = s;
        }
        barrier();
        [[unroll]] for (uint j = 0u; j < TT; j++) {
            acc[j] = 0.0;
            for (uint k = 0u; k < LANES / SG; k++) acc[j] += part[j * MAX_SG + r * (LANES / SG) + k];
        }
    }
    [[unroll]] for (uint j = 0u; j < TT; j++) {
        float s = wide ? acc[j] : cluster_add(acc[j], LANES);
        if (MODE == 1u) {
            float q = 0.0;
            for (uint k = 0u; k < gl_NumSubgroups; k++) q += red[j * MAX_SG + k];
            s *= inversesqrt(q / float(K) + PUSH_F(p.eps_bits));
        }
        if (lane == 0u && n_out < p.N && t0 + j < p.T) {
            const uint o = (t0 + j) * p.N + n_out;
            y[o] = (ACC != 0u ? y[o] : 0.0) + s;
        }
    }
}
