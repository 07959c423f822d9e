#version 450
// Gaussian-aware page selection for entmax decode (EntmaxKV): see grilly_kv/ops/gaussian_select.py.
// NumPy twin: grilly_kv/reference/gaussian_select.py (on grilly_kv.gaussian.select_pages_gaussian).
//
// Logits x = scale q.k; thresholds in units of a x, a = alpha - 1 = 1 / BETA. P = ceil(len / PAGE)
// pages; the scored pages are 0 .. P-2 (page 0 alone when P = 1), n = the tokens in them.
// Pass 0 (grid: ceil(pages / PAGES_PER_WG) x B*H_kv): per page p and query head g of KV head bh,
//   mu_pg = sum_d scale q_gd kmean_pd and var_pg = sum_d (scale q_gd)^2 kstd_pd^2, written to
//   moments[(bhq * max_pages + p) * 2 + {0, 1}].
// FUSED = 1: no pass 1; after its moments, each pass-0 workgroup of KV head bh adds 1 to
//   counter[bh] (after a buffer memory barrier), and the last one (the grid's x size reached)
//   runs pass 1 for the G query heads of bh itself and resets counter[bh] to 0 (so the recording
//   replays): one dispatch instead of two dependent ones, as topk-select's FUSED.
// Pass 1 (grid: B*H_q): per query head, mu_g = mean_p mu_p, sigma_g = max(sqrt(mean_p var_p +
//   var_p mu_p), 1e-6), tau_hat solving n E[(a S - tau)_+^BETA] = 1 for S ~ N(mu_g, sigma_g^2)
//   (entmax.glsl), upper = mean_p (mu_p + 1.5 sigma_p): gstats[bhq * 4 + {0..3}].
// Pass 2 (grid: B*H_kv): sigma_bar = mean of sigma_g over all B*H_q heads; low = sigma_bar < 1.5
//   picks the safety margin (margin_low or margin_high times sigma_bar) and the page quantile z;
//   per query head tau_floor = tau_hat - a max(margin sigma_g, excess_fraction max(tau_hat / a -
//   upper, 0)); page p < P-1 is kept when a (mu_pg + z sigma_pg) > tau_floor_g for any query head
//   g of the KV head (GQA: the union, so K/V pages are read once), and the last page always:
//   pages[bh * max_pages + i] ascending, counts[bh]. With a token budget (cap = 1) it also
//   writes scores[bh * max_pages + pg] = max_g (mu_pg + z sigma_pg) for the kept pages before
//   the last and DROPPED (-3.4e38) for the others; topk-select's pass 2 then keeps the n_top best
//   of those, never a DROPPED one (its UNKEPT), and overwrites pages[] / counts[].
// Pass 3 (grid: B*H_q, tau_mode "fixed" and "corrected"): the clamped tau-hat of each query head,
//   tau = min(tau_hat, max(a max_p (mu_p + z_clamp sigma_p / 3) - 1e-4, tau_floor)) over the
//   scored pages its own rule keeps (page 0 when it is the only page; tau_hat when none is kept),
//   written as float bits to tau[2 bhq] (the decode's threshold buffer).
// Pass 4 (grid: B*H_q, tau_mode "corrected", after the decode's logits pass): n_iters unbounded
//   Halley steps of sum_i [a x_i - tau]_+^BETA = 1 on the row logits[bhq * row_len ..] of the
//   selected tokens (padding -1e30 adds nothing): f = S_BETA - 1, f' = -BETA S_(BETA-1),
//   f'' = BETA (BETA-1) S_(BETA-2), tau -= 2 f f' / (2 f'^2 - f f'') (f / f' when that
//   denominator is <= 1e-12 in magnitude); a step that is not finite leaves tau as it is.
#include "common.glsl"
#include "entmax.glsl"
#include "cluster_reduce.glsl"
#include "page_select.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 5) const uint BETA = 2;    // 1 / (alpha - 1): 1, 2 or 3
layout(constant_id = 6) const uint FUSED = 0;   // 1: the last moments workgroup of a head runs pass 1
const float UPPER_Z = 1.5;
const float SIGMA_FLOOR = 1e-6;
const float CLAMP_EPS = 1e-4;
const float CLAMP_SIGMA_DIVISOR = 3.0;
const float HALLEY_DEN_EPS = 1e-12;
const float DROPPED = -3.4e38;       // budget score of a page the rule did not keep

layout(set = 0, binding = 2) coherent buffer Moments { vec2 moments[]; };  // (B*H_q, max_pages)
layout(set = 0, binding = 3) buffer GStats { vec4 gstats[]; };             // (B*H_q,)
layout(set = 0, binding = 4) buffer Pages { uint pages[]; };               // (B*H_kv, max_pages)
layout(set = 0, binding = 5) buffer Counts { uint counts[]; };             // (B*H_kv,)
layout(set = 0, binding = 6) readonly buffer Meta { uint meta[]; };        // [length, ...]
layout(set = 0, binding = 7) buffer Tau { uint tau_buf[]; };               // (B*H_q, 2)
layout(set = 0, binding = 8) readonly buffer Logits { float logits[]; };   // (B*H_q, row_len)
layout(set = 0, binding = 9) buffer Scores { float scores[]; };            // (B*H_kv, max_pages)
layout(set = 0, binding = 10) coherent buffer Counter { uint counter[]; }; // (B*H_kv,) FUSED: done

