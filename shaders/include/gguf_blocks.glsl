// Dequantisation of GGUF (ggml) weight blocks read straight from the file's raw bytes.
// Include after common.glsl, after declaring
//     readonly buffer ... { uint wq[]; };     (the raw tensor bytes as little-endian uint32 words)
//     const uint FMT, K;                        (ggml type id, row length in elements)
// The unit of work is a chunk: 32 consecutive elements of one row (one block of the 32-element
// formats, one eighth of a 256-element K-quant super-block, 32 elements of F32/F16/BF16, the last
// chunk of a float row possibly partial). dequant_chunk() returns its 32 values as 8 vec4s.
//
// Every block size is even (18, 20, 22, 24, 34, 144, 176, 210 bytes), and rows start at even byte
// offsets, so a 16-bit field never straddles a word; 32-bit reads may start at any byte (rd32).
// Block layouts (ggml's; NumPy twins in gguf.quants):
//   Q4_0 (18 B): f16 d, 16 B qs          x[j] = d * ((qs[j] & 15) - 8), x[j+16] = d * ((qs[j] >> 4) - 8)
//   Q4_1 (20 B): f16 d, f16 m, 16 B qs   x = d * q + m
//   Q5_0 (22 B): f16 d, u32 qh, 16 B qs  q[j] |= bit j of qh << 4; x = d * (q - 16)
//   Q5_1 (24 B): f16 d, f16 m, u32 qh, 16 B qs
//   Q8_0 (34 B): f16 d, 32 x int8        x = d * q
//   Q4_K (144 B): f16 d, f16 dmin, 12 B packed 6-bit (scale, min) x 8, 128 B qs; sub-block s
//        (32 values) = nibble (s & 1) of qs[32 (s/2) + l]; x = d * sc[s] * q - dmin * mn[s]
//   Q5_K (176 B): as Q4_K plus 32 B qh before qs: bit s of qh[l] is bit 4 of sub-block s's value l
//   Q6_K (210 B): 128 B ql, 64 B qh, 16 x int8 scales, f16 d. Half h = s / 4, quarter u = s % 4:
//        low 4 bits = nibble (u >> 1) of ql[64 h + 32 (u & 1) + l], high 2 bits = (qh[32 h + l] >> 2u) & 3,
//        x = d * scales[8 h + 2 u + l / 16] * (q - 32)
#ifndef GRILLY_KV_GGUF_BLOCKS_GLSL
#define GRILLY_KV_GGUF_BLOCKS_GLSL

// ggml type ids (GGMLQuantizationType)
const uint T_F32 = 0u, T_F16 = 1u, T_Q4_0 = 2u, T_Q4_1 = 3u, T_Q5_0 = 6u, T_Q5_1 = 7u, T_Q8_0 = 8u;
const uint T_Q4_K = 12u, T_Q5_K = 13u, T_Q6_K = 14u, T_BF16 = 30u;

const uint BLOCK_ELEMS = (FMT == T_Q4_K || FMT == T_Q5_K || FMT == T_Q6_K) ? 256u
                       : (FMT == T_F32 || FMT == T_F16 || FMT == T_BF16) ? 1u : 32u;
const uint BLOCK_BYTES = FMT == T_F32 ? 4u : (FMT == T_F16 || FMT == T_BF16) ? 2u
                       : FMT == T_Q4_0 ? 18u : FMT == T_Q4_1 ? 20u : FMT == T_Q5_0 ? 22u
                       : FMT == T_Q5_1 ? 24u : FMT == T_Q8_0 ? 34u : FMT == T_Q4_K ? 144u
                       : FMT == T_Q5_K ? 176u : 210u;
const uint ROW_BYTES = K / BLOCK_ELEMS * BLOCK_BYTES;   // bytes of one weight row
const uint CHUNKS = (K + 31u) / 32u;                     // 32-element chunks per row

uint rd8(uint b) { return (wq[b >> 2u] >> ((b & 3u) * 8u)) & 0xFFu; }
uint rd16(uint b) { return (wq[b >> 2u] >> ((b & 2u) * 8u)) & 0xFFFFu; }   // b even
float rdh(uint b) { return unpackHalf2x16(rd16(b)).x; }                      // f16 at even b
int rds8(uint b) { return int(rd8(b) << 24u) >> 24; }                         // int8
// 4 bytes from any byte offset (never reads a word past the last byte asked for)
uint rd32(uint b) {
    const uint s = (b & 3u) * 8u, w0 = wq[b >> 2u];
    return s == 0u ? w0 : (w0 >> s) | (wq[(b >> 2u) + 1u] << (32u - s));
}
vec4 bytes4(uint w) { return vec4(uvec4(w, w >> 8u, w >> 16u, w >> 24u) & 0xFFu); }
vec4 lo4(uint w) { return vec4(uvec4(w, w >> 8u, w >> 16u, w >> 24u) & 0xFu); }
vec4 hi4(uint w) { return vec4(uvec4(w >> 4u, w >> 12u, w >> 20u, w >> 28u) & 0xFu); }
vec4 sbytes4(uint w) {   // 4 int8
    const ivec4 v = ivec4(int(w << 24u), int(w << 16u), int(w << 8u), int(w)) >> 24;
    return vec4(v);
}
vec4 bits4(uint qh, uint j) { return vec4(uvec4(qh >> j, qh >> (j + 1u), qh >> (j + 2u), qh >> (j + 3u)) & 1u); }

