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
const uint TILE = 128u;
shared float sh_inv[TILE];          // 1 / clamped norm of the scaled row
shared int sh_exp[TILE];            // its scale exponent
shared vec4 sh_acc[gl_WorkGroupSize.x];

vec4 load_row(uint row_base, uint i) { return LOAD_VEC4(F16, q32, q16, row_base + i); }

// Scale safety: each row is first scaled by a power of two, 2^-e with max|x| = f 2^e, f in
// [0.5, 1) (exact, ldexp), so squares and dot products never overflow float32 for any finite
// input; |x| = |x 2^-e| 2^e and the norm clamp becomes max(|x 2^-e|, eps 2^-e).
float abs_max4(vec4 x) { const vec4 a = abs(x); return max(max(a.x, a.y), max(a.z, a.w)); }

// Exponent e of a row (whole subgroup): max|x| = f 2^e with f in [0.5, 1); 0 for a zero row.
int row_exponent(uint row_base) {
    float mx = 0.0;
    for (uint i = gl_SubgroupInvocationID; i < NV; i += gl_SubgroupSize) mx = max(mx, abs_max4(load_row(row_base, i)));
    int e;
    frexp(subgroupMax(mx), e);
    return e;
}

vec4 load_scaled(uint row_base, uint i, int e) { return ldexp(load_row(row_base, i), ivec4(-e)); }

// Each subgroup takes 4 neighbouring pairs (5 rows) per step, so that 5 row loads are in
// flight per lane before the reductions: memory-level parallelism is what bounds this kernel.
void consecutive_partial(uint bh, uint s) {
    const uint first = p.S - p.W;                 // first row of the window
    const uint n_pairs = p.W - 1u;
    const uint a0 = s * p.chunk;
    const uint a1 = min(a0 + p.chunk, n_pairs);
    const float eps = PUSH_F(p.eps_bits);
    const uint base = bh * p.S + first;
    float local_sum = 0.0;
    for (uint a = a0 + 4u * gl_SubgroupID; a < a1; a += 4u * gl_NumSubgroups) {
        const uint last = min(a + 4u, a1);        // rows a .. last are used
        int e[5];
        [[unroll]] for (uint k = 0u; k < 5u; k++) e[k] = row_exponent((base + min(a + k, last)) * NV);
        float d[4] = float[4](0.0, 0.0, 0.0, 0.0);
        float n[5] = float[5](0.0, 0.0, 0.0, 0.0, 0.0);
        for (uint i = gl_SubgroupInvocationID; i < NV; i += gl_SubgroupSize) {
            vec4 x[5];
            [[unroll]] for (uint k = 0u; k < 5u; k++) x[k] = load_scaled((base + min(a + k, last)) * NV, i, e[k]);
            [[unroll]] for (uint k = 0u; k < 4u; k++) d[k] += dot(x[k], x[k + 1u]);
            [[unroll]] for (uint k = 0u; k < 5u; k++) n[k] += dot(x[k], x[k]);
        }
        [[unroll]] for (uint k = 0u; k < 5u; k++) n[k] = max(sqrt(subgroupAdd(n[k])), ldexp(eps, -e[k]));
        [[unroll]] for (uint k = 0u; k < 4u; k++) {
            const float dk = subgroupAdd(d[k]);
            if (a + k < last) local_sum += dk / (n[k] * n[k + 1u]);
        }
    }
    if (subgroupElect()) sh_sum[gl_SubgroupID] = local_sum;
    barrier();
    if (gl_LocalInvocationIndex == 0u) {
        float t = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++) t += sh_sum[g];
        partial[(bh * p.n_splits + s) * PSTRIDE] = t;
    }
}

// Tiles of TILE rows: (1) a subgroup computes the inverse norms of 4 rows per step; (2) every
// thread owns one vec4 column of a row group and sums the normalised rows (re-read from cache).
void pairwise_partial(uint bh, uint s) {
    const uint first = p.S - p.W;
    const uint r0 = s * p.chunk;
    const uint r1 = min(r0 + p.chunk, p.W);
    const float eps = PUSH_F(p.eps_bits);
    const uint base = bh * p.S + first;
    const uint col = gl_LocalInvocationIndex % NV;      // this thread's vec4 column
    const uint grp = gl_LocalInvocationIndex / NV;      // its row group
    const uint n_grp = gl_WorkGroupSize.x / NV;
    vec4 acc = vec4(0.0);
    float sq = 0.0;                                      // sum of |q^|^2 (subgroup leaders)
    for (uint t0 = r0; t0 < r1; t0 += TILE) {
        const uint tn = min(TILE, r1 - t0);
        for (uint t = 4u * gl_SubgroupID; t < tn; t += 4u * gl_NumSubgroups) {
            float n2[4] = float[4](0.0, 0.0, 0.0, 0.0);
            int e[4];
            [[unroll]] for (uint k = 0u; k < 4u; k++) e[k] = row_exponent((base + t0 + min(t + k, tn - 1u)) * NV);
            for (uint i = gl_SubgroupInvocationID; i < NV; i += gl_SubgroupSize) {
                vec4 x[4];
                [[unroll]] for (uint k = 0u; k < 4u; k++) x[k] = load_scaled((base + t0 + min(t + k, tn - 1u)) * NV, i, e[k]);
                [[unroll]] for (uint k = 0u; k < 4u; k++) n2[k] += dot(x[k], x[k]);
            }
            [[unroll]] for (uint k = 0u; k < 4u; k++) {
                const float nk = subgroupAdd(n2[k]);
                const float inv = 1.0 / max(sqrt(nk), ldexp(eps, -e[k]));
                if (subgroupElect() && t + k < tn) { sh_inv[t + k] = inv; sh_exp[t + k] = e[k]; sq += nk * inv * inv; }
            }
        }
        barrier();
        if (grp < n_grp) {
            for (uint t = grp; t < tn; t += n_grp) acc += load_scaled((base + t0 + t) * NV, col, sh_exp[t]) * sh_inv[t];
        }
        barrier();
    }
    if (subgroupElect()) sh_sum[gl_SubgroupID] = sq;
    sh_acc[gl_LocalInvocationIndex] = (grp < n_grp) ? acc : vec4(0.0);
    barrier();
    const uint dst = (bh * p.n_splits + s) * PSTRIDE;
    if (gl_LocalInvocationIndex < NV) {
        vec4 v = vec4(0.0);
        for (uint g = 0u; g < n_grp; g++) v += sh_acc[g * NV + gl_LocalInvocationIndex];
        for (uint k = 0u; k < 4u; k++) partial[dst + 4u * gl_LocalInvocationIndex + k] = v[k];
    }
    if (gl_LocalInvocationIndex == 0u) {
        float t = 0.0;
        for (uint g = 0u; g < gl_NumSubgroups; g++) t += sh_sum[g];
        partial[dst + D] = t;
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
