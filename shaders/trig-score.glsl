#version 450
// TriAttention key scores: see grilly_kv/ops/trig_score.py.
//
// Per query head g the host folds the calibration and the round's cos/sin table (mean over the
// 17 offsets) into weights W[g] = (w_re[F], w_im[F], w_norm[F]), so that for a post-RoPE key
//   S_trig + S_norm = sum_f w_re[f] k_re[f] + w_im[f] k_im[f] + w_norm[f] |k_f|.
// Passes (pass_id push constant):
//   0 (grid n_chunks x H_kv): score CHUNK keys of one KV head for its G query heads. G == 1:
//     write out[h, s]. G > 1: write raw[h*G+g, s] and the chunk's (mean, M2) per query head.
//   1 (grid H_q): merge the chunk statistics of one query head into (mean, 1/sqrt(var + eps)).
//   2 (grid n_chunks x H_kv): out[h, s] = max over the group of z-scores.
//   3 (grid n_chunks): out[H_kv, s] = mean over the KV heads of out[h, s].
// Passes 0-2 cover KV heads [h0, h0 + grid) (a KV store part: one dispatch per part).
// In pass 0, LPK lanes share a key, each lane owning 4 frequencies.
#include "common.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;                  // = CHUNK keys per workgroup
layout(constant_id = 1) const uint D = 128;      // head_dim, a multiple of 4
layout(constant_id = 2) const uint F = 64;       // frequencies, a multiple of 4
layout(constant_id = 3) const uint G = 1;        // query heads per KV head
layout(constant_id = 4) const uint F16 = 0;      // keys are packed float16
layout(constant_id = 5) const uint INTERLEAVED = 0;
layout(constant_id = 6) const uint LPK = 16;     // lanes per key: power of two >= F/4, divides WG
layout(constant_id = 7) const uint U = 1;        // keys per lane group per iteration (loads in flight)
const uint NV = D / 4u;
const uint FV = F / 4u;
const float MODULUS_EPS = 1e-12;
const float ZSCORE_EPS = 1e-8;

layout(set = 0, binding = 0) readonly buffer K32 { uvec4 k32[]; };
layout(set = 0, binding = 0) readonly buffer K16 { uvec2 k16[]; };
layout(set = 0, binding = 1) readonly buffer Weights { vec4 weights[]; };   // [H_q, 3, F/4]
layout(set = 0, binding = 2) buffer Raw { float raw[]; };                   // [H_q, S]
layout(set = 0, binding = 3) buffer Stats { float stats[]; };               // [H_q, n_chunks, 2] then [H_q, 2]
layout(set = 0, binding = 4) buffer Out { float out_s[]; };                 // [H_kv (+1), S]

layout(push_constant) uniform Push {
    uint S;          // keys per KV head
    uint key_cap;    // rows per KV head in the key buffer
    uint n_kv;       // KV heads
    uint n_chunks;   // ceil(S / CHUNK)
    uint pass_id;
    uint h0;         // passes 0-2: first KV head of this dispatch (the K buffer holds heads h0..)
} p;

const uint GU = G * U;                           // partial sums per invocation per iteration
shared float sh_part[gl_WorkGroupSize.x * GU];
shared float sh_chunk[gl_WorkGroupSize.x * G];
float wg_sum(float v) { return workgroup_sum(vec4(v, 0.0, 0.0, 0.0)).x; }

