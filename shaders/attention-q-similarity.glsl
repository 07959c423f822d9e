#version 450
// q-similarity of query rows, per (batch, head): see grilly_kv/ops/attention_q_similarity.py.
//
// Pass 0 (grid: n_splits x B*H): workgroup (s, bh) covers rows [start, end) of its chunk of the
//   window and writes partial[bh, s, 0..D] (PSTRIDE = D + 1 floats):
//     consecutive: partial[.., 0] = sum of cos(q_t, q_t+1) for pairs whose first row is in the chunk
//     pairwise:    partial[.., 0..D-1] = sum of q_t / max(|q_t|, eps),  partial[.., D] = sum |q^_t|^2
// Pass 1 (grid: B*H): one workgroup per row reduces its n_splits partials into out[bh].
// A subgroup handles one row (or pair) at a time, lanes striding over D/4 vec4s.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 128;     // head_dim, a multiple of 4
layout(constant_id = 2) const uint F16 = 0;     // 1: queries are packed float16
layout(constant_id = 3) const uint PAIRWISE = 0;
const uint NV = D / 4u;                           // vec4s per row
const uint PSTRIDE = D + 1u;
const uint MAX_SUBGROUPS = 128u;

layout(set = 0, binding = 0) readonly buffer Q32 { uvec4 q32[]; };
layout(set = 0, binding = 0) readonly buffer Q16 { uvec2 q16[]; };
layout(set = 0, binding = 1) buffer Partial { float partial[]; };
layout(set = 0, binding = 2) writeonly buffer Out { float qsim[]; };

layout(push_constant) uniform Push {
    uint S;          // rows per (b, h)
    uint W;          // window: the last W rows are used (1 <= W <= S)
    uint n_splits;   // chunks of the window
    uint chunk;      // rows (consecutive: pair starts) per chunk
    uint pass_id;    // 0: partial sums, 1: reduce
    uint eps_bits;   // norm clamp (float)
} p;

shared float sh_sum[MAX_SUBGROUPS];
shared float sh_inv[64];
shared vec4 sh_acc[gl_WorkGroupSize.x];

vec4 load_row(uint row_base, uint i) { return LOAD_VEC4(F16, q32, q16, row_base + i); }

void consecutive_partial(uint bh, uint s) {
    const uint first = p.S - p.W;                 // first row of the window
    const uint n_pairs = p.W - 1u;
    const uint a0 = s * p.chunk;
    const uint a1 = min(a0 + p.chunk, n_pairs);
    const float eps = PUSH_F(p.eps_bits);
    float local_sum = 0.0;
    for (uint a = a0 + gl_SubgroupID; a < a1; a += gl_NumSubgroups) {
        const uint r = (bh * p.S + first + a) * NV;
        float dot_ab = 0.0, na = 0.0, nb = 0.0;
        for (uint i = gl_SubgroupInvocationID; i < NV; i += gl_SubgroupSize) {
            const vec4 x = load_row(r, i);
            const vec4 y = load_row(r + NV, i);
            dot_ab += dot(x, y); na += dot(x, x); nb += dot(y, y);
        }
        dot_ab = subgroupAdd(dot_ab); na = subgroupAdd(na); nb = subgroupAdd(nb);
        local_sum += dot_ab / (max(sqrt(na), eps) * max(sqrt(nb), eps));
    }
    if (subgroupElect()) sh_sum[gl_SubgroupID] = local_sum;
    barrier();
    if (gl_LocalInvocationIndex == 0u) {
        float t = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++) t += sh_sum[g];
        partial[(bh * p.n_splits + s) * PSTRIDE] = t;
    }
}

