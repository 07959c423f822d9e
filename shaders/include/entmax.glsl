// alpha-entmax threshold helpers: device functions for shaders that solve or use the threshold.
// Include after common.glsl. References: grilly_kv/reference/entmax_tau.py (exact tau) and
// grilly_kv/reference/gaussian_tau.py (normal cdf, truncated moments, Gaussian tau-hat).
//
// Convention: beta = 1 / (alpha - 1); scores z = (alpha - 1) x; the threshold tau solves
// sum_i [z_i - tau]_+^beta = 1 and p_i = [z_i - tau]_+^beta. A solver accumulates, over the
// elements with d_i = z_i - tau > 0, the sums acc = (k, S_{beta-1}, S_beta) with S_e = sum d_i^e
// (entmax_terms), reduces them, then steps with entmax_newton_step / entmax_support_step.
#ifndef GRILLY_KV_ENTMAX_GLSL
#define GRILLY_KV_ENTMAX_GLSL

// d^e for d > 0 and e >= 0; plain products for the integer exponents 0..4 (alpha 2, 1.5, 4/3,
// 1.25), pow() otherwise (Vulkan bounds its error through exp2/log2: ~beta * 4e-7 relative).
float entmax_pow(float d, float e) {
    if (e == 0.0) return 1.0;
    if (e == 1.0) return d;
    if (e == 2.0) return d * d;
    if (e == 3.0) return d * d * d;
    if (e == 4.0) { const float d2 = d * d; return d2 * d2; }
    return pow(d, e);
}

// One element's share of acc = (k, S_{beta-1}, S_beta) at distance d = z - tau.
vec3 entmax_terms(float d, float beta) {
    if (!(d > 0.0)) return vec3(0.0);
    const float lower = entmax_pow(d, beta - 1.0);
    return vec3(1.0, lower, lower * d);
}

// Newton increment of tau for F(tau) = S_beta^(1/beta) - 1. F is the beta-norm of (z - tau)_+,
// hence convex and decreasing in tau: from any tau with F(tau) >= 0 the step lands at or below
// the root, so the iterates rise monotonically to it (exact in one step on a flat row; for
// beta = 1 this is Michelot's sparsemax algorithm). Needs k >= 1.
float entmax_newton_step(vec3 acc, float beta) {
    const float s = acc.z;
    return (s - entmax_pow(s, (beta - 1.0) / beta)) / acc.y;
}

// Increment t of tau that solves the equation exactly on the current support (the elements
// with d > 0, summed in acc), for tau already close to the root:
//   beta = 1 (alpha 2):   sum (d - t) = 1    ->  t = (S_1 - 1) / k
//   beta = 2 (alpha 1.5): sum (d - t)^2 = 1  ->  smaller root, written without cancellation:
//                         t = (S_2 - 1) / (S_1 + sqrt(S_1^2 - k (S_2 - 1)))
//   other beta: a Newton step (no closed form; repeat to refine to rounding).
float entmax_support_step(vec3 acc, float beta) {
    if (beta == 1.0) return (acc.z - 1.0) / acc.x;
    if (beta == 2.0) {
        const float c = acc.z - 1.0;
        return c / (acc.y + sqrt(max(acc.y * acc.y - acc.x * c, 0.0)));
    }
    return entmax_newton_step(acc, beta);
}

// ---- Gaussian-aware threshold --------------------------------------------------------------
const float ENTMAX_INV_SQRT_2PI = 0.39894228040143268;
const float ENTMAX_SQRT_HALF = 0.70710678118654752;

float normal_pdf(float t) { return ENTMAX_INV_SQRT_2PI * exp(-0.5 * t * t); }

// erfc(z) for z >= 0: the Chebyshev fit of Press et al. (Numerical Recipes, "erfcc"), fractional
// error < 1.2e-7 in exact arithmetic. exp(-z^2) is formed from a 12-bit split of z so that the
// rounding of z^2 does not cost relative accuracy in the tail; what remains is exp's own error,
// which Vulkan bounds by 3 + 2|x| ulp, so it grows with t^2 (measured on lavapipe: Phi relative
// error 2.3e-6 for t >= -5, 1.1e-5 down to t = -12; tests/test_gaussian_tau.py asserts 1e-5 and
// 5e-5).
float erfc_nonneg(float z) {
    const float u = 1.0 / (1.0 + 0.5 * z);
    const float poly = -1.26551223 + u * (1.00002368 + u * (0.37409196 + u * (0.09678418 +
        u * (-0.18628806 + u * (0.27886807 + u * (-1.13520398 + u * (1.48851587 +
        u * (-0.82215223 + u * 0.17087277))))))));
    const float zh = uintBitsToFloat(floatBitsToUint(z) & 0xFFFFF000u);   // z^2 = zh^2 + (z-zh)(z+zh)
    return u * exp(-zh * zh) * exp(poly - (z - zh) * (z + zh));
}

// Standard normal cdf with relative accuracy in the lower tail.
float normal_cdf(float t) {
    const float tail = 0.5 * erfc_nonneg(abs(t) * ENTMAX_SQRT_HALF);
    return t < 0.0 ? tail : 1.0 - tail;
}

