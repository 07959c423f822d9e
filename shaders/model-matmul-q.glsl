#version 450
// Y[t, y_off + dest(n)] (+)= sum_k X'[t, k] * W[n, k] for tokens t < T and rows n < N, W read as
// raw GGUF blocks (any of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K: the
// specialisation constant FMT) and dequantised in registers: see grilly_kv/ops/model_matmul_q.py.
// X' is X itself (MODE 0), g * X with RMSNorm applied after the dot (MODE 1: y = rsqrt(mean(x^2) +
// eps) * sum_k w_k g_k x_k), or silu(X[t, :K]) * X[t, K:] (MODE 2, SwiGLU). With ROPE = 1, rows
// n < rope_rows are q/k rows in GGUF's interleaved-pair order (rows 2i, 2i+1 of a head of HD rows
// rotate together by angle pos * theta^(-2i/HD), table from reference.model_rope.rope_table, pos =
// step[0] + t) and are written rotated to rotate-half order (2i -> i, 2i+1 -> i + HD/2 of their head).
//
// Workgroup (x, y) computes rows [x*ROWS, x*ROWS + ROWS) for tokens [y*TT, y*TT + TT): each weight
// chunk (32 elements) is dequantised once and dotted with TT token rows (a prefill tile reads the
// weights once per TT tokens). K is walked in slabs of KS elements: the workgroup stages the slab
// of X' for its TT tokens in shared memory (plane-major, so the lanes of a row read consecutive
// vec4s), then each row's LANES = WG / ROWS lanes take the slab's chunks round robin, UNR at a time. Lane sums
// meet by shuffles within a subgroup, across subgroups through shared memory when a row is wider
// than the subgroup (gl_SubgroupSize decides at run time; the host's choice only affects speed).
//
// ACTQ != 0 rounds the staged X' slab as llama.cpp's CPU backend converts a matrix product's
// activations to the weight type's vec_dot_type (grilly_kv/reference/ggml_rounding.py):
// 1 Q8_0 and 2 Q8_1 (blocks of 32 = one chunk: d = amax / 127 stored as float16, q = roundEven(x *
// (127 / amax)), X' = fp16(d) q; Q8_1 adds m_w (fp16(d sum q) - fp16(d) sum q) per weight block,
// its float16 block sum meeting the Q4_1 / Q5_1 block minimum m_w), 3 Q8_K (blocks of 256 = 8
// chunks, KS a multiple of 256: iscale = -127 / max (max: the value of largest magnitude), q =
// min(127, roundEven(iscale x)), X' = q / iscale), 4 float16, 5 bfloat16 (nearest even). With MODE 1
// the RMSNorm is then applied before the dot (X' = (x rsqrt(mean(x^2) + eps)) g, rounded, from a
// first pass over the row for the sums of squares), as llama.cpp normalises before quantising: the
// integers q are scale-invariant but the float16 d is not (fp16(s d) != s fp16(d)). The rounding
// reads and writes the slab through xs_at, so it holds in both layouts (COAL adds Q8_1's block
// correction once per chunk, on the chunk's lane q = 0).
// COAL = 1 (coalesced decode; LANES a multiple of 8): 8 neighbouring lanes share each chunk, lane
// q of them dequantising its vec4 q (dequant_vec4), so neighbouring lanes read neighbouring bytes
// of a block and neighbouring 8-lane groups neighbouring chunks; a row's LANES / 8 groups take the
// slab's chunks round robin, UNR at a time. X' is then staged chunk-major (xs_at) so the lanes'
// shared loads are consecutive vec4s too. Staging, reduction and epilogues are the same code.
#include "common.glsl"
#include "cluster_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint FMT = 2;     // ggml type id of W
layout(constant_id = 2) const uint K = 256;     // input width (elements), a multiple of the block
layout(constant_id = 3) const uint ROWS = 4;    // output rows per workgroup (LANES = WG / ROWS, a power of 2)
layout(constant_id = 4) const uint TT = 1;      // tokens per workgroup
layout(constant_id = 5) const uint MODE = 0;    // 0 plain, 1 RMSNorm, 2 SwiGLU
layout(constant_id = 6) const uint ACC = 0;     // 1: add to Y instead of overwriting it
layout(constant_id = 7) const uint KS = 256;    // slab width (elements), a multiple of 32
layout(constant_id = 8) const uint ROPE = 0;    // 1: RoPE epilogue on rows < rope_rows
layout(constant_id = 9) const uint HD = 64;     // head dim (ROPE)
layout(constant_id = 10) const uint UNR = 1;    // chunks per lane issued together
layout(constant_id = 11) const uint XSH = 0;    // 1 (LANES = 1, subgroup size a multiple of 8): each
                                                // lane loads one of a chunk's 8 X' vec4s, shuffles share them
