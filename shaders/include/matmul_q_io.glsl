// The bindings after W (binding 0) and the push constants of the quantized-weight mat-vec shaders
// (model-matmul-q, model-matmul-q-stream): one interface, so grilly_kv/ops/model_matmul_q.py packs
// the same push words for either layout. Include after W's declaration and gguf_blocks.glsl.
#ifndef GRILLY_KV_MATMUL_Q_IO_GLSL
#define GRILLY_KV_MATMUL_Q_IO_GLSL

layout(set = 0, binding = 1) readonly buffer X { vec4 x[]; };
layout(set = 0, binding = 2) readonly buffer G { vec4 g[]; };
layout(set = 0, binding = 3) buffer Y { float y[]; };
layout(set = 0, binding = 4) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 5) readonly buffer Table { float table[]; };

layout(push_constant) uniform Push {
    uint N;          // output rows
    uint T;          // tokens (the stream layout: 1)
    uint w_off;      // first byte of W (a multiple of 4; of 16 for the stream layout's 16-byte pieces)
    uint x_off;      // first vec4 of X (token 0)
    uint x_stride;   // vec4s between tokens of X (unused with one token)
    uint g_off;      // first vec4 of the norm gain (MODE 1)
    uint y_off;      // first float of Y (token 0, row 0)
    uint y_stride;   // floats between tokens of Y (unused with one token)
    uint rope_rows;  // rows rotated (ROPE; a multiple of HD)
    uint eps_bits;   // RMSNorm epsilon (float)
} p;

#endif
