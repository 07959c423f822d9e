#version 450
// Affine map of rows: y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]; see grilly_kv/ops/nn_linear.py.
//
// x is (M, K) float32 or packed float16, w is (N, K) float32 (torch's Linear layout), bias (N,),
// y (M, N) float32. Grid: (ceil(N / TILE), ceil(M / TILE)); a TILE x TILE workgroup computes one
// TILE x TILE block of y, staging TILE-wide slices of x and w in shared memory. Any M, N, K.
#include "common.glsl"

const uint TILE = 16u;
layout(local_size_x = 16, local_size_y = 16) in;
layout(constant_id = 0) const uint F16 = 0;       // 1: x is packed float16
layout(constant_id = 1) const uint HAS_BIAS = 1;

layout(set = 0, binding = 0) readonly buffer X32 { float x32[]; };
layout(set = 0, binding = 0) readonly buffer X16 { uint x16[]; };
layout(set = 0, binding = 1) readonly buffer W { float w[]; };
layout(set = 0, binding = 2) readonly buffer Bias { float bias[]; };
layout(set = 0, binding = 3) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Push {
    uint M;   // rows of x and y
    uint N;   // output features
    uint K;   // input features
} p;

shared float sh_x[TILE][TILE + 1u];
shared float sh_w[TILE][TILE + 1u];

float load_x(uint i) { return LOAD_SCALAR(F16, x32, x16, i); }

void main() {
    const uint tx = gl_LocalInvocationID.x;   // column within the tile (n), k when staging
    const uint ty = gl_LocalInvocationID.y;   // row within the tile (m)
    const uint m0 = gl_WorkGroupID.y * TILE;
    const uint n0 = gl_WorkGroupID.x * TILE;
    float acc = 0.0;
    for (uint k0 = 0u; k0 < p.K; k0 += TILE) {
        const uint k = k0 + tx;
        sh_x[ty][tx] = (m0 + ty < p.M && k < p.K) ? load_x((m0 + ty) * p.K + k) : 0.0;
        sh_w[ty][tx] = (n0 + ty < p.N && k < p.K) ? w[(n0 + ty) * p.K + k] : 0.0;
        barrier();
        for (uint t = 0u; t < TILE; t++) acc += sh_x[ty][t] * sh_w[tx][t];
        barrier();
    }
    const uint m = m0 + ty, n = n0 + tx;
    if (m < p.M && n < p.N) y[m * p.N + n] = acc + (HAS_BIAS != 0u ? bias[n] : 0.0);
}
