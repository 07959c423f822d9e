#version 450
// Decode mat-vec (one token) laid out for memory bandwidth: y[y_off + dest(n)] (+)= sum_k X'[k] W[n, k]
// for rows n < N, W read as raw GGUF blocks (the formats of model-matmul-q.glsl, FMT) and
// dequantised in registers; X', the epilogues and push constants are model-matmul-q.glsl's (MODE 0
// plain, 1 RMSNorm, 2 SwiGLU; ACC residual add; ROPE; token 0 only). See
// grilly_kv/ops/model_matmul_q.py (stream_plan) for the host side.
//
// A row's K is cut into units; LANES consecutive lanes (a row group) take units lane, lane + LANES,
// ..., UNR of them per pass with every load issued before the math (clamped indices, surplus sums
// dropped), so one load instruction of the group covers LANES consecutive units of the row. Each
// lane computes NR consecutive rows at once: the X' of a unit is loaded (from global memory, no
// shared-memory staging, no barrier) once for NR weight rows. Units:
//   PIECE = 1: 16 bytes of the row, one uvec4 load: F32 (4 elements), F16 / BF16 (8; rows of
//     K % 8 == 0), Q4_K / Q5_K (one sixteenth of a super-block's 128 B of nibbles: 16 values of
//     each of the sub-blocks 2p and 2p + 1; the block's 16-byte header d, dmin, 12 scale bytes is a
//     second uvec4 load, the same address for the 8 lanes of a super-block; Q5_K adds the uvec4 of
//     its high bits). The tensor and its rows start at multiples of 16 bytes.
//     Blocks of 18, 20, 34, 210 bytes start at even bytes: their 16-byte pieces are read by ld16
//     (the two aligned uvec4s that hold them, the second only when the piece is not aligned, then
//     a funnel shift by the piece's offset in its uvec4, which the lanes of a block share):
//     Q4_0 / Q4_1 one block per unit (16 bytes of nibbles, 32 values; d, m one word), Q8_0 half a
//     block (16 int8), Q6_K one eighth of a super-block (16 bytes of ql: the low and high nibbles
//     of 16 values of two sub-blocks, and the 16 bytes of qh that complete them; two int8 scales
//     and d). The weight buffer is a multiple of 16 bytes long (QuantWeights pads each tensor).
//   PIECE = 0: a 32-element chunk (dequant_chunk of gguf_blocks.glsl, 32-bit loads): Q5_0, Q5_1
//     and float rows of other widths.
// RMSNorm (MODE 1) needs no second pass: the units of a row group cover K once, so the sum of
// squares of X is accumulated from the loaded X and reduced with the dots. One reduction at the
// end: shuffles within a subgroup (LANES <= gl_SubgroupSize), else per-subgroup sums through
// shared memory.
// XS = 1: the workgroup first stages the whole row of X' (gain and SwiGLU applied once per
// workgroup instead of once per row group; 4 K bytes of shared memory) and its sum of squares,
// behind one barrier; the lanes then read X' from shared memory.
#include "common.glsl"
#include "cluster_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint FMT = 12;    // ggml type id of W
layout(constant_id = 2) const uint K = 256;     // input width (elements)
layout(constant_id = 3) const uint LANES = 32;  // lanes per row group (a power of 2)
layout(constant_id = 4) const uint NR = 1;      // rows per lane (rows per workgroup: WG / LANES * NR)
layout(constant_id = 5) const uint MODE = 0;    // 0 plain, 1 RMSNorm, 2 SwiGLU
layout(constant_id = 6) const uint ACC = 0;     // 1: add to Y instead of overwriting it
layout(constant_id = 7) const uint ROPE = 0;    // 1: RoPE epilogue on rows < rope_rows
layout(constant_id = 8) const uint HD = 64;     // head dim (ROPE)
layout(constant_id = 9) const uint UNR = 2;     // units per lane issued together
layout(constant_id = 10) const uint PIECE = 1;  // 1: 16-byte units (uvec4 loads), 0: 32-element chunks
layout(constant_id = 11) const uint XS = 0;     // 1: X' staged whole in shared memory (one barrier)