// Q4_K / Q5_K: 6-bit scale and min of sub-block s from the 12 packed bytes at b
vec2 scale_min_k4(uint b, uint s) {
    if (s < 4u) return vec2(float(rd8(b + s) & 63u), float(rd8(b + s + 4u) & 63u));
    const uint e = rd8(b + s + 4u);
    return vec2(float((e & 15u) | ((rd8(b + s - 4u) >> 6u) << 4u)), float((e >> 4u) | ((rd8(b + s) >> 6u) << 4u)));
}

// The 32 values of chunk c of the row starting at byte rb (elements >= K: zero, not read).
void dequant_chunk(uint rb, uint c, out vec4 v[8]) {
    if (FMT == T_F32 || FMT == T_F16 || FMT == T_BF16) {
        [[unroll]] for (uint g = 0u; g < 8u; g++) {
            const uint e = 32u * c + 4u * g;
            v[g] = vec4(0.0);
            if (K % 32u != 0u && e >= K) continue;
            if (FMT == T_F32) {
                const uint a = (rb >> 2u) + e;
                v[g] = uintBitsToFloat(uvec4(wq[a], wq[a + 1u], wq[a + 2u], wq[a + 3u]));
            } else {
                const uint a = (rb >> 2u) + e / 2u;
                const uint w0 = wq[a], w1 = wq[a + 1u];
                v[g] = FMT == T_F16 ? vec4(unpackHalf2x16(w0), unpackHalf2x16(w1))
                     : uintBitsToFloat(uvec4(w0 << 16u, w0 & 0xFFFF0000u, w1 << 16u, w1 & 0xFFFF0000u));
            }
        }
    } else if (FMT == T_Q4_0 || FMT == T_Q4_1) {
        const uint b = rb + c * BLOCK_BYTES;
        const float d = rdh(b);
        const float m = FMT == T_Q4_1 ? rdh(b + 2u) : -8.0 * d;
        const uint qs = b + (FMT == T_Q4_1 ? 4u : 2u);
        [[unroll]] for (uint i = 0u; i < 4u; i++) {
            const uint w = rd32(qs + 4u * i);
            v[i] = lo4(w) * d + m;
            v[i + 4u] = hi4(w) * d + m;
        }
    } else if (FMT == T_Q5_0 || FMT == T_Q5_1) {
        const uint b = rb + c * BLOCK_BYTES;
        const float d = rdh(b);
        const float m = FMT == T_Q5_1 ? rdh(b + 2u) : -16.0 * d;
        const uint o = FMT == T_Q5_1 ? 4u : 2u;
        const uint qh = rd32(b + o);
        [[unroll]] for (uint i = 0u; i < 4u; i++) {
            const uint w = rd32(b + o + 4u + 4u * i);
            v[i] = (lo4(w) + 16.0 * bits4(qh, 4u * i)) * d + m;
            v[i + 4u] = (hi4(w) + 16.0 * bits4(qh, 16u + 4u * i)) * d + m;
        }
    } else if (FMT == T_Q8_0) {
        const uint b = rb + c * BLOCK_BYTES;
        const float d = rdh(b);
        [[unroll]] for (uint i = 0u; i < 8u; i++) v[i] = sbytes4(rd32(b + 2u + 4u * i)) * d;
    } else if (FMT == T_Q4_K || FMT == T_Q5_K) {
        const uint s = c % 8u;
        const uint b = rb + (c / 8u) * BLOCK_BYTES;
        const vec2 sm = scale_min_k4(b + 4u, s);
        const float d = rdh(b) * sm.x, m = rdh(b + 2u) * sm.y;
        const uint qs = b + (FMT == T_Q5_K ? 48u : 16u) + (s / 2u) * 32u;
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            const uint w = rd32(qs + 4u * i);
            vec4 q = (s & 1u) == 0u ? lo4(w) : hi4(w);
            if (FMT == T_Q5_K) {
                const uint h = rd32(b + 16u + 4u * i) >> s;
                q += 16.0 * vec4(uvec4(h, h >> 8u, h >> 16u, h >> 24u) & 1u);
            }
            v[i] = q * d - m;
        }
    } else {   // Q6_K
        const uint s = c % 8u, h = s / 4u, u = s % 4u;
        const uint b = rb + (c / 8u) * BLOCK_BYTES;
        const float d = rdh(b + 208u);
        const uint ql = b + 64u * h + 32u * (u & 1u), qh = b + 128u + 32u * h;
        const float d0 = d * float(rds8(b + 192u + 8u * h + 2u * u));
        const float d1 = d * float(rds8(b + 193u + 8u * h + 2u * u));
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            const uint w = rd32(ql + 4u * i);
            const uint hb = rd32(qh + 4u * i) >> (2u * u);
            const vec4 q = ((u >> 1u) == 0u ? lo4(w) : hi4(w))
                         + 16.0 * vec4(uvec4(hb, hb >> 8u, hb >> 16u, hb >> 24u) & 3u) - 32.0;
            v[i] = q * (i < 4u ? d0 : d1);
        }
    }
}

