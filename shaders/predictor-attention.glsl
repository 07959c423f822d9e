#version 450
// Attention of a step's queries over the predictor twin's resident blocks of one layer, and the
// attention rows of the step's last R queries (for the history). See
// grilly_kv/ops/predictor_attention.py and include/predictor_entries.glsl (which slots a query sees).
// Workgroup (i, t): query head h = h0 * G + i of token t; the K/V buffers hold the KV heads
// [h0, h0 + nh) of the layer (one part of a split store; one dispatch per part, nh * G groups). Logits of the CAP slots go to shared memory, the
// softmax over the visible ones (float32), then out[t, h, :] = sum_j p_j v_j. Tokens
// t >= T - R also write their row p (CAP floats, 0 where not visible) to rows[t - (T - R), h, :].
#include "common.glsl"

layout(local_size_x = 64) in;
layout(constant_id = 0) const uint D = 64;       // even
layout(constant_id = 1) const uint HQ = 9;
layout(constant_id = 2) const uint HKV = 3;
layout(constant_id = 3) const uint CAP = 1024;   // slots per KV head (E * 16)
const uint WG = 64u;
const uint G = HQ / HKV;
const uint ROW = (HQ + 2u * HKV) * D;
const uint HW = D / 2u;
const float NEG = -1e30;

layout(set = 0, binding = 0) readonly buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) readonly buffer KC { uint kc[]; };
layout(set = 0, binding = 2) readonly buffer VC { uint vc[]; };
layout(set = 0, binding = 3) readonly buffer Table { uint table[]; };
layout(set = 0, binding = 4) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 5) writeonly buffer Rows { float rows[]; };
layout(set = 0, binding = 6) writeonly buffer O { float o[]; };

layout(push_constant) uniform Push {
    uint layer; uint ns; uint ring; uint k; uint sinks; uint local_; uint R; uint scale_bits; uint h0;
} p;

#include "predictor_entries.glsl"

shared float sp[CAP];
shared float sq[D];
shared float red[WG];
shared vec2 red2[WG];

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

void main() {
    const uint h = p.h0 * G + gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationIndex;
    const uint pos0 = step[0], T = step[1];
    const uint q = pos0 + t, last = pos0 + T - 1u;
    const uint kvh = h / G, local_kvh = kvh - p.h0;
    const uint sel_base = (p.layer * HKV + kvh) * p.k;
    const float scale = PUSH_F(p.scale_bits);
    for (uint d = tid; d < D; d += WG) sq[d] = qkv[t * ROW + h * D + d] * scale;
    barrier();
    float mx = NEG;
    for (uint j = tid; j < CAP; j += WG) {
        const uint e = j / BLK;
        const uint b = entry_block(e, p.ns, p.ring, last, sel_base);
        float logit = NEG;
        if (b != NONE && entry_sees(e, p.ns, p.ring, b * BLK + j % BLK, q, pos0, p.sinks, p.local_)) {
            const uint row = (local_kvh * CAP + j) * HW;
            float acc = 0.0;
            for (uint w = 0u; w < HW; w++) {
                const vec2 kv2 = unpackHalf2x16(kc[row + w]);
                acc += sq[2u * w] * kv2.x + sq[2u * w + 1u] * kv2.y;
            }
            logit = acc;
            mx = max(mx, logit);
        }
        sp[j] = logit;
    }
    mx = wg_max(mx);
    float l = 0.0;
    for (uint j = tid; j < CAP; j += WG) {
        const float w = sp[j] > 0.5 * NEG ? exp(sp[j] - mx) : 0.0;
        sp[j] = w;
        l += w;
    }
    const float inv = 1.0 / wg_sum(l);       // wg_sum's barriers also publish sp[]
    const uint R = min(T, p.R);
    if (t + R >= T) {
        const uint r = t + R - T;
        for (uint j = tid; j < CAP; j += WG) rows[(r * HQ + h) * CAP + j] = sp[j] * inv;
    }
    // out: thread (phase, w) sums slots j = phase (mod P) of value word w (2 dims), then the P
    // phases are added in shared memory (words w >= WG are handled by later passes when HW > WG)
    const uint P = max(WG / HW, 1u);
    for (uint w0 = 0u; w0 < HW; w0 += WG) {
        const uint w = w0 + tid % HW, phase = tid / HW;
        vec2 acc = vec2(0.0);
        if (w < HW && phase < P) {
            for (uint j = phase; j < CAP; j += P) {
                if (sp[j] != 0.0) acc += sp[j] * unpackHalf2x16(vc[(local_kvh * CAP + j) * HW + w]);
            }
        }
        red2[tid] = acc;
        barrier();
        if (tid < min(HW, WG) && w0 + tid < HW) {
            vec2 sum = vec2(0.0);
            for (uint ph = 0u; ph < P; ph++) sum += red2[ph * HW + tid];
            o[(t * HQ + h) * D + 2u * (w0 + tid)] = sum.x * inv;
            o[(t * HQ + h) * D + 2u * (w0 + tid) + 1u] = sum.y * inv;
        }
        barrier();
    }
}