void pairwise_partial(uint bh, uint s) {
    const uint first = p.S - p.W;
    const uint r0 = s * p.chunk;
    const uint r1 = min(r0 + p.chunk, p.W);
    const float eps = PUSH_F(p.eps_bits);
    const uint col = gl_LocalInvocationIndex % NV;      // this thread's vec4 column
    const uint grp = gl_LocalInvocationIndex / NV;      // its row group
    const uint n_grp = gl_WorkGroupSize.x / NV;
    vec4 acc = vec4(0.0);
    float sq = 0.0;                                      // sum of |q^|^2 (subgroup leaders)
    for (uint t0 = r0; t0 < r1; t0 += 64u) {
        const uint tn = min(64u, r1 - t0);
        // 1. inverse norms of this tile's rows, one subgroup per row
        for (uint t = gl_SubgroupID; t < tn; t += gl_NumSubgroups) {
            const uint r = (bh * p.S + first + t0 + t) * NV;
            float n2 = 0.0;
            for (uint i = gl_SubgroupInvocationID; i < NV; i += gl_SubgroupSize) {
                const vec4 x = load_row(r, i);
                n2 += dot(x, x);
            }
            n2 = subgroupAdd(n2);
            const float inv = 1.0 / max(sqrt(n2), eps);
            if (subgroupElect()) { sh_inv[t] = inv; sq += n2 * inv * inv; }
        }
        barrier();
        // 2. column sums of the normalised rows (rows re-read from cache)
        if (grp < n_grp) {
            for (uint t = grp; t < tn; t += n_grp) {
                acc += load_row((bh * p.S + first + t0 + t) * NV, col) * sh_inv[t];
            }
        }
        barrier();
    }
    if (subgroupElect()) sh_sum[gl_SubgroupID] = sq;
    sh_acc[gl_LocalInvocationIndex] = (grp < n_grp) ? acc : vec4(0.0);
    barrier();
    const uint base = (bh * p.n_splits + s) * PSTRIDE;
    if (gl_LocalInvocationIndex < NV) {
        vec4 v = vec4(0.0);
        for (uint g = 0u; g < n_grp; g++) v += sh_acc[g * NV + gl_LocalInvocationIndex];
        for (uint k = 0u; k < 4u; k++) partial[base + 4u * gl_LocalInvocationIndex + k] = v[k];
    }
    if (gl_LocalInvocationIndex == 0u) {
        float t = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++) t += sh_sum[g];
        partial[base + D] = t;
    }
}

void reduce(uint bh) {
    // thread d sums element d over the splits; then the workgroup forms the result
    const uint tid = gl_LocalInvocationIndex;
    float part = 0.0;
    if (PAIRWISE != 0u) {
        for (uint d = tid; d < D; d += gl_WorkGroupSize.x) {
            float v = 0.0;
            for (uint s = 0u; s < p.n_splits; s++) v += partial[(bh * p.n_splits + s) * PSTRIDE + d];
            part += v * v;                                   // |sum of q^|^2, partially
        }
    } else if (tid == 0u) {
        for (uint s = 0u; s < p.n_splits; s++) part += partial[(bh * p.n_splits + s) * PSTRIDE];
    }
    part = subgroupAdd(part);
    if (subgroupElect()) sh_sum[gl_SubgroupID] = part;
    barrier();
    if (tid == 0u) {
        float total = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++) total += sh_sum[g];
        const float w = float(p.W);
        float result = 1.0;                                  // one row: define q-similarity 1
        if (p.W > 1u) {
            if (PAIRWISE != 0u) {
                float diag = 0.0;
                for (uint s = 0u; s < p.n_splits; s++) diag += partial[(bh * p.n_splits + s) * PSTRIDE + D];
                result = (total - diag) / (w * (w - 1.0));
            } else {
                result = total / (w - 1.0);
            }
        }
        qsim[bh] = result;
    }
}

void main() {
    if (p.pass_id == 0u) {
        if (PAIRWISE != 0u) pairwise_partial(gl_WorkGroupID.y, gl_WorkGroupID.x);
        else consecutive_partial(gl_WorkGroupID.y, gl_WorkGroupID.x);
    } else {
        reduce(gl_WorkGroupID.x);
    }
}
