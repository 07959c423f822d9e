#version 450
// Attention of a step's queries over the predictor twin's resident blocks of one layer, split over
// the slots (flash-decoding), and the block max-pool of the last queries' attention rows into the
// history ring, in one dispatch: see grilly_kv/ops/predictor_attention.py (the fast path; the first
// kernels are predictor-attention.glsl then predictor-row-pool.glsl) and include/predictor_entries.glsl
// (which slots a query sees).
// Workgroup (s, i, t): query head h = h0 * G + i of token t over slots [s SPLIT, s SPLIT + SPLIT)
// (whole entries) of the part's KV head; the K/V buffers hold KV heads [h0, h0 + nh) of the layer.
// Each workgroup computes its slots' logits (float32, scaled), their max m_s, l_s = sum exp(x - m_s)
// and o_s = sum exp(x - m_s) v; with NSPLIT > 1 it writes (m_s, l_s, o_s) to `part` and the last
// of the NSPLIT workgroups of (t, h) to finish merges them: M = max m_s, L = sum l_s e^(m_s - M),
// out = sum o_s e^(m_s - M) / L.
// History (tokens t >= T - R, R = min(T, HIST), ring row (params[0] + r) % HIST, r = t - (T - R)):
// every workgroup writes the raw logits of its slots (NEG where not visible) to logits[r, h, :],
// the merging one (M, 1 / L) to stats[r, h, :]; the last merging workgroup of the GP query heads
// of history n = layer * (HQ / GP) + h / GP (a second handshake, counters T HQ + t (HQ / GP) + h / GP)
// writes that history's ring row: 0 in every column, then for each entry the max over the group's
// heads and the entry's 16 slots of exp(x - M) / L, into the column of the block the entry holds
// (an atomic max: the bits of non-negative floats order as uints, and a block can sit in a ring
// entry and a predicted entry at once).
// Store: workgroup (0, i, t) with i the first query head of a KV head stores K and V of (t, kvh)
// as float16 into the slot of position pos0 + t (a sink slot below NS * 16, else ring entry
// NS + block % W; as the twin's slots_of, kv-slot-store's layout) and into stage_k / stage_v
// ([layer][kvh][t][D] halves, two per uint: the copy to host memory). So no workgroup reads a slot
// this dispatch writes, keys and values of positions >= pos0 are read from the step's qkv rows,
// rounded to float16 as stored.
#include "common.glsl"

layout(local_size_x = 64) in;
layout(constant_id = 0) const uint D = 64;       // even
layout(constant_id = 1) const uint HQ = 9;
layout(constant_id = 2) const uint HKV = 3;
layout(constant_id = 3) const uint CAP = 1024;   // slots per KV head (E * 16)
layout(constant_id = 4) const uint SPLIT = 256;  // slots per workgroup, a multiple of 16
layout(constant_id = 5) const uint GP = 3;       // query heads per history (1 or HQ / HKV)
const uint WG = 64u;
const uint G = HQ / HKV;
const uint ROW = (HQ + 2u * HKV) * D;
const uint HW = D / 2u;
const uint VW = 2u - HW % 2u;    // words of a value unit: 2 (one 64-bit load) when HW is even
const uint HU = HW / VW;         // value units per row
const uint NSPLIT = (CAP + SPLIT - 1u) / SPLIT;
const uint HIST = 64u;
const float NEG = -1e30;