layout(push_constant) uniform Push {
    uint max_pages;
    uint n_heads_q;          // B * H_q
    uint scale_bits;         // 1/sqrt(D_original)
    uint z_low_bits;         // page quantile z when sigma_bar < 1.5, else z_high
    uint z_high_bits;
    uint margin_low_bits;    // safety margin factor when sigma_bar < 1.5, else margin_high
    uint margin_high_bits;
    uint excess_bits;        // excess margin fraction
    uint pass_id;
    uint z_clamp_bits;       // clamp quantile z (pass 3)
    uint row_len;            // logits per row (pass 4)
    uint n_iters;            // Halley steps (pass 4)
    uint cap;                // 1: pass 2 also writes the budget scores
    uint kv_h0;              // pass 0: the stats buffer holds KV heads [kv_h0, kv_h0 + grid y)
                             // (a part of a layer split by heads, policies/kv_store.py)
} p;

shared float sh_floor[G];
shared bool sh_last;

// A cluster of PAGE_LANES lanes per page, as topk-select's scoring pass.
void page_moments(uint bh) {
    QUERY_SHARES(qr, bh, PUSH_F(p.scale_bits));
    const uvec2 range = cluster_pages(ceil_div(meta[0], PAGE));
    for (uint pg = range.x; pg < range.y; pg += gl_WorkGroupSize.x / PAGE_LANES) {
        STAT_SHARES(mean, sd, bh - p.kv_h0, p.max_pages, pg, STAT_MEAN, STAT_STD);
        [[unroll]] for (uint g = 0u; g < G; g++) {
            float mu = 0.0, var = 0.0;
            [[unroll]] for (uint j = 0u; j < NVP; j++) {
                const vec4 qv = qr[g * NVP + j];
                mu += dot(qv, mean[j]);
                var += dot(qv * qv, sd[j] * sd[j]);
            }
            const vec2 mv = vec2(cluster_add(mu, PAGE_LANES), cluster_add(var, PAGE_LANES));
            if (page_lane() == 0u) moments[(bh * G + g) * p.max_pages + pg] = mv;
        }
    }
}

void head_stats(uint bhq) {
    const uint len = meta[0];
    const uint n_pages = ceil_div(len, PAGE);
    const uint scored = max(n_pages, 2u) - 1u;
    const float n = float(n_pages > 1u ? scored * PAGE : len);
    const uint base = bhq * p.max_pages;
    vec4 acc = vec4(0.0);
    for (uint pg = gl_LocalInvocationIndex; pg < scored; pg += gl_WorkGroupSize.x) {
        const vec2 mv = moments[base + pg];
        acc += vec4(mv.x, mv.y, mv.x + UPPER_Z * sqrt(max(mv.y, 0.0)), 0.0);
    }
    acc = workgroup_sum(acc) / float(scored);
    const float mu_g = acc.x;
    float dev2 = 0.0;
    for (uint pg = gl_LocalInvocationIndex; pg < scored; pg += gl_WorkGroupSize.x) {
        const float e = moments[base + pg].x - mu_g;
        dev2 += e * e;
    }
    dev2 = workgroup_sum(vec4(dev2, 0.0, 0.0, 0.0)).x / float(scored);
    const float sigma_g = max(sqrt(acc.y + dev2), SIGMA_FLOOR);
    if (gl_LocalInvocationIndex == 0u) {
        gstats[bhq] = vec4(mu_g, sigma_g, gaussian_tau_hat(mu_g, sigma_g, n, BETA), acc.z);
    }
}

// FUSED: the last moments workgroup of KV head bh computes pass 1 for its query heads.
#include "last_workgroup.glsl"

void head_stats_if_last(uint bh) {
    if (!last_to_finish(bh, gl_NumWorkGroups.x)) return;
    for (uint g = 0u; g < G; g++) head_stats(bh * G + g);
}

// sigma_bar = mean of sigma_g over every query head (x) and low = sigma_bar < 1.5 (y, 0 or 1).
vec2 margin_regime() {
    float part = 0.0;
    for (uint h = gl_LocalInvocationIndex; h < p.n_heads_q; h += gl_WorkGroupSize.x) part += gstats[h].y;
    const float sigma_bar = workgroup_sum(vec4(part, 0.0, 0.0, 0.0)).x / float(p.n_heads_q);
    return vec2(sigma_bar, sigma_bar < 1.5 ? 1.0 : 0.0);
}

// tau_floor of query head bhq (pass 1's gstats) in the margin regime r of margin_regime().
float head_floor(uint bhq, vec2 r) {
    const float a = 1.0 / float(BETA);
    const vec4 gs = gstats[bhq];
    const float safety = PUSH_F(r.y != 0.0 ? p.margin_low_bits : p.margin_high_bits) * r.x;
    const float excess = max(gs.z / a - gs.w, 0.0);
    return gs.z - a * max(safety * gs.y, PUSH_F(p.excess_bits) * excess);
}