// Elements 4g..4g+3 (g < 8) of chunk c of the row starting at byte rb (elements >= K: zero, not
// read): the same values as dequant_chunk()'s v[g]. Lane g of 8 reads bytes 4 (g % 4)..+3 of the
// chunk's quants (4g..4g+3 for Q8_0, F32, F16, BF16); the block's scales are read by all 8.
vec4 dequant_vec4(uint rb, uint c, uint g) {
    if (FMT == T_F32 || FMT == T_F16 || FMT == T_BF16) {
        const uint e = 32u * c + 4u * g;
        if (K % 32u != 0u && e >= K) return vec4(0.0);
        if (FMT == T_F32) {
            const uint a = (rb >> 2u) + e;
            return uintBitsToFloat(uvec4(wq[a], wq[a + 1u], wq[a + 2u], wq[a + 3u]));
        }
        const uint a = (rb >> 2u) + e / 2u;
        const uint w0 = wq[a], w1 = wq[a + 1u];
        return FMT == T_F16 ? vec4(unpackHalf2x16(w0), unpackHalf2x16(w1))
             : uintBitsToFloat(uvec4(w0 << 16u, w0 & 0xFFFF0000u, w1 << 16u, w1 & 0xFFFF0000u));
    } else if (FMT == T_Q4_0 || FMT == T_Q4_1) {   // elements j and j + 16 share byte j
        const uint b = rb + c * BLOCK_BYTES;
        const float d = rdh(b);
        const float m = FMT == T_Q4_1 ? rdh(b + 2u) : -8.0 * d;
        const uint w = rd32(b + (FMT == T_Q4_1 ? 4u : 2u) + 4u * (g & 3u));
        return (g < 4u ? lo4(w) : hi4(w)) * d + m;
    } else if (FMT == T_Q5_0 || FMT == T_Q5_1) {
        const uint b = rb + c * BLOCK_BYTES;
        const float d = rdh(b);
        const float m = FMT == T_Q5_1 ? rdh(b + 2u) : -16.0 * d;
        const uint o = FMT == T_Q5_1 ? 4u : 2u;
        const uint w = rd32(b + o + 4u + 4u * (g & 3u));
        return ((g < 4u ? lo4(w) : hi4(w)) + 16.0 * bits4(rd32(b + o), 4u * g)) * d + m;
    } else if (FMT == T_Q8_0) {
        const uint b = rb + c * BLOCK_BYTES;
        return sbytes4(rd32(b + 2u + 4u * g)) * rdh(b);
    } else if (FMT == T_Q4_K || FMT == T_Q5_K) {
        const uint s = c % 8u;
        const uint b = rb + (c / 8u) * BLOCK_BYTES;
        const vec2 sm = scale_min_k4(b + 4u, s);
        const uint w = rd32(b + (FMT == T_Q5_K ? 48u : 16u) + (s / 2u) * 32u + 4u * g);
        vec4 q = (s & 1u) == 0u ? lo4(w) : hi4(w);
        if (FMT == T_Q5_K) {
            const uint h = rd32(b + 16u + 4u * g) >> s;
            q += 16.0 * vec4(uvec4(h, h >> 8u, h >> 16u, h >> 24u) & 1u);
        }
        return q * (rdh(b) * sm.x) - rdh(b + 2u) * sm.y;
    } else {   // Q6_K
        const uint s = c % 8u, h = s / 4u, u = s % 4u;
        const uint b = rb + (c / 8u) * BLOCK_BYTES;
        const uint w = rd32(b + 64u * h + 32u * (u & 1u) + 4u * g);
        const uint hb = rd32(b + 128u + 32u * h + 4u * g) >> (2u * u);
        const vec4 q = ((u >> 1u) == 0u ? lo4(w) : hi4(w))
                     + 16.0 * vec4(uvec4(hb, hb >> 8u, hb >> 16u, hb >> 24u) & 3u) - 32.0;
        return q * (rdh(b + 208u) * float(rds8(b + 192u + 8u * h + 2u * u + g / 4u)));
    }
}

#endif