layout(set = 0, binding = 0) readonly buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) buffer KC { uint kc[]; };     // (nh, CAP, D) halves; this step's slots written
layout(set = 0, binding = 2) buffer VC { uint vc[]; };
layout(set = 0, binding = 2) buffer VC2 { uvec2 vc2[]; };   // the same values, two words at a time
layout(set = 0, binding = 3) readonly buffer Table { uint table[]; };
layout(set = 0, binding = 4) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 5) coherent buffer Logits { float logits[]; };    // (HIST, HQ, CAP)
layout(set = 0, binding = 6) writeonly buffer O { float o[]; };             // (T, HQ, D)
layout(set = 0, binding = 7) coherent buffer Part { float part[]; };        // (T, HQ, NSPLIT, D + 2)
layout(set = 0, binding = 8) coherent buffer Stats { float stats[]; };      // (HIST, HQ, 2)
layout(set = 0, binding = 9) coherent buffer Counter { uint counter[]; };   // (2 T HQ) zeros
layout(set = 0, binding = 10) coherent buffer History { uint hist[]; };     // (N, HIST, C)
layout(set = 0, binding = 11) readonly buffer Params { uint params[]; };    // [write_head, ..]
layout(set = 0, binding = 12) writeonly buffer StageK { uint stage_k[]; };  // (L, HKV, T, D) halves
layout(set = 0, binding = 13) writeonly buffer StageV { uint stage_v[]; };

layout(push_constant) uniform Push {
    uint layer; uint ns; uint ring; uint k; uint sinks; uint local_; uint scale_bits; uint h0; uint nh; uint C;
} p;

#include "predictor_entries.glsl"

shared float sp[SPLIT];
shared uint sv[SPLIT];          // where slot jj's value row is: a word offset in vc (in bounds for
                                // every slot), or FROM_STEP | token
const uint FROM_STEP = 0x80000000u;
shared float sq[D];
shared float red[WG];
shared vec4 red4[WG];
shared bool sh_last;
#include "last_workgroup.glsl"

float wg_max(float v) {
    red[gl_LocalInvocationIndex] = v;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1u) {
        if (gl_LocalInvocationIndex < s) red[gl_LocalInvocationIndex] = max(red[gl_LocalInvocationIndex], red[gl_LocalInvocationIndex + s]);
        barrier();
    }
    const float r = red[0];
    barrier();
    return r;
}

float wg_sum(float v) {
    red[gl_LocalInvocationIndex] = v;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1u) {
        if (gl_LocalInvocationIndex < s) red[gl_LocalInvocationIndex] += red[gl_LocalInvocationIndex + s];
        barrier();
    }
    const float r = red[0];
    barrier();
    return r;
}

// The history ring row of token t's query heads [j GP, j GP + GP) (see the header); called by
// the last of their merging workgroups, which sees every other workgroup's logits and stats.
void pool_rows(uint j, uint r, uint last) {
    const uint tid = gl_LocalInvocationIndex;
    const uint n = p.layer * (HQ / GP) + j;
    const uint base = (n * HIST + (params[0] + r) % HIST) * p.C;
    for (uint c = tid; c < p.C; c += WG) hist[base + c] = 0u;
    memoryBarrierBuffer();
    barrier();
    const uint kvh = j * GP / G;
    for (uint e = tid; e < CAP / BLK; e += WG) {
        const uint c = entry_block(e, p.ns, p.ring, last, (p.layer * HKV + kvh) * p.k);
        if (c >= p.C) continue;                                  // NONE: the entry holds no block
        float m = 0.0;
        for (uint g = 0u; g < GP; g++) {
            const uint row = r * HQ + j * GP + g;
            const float mx = stats[row * 2u], inv = stats[row * 2u + 1u];
            for (uint o = 0u; o < BLK; o++) {
                const float x = logits[row * CAP + e * BLK + o];
                if (x > 0.5 * NEG) m = max(m, exp(x - mx) * inv);
            }
        }
        if (m > 0.0) atomicMax(hist[base + c], floatBitsToUint(m));
    }
}

// The merged (max, 1 / sum) of query (t, h): kept for the history when t is one of the last R
// tokens, and the history row pooled by the last of the group's heads.
void finish(uint t, uint h, uint T, uint R, uint last, float m_all, float inv) {
    if (t + R < T) return;
    const uint r = t + R - T;
    if (gl_LocalInvocationIndex == 0u) { stats[(r * HQ + h) * 2u] = m_all; stats[(r * HQ + h) * 2u + 1u] = inv; }
    const uint j = h / GP;
    if (last_to_finish(T * HQ + t * (HQ / GP) + j, GP)) pool_rows(j, r, last);
}

