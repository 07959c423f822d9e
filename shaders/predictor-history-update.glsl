#version 450
// AttentionPredictor history: block max-pooling of attention rows into a ring of HIST rows.
// See grilly_kv/ops/predictor_history_update.py.
//
// rows:    (N * G, R, S) float32 attention probabilities (S keys per row; S from the params buffer)
// history: (N, HIST, C) float32 ring; row r of this call goes to ring row (write_head + r) % HIST
// Each thread writes one block column of one row: max over the G input rows n G .. n G + G - 1
// (the query heads of one KV head; G = 1: one history per input row) and over keys
// [16 c, 16 c + 16) that are < S (zero padding of the last partial block; the probabilities are
// >= 0), 0 for blocks past S.
// Grid: (ceil(C / local), N * R).
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint HIST = 64;      // ring rows (history steps)
layout(constant_id = 2) const uint BLOCK = 16;     // keys per pooled block

layout(set = 0, binding = 0) readonly buffer Rows { float rows[]; };
layout(set = 0, binding = 1) buffer History { float hist[]; };
// params[0] = write_head, params[1] = S (keys per row); other words belong to the CNN
layout(set = 0, binding = 2) readonly buffer Params { uint params[]; };

layout(push_constant) uniform Push {
    uint R;          // rows per (n) in this call, <= HIST
    uint C;          // block columns of the history
    uint row_stride; // floats between consecutive rows of `rows` (>= S)
    uint G;          // input rows pooled into one history row
} p;

void main() {
    const uint c = gl_GlobalInvocationID.x;
    const uint nr = gl_WorkGroupID.y;
    if (c >= p.C) return;
    const uint n = nr / p.R;
    const uint r = nr % p.R;
    const uint S = params[1];
    const uint k0 = c * BLOCK;
    const uint k1 = min(k0 + BLOCK, S);
    float m = 0.0;
    for (uint g = 0u; g < p.G; g++) {
        const uint src = ((n * p.G + g) * p.R + r) * p.row_stride;
        for (uint k = k0; k < k1; k++) m = max(m, rows[src + k]);
    }
    const uint ring_row = (params[0] + r) % HIST;
    hist[(n * HIST + ring_row) * p.C + c] = m;
}
