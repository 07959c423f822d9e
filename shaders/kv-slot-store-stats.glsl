#version 450
// kv-slot-store fused with page-stats: store this step's post-RoPE keys and values into a float16
// slot cache AND recompute the key statistics (min, max, mean, population std clamped at 1e-6)
// of every page the step writes to. See grilly_kv/ops/kv_slot_store.py (record_kv_slot_store_stats).
//
// Precondition (a slot per position, as Quest's cache): token t goes to slot pos0 + t, i.e.
// step[SLOTS_AT + t] == step[0] + t, and slots < pos0 of the touched pages hold earlier tokens.
// Layouts per buffer (a part of a layer split by KV heads, policies/kv_store.py; nh = HKV, h0 = 0
// when unsplit): caches [layer][kv head - h0][slot][D] halves, two per uint; statistics
// [layer][kv head - h0][page][4][D] halves (rows min, max, mean, std), as page-stats writes them.
//
// Workgroup t writes token t (as kv-slot-store). The workgroup of the step's last token in a page
// (t == T - 1, or slot t ends its page) also writes that page's statistics over its rows
// [page start, slot t]: rows written by this step come from qkv (rounded to float16 as stored),
// older rows from the cache (written by earlier submissions). No workgroup reads a row another
// workgroup of this dispatch writes, so T > 1 (several tokens in one page) needs no barrier.
// A thread handles a (head, dim pair): the same item for the store and for the statistics.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;      // even
layout(constant_id = 2) const uint HQ = 9;
layout(constant_id = 3) const uint HKV = 3;
layout(constant_id = 4) const uint PAGE = 16;   // tokens per page
const uint ROW = (HQ + 2u * HKV) * D;
const uint HW = D / 2u;                          // words per cached row
const uint SLOTS_AT = 8u;

layout(set = 0, binding = 0) readonly buffer QKV { vec2 qkv2[]; };
layout(set = 0, binding = 1) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 2) buffer KC { uint kc[]; };          // read: older rows of the page
layout(set = 0, binding = 3) writeonly buffer VC { uint vc[]; };
layout(set = 0, binding = 4) writeonly buffer SlotPos { uint slot_pos[]; };
layout(set = 0, binding = 5) writeonly buffer Stats { uint stats[]; };

layout(push_constant) uniform Push { uint cap; uint layer; uint h0; uint nh; uint max_pages; } p;
#include "slot_store.glsl"

// Key pair w of head h (local) at slot s: from this step's qkv row when s >= pos0, else the cache.
vec2 key_pair(uint h, uint w, uint s, uint pos0) {
    if (s >= pos0) {
        const uint src = ((s - pos0) * ROW + HQ * D + (p.h0 + h) * D) / 2u + w;
        return f16_round2(qkv2[src]);
    }
    return unpackHalf2x16(kc[((p.layer * p.nh + h) * p.cap + s) * HW + w]);
}

void page_stats(uint h, uint w, uint slot, uint pos0) {
    const uint row0 = slot - slot % PAGE;
    const uint n = slot - row0 + 1u;
    vec2 lo = vec2(3.0e38), hi = vec2(-3.0e38), sum = vec2(0.0);
    for (uint r = 0u; r < n; r++) {
        const vec2 x = key_pair(h, w, row0 + r, pos0);
        lo = min(lo, x); hi = max(hi, x); sum += x;
    }
    const vec2 mean = sum / float(n);
    vec2 ss = vec2(0.0);
    for (uint r = 0u; r < n; r++) {
        const vec2 e = key_pair(h, w, row0 + r, pos0) - mean;
        ss += e * e;
    }
    const uint at = (((p.layer * p.nh + h) * p.max_pages + slot / PAGE) * 4u) * HW + w;
    stats[at] = packHalf2x16(lo);
    stats[at + HW] = packHalf2x16(hi);
    stats[at + 2u * HW] = packHalf2x16(mean);
    stats[at + 3u * HW] = packHalf2x16(max(sqrt(ss / float(n)), vec2(1e-6)));
}

void main() {
    const uint t = gl_WorkGroupID.x;
    const uint pos0 = step[0];
    const uint slot = step[SLOTS_AT + t];
    const bool closes_page = t + 1u == gl_NumWorkGroups.x || (slot + 1u) % PAGE == 0u;
    if (p.layer == 0u && p.h0 == 0u && gl_LocalInvocationIndex == 0u) slot_pos[slot] = pos0 + t;
    for (uint item = gl_LocalInvocationIndex; item < p.nh * HW; item += gl_WorkGroupSize.x) {
        const uint h = item / HW, w = item % HW;                 // h: local head of the part
        store_item(t, slot, h, w);
        if (closes_page) page_stats(h, w, slot, pos0);
    }
}
