#version 450
// Embedding rows of this step's tokens: see grilly_kv/ops/model_embed.py.
// Workgroup t copies row step[p.tok_at + t] (the token id) of E into X[t].
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 576;     // row width, a multiple of 4
layout(constant_id = 2) const uint F16 = 1;     // 1: E is packed float16
const uint DV = D / 4u;

layout(set = 0, binding = 0) readonly buffer E32 { uvec4 e32[]; };
layout(set = 0, binding = 0) readonly buffer E16 { uvec2 e16[]; };
layout(set = 0, binding = 1) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 2) writeonly buffer X { vec4 x[]; };

layout(push_constant) uniform Push { uint tok_at; uint table_off; } p;

void main() {
    const uint t = gl_WorkGroupID.x;
    const uint tok = step[p.tok_at + t];
    for (uint i = gl_LocalInvocationIndex; i < DV; i += gl_WorkGroupSize.x) {
        x[t * DV + i] = LOAD_VEC4(F16, e32, e16, p.table_off + tok * DV + i);
    }
}