void score_chunk(uint h, uint c) {
    const uint WG = gl_WorkGroupSize.x;
    const uint tid = gl_LocalInvocationIndex;
    const uint lane = tid % LPK;
    const uint slot = tid / LPK;
    const uint n_slots = WG / LPK;
    const uint s0 = c * WG;
    const uint s1 = min(s0 + WG, p.S);
    const bool has_freqs = lane < FV;
    vec4 w_re[G], w_im[G], w_nm[G];
    for (uint g = 0u; g < G; g++) {
        const uint wb = (h * G + g) * 3u * FV + lane;
        w_re[g] = has_freqs ? weights[wb] : vec4(0.0);
        w_im[g] = has_freqs ? weights[wb + FV] : vec4(0.0);
        w_nm[g] = has_freqs ? weights[wb + 2u * FV] : vec4(0.0);
    }
    for (uint base = s0; base < s1; base += n_slots * U) {  // uniform trip count
        float part[GU];
        for (uint u = 0u; u < U; u++) {
            const uint s = base + u * n_slots + slot;
            for (uint g = 0u; g < G; g++) part[u * G + g] = 0.0;
            if (has_freqs && s < s1) {
                const uint row = ((h - p.h0) * p.key_cap + s) * NV;
                vec4 re, im;
                if (INTERLEAVED != 0u) {
                    const vec4 a = LOAD_VEC4(F16, k32, k16, row + 2u * lane);
                    const vec4 b = LOAD_VEC4(F16, k32, k16, row + 2u * lane + 1u);
                    re = vec4(a.x, a.z, b.x, b.z);
                    im = vec4(a.y, a.w, b.y, b.w);
                } else {
                    re = LOAD_VEC4(F16, k32, k16, row + lane);
                    im = LOAD_VEC4(F16, k32, k16, row + FV + lane);
                }
                const vec4 kn = sqrt(re * re + im * im + MODULUS_EPS);
                for (uint g = 0u; g < G; g++) {
                    part[u * G + g] = dot(re, w_re[g]) + dot(im, w_im[g]) + dot(kn, w_nm[g]);
                }
            }
        }
        // value i of invocation t sits at t*GU + (i + t) % GU: rotating by t keeps both the
        // writes here and the reads below within 2-way shared-memory bank conflicts
        for (uint i = 0u; i < GU; i++) sh_part[tid * GU + (i + tid) % GU] = part[i];
        barrier();
        for (uint r = tid; r < n_slots * GU; r += WG) {      // one thread per (key, query head)
            const uint sl = r / GU, i = r % GU, u = i / G, g = i % G;
            const uint sk = base + u * n_slots + sl;
            float v = 0.0;
            for (uint l = 0u; l < LPK; l++) {
                const uint t = sl * LPK + l;
                v += sh_part[t * GU + (i + t) % GU];
            }
            if (sk < s1) {
                if (G == 1u) out_s[h * p.S + sk] = v;
                else { raw[(h * G + g) * p.S + sk] = v; sh_chunk[g * WG + (sk - s0)] = v; }
            }
        }
        barrier();
    }
    if (G > 1u) {                                             // chunk mean and M2, per query head
        const float n = float(s1 - s0);
        for (uint g = 0u; g < G; g++) {
            const float x = tid < s1 - s0 ? sh_chunk[g * WG + tid] : 0.0;
            const float mean = wg_sum(x) / n;
            const float d = tid < s1 - s0 ? x - mean : 0.0;
            const float m2 = wg_sum(d * d);
            if (tid == 0u) {
                const uint o = ((h * G + g) * p.n_chunks + c) * 2u;
                stats[o] = mean; stats[o + 1u] = m2;
            }
        }
    }
}

void merge_stats(uint hg) {
    // Chan et al.: mean = sum n_c mean_c / N;  M2 = sum M2_c + n_c (mean_c - mean)^2
    const uint WG = gl_WorkGroupSize.x;
    float acc = 0.0;
    for (uint c = gl_LocalInvocationIndex; c < p.n_chunks; c += WG) {
        const float n = float(min(WG, p.S - c * WG));
        acc += n * stats[(hg * p.n_chunks + c) * 2u];
    }
    const float mean = wg_sum(acc) / float(p.S);
    acc = 0.0;
    for (uint c = gl_LocalInvocationIndex; c < p.n_chunks; c += WG) {
        const float n = float(min(WG, p.S - c * WG));
        const uint o = (hg * p.n_chunks + c) * 2u;
        const float d = stats[o] - mean;
        acc += stats[o + 1u] + n * d * d;
    }
    const float m2 = wg_sum(acc);
    if (gl_LocalInvocationIndex == 0u) {          // final stats follow all chunk stats
        const uint o = (p.n_kv * G * p.n_chunks + hg) * 2u;
        stats[o] = mean;
        stats[o + 1u] = inversesqrt(m2 / float(p.S) + ZSCORE_EPS);
    }
}

void zscore_max(uint h, uint c) {
    const uint s = c * gl_WorkGroupSize.x + gl_LocalInvocationIndex;
    if (s >= p.S) return;
    const uint fin = p.n_kv * G * p.n_chunks * 2u;
    float best = -3.402823e38;
    for (uint g = 0u; g < G; g++) {
        const uint hg = h * G + g;
        best = max(best, (raw[hg * p.S + s] - stats[fin + 2u * hg]) * stats[fin + 2u * hg + 1u]);
    }
    out_s[h * p.S + s] = best;
}

void mean_over_heads(uint c) {
    const uint s = c * gl_WorkGroupSize.x + gl_LocalInvocationIndex;
    if (s >= p.S) return;
    float t = 0.0;
    for (uint h = 0u; h < p.n_kv; h++) t += out_s[h * p.S + s];
    out_s[p.n_kv * p.S + s] = t / float(p.n_kv);
}

void main() {
    if (p.pass_id == 0u) score_chunk(p.h0 + gl_WorkGroupID.y, gl_WorkGroupID.x);
    else if (p.pass_id == 1u) merge_stats(p.h0 * G + gl_WorkGroupID.x);
    else if (p.pass_id == 2u) zscore_max(p.h0 + gl_WorkGroupID.y, gl_WorkGroupID.x);
    else mean_over_heads(gl_WorkGroupID.x);
}
