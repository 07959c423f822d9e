#version 450
// Gaussian-aware entmax threshold per row: see grilly_kv/ops/gaussian_tau.py. Exercises the
// Gaussian part of entmax.glsl (normal cdf, positive-part moments, bracketed Halley solve).
// One thread per row; row r reads params[3r .. 3r+2]:
//   MOMENTS = 0: (mu, sigma, n)   -> out[r] = tau-hat of n E[((alpha-1) S - tau)_+^beta] = 1
//   MOMENTS = 1: (mu_Y, s_Y, -)   -> out[4r .. 4r+3] = E[Y_+^k], k = 0..3, Y ~ N(mu_Y, s_Y^2)
#include "common.glsl"
#include "entmax.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint BETA = 2;     // 1, 2, 3: alpha = 2, 1.5, 4/3
layout(constant_id = 2) const uint MOMENTS = 0;

layout(set = 0, binding = 0) readonly buffer Params { float params[]; };
layout(set = 0, binding = 1) writeonly buffer Out { float outv[]; };

layout(push_constant) uniform Push { uint n_rows; } p;

void main() {
    const uint r = gl_GlobalInvocationID.x;
    if (r >= p.n_rows) return;
    const float u = params[3u * r], v = params[3u * r + 1u];
    if (MOMENTS != 0u) {
        const vec4 m = gaussian_positive_moments(u, v);
        for (uint k = 0u; k < 4u; k++) outv[4u * r + k] = m[k];
    } else {
        outv[r] = gaussian_tau_hat(u, v, params[3u * r + 2u], BETA);
    }
}