layout(constant_id = 12) const uint COAL = 0;   // 1: 8 lanes per chunk, a vec4 each (coalesced loads)
layout(constant_id = 13) const uint ACTQ = 0;   // X' rounding: 0 none, 1 Q8_0, 2 Q8_1, 3 Q8_K, 4 F16, 5 BF16

layout(set = 0, binding = 0) readonly buffer Wq { uint wq[]; };
#include "gguf_blocks.glsl"
#include "matmul_q_io.glsl"

const uint MAX_SG = 64u;
const uint LANES = gl_WorkGroupSize.x / ROWS;
const uint CPS = KS / 32u;                  // chunks per slab
const uint KV = K / 4u;                     // vec4s of X' per token
const uint SLABS = (K + KS - 1u) / KS;

shared vec4 xs[8u * TT * CPS];              // X' slab: vec4 q of chunk cc of token j at xs_at(q, j, cc)
shared float red[TT * MAX_SG];              // per-subgroup sums of squares (MODE 1)
shared float part[TT * MAX_SG];             // per-subgroup partial dots (rows wider than a subgroup)
shared float outs[ROPE != 0u ? TT * ROWS : 1u];
shared float dsum[ACTQ == 2u ? TT * CPS : 1u];  // Q8_1: per (token, chunk) fp16(d sum q) - fp16(d) sum q
shared float rsn[TT];                           // MODE 1 with ACTQ: rsqrt(mean(x^2) + eps) per token

const bool NORM_FIRST = MODE == 1u && ACTQ != 0u;   // RMSNorm applied while staging (see above)

// Index in xs of vec4 q (< 8) of the slab's chunk cc for token j: plane-major (the lanes of a row
// take different chunks), or chunk-major with COAL (the 8 lanes of a chunk take its 8 vec4s).
uint xs_at(uint q, uint j, uint cc) { return COAL != 0u ? (j * CPS + cc) * 8u + q : (q * TT + j) * CPS + cc; }

#define f16r f16_round      // common.glsl: rounding NVIDIA's compiler does not fold away
#define f16r4 f16_round4
vec4 bf16r4(vec4 v) {
    const uvec4 u = floatBitsToUint(v);
    return uintBitsToFloat((u + 0x7FFFu + ((u >> 16u) & 1u)) & 0xFFFF0000u);
}