// Two elements of this step's qkv rows rounded to float16 (as the caches store them).
vec2 step_pair(uint i) {
    return f16_round2(vec2(qkv[i], qkv[i + 1u]));
}

// Dims 2 VW u .. 2 VW u + 2 VW - 1 of the value row `src` (sv[] encoding; VW = 1: .zw unused).
vec4 value_unit(uint src, uint u, uint kvh) {
    const bool from_step = (src & FROM_STEP) != 0u;
    vec4 v;
    if (VW == 2u) {
        const uvec2 raw = vc2[from_step ? u : src / 2u + u];
        v = vec4(unpackHalf2x16(raw.x), unpackHalf2x16(raw.y));
    } else {
        v = vec4(unpackHalf2x16(vc[from_step ? u : src + u]), 0.0, 0.0);
    }
    if (from_step) {
        const uint base = (src & ~FROM_STEP) * ROW + HQ * D + HKV * D + kvh * D + 2u * VW * u;
        v.xy = step_pair(base);
        if (VW == 2u) v.zw = step_pair(base + 2u);
    }
    return v;
}

// K and V of token t (position q), KV head kvh, into its cache slot and the staging buffers.
void store_kv(uint t, uint q, uint kvh, uint local_kvh, uint T) {
    const uint ring_slot = (p.ns + (q / BLK) % p.ring) * BLK + q % BLK;
    const uint slot = q < p.ns * BLK ? q : ring_slot;
    for (uint w = gl_LocalInvocationIndex; w < HW; w += WG) {
        const uint src = t * ROW + HQ * D + kvh * D + 2u * w;
        const uint kw = packHalf2x16(vec2(qkv[src], qkv[src + 1u]));
        const uint vw = packHalf2x16(vec2(qkv[src + HKV * D], qkv[src + HKV * D + 1u]));
        const uint dst = ((p.layer * HKV + kvh) * T + t) * HW + w;
        stage_k[dst] = kw;
        stage_v[dst] = vw;
        kc[(local_kvh * CAP + slot) * HW + w] = kw;
        vc[(local_kvh * CAP + slot) * HW + w] = vw;
    }
}