layout(set = 0, binding = 0) readonly buffer Wq { uint wq[]; };
layout(set = 0, binding = 0) readonly buffer Wq4 { uvec4 wq4[]; };   // the same bytes, 16 at a time
#include "gguf_blocks.glsl"
#include "matmul_q_io.glsl"

const uint MAX_SG = 64u;
const uint KV = K / 4u;                                 // vec4s of X' (K % 4 == 0)
const bool KQ = FMT == T_Q4_K || FMT == T_Q5_K;
const bool FLOATS = FMT == T_F32 || FMT == T_F16 || FMT == T_BF16;
const uint UNIT_ELEMS = PIECE == 0u ? 32u : FMT == T_F32 ? 4u : (FLOATS ? 8u : FMT == T_Q8_0 ? 16u : 32u);
const uint UNITS = PIECE == 0u ? CHUNKS : K / UNIT_ELEMS;   // units per row
const uint XV = UNIT_ELEMS / 4u;                        // vec4s of X' per unit
const uint GROUPS = gl_WorkGroupSize.x / LANES;         // row groups per workgroup
const uint ROWS_WG = GROUPS * NR;                       // rows per workgroup

shared float part[MAX_SG * (NR + 1u)];                  // per-subgroup sums (LANES > subgroup)
shared float outs[ROPE != 0u ? ROWS_WG : 1u];
shared vec4 xsh[XS != 0u ? KV : 1u];                    // XS: the row of X'
shared float red[XS != 0u && MODE == 1u ? MAX_SG : 1u]; // XS, MODE 1: per-subgroup sums of squares

// vec4 v (< KV: elements 4v..4v+3) of X' (zero past K); MODE 1 adds x.x to ss before the gain.
vec4 load_xp(uint v, inout float ss) {
    if (K % 32u != 0u && v >= KV) return vec4(0.0);
    vec4 a = x[p.x_off + v];
    if (MODE == 1u) { ss += dot(a, a); a *= g[p.g_off + v]; }
    if (MODE == 2u) a = a / (1.0 + exp(-a)) * x[p.x_off + KV + v];
    return a;
}

// Index in X' of vec4 j (< XV) of unit u: consecutive, except for K-quant pieces, whose vec4s 4..7
// (the 16 values of the high nibbles, sub-block 2p + 1) lie 32 elements after vec4s 0..3.
uint xv_at(uint u, uint j) {
    if (PIECE != 0u && KQ) {
        const uint i = u % 8u;   // piece of the super-block: pair i / 2, half i % 2
        return (u / 8u) * 64u + (i / 2u) * 16u + (i % 2u) * 4u + (j < 4u ? j : j + 4u);
    }
    if (PIECE != 0u && FMT == T_Q6_K) {   // values 128 h + 32 v + 16 hh + 0..15, and 64 further
        const uint i = u % 8u;
        return (u / 8u) * 64u + (i / 4u) * 32u + ((i / 2u) % 2u) * 8u + (i % 2u) * 4u + (j < 4u ? j : j + 12u);
    }
    return u * XV + j;
}

// 16 bytes from even byte b: the aligned uvec4 holding b and, when b is not aligned, the next one
// (inside the buffer: its length is a multiple of 16), funnel-shifted by b's offset.
uvec4 ld16(uint b) {
    const uint a = b >> 4u, s = b & 15u;
    const uvec4 A = wq4[a];
    if (s == 0u) return A;
    const uvec4 B = wq4[a + 1u];
    const uint ws = s >> 2u;
    uint c[5];
    [[unroll]] for (uint k = 0u; k < 5u; k++) {   // words ws + k of A, B
        const uint i = k + ws;
        c[k] = i == 0u ? A.x : i == 1u ? A.y : i == 2u ? A.z : i == 3u ? A.w
             : i == 4u ? B.x : i == 5u ? B.y : i == 6u ? B.z : B.w;
    }
    if ((s & 2u) == 0u) return uvec4(c[0], c[1], c[2], c[3]);
    return uvec4((c[0] >> 16u) | (c[1] << 16u), (c[1] >> 16u) | (c[2] << 16u),
                 (c[2] >> 16u) | (c[3] << 16u), (c[3] >> 16u) | (c[4] << 16u));
}