// Q8_0 / Q8_1 of the 32 values of chunk cc of token j in xs, in place; Q8_1's sum difference to dsum.
void round_q8_chunk(uint j, uint cc) {
    float amax = 0.0;
    [[unroll]] for (uint q = 0u; q < 8u; q++) {
        const vec4 a = abs(xs[xs_at(q, j, cc)]);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    const float d = amax / 127.0, dh = f16r(d);
    const float id = amax != 0.0 ? 127.0 / amax : 0.0;
    float qs = 0.0;
    [[unroll]] for (uint q = 0u; q < 8u; q++) {
        const vec4 v = roundEven(xs[xs_at(q, j, cc)] * id);
        qs += v.x + v.y + v.z + v.w;
        xs[xs_at(q, j, cc)] = dh * v;
    }
    if (ACTQ == 2u) dsum[j * CPS + cc] = f16r(d * qs) - dh * qs;
}

// Q8_K of the 256 values of chunks [c0, c0 + 8) of token j in xs, in place.
void round_q8k_block(uint j, uint c0) {
    float amax = 0.0, mx = 0.0;
    for (uint c = c0; c < c0 + 8u; c++) {
        [[unroll]] for (uint q = 0u; q < 8u; q++) {
            const vec4 a = xs[xs_at(q, j, c)];
            [[unroll]] for (uint e = 0u; e < 4u; e++) {
                if (abs(a[e]) > amax) { amax = abs(a[e]); mx = a[e]; }
            }
        }
    }
    const float iscale = amax != 0.0 ? -127.0 / mx : 0.0;
    const float d = iscale != 0.0 ? 1.0 / iscale : 0.0;
    for (uint c = c0; c < c0 + 8u; c++) {
        [[unroll]] for (uint q = 0u; q < 8u; q++) {
            const uint at = xs_at(q, j, c);
            xs[at] = d * min(vec4(127.0), roundEven(iscale * xs[at]));
        }
    }
}

// Round the staged slab (ACTQ 1..3: one block per invocation at a time; 4, 5 are done while staging).
void round_slab() {
    if (ACTQ == 1u || ACTQ == 2u) {
        for (uint i = gl_LocalInvocationIndex; i < TT * CPS; i += gl_WorkGroupSize.x) round_q8_chunk(i / CPS, i % CPS);
    } else if (ACTQ == 3u) {
        for (uint i = gl_LocalInvocationIndex; i < TT * (CPS / 8u); i += gl_WorkGroupSize.x)
            round_q8k_block(i / (CPS / 8u), (i % (CPS / 8u)) * 8u);
    }
}

// MODE 1 with ACTQ: rsn[j] = rsqrt(mean(x^2) + eps) of each token's whole row (before staging).
void row_norms(uint t0) {
    [[unroll]] for (uint j = 0u; j < TT; j++) {
        const uint xr = p.x_off + min(t0 + j, p.T - 1u) * p.x_stride;
        float q = 0.0;
        for (uint v = gl_LocalInvocationIndex; v < KV; v += gl_WorkGroupSize.x) q += dot(x[xr + v], x[xr + v]);
        q = subgroupAdd(q);
        if (subgroupElect()) red[j * MAX_SG + gl_SubgroupID] = q;
    }
    barrier();
    if (gl_LocalInvocationIndex < TT) {
        float q = 0.0;
        for (uint k = 0u; k < gl_NumSubgroups; k++) q += red[gl_LocalInvocationIndex * MAX_SG + k];
        rsn[gl_LocalInvocationIndex] = 1.0 / sqrt(q / float(K) + PUSH_F(p.eps_bits));   // as ggml: 1.0f / sqrtf
    }
    barrier();
}

void main() {
    const uint WG = gl_WorkGroupSize.x;
    const uint tid = gl_LocalInvocationIndex;
    const uint SG = gl_SubgroupSize;
    const bool wide = LANES > SG;           // a row spans LANES / SG whole subgroups
    const uint lane = wide ? (gl_SubgroupID % (LANES / SG)) * SG + gl_SubgroupInvocationID
                           : gl_SubgroupInvocationID % LANES;
    const uint r = wide ? gl_SubgroupID / (LANES / SG) : gl_SubgroupID * (SG / LANES) + gl_SubgroupInvocationID / LANES;
    const uint n_out = gl_WorkGroupID.x * ROWS + r;
    const uint n = min(n_out, p.N - 1u);    // rows past N compute row N-1, write nothing
    const uint t0 = gl_WorkGroupID.y * TT;
    const uint rb = p.w_off + n * ROW_BYTES;

    float acc[TT], ss[TT];
    [[unroll]] for (uint j = 0u; j < TT; j++) { acc[j] = 0.0; ss[j] = 0.0; }

    if (NORM_FIRST) row_norms(t0);
    for (uint s = 0u; s < SLABS; s++) {
        const uint v0 = s * (KS / 4u);
        if (s > 0u) barrier();              // the previous slab is read by everyone
        [[unroll]] for (uint j = 0u; j < TT; j++) {   // stage X' (tokens past T: token T-1)
            const uint xr = p.x_off + min(t0 + j, p.T - 1u) * p.x_stride;
            for (uint v = tid; v < KS / 4u; v += WG) {
                vec4 a = vec4(0.0);
                if (v0 + v < KV) {
                    a = x[xr + v0 + v];
                    if (NORM_FIRST) a = (a * rsn[j]) * g[p.g_off + v0 + v];
                    else if (MODE == 1u) { ss[j] += dot(a, a); a *= g[p.g_off + v0 + v]; }
                    if (MODE == 2u) a = a / (1.0 + exp(-a)) * x[xr + KV + v0 + v];
                    if (ACTQ == 4u) a = f16r4(a);
                    if (ACTQ == 5u) a = bf16r4(a);
                }
                xs[xs_at(v % 8u, j, v / 8u)] = a;
            }
        }
        barrier();
        if (ACTQ >= 1u && ACTQ <= 3u) {
            round_slab();
            barrier();
        }
        // UNR chunks per lane per iteration, their loads unconditional (clamped indices, the
        // surplus chunks' sums dropped) so the compiler can issue them all before the math.
        const uint c_end = min(CPS, CHUNKS - s * CPS);    // chunks of this slab inside the row
        if (COAL != 0u) {                   // lane q of 8-lane group cg: vec4 q of chunks cg, cg + LANES / 8, ...
            const uint q = lane % 8u, CG = LANES / 8u;
            for (uint cc0 = lane / 8u; cc0 < c_end; cc0 += UNR * CG) {
                [[unroll]] for (uint u = 0u; u < UNR; u++) {
                    const uint cc = min(cc0 + u * CG, c_end - 1u);
                    const vec4 w = dequant_vec4(rb, s * CPS + cc, q);
                    const bool ok = cc0 + u * CG < c_end;
                    const float mw = ACTQ == 2u && q == 0u ? rdh(rb + (s * CPS + cc) * BLOCK_BYTES + 2u) : 0.0;
                    [[unroll]] for (uint j = 0u; j < TT; j++) {
                        float d = dot(w, xs[xs_at(q, j, cc)]);
                        if (ACTQ == 2u) d += mw * dsum[j * CPS + cc];   // Q8_1: once per chunk (lane q = 0)
                        acc[j] += ok ? d : 0.0;
                    }
                }
            }
        } else {
            for (uint cc0 = lane; cc0 < c_end; cc0 += UNR * LANES) {
                [[unroll]] for (uint u = 0u; u < UNR; u++) {
                    const uint cc = min(cc0 + u * LANES, c_end - 1u);
                    vec4 w[8];
                    dequant_chunk(rb, s * CPS + cc, w);
                    const bool ok = cc0 + u * LANES < c_end;
                    [[unroll]] for (uint j = 0u; j < TT; j++) {
                        float d = 0.0;
                        if (XSH != 0u) {                // cc is uniform here (LANES = 1): one shared load per lane
                            const uint base = gl_SubgroupInvocationID & ~7u;
                            const vec4 xl = xs[xs_at(gl_SubgroupInvocationID & 7u, j, cc)];
                            [[unroll]] for (uint q = 0u; q < 8u; q++) d += dot(w[q], subgroupShuffle(xl, base + q));
                        } else {
                            [[unroll]] for (uint q = 0u; q < 8u; q++) d += dot(w[q], xs[xs_at(q, j, cc)]);
                        }
                        if (ACTQ == 2u) d += rdh(rb + (s * CPS + cc) * BLOCK_BYTES + 2u) * dsum[j * CPS + cc];
                        acc[j] += ok ? d : 0.0;
                    }
                }
            }
        }
    }

    if (MODE == 1u && !NORM_FIRST) {
        [[unroll]] for (uint j = 0u; j < TT; j++) {
            const float q = subgroupAdd(ss[j]);
            if (subgroupElect()) red[j * MAX_SG + gl_SubgroupID] = q;
        }
    }
    if (wide) {                              // uniform over the workgroup
        [[unroll]] for (uint j = 0u; j < TT; j++) {
            const float q = subgroupAdd(acc[j]);
            if (subgroupElect()) part[j * MAX_SG + gl_SubgroupID] = q;
        }
    }
    barrier();
    [[unroll]] for (uint j = 0u; j < TT; j++) {
        float v = 0.0;
        if (wide) {
            for (uint k = 0u; k < LANES / SG; k++) v += part[j * MAX_SG + r * (LANES / SG) + k];
        } else {
            v = cluster_add(acc[j], LANES);
        }
        if (MODE == 1u && !NORM_FIRST) {
            float q = 0.0;
            for (uint k = 0u; k < gl_NumSubgroups; k++) q += red[j * MAX_SG + k];
            v *= inversesqrt(q / float(K) + PUSH_F(p.eps_bits));
        }
        acc[j] = v;
    }

    uint dest = n_out;
    const bool rot = ROPE != 0u && n_out < p.rope_rows;
    if (ROPE != 0u) {
        if (lane == 0u) {
            [[unroll]] for (uint j = 0u; j < TT; j++) outs[j * ROWS + r] = acc[j];
        }
        barrier();
        if (rot) {
            const uint hp = n_out % HD, i = hp / 2u, odd = hp & 1u;
            dest = n_out - hp + odd * (HD / 2u) + i;
            [[unroll]] for (uint j = 0u; j < TT; j++) {
                const uint pos = step[0] + min(t0 + j, p.T - 1u);
                const float cs = table[pos * HD + i], sn = table[pos * HD + HD / 2u + i];
                const float a = outs[j * ROWS + (r & ~1u)], b = outs[j * ROWS + (r | 1u)];
                acc[j] = odd == 0u ? a * cs - b * sn : b * cs + a * sn;
            }
        }
    }
    if (lane == 0u && n_out < p.N) {
        [[unroll]] for (uint j = 0u; j < TT; j++) {
            if (t0 + j < p.T) {
                const uint o = p.y_off + (t0 + j) * p.y_stride + dest;
                y[o] = (ACC != 0u ? y[o] : 0.0) + acc[j];
            }
        }
    }
}