void main() {
    const uint s = gl_WorkGroupID.x, h = p.h0 * G + gl_WorkGroupID.y, t = gl_WorkGroupID.z;
    const uint tid = gl_LocalInvocationIndex;
    const uint pos0 = step[0], T = step[1];
    const uint q = pos0 + t, last = pos0 + T - 1u;
    const uint kvh = h / G, local_kvh = kvh - p.h0;
    const uint sel_base = (p.layer * HKV + kvh) * p.k;
    const uint R = min(T, HIST);
    const bool keep_row = t + R >= T;
    const uint r = t + R - T;
    const uint th = t * HQ + h;
    if (s == 0u && h % G == 0u) store_kv(t, q, kvh, local_kvh, T);
    const float scale = PUSH_F(p.scale_bits);
    for (uint d = tid; d < D; d += WG) sq[d] = qkv[t * ROW + h * D + d] * scale;
    barrier();
    float mx = NEG;
    for (uint jj = tid; jj < SPLIT; jj += WG) {
        const uint j = s * SPLIT + jj;
        float logit = NEG;
        sv[jj] = j < CAP ? (local_kvh * CAP + j) * HW : 0u;      // overwritten below when visible
        if (j < CAP) {
            const uint e = j / BLK;
            const uint b = entry_block(e, p.ns, p.ring, last, sel_base);
            const uint pos = b * BLK + j % BLK;
            if (b != NONE && entry_sees(e, p.ns, p.ring, pos, q, pos0, p.sinks, p.local_)) {
                float acc = 0.0;
                if (pos >= pos0) {                       // this step's token: from qkv
                    const uint src = (pos - pos0) * ROW + HQ * D + kvh * D;
                    for (uint w = 0u; w < HW; w++) {
                        const vec2 kv2 = step_pair(src + 2u * w);
                        acc += sq[2u * w] * kv2.x + sq[2u * w + 1u] * kv2.y;
                    }
                    sv[jj] = FROM_STEP | (pos - pos0);
                } else {
                    const uint row = (local_kvh * CAP + j) * HW;
                    for (uint w = 0u; w < HW; w++) {
                        const vec2 kv2 = unpackHalf2x16(kc[row + w]);
                        acc += sq[2u * w] * kv2.x + sq[2u * w + 1u] * kv2.y;
                    }
                    sv[jj] = row;
                }
                logit = acc;
                mx = max(mx, logit);
            }
            if (keep_row) logits[(r * HQ + h) * CAP + j] = logit;
        }
        sp[jj] = logit;
    }
    mx = wg_max(mx);
    float l = 0.0;
    for (uint jj = tid; jj < SPLIT; jj += WG) {
        const float w = sp[jj] > 0.5 * NEG ? exp(sp[jj] - mx) : 0.0;
        sp[jj] = w;
        l += w;
    }
    l = wg_sum(l);                        // wg_sum's barriers also publish sp[]
    // o_s: thread (phase, u) sums slots jj = phase (mod P) of value unit u (VW words, 2 VW dims),
    // then the P phases are added in shared memory (units >= WG in later passes when HU > WG)
    const uint P = max(WG / HU, 1u);
    const uint part_base = (th * NSPLIT + s) * (D + 2u);
    const float inv_l = 1.0 / l;
    for (uint u0 = 0u; u0 < HU; u0 += WG) {
        const uint u = u0 + tid % HU, phase = tid / HU;
        vec4 acc = vec4(0.0);
        if (u < HU && phase < P) {
            // no branch around the cache loads (an in-bounds row for every slot), so the compiler
            // can issue them ahead: the loop is bound by load latency otherwise
            for (uint jj = phase; jj < SPLIT; jj += P) {
                const vec4 v = value_unit(sv[jj], u, kvh);
                const float pj = sp[jj];
                acc += pj == 0.0 ? vec4(0.0) : pj * v;
            }
        }
        red4[tid] = acc;
        barrier();
        if (tid < min(HU, WG) && u0 + tid < HU) {
            vec4 sum = vec4(0.0);
            for (uint ph = 0u; ph < P; ph++) sum += red4[ph * HU + tid];
            const uint d = 2u * VW * (u0 + tid);
            for (uint i = 0u; i < 2u * VW; i++) {
                if (NSPLIT == 1u) o[th * D + d + i] = sum[i] * inv_l;
                else part[part_base + 2u + d + i] = sum[i];
            }
        }
        barrier();
    }
    if (NSPLIT == 1u) {
        finish(t, h, T, R, last, mx, inv_l);
        return;
    }
    if (tid == 0u) { part[part_base] = mx; part[part_base + 1u] = l; }
    if (!last_to_finish(th, NSPLIT)) return;
    // the last workgroup of (t, h): merge the NSPLIT partial results
    float m_all = NEG;
    for (uint s2 = 0u; s2 < NSPLIT; s2++) m_all = max(m_all, part[(th * NSPLIT + s2) * (D + 2u)]);
    float l_all = 0.0;
    for (uint s2 = 0u; s2 < NSPLIT; s2++) {
        const uint b2 = (th * NSPLIT + s2) * (D + 2u);
        l_all += part[b2 + 1u] * exp(part[b2] - m_all);
    }
    const float inv = 1.0 / l_all;
    for (uint d = tid; d < D; d += WG) {
        float acc = 0.0;
        for (uint s2 = 0u; s2 < NSPLIT; s2++) {
            const uint b2 = (th * NSPLIT + s2) * (D + 2u);
            acc += part[b2 + 2u + d] * exp(part[b2] - m_all);
        }
        o[th * D + d] = acc * inv;
    }
    finish(t, h, T, R, last, m_all, inv);
}
