#version 450
// Store this step's post-RoPE keys and values into their slots of a float16 slot cache: see
// grilly_kv/ops/kv_slot_store.py. The buffers hold KV heads [h0, h0 + nh) (a part of a layer
// split by heads, policies/kv_store.py; nh = HKV, h0 = 0 when unsplit); layout per buffer:
// [layer][kv head - h0][slot][D] halves, two per uint. Workgroup t writes token t to slot
// step[SLOTS_AT + t]; the layer-0 store of the part with h0 = 0 also records
// slot_pos[slot] = pos0 + t (the position each slot holds, shared by all layers).
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;      // even
layout(constant_id = 2) const uint HQ = 9;
layout(constant_id = 3) const uint HKV = 3;
const uint ROW = (HQ + 2u * HKV) * D;
const uint HW = D / 2u;                          // words per cached row
const uint SLOTS_AT = 8u;

layout(set = 0, binding = 0) readonly buffer QKV { vec2 qkv2[]; };
layout(set = 0, binding = 1) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 2) writeonly buffer KC { uint kc[]; };
layout(set = 0, binding = 3) writeonly buffer VC { uint vc[]; };
layout(set = 0, binding = 4) writeonly buffer SlotPos { uint slot_pos[]; };

layout(push_constant) uniform Push { uint cap; uint layer; uint h0; uint nh; } p;
#include "slot_store.glsl"

void main() {
    const uint t = gl_WorkGroupID.x;
    const uint slot = step[SLOTS_AT + t];
    if (p.layer == 0u && p.h0 == 0u && gl_LocalInvocationIndex == 0u) slot_pos[slot] = step[0] + t;
    for (uint item = gl_LocalInvocationIndex; item < p.nh * HW; item += gl_WorkGroupSize.x) {
        const uint h = item / HW, w = item % HW;                 // h: local head of the part
        store_item(t, slot, h, w);
    }
}
