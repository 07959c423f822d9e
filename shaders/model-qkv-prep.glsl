#version 450
// Bias add and per-head RMSNorm, in place, on fused qkv rows, before RoPE: see
// grilly_kv/ops/model_qkv_prep.py. Row t of QKV holds HQ query heads, then HKV key heads, then HKV
// value heads, D floats each. Workgroup (t, h) handles head h of token t:
//   x += bias[h * D + i]                                  (HAS_BIAS; every head, q, k and v)
//   x *= rsqrt(mean(x^2) + eps) * norm[i]                 (HAS_NORM; q heads with the q weights,
//                                                          k heads with the k weights, v untouched)
// AUX holds the float32 bias row ((HQ + 2 HKV) * D) at bias_off and the two (D,) norm weights at
// qn_off / kn_off (offsets in floats).
#include "common.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;
layout(constant_id = 2) const uint HQ = 9;
layout(constant_id = 3) const uint HKV = 3;
layout(constant_id = 4) const uint HAS_BIAS = 0;
layout(constant_id = 5) const uint HAS_NORM = 0;
const uint ROW = (HQ + 2u * HKV) * D;

layout(set = 0, binding = 0) buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) readonly buffer Aux { float aux[]; };

layout(push_constant) uniform Push {
    uint bias_off;   // first float of the bias row
    uint qn_off;     // first float of the q norm weight
    uint kn_off;     // first float of the k norm weight
    uint eps_bits;   // RMSNorm epsilon (float)
} p;

void main() {
    const uint t = gl_WorkGroupID.x, h = gl_WorkGroupID.y;
    const uint base = t * ROW + h * D;
    float ss = 0.0;
    for (uint i = gl_LocalInvocationIndex; i < D; i += gl_WorkGroupSize.x) {
        float x = qkv[base + i];
        if (HAS_BIAS != 0u) {
            x += aux[p.bias_off + h * D + i];
            qkv[base + i] = x;
        }
        ss += x * x;
    }
    if (HAS_NORM == 0u || h >= HQ + HKV) return;        // uniform per workgroup
    const float scale = inversesqrt(workgroup_sum(vec4(ss, 0.0, 0.0, 0.0)).x / float(D) + PUSH_F(p.eps_bits));
    const uint w_off = h < HQ ? p.qn_off : p.kn_off;
    for (uint i = gl_LocalInvocationIndex; i < D; i += gl_WorkGroupSize.x) {
        qkv[base + i] = qkv[base + i] * scale * aux[w_off + i];
    }
}
