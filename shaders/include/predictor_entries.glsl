// Device-resident blocks of the predictor twin (grilly_kv/predictor/device.py). Per layer and KV
// head the K/V buffer holds E = NS + W + K entries of 16 slots:
//   entries [0, NS):          sink blocks 0 .. NS-1 (entry e holds block e)
//   entries [NS, NS + W):     a ring of the newest blocks: block b >= NS lives in entry NS + b % W
//   entries [NS + W, E):      predicted blocks, table[(layer * HKV + kvh) * K + i] (NONE: empty)
// A query at position q of a chunk starting at pos0 sees key position p <= q held by
//   a sink entry always, a ring entry iff p >= sinks and p > pos0 - local (the window),
//   a predicted entry iff p >= sinks and p <= pos0 - local (so no position is seen twice).
// Needs `table` (uint array) declared before the include.
const uint BLK = 16u;
const uint NONE = 0xFFFFFFFFu;

// Block held by entry e during a step whose last position is `last` (NONE: nothing held).
uint entry_block(uint e, uint ns, uint ring, uint last, uint sel_base) {
    if (e < ns) return e;
    if (e < ns + ring) {
        const uint cur = last / BLK, r = e - ns;
        const uint d = (cur % ring + ring - r) % ring;
        if (d > cur) return NONE;
        const uint b = cur - d;
        return b < ns ? NONE : b;
    }
    return table[sel_base + e - ns - ring];
}

bool entry_sees(uint e, uint ns, uint ring, uint p, uint q, uint pos0, uint sinks, uint local_) {
    if (p > q) return false;
    if (e < ns) return true;
    if (e < ns + ring) return p >= sinks && p + local_ > pos0;
    return p >= sinks && p + local_ <= pos0;
}