// Byte k (< 12) of a K-quant header's packed 6-bit scales and minima (header words 1..3).
uint hb(uvec4 hdr, uint k) {   // word chosen by selects, not a dynamic index (no local-memory copy)
    const uint w = k < 4u ? hdr.y : k < 8u ? hdr.z : hdr.w;
    return (w >> (8u * (k % 4u))) & 0xFFu;
}
vec2 scale_min_hdr(uvec4 hdr, uint s) {
    if (s < 4u) return vec2(float(hb(hdr, s) & 63u), float(hb(hdr, s + 4u) & 63u));
    const uint e = hb(hdr, s + 4u);
    return vec2(float((e & 15u) | ((hb(hdr, s - 4u) >> 6u) << 4u)), float((e >> 4u) | ((hb(hdr, s) >> 6u) << 4u)));
}

// The dot of unit u of the row starting at byte rb with the unit's X' (xv[0..XV)).
float unit_dot(uint rb, uint u, vec4 xv[8]) {
    if (PIECE == 0u) {
        vec4 w[8];
        dequant_chunk(rb, u, w);
        float d = 0.0;
        [[unroll]] for (uint j = 0u; j < 8u; j++) d += dot(w[j], xv[j]);
        return d;
    }
    if (FMT == T_F32) {
        return dot(uintBitsToFloat(wq4[(rb >> 4u) + u]), xv[0]);
    }
    if (FMT == T_F16 || FMT == T_BF16) {
        const uvec4 w = wq4[(rb >> 4u) + u];
        if (FMT == T_F16) {
            return dot(vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y)), xv[0])
                 + dot(vec4(unpackHalf2x16(w.z), unpackHalf2x16(w.w)), xv[1]);
        }
        return dot(uintBitsToFloat(uvec4(w.x << 16u, w.x & 0xFFFF0000u, w.y << 16u, w.y & 0xFFFF0000u)), xv[0])
             + dot(uintBitsToFloat(uvec4(w.z << 16u, w.z & 0xFFFF0000u, w.w << 16u, w.w & 0xFFFF0000u)), xv[1]);
    }
    if (FMT == T_Q4_0 || FMT == T_Q4_1) {   // block u: x[l] = d q + m, x[l + 16] from the high nibbles
        const uint b = rb + u * BLOCK_BYTES;
        const uvec4 qs = ld16(b + (FMT == T_Q4_1 ? 4u : 2u));
        const vec2 dm = FMT == T_Q4_1 ? unpackHalf2x16(wq[b >> 2u]) : vec2(rdh(b), 0.0);
        float qx = 0.0, sx = 0.0;
        [[unroll]] for (uint j = 0u; j < 4u; j++) {
            qx += dot(lo4(qs[j]), xv[j]) + dot(hi4(qs[j]), xv[4u + j]);
            sx += dot(vec4(1.0), xv[j]) + dot(vec4(1.0), xv[4u + j]);
        }
        return dm.x * qx + (FMT == T_Q4_1 ? dm.y : -8.0 * dm.x) * sx;
    }
    if (FMT == T_Q8_0) {                    // half u % 2 of block u / 2
        const uint b = rb + (u / 2u) * BLOCK_BYTES;
        const uvec4 qs = ld16(b + 2u + 16u * (u % 2u));
        float qx = 0.0;
        [[unroll]] for (uint j = 0u; j < 4u; j++) qx += dot(sbytes4(qs[j]), xv[j]);
        return rdh(b) * qx;
    }
    if (FMT == T_Q6_K) {                    // piece i of super-block u / 8: see xv_at
        const uint i = u % 8u, h = i / 4u, v = (i / 2u) % 2u, hh = i % 2u;
        const uint b = rb + (u / 8u) * BLOCK_BYTES;
        const uvec4 ql = ld16(b + 16u * i);
        const uvec4 qh = ld16(b + 128u + 32u * h + 16u * hh) >> (2u * v);
        float qx0 = 0.0, qx1 = 0.0, sx0 = 0.0, sx1 = 0.0;
        [[unroll]] for (uint j = 0u; j < 4u; j++) {
            const vec4 q0 = lo4(ql[j]) + 16.0 * vec4(uvec4(qh[j], qh[j] >> 8u, qh[j] >> 16u, qh[j] >> 24u) & 3u);
            const vec4 q1 = hi4(ql[j]) + 16.0 * vec4(uvec4(qh[j] >> 4u, qh[j] >> 12u, qh[j] >> 20u, qh[j] >> 28u) & 3u);
            qx0 += dot(q0, xv[j]);
            qx1 += dot(q1, xv[4u + j]);
            sx0 += dot(vec4(1.0), xv[j]);
            sx1 += dot(vec4(1.0), xv[4u + j]);
        }
        const uint sc = b + 192u + 8u * h + 2u * v + hh;   // scales[8 h + 2 u + hh] of quarters u = v, v + 2
        return rdh(b + 208u) * (float(rds8(sc)) * (qx0 - 32.0 * sx0) + float(rds8(sc + 4u)) * (qx1 - 32.0 * sx1));
    }
    // Q4_K / Q5_K: piece i of super-block sb; byte l = 16 (i % 2) + b of pair i / 2's 32 bytes
    // holds value l of sub-block 2 (i / 2) (low nibble) and of 2 (i / 2) + 1 (high nibble).
    const uint sb = u / 8u, i = u % 8u, s0 = (i / 2u) * 2u;
    const uint b16 = (rb >> 4u) + sb * (BLOCK_BYTES / 16u);
    const uvec4 hdr = wq4[b16];
    const uvec4 qs = wq4[b16 + (FMT == T_Q5_K ? 3u : 1u) + i];
    uvec4 qh = uvec4(0u);
    if (FMT == T_Q5_K) qh = wq4[b16 + 1u + i % 2u] >> s0;   // bit s of qh[l]: bit 4 of sub-block s's value l
    float qx0 = 0.0, qx1 = 0.0, sx0 = 0.0, sx1 = 0.0;
    [[unroll]] for (uint j = 0u; j < 4u; j++) {
        vec4 q0 = lo4(qs[j]), q1 = hi4(qs[j]);
        if (FMT == T_Q5_K) {
            q0 += 16.0 * vec4(uvec4(qh[j], qh[j] >> 8u, qh[j] >> 16u, qh[j] >> 24u) & 1u);
            q1 += 16.0 * vec4(uvec4(qh[j] >> 1u, qh[j] >> 9u, qh[j] >> 17u, qh[j] >> 25u) & 1u);
        }
        qx0 += dot(q0, xv[j]);
        qx1 += dot(q1, xv[4u + j]);
        sx0 += dot(vec4(1.0), xv[j]);
        sx1 += dot(vec4(1.0), xv[4u + j]);
    }
    const vec2 dm = unpackHalf2x16(hdr.x);
    const vec2 sm0 = scale_min_hdr(hdr, s0), sm1 = scale_min_hdr(hdr, s0 + 1u);
    return dm.x * (sm0.x * qx0 + sm1.x * qx1) - dm.y * (sm0.y * sx0 + sm1.y * sx1);
}

