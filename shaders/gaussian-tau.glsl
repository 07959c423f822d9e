#version 450
// Gaussian-aware entmax threshold per row: see grilly_kv/ops/gaussian_tau.py. Exercises the
// Gaussian part of entmax.glsl (normal cdf, positive-part moments, bracketed Halley solve).
// One thread per row; MODE picks what row r reads and writes:
//   0 single:  params[3r..3r+2] = (mu, sigma, n)   -> out[r] = tau-hat of n E[(a S - tau)_+^beta] = 1
//   1 moments: params[3r..3r+1] = (mu_Y, s_Y)      -> out[4r..4r+3] = E[Y_+^k], k = 0..3
//   2 mixture: params[3(rJ+j)..] = (mu_j, sigma_j, w_j), j < J
//              -> out[r] = tau-hat of sum_j w_j E[(a S_j - tau)_+^beta] = 1
#include "common.glsl"
#include "entmax.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint BETA = 2;     // 1, 2, 3: alpha = 2, 1.5, 4/3
layout(constant_id = 2) const uint MODE = 0;

layout(set = 0, binding = 0) readonly buffer Params { float params[]; };
layout(set = 0, binding = 1) writeonly buffer Out { float outv[]; };

layout(push_constant) uniform Push {
    uint n_rows;
    uint J;          // mixture components per row (MODE 2)
} p;

#define A (1.0 / float(BETA))                       // alpha - 1

vec3 mixture_f(uint first, float tau) {
    vec3 F = vec3(0.0);
    for (uint j = first; j < first + p.J; j++) {
        const float s_y = A * max(params[3u * j + 1u], 1e-6);
        F += params[3u * j + 2u] * gaussian_f_terms(A * params[3u * j] - tau, s_y, BETA);
    }
    return F;
}

float mixture_tau_hat(uint first) {
    float W = 0.0;
    for (uint j = first; j < first + p.J; j++) W += params[3u * j + 2u];
    float lo = -3.4e38, hi = -3.4e38, scale = 0.0;
    for (uint j = first; j < first + p.J; j++) {
        const float center = A * params[3u * j], s_y = A * max(params[3u * j + 1u], 1e-6);
        lo = max(lo, center - pow(params[3u * j + 2u], -A));
        hi = max(hi, gaussian_tau_upper(center, s_y, W));
        scale = max(scale, s_y);
    }
    for (uint k = 0u; k < 8u && mixture_f(first, hi).x >= 1.0; k++) hi += 2.0 * (hi - lo);
    float tau = 0.5 * (lo + hi);
    for (uint it = 0u; it < GAUSSIAN_TAU_MAX_ITER; it++) {
        if (gaussian_halley_update(mixture_f(first, tau), scale, tau, lo, hi)) break;
    }
    return tau;
}

void main() {
    const uint r = gl_GlobalInvocationID.x;
    if (r >= p.n_rows) return;
    if (MODE == 1u) {
        const vec4 m = gaussian_positive_moments(params[3u * r], params[3u * r + 1u]);
        for (uint k = 0u; k < 4u; k++) outv[4u * r + k] = m[k];
    } else if (MODE == 2u) {
        outv[r] = mixture_tau_hat(r * p.J);
    } else {
        outv[r] = gaussian_tau_hat(params[3u * r], params[3u * r + 1u], params[3u * r + 2u], BETA);
    }
}
