#version 450
// Y[t, n] (+)= sum_k X'[t, k] * W[n, k] for tokens t < T and rows n < N: see grilly_kv/ops/model_matmul.py.
// X' is the input row itself (MODE 0), its RMSNorm times a weight vector (MODE 1), or, for rows
// 2K wide, silu(X[t, :K]) * X[t, K:] (MODE 2: SwiGLU). Workgroup (x, y) computes rows
// [x*ROWS, x*ROWS + ROWS) for tokens [y*TT, y*TT + TT). Each row is read by a cluster of LANES
// consecutive subgroup lanes (coalesced loads on GPUs; LANES = 1 on CPU devices: one row per
// invocation), 16 / TT loads per lane in flight at a time, partial sums met by shuffles: no
// shared memory, no barrier. RMSNorm is applied after the dot product: each cluster also sums
// the squares of the input row (y = rsqrt(mean(x^2) + eps) * sum_k w_k g_k x_k).
#include "common.glsl"
#include "cluster_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint K = 576;     // input width, a multiple of 4
layout(constant_id = 2) const uint F16 = 1;     // 1: W is packed float16
layout(constant_id = 3) const uint ROWS = 4;    // output rows per workgroup (LANES = WG / ROWS: 1, 2, 4 or 8)
layout(constant_id = 4) const uint TT = 1;      // tokens per workgroup
layout(constant_id = 5) const uint MODE = 0;    // 0 plain, 1 RMSNorm, 2 SwiGLU
layout(constant_id = 6) const uint ACC = 0;     // 1: add to Y instead of overwriting it
const uint LANES = gl_WorkGroupSize.x / ROWS;
const uint KV = K / 4u;
const uint XV = (MODE == 2u) ? 2u * KV : KV;     // vec4s per input row
const uint NIT = (KV + LANES - 1u) / LANES;      // vec4s per lane
const uint BATCH = TT >= 16u ? 1u : 16u / TT;    // weight loads per lane issued together (x TT dots each)

layout(set = 0, binding = 0) readonly buffer W32 { uvec4 w32[]; };
layout(set = 0, binding = 0) readonly buffer W16 { uvec2 w16[]; };
layout(set = 0, binding = 1) readonly buffer X { vec4 x[]; };
layout(set = 0, binding = 2) readonly buffer G { vec4 g[]; };
layout(set = 0, binding = 3) buffer Y { float y[]; };

layout(push_constant) uniform Push {
    uint N;          // output rows
    uint T;          // tokens
    uint w_off;      // first vec4 of W
    uint x_off;      // first vec4 of X (row 0)
    uint g_off;      // first vec4 of the norm weight (MODE 1)
    uint eps_bits;   // RMSNorm epsilon (float)
} p;

void main() {
    const uint lane = gl_SubgroupInvocationID % LANES;
    const uint r = gl_SubgroupID * (gl_SubgroupSize / LANES) + gl_SubgroupInvocationID / LANES;
    const uint n_out = gl_WorkGroupID.x * ROWS + r;
    const uint n = min(n_out, p.N - 1u);            // rows past N compute row N-1, write nothing
    const uint t0 = gl_WorkGroupID.y * TT;
    float acc[TT], ss[TT];
    [[unroll]] for (uint j = 0u; j < TT; j++) { acc[j] = 0.0; ss[j] = 0.0; }
    for (uint b0 = 0u; b0 < NIT; b0 += BATCH) {
        vec4 w[BATCH];
        [[unroll]] for (uint b = 0u; b < BATCH; b++) {
            const uint i = lane + (b0 + b) * LANES;
            w[b] = i < KV ? LOAD_VEC4(F16, w32, w16, p.w_off + n * KV + i) : vec4(0.0);
        }
        [[unroll]] for (uint j = 0u; j < TT; j++) {
            const uint xr = p.x_off + min(t0 + j, p.T - 1u) * XV;   // tokens past T: token T-1
            [[unroll]] for (uint b = 0u; b < BATCH; b++) {
                const uint i = lane + (b0 + b) * LANES;
                if (i < KV) {
                    vec4 xv = x[xr + i];
                    if (MODE == 1u) { ss[j] += dot(xv, xv); xv *= g[p.g_off + i]; }
                    if (MODE == 2u) xv = xv / (1.0 + exp(-xv)) * x[xr + KV + i];
                    acc[j] += dot(w[b], xv);
                }
            }
        }
    }
    [[unroll]] for (uint j = 0u; j < TT; j++) {
        float s = cluster_add(acc[j], LANES);
        if (MODE == 1u) s *= inversesqrt(cluster_add(ss[j], LANES) / float(K) + PUSH_F(p.eps_bits));
        if (lane == 0u && n_out < p.N && t0 + j < p.T) {
            const uint o = (t0 + j) * p.N + n_out;
            y[o] = (ACC != 0u ? y[o] : 0.0) + s;
        }
    }
}