// Lower tail, x = -mu/s >= 1.5: E[Y_+^k] = s^k phi(x) g_k with g_k = int_0^inf y^k e^(-x y - y^2/2) dy,
// all positive and free of cancellation: g_0 = 1/(x + r_1), g_k = r_k g_(k-1), where
// r_k = k / (x + r_(k+1)) is the continued fraction of the Mills ratio, run backwards from
// r_(MILLS_TERMS+1) = 0 (float32-accurate for x >= 1.5 with 48 terms).
const uint MILLS_TERMS = 48u;
vec4 tail_positive_moments(float x, float s) {
    float r = 0.0;
    vec3 r123 = vec3(0.0);
    for (uint k = MILLS_TERMS; k > 0u; k--) {
        r = float(k) / (x + r);
        if (k <= 3u) r123[k - 1u] = r;
    }
    const float g0 = normal_pdf(x) / (x + r123.x);
    const float g1 = g0 * r123.x, g2 = g1 * r123.y;
    return vec4(g0, s * g1, s * s * g2, s * s * s * g2 * r123.z);
}

// E[Y_+^k], k = 0..3, for Y ~ N(mu, s^2), s > 0, with t = mu / s:
//   m0 = Phi(t)                 m1 = mu Phi(t) + s phi(t)
//   m2 = (mu^2 + s^2) Phi(t) + mu s phi(t)
//   m3 = (mu^3 + 3 mu s^2) Phi(t) + (mu^2 s + 2 s^3) phi(t)
// For t < -1.5 the two terms of each formula nearly cancel, so the lower tail is evaluated by
// tail_positive_moments instead (the entmax threshold sits there: t ~ -sqrt(2 ln n)).
vec4 gaussian_positive_moments(float mu, float s) {
    const float t = mu / s;
    if (t < -1.5) return tail_positive_moments(-t, s);
    const float P = normal_cdf(t), f = normal_pdf(t);
    return vec4(P,
                s * (t * P + f),
                s * s * ((t * t + 1.0) * P + t * f),
                s * s * s * ((t * t + 3.0) * t * P + (t * t + 2.0) * f));
}

const uint GAUSSIAN_TAU_MAX_ITER = 100u;

// (f, f', f'') of one Gaussian score component of unit weight, for the equation
// sum_j w_j E[(a S_j - tau)_+^beta] - 1 = 0: Y = a S - tau ~ N(mu_y, s_y^2), beta = 1, 2, 3, and
// d E[Y_+^k] / d tau = -k E[Y_+^(k-1)]  (beta = 1: f'' = phi(mu_y / s_y) / s_y).
// Multiply by the weight (token count) and sum over components; the -1 is not included.
vec3 gaussian_f_terms(float mu_y, float s_y, uint beta) {
    const vec4 m = gaussian_positive_moments(mu_y, s_y);
    const float b = float(beta);
    const float f2 = beta == 1u ? normal_pdf(mu_y / s_y) / s_y : b * (b - 1.0) * m[beta - 2u];
    return vec3(m[beta], -b * m[beta - 1u], f2);
}

// One round of the bracketed Halley solve, given F = summed gaussian_f_terms at tau (f = F.x - 1
// is decreasing and convex in tau): shrinks [lo, hi] (f(lo) > 0 >= f(hi)), then moves tau by a
// Halley step (Newton when the Halley denominator vanishes, the bracket midpoint when the step
// leaves the bracket). Returns true when done: |f| <= 1e-6 (tau kept), or the step or the
// bracket is below float32 resolution relative to |tau| + scale (scale: the largest s_y).
bool gaussian_halley_update(vec3 F, float scale, inout float tau, inout float lo, inout float hi) {
    const float f = F.x - 1.0;
    if (f > 0.0) lo = tau; else hi = tau;
    if (abs(f) <= 1e-6) return true;
    const float den = 2.0 * F.y * F.y - f * F.z;
    float next = tau - (abs(den) > 1e-30 ? 2.0 * f * F.y / den : f / F.y);
    if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
    const float res = 2.4e-7 * (abs(tau) + scale);
    const bool done = abs(next - tau) <= res || hi - lo <= res;
    tau = next;
    return done;
}

// Right end of the bracket for scores with spread s_y among W scores in all: the equation is
// negative there, 8 standard deviations past the expected maximum.
float gaussian_tau_upper(float center, float s_y, float W) {
    return center + s_y * (sqrt(2.0 * log(W + 1.0)) + 8.0);
}

// tau-hat solving n E[((alpha - 1) S - tau)_+^beta] = 1 for S ~ N(mu, sigma^2), n >= 1 scores,
// beta = 1, 2, 3 (alpha = 2, 1.5, 4/3), by gaussian_halley_update on the bracket
// [a mu - n^(-a), gaussian_tau_upper], a = alpha - 1 (f >= 0 at the left end by Jensen's
// inequality). A mixture of components (one per page, weight = its tokens) is solved the same
// way with F summed over the components and the bracket [max_j (a mu_j - w_j^(-a)),
// max_j gaussian_tau_upper(a mu_j, s_y_j, W)]; see shaders/gaussian-tau.glsl.
float gaussian_tau_hat(float mu, float sigma, float n, uint beta) {
    const float a = 1.0 / float(beta);
    const float s_y = a * max(sigma, 1e-6);
    const float center = a * mu;
    float lo = center - pow(n, -a);
    float hi = gaussian_tau_upper(center, s_y, n);
    float tau = 0.5 * (lo + hi);
    for (uint it = 0u; it < GAUSSIAN_TAU_MAX_ITER; it++) {
        if (gaussian_halley_update(n * gaussian_f_terms(center - tau, s_y, beta), s_y, tau, lo, hi)) break;
    }
    return tau;
}

#endif
