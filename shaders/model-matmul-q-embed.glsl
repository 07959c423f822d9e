#version 450
// Embedding rows of this step's tokens from a GGUF weight matrix kept as raw blocks (any format of
// gguf_blocks.glsl): see grilly_kv/ops/model_matmul_q.py (record_embed_q). Workgroup t
// dequantises row step[p.tok_at + t] (the token id; ids >= N read row N-1, the host checks them)
// into X[t], 32 elements per invocation and pass.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint FMT = 8;     // ggml type id of the table
layout(constant_id = 2) const uint K = 576;     // row width (elements), a multiple of the block and of 4

layout(set = 0, binding = 0) readonly buffer Wq { uint wq[]; };
#include "gguf_blocks.glsl"
layout(set = 0, binding = 1) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 2) writeonly buffer X { vec4 x[]; };

layout(push_constant) uniform Push {
    uint N;          // rows of the table (vocabulary)
    uint w_off;      // first byte of the table (a multiple of 4)
    uint tok_at;     // word of step holding token 0's id
    uint x_off;      // first vec4 of X (token 0)
    uint x_stride;   // vec4s between tokens of X
} p;

void main() {
    const uint t = gl_WorkGroupID.x;
    const uint rb = p.w_off + min(step[p.tok_at + t], p.N - 1u) * ROW_BYTES;
    const uint xr = p.x_off + t * p.x_stride;
    for (uint c = gl_LocalInvocationIndex; c < CHUNKS; c += gl_WorkGroupSize.x) {
        vec4 v[8];
        dequant_chunk(rb, c, v);
        [[unroll]] for (uint g = 0u; g < 8u; g++) {
            if (32u * c + 4u * g < K) x[xr + 8u * c + g] = v[g];
        }
    }
}
