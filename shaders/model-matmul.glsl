#version 450
// Y[t, n] (+)= sum_k X'[t, k] * W[n, k] for tokens t < T and rows n < N: see grilly_kv/ops/model_matmul.py.
// X' is the input row itself (MODE 0), its RMSNorm times a weight vector (MODE 1), or, for rows
// 2K wide, silu(X[t, :K]) * X[t, K:] (MODE 2: SwiGLU). Workgroup (x, y) computes rows
// [x*ROWS, x*ROWS + ROWS) for tokens [y*TT, y*TT + TT); each row is split over WG/ROWS lanes
// (coalesced loads on GPUs) whose partial sums meet in shared memory; with ROWS == WG each
// invocation owns a whole row and no reduction is needed (faster on CPU devices).
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint K = 576;     // input width, a multiple of 4
layout(constant_id = 2) const uint F16 = 1;     // 1: W is packed float16
layout(constant_id = 3) const uint ROWS = 4;    // output rows per workgroup (WG/ROWS a power of 2)
layout(constant_id = 4) const uint TT = 1;      // tokens per workgroup, <= MAX_TT
layout(constant_id = 5) const uint MODE = 0;    // 0 plain, 1 RMSNorm, 2 SwiGLU
layout(constant_id = 6) const uint ACC = 0;     // 1: add to Y instead of overwriting it
const uint MAX_TT = 8u;
const uint KV = K / 4u;
const uint XV = (MODE == 2u) ? 2u * KV : KV;     // vec4s per input row

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

shared float red[gl_WorkGroupSize.x * MAX_TT];
shared float inv_rms[MAX_TT];

vec4 load_x(uint t, uint i) {
    const uint r = p.x_off + t * XV;
    if (MODE == 2u) {
        const vec4 a = x[r + i];
        return a / (1.0 + exp(-a)) * x[r + KV + i];
    }
    if (MODE == 1u) return x[r + i] * inv_rms[t % MAX_TT] * g[p.g_off + i];
    return x[r + i];
}

void main() {
    const uint WG = gl_WorkGroupSize.x;
    const uint tid = gl_LocalInvocationIndex;
    const uint lanes = WG / ROWS;
    const uint lane = tid % lanes;
    const uint n = gl_WorkGroupID.x * ROWS + tid / lanes;
    const uint t0 = gl_WorkGroupID.y * TT;
    const uint tn = min(TT, p.T - t0);

    if (MODE == 1u && lanes == 1u) {   // 1/rms of each token row: one invocation per token, one barrier
        if (tid < tn) {
            float s = 0.0;
            for (uint i = 0u; i < KV; i++) { const vec4 v = x[p.x_off + (t0 + tid) * XV + i]; s += dot(v, v); }
            inv_rms[tid] = inversesqrt(s / float(K) + PUSH_F(p.eps_bits));
        }
        barrier();
    } else if (MODE == 1u) {           // ... or reduced over the whole workgroup (GPUs)
        for (uint j = 0u; j < TT; j++) {
            float s = 0.0;
            if (j < tn) for (uint i = tid; i < KV; i += WG) { const vec4 v = x[p.x_off + (t0 + j) * XV + i]; s += dot(v, v); }
            red[j * WG + tid] = s;
        }
        barrier();
        for (uint s = WG / 2u; s > 0u; s >>= 1u) {
            if (tid < s) for (uint j = 0u; j < TT; j++) red[j * WG + tid] += red[j * WG + tid + s];
            barrier();
        }
        if (tid < TT) inv_rms[tid] = inversesqrt(red[tid * WG] / float(K) + PUSH_F(p.eps_bits));
        barrier();
    }

    float acc[MAX_TT];
    for (uint j = 0u; j < MAX_TT; j++) acc[j] = 0.0;
    if (n < p.N) {
        for (uint i = lane; i < KV; i += lanes) {
            const vec4 w = LOAD_VEC4(F16, w32, w16, p.w_off + n * KV + i);
            for (uint j = 0u; j < TT; j++) if (j < tn) acc[j] += dot(w, load_x(t0 + j, i));
        }
    }
    if (lanes == 1u) {           // one row per invocation (CPU devices): no reduction
        if (n < p.N) {
            for (uint j = 0u; j < tn; j++) {
                const uint o = (t0 + j) * p.N + n;
                y[o] = (ACC != 0u ? y[o] : 0.0) + acc[j];
            }
        }
        return;
    }
    for (uint j = 0u; j < TT; j++) red[j * WG + tid] = acc[j];
    barrier();
    for (uint s = lanes / 2u; s > 0u; s >>= 1u) {
        if (lane < s) for (uint j = 0u; j < TT; j++) red[j * WG + tid] += red[j * WG + tid + s];
        barrier();
    }
    if (lane == 0u && n < p.N) {
        for (uint j = 0u; j < tn; j++) {
            const uint o = (t0 + j) * p.N + n;
            y[o] = (ACC != 0u ? y[o] : 0.0) + red[j * WG + tid];
        }
    }
}
