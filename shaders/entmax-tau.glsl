#version 450
// alpha-entmax threshold of rows of logits: see grilly_kv/ops/entmax_tau.py.
//
// One workgroup per row (grid x * y >= n_rows), threads striding over the row, every pass a
// workgroup-wide reduction. With y_i = (alpha - 1)(x_i - max x) (so tau_rel is in [-1, 0)):
//   1. max of the row;
//   2. Newton on F(tau) = (sum (y - tau)_+^beta)^(1/beta) - 1 from tau = -1 (entmax.glsl): the
//      iterates rise monotonically to the root; a bisection fallback keeps them in the bracket;
//   3. closed-form tau on the found support (alpha 2, 1.5), repeated while the support changes;
//      other alpha: Newton steps to rounding;
//   4. out[2 row] = (alpha - 1) max x + tau_rel (float bits), out[2 row + 1] = support size;
//      with WRITE_P: p_i = (y_i - tau_rel)_+^beta.
// alpha = 1 is softmax: out = (log-sum-exp, L), p = exp(x - max) / sum.
#include "common.glsl"
#include "entmax.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint F16 = 0;      // 1: logits are packed float16
layout(constant_id = 2) const uint WRITE_P = 0;  // 1: also write the probabilities

layout(set = 0, binding = 0) readonly buffer X32 { float x32[]; };
layout(set = 0, binding = 0) readonly buffer X16 { uint x16[]; };
layout(set = 0, binding = 1) writeonly buffer Out { uint tau_out[]; };
layout(set = 0, binding = 2) writeonly buffer Probs { float probs[]; };

layout(push_constant) uniform Push {
    uint n_rows;
    uint L;           // row length
    uint alpha_bits;  // alpha in [1, 2] (float)
    uint max_iter;    // Newton / bisection rounds
} p;

float load_x(uint i) {
    if (F16 != 0u) return unpackHalf2x16(x16[i >> 1u])[i & 1u];
    return x32[i];
}

vec3 wg_sum(vec3 v) { return workgroup_sum(vec4(v, 0.0)).xyz; }   // bit-identical in every thread

// acc = (k, S_{beta-1}, S_beta) of the row at tau_rel
vec3 row_sums(uint base, float xmax, float a, float beta, float tau) {
    vec3 acc = vec3(0.0);
    for (uint i = gl_LocalInvocationIndex; i < p.L; i += gl_WorkGroupSize.x) {
        acc += entmax_terms(a * (load_x(base + i) - xmax) - tau, beta);
    }
    return wg_sum(acc);
}

void main() {
    const uint row = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
    if (row >= p.n_rows) return;                   // uniform over the workgroup
    const uint base = row * p.L;
    const float alpha = PUSH_F(p.alpha_bits);
    const float a = alpha - 1.0;
    const float beta = a > 0.0 ? 1.0 / a : 0.0;

    float m = -3.4e38;
    for (uint i = gl_LocalInvocationIndex; i < p.L; i += gl_WorkGroupSize.x) m = max(m, load_x(base + i));
    const float xmax = workgroup_max(m);
    if (a == 0.0) {                               // alpha = 1: softmax (tau_out = log-sum-exp)
        float e = 0.0;
        for (uint i = gl_LocalInvocationIndex; i < p.L; i += gl_WorkGroupSize.x) e += exp(load_x(base + i) - xmax);
        const float total = wg_sum(vec3(e, 0.0, 0.0)).x;
        if (gl_LocalInvocationIndex == 0u) {
            tau_out[2u * row] = floatBitsToUint(xmax + log(total));
            tau_out[2u * row + 1u] = p.L;
        }
        if (WRITE_P != 0u) {
            for (uint i = gl_LocalInvocationIndex; i < p.L; i += gl_WorkGroupSize.x) {
                probs[base + i] = exp(load_x(base + i) - xmax) / total;
            }
        }
        return;
    }

    // 2. monotone Newton from below, bracketed: f(lo) >= 0 > f(hi)
    float lo = -1.0, hi = 0.0, tau = -1.0;
    vec3 acc;
    for (uint it = 0u; it < p.max_iter; it++) {
        acc = row_sums(base, xmax, a, beta, tau);
        if (acc.z >= 1.0) {
            lo = tau;
            const float step = entmax_newton_step(acc, beta);
            if (!(step > 1.2e-7)) break;          // converged to float32 resolution
            tau = tau + step < hi ? tau + step : 0.5 * (lo + hi);
        } else {
            hi = tau;                              // a rounding overshoot: bisect
            tau = 0.5 * (lo + hi);
        }
    }

    // 3. exact on the support (alpha 2, 1.5) or Newton to rounding (others)
    acc = row_sums(base, xmax, a, beta, tau);
    for (uint r = 0u; r < 4u; r++) {
        const float next = tau + entmax_support_step(acc, beta);
        const vec3 acc_next = row_sums(base, xmax, a, beta, next);
        const bool settled = acc_next.x == acc.x && (beta == 1.0 || beta == 2.0 || next == tau);
        tau = next;
        acc = acc_next;
        if (settled) break;
    }

    if (gl_LocalInvocationIndex == 0u) {
        tau_out[2u * row] = floatBitsToUint(a * xmax + tau);
        tau_out[2u * row + 1u] = uint(acc.x);
    }
    if (WRITE_P != 0u) {
        for (uint i = gl_LocalInvocationIndex; i < p.L; i += gl_WorkGroupSize.x) {
            const float d = a * (load_x(base + i) - xmax) - tau;
            probs[base + i] = d > 0.0 ? entmax_pow(d, beta) : 0.0;
        }
    }
}
