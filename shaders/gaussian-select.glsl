#version 450
// Gaussian-aware page selection for entmax decode (EntmaxKV): see grilly_kv/ops/gaussian_select.py.
// NumPy twin: grilly_kv/reference/gaussian_select.py (on grilly_kv.gaussian.select_pages_gaussian).
//
// Logits x = scale q.k; thresholds in units of a x, a = alpha - 1 = 1 / BETA. P = ceil(len / PAGE)
// pages; the scored pages are 0 .. P-2 (page 0 alone when P = 1), n = the tokens in them.
// Pass 0 (grid: ceil(pages / PAGES_PER_WG) x B*H_kv): per page p and query head g of KV head bh,
//   mu_pg = sum_d scale q_gd kmean_pd and var_pg = sum_d (scale q_gd)^2 kstd_pd^2, written to
//   moments[(bhq * max_pages + p) * 2 + {0, 1}].
// Pass 1 (grid: B*H_q): per query head, mu_g = mean_p mu_p, sigma_g = max(sqrt(mean_p var_p +
//   var_p mu_p), 1e-6), tau_hat solving n E[(a S - tau)_+^BETA] = 1 for S ~ N(mu_g, sigma_g^2)
//   (entmax.glsl), upper = mean_p (mu_p + 1.5 sigma_p): gstats[bhq * 4 + {0..3}].
// Pass 2 (grid: B*H_kv): sigma_bar = mean of sigma_g over all B*H_q heads; low = sigma_bar < 1.5
//   picks the safety margin (margin_low or margin_high times sigma_bar) and the page quantile z;
//   per query head tau_floor = tau_hat - a max(margin sigma_g, excess_fraction max(tau_hat / a -
//   upper, 0)); page p < P-1 is kept when a (mu_pg + z sigma_pg) > tau_floor_g for any query head
//   g of the KV head (GQA: the union, so K/V pages are read once), and the last page always:
//   pages[bh * max_pages + i] ascending, counts[bh].
#include "common.glsl"
#include "entmax.glsl"
#include "cluster_reduce.glsl"
#include "page_select.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 5) const uint BETA = 2;    // 1 / (alpha - 1): 1, 2 or 3
const float UPPER_Z = 1.5;
const float SIGMA_FLOOR = 1e-6;

layout(set = 0, binding = 2) buffer Moments { vec2 moments[]; };           // (B*H_q, max_pages)
layout(set = 0, binding = 3) buffer GStats { vec4 gstats[]; };             // (B*H_q,)
layout(set = 0, binding = 4) writeonly buffer Pages { uint pages[]; };     // (B*H_kv, max_pages)
layout(set = 0, binding = 5) writeonly buffer Counts { uint counts[]; };   // (B*H_kv,)
layout(set = 0, binding = 6) readonly buffer Meta { uint meta[]; };        // [length, ...]

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
} p;

shared float sh_floor[G];

// A cluster of PAGE_LANES lanes per page, as topk-select's scoring pass.
void page_moments(uint bh) {
    QUERY_SHARES(qr, bh, PUSH_F(p.scale_bits));
    const uvec2 range = cluster_pages(ceil_div(meta[0], PAGE));
    for (uint pg = range.x; pg < range.y; pg += gl_WorkGroupSize.x / PAGE_LANES) {
        STAT_SHARES(mean, sd, bh, p.max_pages, pg, STAT_MEAN, STAT_STD);
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

void select_pages(uint bh) {
    const uint tid = gl_LocalInvocationIndex;
    const float a = 1.0 / float(BETA);
    float part = 0.0;
    for (uint h = tid; h < p.n_heads_q; h += gl_WorkGroupSize.x) part += gstats[h].y;
    const float sigma_bar = workgroup_sum(vec4(part, 0.0, 0.0, 0.0)).x / float(p.n_heads_q);
    const bool low = sigma_bar < 1.5;
    if (tid < G) {
        const vec4 gs = gstats[bh * G + tid];
        const float safety = PUSH_F(low ? p.margin_low_bits : p.margin_high_bits) * sigma_bar;
        const float excess = max(gs.z / a - gs.w, 0.0);
        sh_floor[tid] = gs.z - a * max(safety * gs.y, PUSH_F(p.excess_bits) * excess);
    }
    barrier();
    const float z = PUSH_F(low ? p.z_low_bits : p.z_high_bits);
    const uint n_pages = ceil_div(meta[0], PAGE);
    uint n_out = 0u;
    for (uint c0 = 0u; c0 < n_pages; c0 += gl_WorkGroupSize.x) {
        const uint pg = c0 + tid;
        bool keep = pg + 1u == n_pages;
        if (pg + 1u < n_pages) {
            for (uint g = 0u; g < G; g++) {
                const vec2 mv = moments[(bh * G + g) * p.max_pages + pg];
                keep = keep || a * (mv.x + z * sqrt(max(mv.y, 0.0))) > sh_floor[g];
            }
        }
        uint n_keep;
        const uint pos = n_out + exclusive_scan(keep ? 1u : 0u, n_keep);
        if (keep) pages[bh * p.max_pages + pos] = pg;
        n_out += n_keep;
    }
    if (tid == 0u) counts[bh] = n_out;
}

void main() {
    if (p.pass_id == 0u) page_moments(gl_WorkGroupID.y);
    else if (p.pass_id == 1u) head_stats(gl_WorkGroupID.x);
    else select_pages(gl_WorkGroupID.x);
}