void main() {
    const uint SG = gl_SubgroupSize;
    const bool wide = LANES > SG;           // a row group spans LANES / SG whole subgroups
    const uint lane = wide ? (gl_SubgroupID % (LANES / SG)) * SG + gl_SubgroupInvocationID
                           : gl_SubgroupInvocationID % LANES;
    const uint grp = wide ? gl_SubgroupID / (LANES / SG) : gl_SubgroupID * (SG / LANES) + gl_SubgroupInvocationID / LANES;
    const uint n0 = gl_WorkGroupID.x * ROWS_WG + grp * NR;   // this group's first row

    uint rb[NR];
    float acc[NR];
    [[unroll]] for (uint r = 0u; r < NR; r++) {
        rb[r] = p.w_off + min(n0 + r, p.N - 1u) * ROW_BYTES;   // rows past N compute row N-1, write nothing
        acc[r] = 0.0;
    }
    float ss = 0.0;
    if (XS != 0u) {                         // stage X' (and its sum of squares) once
        float sq = 0.0;
        for (uint v = gl_LocalInvocationIndex; v < KV; v += gl_WorkGroupSize.x) xsh[v] = load_xp(v, sq);
        if (MODE == 1u) {
            sq = subgroupAdd(sq);
            if (subgroupElect()) red[gl_SubgroupID] = sq;
        }
        barrier();
        if (MODE == 1u) {
            for (uint k = 0u; k < gl_NumSubgroups; k++) ss += red[k];
        }
    }

    for (uint u0 = lane; u0 < UNITS; u0 += UNR * LANES) {
        [[unroll]] for (uint k = 0u; k < UNR; k++) {
            const uint u = min(u0 + k * LANES, UNITS - 1u);
            const bool ok = u0 + k * LANES < UNITS;
            vec4 xv[8];
            float sq = 0.0;
            [[unroll]] for (uint j = 0u; j < XV; j++) {
                const uint v = xv_at(u, j);
                xv[j] = XS == 0u ? load_xp(v, sq) : (K % 32u != 0u && v >= KV) ? vec4(0.0) : xsh[v];
            }
            [[unroll]] for (uint j = XV; j < 8u; j++) xv[j] = vec4(0.0);
            if (XS == 0u) ss += ok ? sq : 0.0;
            [[unroll]] for (uint r = 0u; r < NR; r++) {
                const float d = unit_dot(rb[r], u, xv);
                acc[r] += ok ? d : 0.0;
            }
        }
    }

    // one reduction: the row group's lanes (and, for MODE 1, the sum of squares)
    if (wide) {                             // uniform over the workgroup
        [[unroll]] for (uint r = 0u; r < NR; r++) {
            const float q = subgroupAdd(acc[r]);
            if (subgroupElect()) part[gl_SubgroupID * (NR + 1u) + r] = q;
        }
        const float q = subgroupAdd(ss);
        if (subgroupElect()) part[gl_SubgroupID * (NR + 1u) + NR] = q;
        barrier();
        [[unroll]] for (uint r = 0u; r <= NR; r++) {
            float v = 0.0;
            for (uint k = 0u; k < LANES / SG; k++) v += part[(grp * (LANES / SG) + k) * (NR + 1u) + r];
            if (r < NR) acc[r] = v; else if (XS == 0u) ss = v;
        }
    } else {
        [[unroll]] for (uint r = 0u; r < NR; r++) acc[r] = cluster_add(acc[r], LANES);
        if (MODE == 1u && XS == 0u) ss = cluster_add(ss, LANES);
    }
    if (MODE == 1u) {
        const float rs = inversesqrt(ss / float(K) + PUSH_F(p.eps_bits));
        [[unroll]] for (uint r = 0u; r < NR; r++) acc[r] *= rs;
    }

    uint dest[NR];
    [[unroll]] for (uint r = 0u; r < NR; r++) dest[r] = n0 + r;
    if (ROPE != 0u) {                       // rows 2i, 2i + 1 of a head: both in this workgroup
        if (lane == 0u) {
            [[unroll]] for (uint r = 0u; r < NR; r++) outs[grp * NR + r] = acc[r];
        }
        barrier();
        [[unroll]] for (uint r = 0u; r < NR; r++) {
            const uint n = n0 + r, at = grp * NR + r;
            if (n < p.rope_rows) {
                const uint hp = n % HD, i = hp / 2u, odd = hp & 1u;
                dest[r] = n - hp + odd * (HD / 2u) + i;
                const uint pos = step[0];
                const float cs = table[pos * HD + i], sn = table[pos * HD + HD / 2u + i];
                const float a = outs[at & ~1u], b = outs[at | 1u];
                acc[r] = odd == 0u ? a * cs - b * sn : b * cs + a * sn;
            }
        }
    }
    if (lane == 0u) {
        [[unroll]] for (uint r = 0u; r < NR; r++) {
            if (n0 + r < p.N) {
                const uint o = p.y_off + dest[r];
                y[o] = (ACC != 0u ? y[o] : 0.0) + acc[r];
            }
        }
    }
}
