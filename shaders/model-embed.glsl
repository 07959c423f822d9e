#version 450
// Embedding rows of this step's tokens, and registration of their cache slots: see
// grilly_kv/ops/model_embed.py. Workgroup t copies row tokens[t] of E into X[t] and records
// slot_pos[slots[t]] = pos0 + t. Step buffer words: [0] pos0, [1] T, ..., slots at SLOTS_AT,
// tokens at p.tok_at.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 576;     // row width, a multiple of 4
layout(constant_id = 2) const uint F16 = 1;     // 1: E is packed float16
const uint DV = D / 4u;
const uint SLOTS_AT = 8u;

layout(set = 0, binding = 0) readonly buffer E32 { uvec4 e32[]; };
layout(set = 0, binding = 0) readonly buffer E16 { uvec2 e16[]; };
layout(set = 0, binding = 1) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 2) writeonly buffer X { vec4 x[]; };
layout(set = 0, binding = 3) writeonly buffer SlotPos { uint slot_pos[]; };

layout(push_constant) uniform Push { uint tok_at; } p;

void main() {
    const uint t = gl_WorkGroupID.x;
    const uint tok = step[p.tok_at + t];
    for (uint i = gl_LocalInvocationIndex; i < DV; i += gl_WorkGroupSize.x) {
        x[t * DV + i] = LOAD_VEC4(F16, e32, e16, tok * DV + i);
    }
    if (gl_LocalInvocationIndex == 0u) slot_pos[step[SLOTS_AT + t]] = step[0] + t;
}