// a (mu + z sigma) of a page's moments (mean, variance)
float page_rule(vec2 mv, float z) { return (1.0 / float(BETA)) * (mv.x + z * sqrt(max(mv.y, 0.0))); }

void select_pages(uint bh) {
    const uint tid = gl_LocalInvocationIndex;
    const vec2 regime = margin_regime();
    if (tid < G) sh_floor[tid] = head_floor(bh * G + tid, regime);
    barrier();
    const float z = PUSH_F(regime.y != 0.0 ? p.z_low_bits : p.z_high_bits);
    const uint n_pages = ceil_div(meta[0], PAGE);
    uint n_out = 0u;
    for (uint c0 = 0u; c0 < n_pages; c0 += gl_WorkGroupSize.x) {
        const uint pg = c0 + tid;
        bool keep = pg + 1u == n_pages;
        if (pg + 1u < n_pages) {
            for (uint g = 0u; g < G; g++) {
                keep = keep || page_rule(moments[(bh * G + g) * p.max_pages + pg], z) > sh_floor[g];
            }
            if (p.cap != 0u) {
                float upper = DROPPED;
                for (uint g = 0u; keep && g < G; g++) {
                    const vec2 mv = moments[(bh * G + g) * p.max_pages + pg];
                    upper = max(upper, mv.x + z * sqrt(max(mv.y, 0.0)));
                }
                scores[bh * p.max_pages + pg] = upper;
            }
        }
        uint n_keep;
        const uint pos = n_out + exclusive_scan(keep ? 1u : 0u, n_keep);
        if (keep) pages[bh * p.max_pages + pos] = pg;
        n_out += n_keep;
    }
    if (tid == 0u) counts[bh] = n_out;
}

void clamp_tau(uint bhq) {
    const float a = 1.0 / float(BETA);
    const vec2 regime = margin_regime();
    const float floor_g = head_floor(bhq, regime);
    const float z = PUSH_F(regime.y != 0.0 ? p.z_low_bits : p.z_high_bits);
    const float z_clamp = PUSH_F(p.z_clamp_bits);
    const uint n_pages = ceil_div(meta[0], PAGE);
    const uint scored = max(n_pages, 2u) - 1u;
    float cap = -3.0e38;
    for (uint pg = gl_LocalInvocationIndex; pg < scored; pg += gl_WorkGroupSize.x) {
        const vec2 mv = moments[bhq * p.max_pages + pg];
        if (n_pages == 1u || page_rule(mv, z) > floor_g) cap = max(cap, mv.x + z_clamp * sqrt(max(mv.y, 0.0)) / CLAMP_SIGMA_DIVISOR);
    }
    cap = workgroup_max(cap);
    const float tau_hat = gstats[bhq].z;
    const float tau = cap > -1.0e38 ? min(tau_hat, max(a * cap - CLAMP_EPS, floor_g)) : tau_hat;
    if (gl_LocalInvocationIndex == 0u) tau_buf[2u * bhq] = floatBitsToUint(tau);
}

void correct_tau(uint bhq) {
    const float a = 1.0 / float(BETA);
    const float b = float(BETA);
    const uint base = bhq * p.row_len;
    float tau = uintBitsToFloat(tau_buf[2u * bhq]);
    for (uint it = 0u; it < p.n_iters; it++) {
        vec4 acc = vec4(0.0);   // S_BETA, S_(BETA-1), S_(BETA-2) over d > 0
        for (uint i = gl_LocalInvocationIndex; i < p.row_len; i += gl_WorkGroupSize.x) {
            const float d = a * logits[base + i] - tau;
            if (d > 0.0) {
                acc += vec4(entmax_pow(d, b), entmax_pow(d, b - 1.0),
                            BETA >= 2u ? entmax_pow(d, b - 2.0) : 0.0, 0.0);
            }
        }
        acc = workgroup_sum(acc);
        const float f = acc.x - 1.0, f1 = -b * acc.y, f2 = b * (b - 1.0) * acc.z;
        const float den = 2.0 * f1 * f1 - f * f2;
        const float next = tau - (abs(den) > HALLEY_DEN_EPS ? 2.0 * f * f1 / den : f / f1);
        if (!isnan(next) && !isinf(next)) tau = next;
    }
    if (gl_LocalInvocationIndex == 0u) tau_buf[2u * bhq] = floatBitsToUint(tau);
}

void main() {
    if (p.pass_id == 0u) {
        page_moments(p.kv_h0 + gl_WorkGroupID.y);
        if (FUSED != 0u) head_stats_if_last(p.kv_h0 + gl_WorkGroupID.y);
    }
    else if (p.pass_id == 1u) head_stats(gl_WorkGroupID.x);
    else if (p.pass_id == 2u) select_pages(gl_WorkGroupID.x);
    else if (p.pass_id == 3u) clamp_tau(gl_WorkGroupID.x);
    else correct_tau(gl_WorkGroupID.x);
}
