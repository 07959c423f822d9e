// One (head, dim pair) item of a slot-cache store, shared by kv-slot-store and
// kv-slot-store-stats: K and V words w of local KV head h of token t go from this step's qkv rows
// to slot `slot` of the part's caches ([layer][kv head - h0][slot][D] halves, two per uint).
// The including shader declares qkv2, kc, vc, D, HQ, HKV, ROW, HW and push constants p.cap,
// p.layer, p.h0, p.nh.
void store_item(uint t, uint slot, uint h, uint w) {
    const uint src = (t * ROW + HQ * D + (p.h0 + h) * D) / 2u + w;
    const uint dst = ((p.layer * p.nh + h) * p.cap + slot) * HW + w;
    kc[dst] = packHalf2x16(qkv2[src]);
    vc[dst] = packHalf2x16(qkv2[src + HKV * D / 2u]);
}
