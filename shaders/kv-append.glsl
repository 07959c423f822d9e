#version 450
// Writes n new tokens of K and V into a paged KV cache: see grilly_kv/ops/kv_append.py.
//
// staging holds the new rows as 32-bit words, K first then V, each laid out (B*H_kv, n, row_words)
// (row_words = D/2 for packed float16, D for float32). Row t of (b, h) lands at cache row
// meta[1] + t of (b, h), where meta[1] is the cache length before this append (a device word, so
// a recorded append is replayed at every position). Grid: (ceil(BH * n * row_words / WG), 2);
// y = 0 writes K, y = 1 writes V. Only the new rows are touched: the cost follows n, not the context.
layout(local_size_x_id = 0) in;

layout(set = 0, binding = 0) readonly buffer Staging { uint staging[]; };
layout(set = 0, binding = 1) writeonly buffer KCache { uint k_cache[]; };
layout(set = 0, binding = 2) writeonly buffer VCache { uint v_cache[]; };
layout(set = 0, binding = 3) readonly buffer Meta { uint meta[]; };  // [length after, length before]

layout(push_constant) uniform Push {
    uint n;          // new tokens per (b, h)
    uint row_words;  // 32-bit words per token row
    uint capacity;   // rows per (b, h) in the cache
    uint bh;         // B * H_kv
} p;

void main() {
    const uint per_tensor = p.bh * p.n * p.row_words;
    const uint i = gl_GlobalInvocationID.x;
    if (i >= per_tensor) return;
    const uint w = i % p.row_words;
    const uint t = (i / p.row_words) % p.n;
    const uint head = i / (p.row_words * p.n);
    const uint dst = (head * p.capacity + meta[1] + t) * p.row_words + w;
    if (gl_WorkGroupID.y == 0u) k_cache[dst] = staging[i];
    else v_cache[dst] = staging[per_tensor + i];
}
