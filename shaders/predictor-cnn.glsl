#version 450
// AttentionPredictor CNN: per history n, scores of the block columns [s, e) for the next step.
// See grilly_kv/ops/predictor_cnn.py and grilly_kv/reference/predictor_cnn.py.
//
// x(t, j) = history[n, (oldest + t) % HIST, s + j], t in [0, HIST) oldest first, j in [0, W = e - s)
// h1 = relu(conv3x3(x; w1, b1))            16 channels, zero padding 1
// h2 = relu(conv3x3(h1; w2, b2))           32 channels, zero padding 1 (h1 is 0 outside the grid)
// out[n, s + j] = b3 + sum_c w3[c] * mean_t h2[c, t, j]
// Weights (one flat float buffer): w1[16][3][3], b1[16], w2[32][16][3][3], b2[32], w3[32], b3.
//
// Workgroup (tile, n) owns TILE output columns. It walks down the HIST time rows keeping three
// rows of h1 (TILE + 2 columns, 16 channels) in shared memory; thread (column, group) computes
// CPT of the 32 h2 channels of its column and accumulates their time sums in registers.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint HIST = 64;
layout(constant_id = 2) const uint TILE = 32;      // output columns per workgroup
const uint C1 = 16u;
const uint C2 = 32u;
const uint W1 = 0u, B1 = 144u, W2 = 160u, B2 = 4768u, W3 = 4800u, B3 = 4832u;
const uint COLS = TILE + 2u;                        // h1 columns incl. the halo
const uint MAX_THREADS = 1024u;

layout(set = 0, binding = 0) readonly buffer History { float hist[]; };
layout(set = 0, binding = 1) readonly buffer Weights { float w[]; };
// params[2] = oldest ring row, params[3] = s, params[4] = e (block columns)
layout(set = 0, binding = 2) readonly buffer Params { uint params[]; };
layout(set = 0, binding = 3) writeonly buffer Out { float scores[]; };

layout(push_constant) uniform Push {
    uint C;          // block columns of the history (and of the scores)
} p;

shared float h1[3u * COLS * C1];                    // ring of 3 time rows of h1
shared float partial[MAX_THREADS];

float x_at(uint n, int t, int j, uint oldest, uint s, int W) {
    if (t < 0 || t >= int(HIST) || j < 0 || j >= W) return 0.0;
    const uint ring_row = (oldest + uint(t)) % HIST;
    return hist[(n * HIST + ring_row) * p.C + s + uint(j)];
}

// h1 time row t (all channels, columns x0 - 1 .. x0 + TILE) into ring slot t % 3
void conv1_row(uint n, int t, int x0, uint oldest, uint s, int W) {
    const uint slot = uint(t + 3) % 3u;
    for (uint i = gl_LocalInvocationIndex; i < COLS * C1; i += gl_WorkGroupSize.x) {
        const uint cc = i / C1, ch = i % C1;
        const int j = x0 - 1 + int(cc);
        float v = 0.0;
        if (t >= 0 && t < int(HIST) && j >= 0 && j < W) {
            v = w[B1 + ch];
            for (int dy = 0; dy < 3; dy++)
                for (int dx = 0; dx < 3; dx++)
                    v += w[W1 + ch * 9u + uint(dy * 3 + dx)] * x_at(n, t - 1 + dy, j - 1 + dx, oldest, s, W);
            v = max(v, 0.0);
        }
        h1[(slot * COLS + cc) * C1 + ch] = v;
    }
}

void main() {
    const uint n = gl_WorkGroupID.y;
    const uint oldest = params[2], s = params[3], e = params[4];
    const int W = int(e) - int(s);
    const int x0 = int(gl_WorkGroupID.x * TILE);
    if (x0 >= W) return;                             // whole workgroup: uniform exit
    const uint groups = gl_WorkGroupSize.x / TILE;   // channel groups per column
    const uint CPT = C2 / groups;                    // h2 channels per thread
    const uint col = gl_LocalInvocationIndex % TILE;
    const uint grp = gl_LocalInvocationIndex / TILE;
    float acc[C2];
    for (uint c = 0u; c < C2; c++) acc[c] = 0.0;

    conv1_row(n, -1, x0, oldest, s, W);
    conv1_row(n, 0, x0, oldest, s, W);
    for (int t = 0; t < int(HIST); t++) {
        conv1_row(n, t + 1, x0, oldest, s, W);
        barrier();
        for (uint k = 0u; k < CPT; k++) {
            const uint c2 = grp * CPT + k;
            float v = w[B2 + c2];
            for (int dy = 0; dy < 3; dy++) {
                const uint slot = uint(t - 1 + dy + 3) % 3u;
                for (uint dx = 0u; dx < 3u; dx++) {
                    const uint base = (slot * COLS + col + dx) * C1;
                    const uint wb = W2 + c2 * C1 * 9u + uint(dy) * 3u + dx;
                    for (uint c1 = 0u; c1 < C1; c1++) v += w[wb + c1 * 9u] * h1[base + c1];
                }
            }
            acc[k] += max(v, 0.0);
        }
        barrier();
    }
    float sum = 0.0;
    for (uint k = 0u; k < CPT; k++) sum += w[W3 + grp * CPT + k] * acc[k];
    partial[gl_LocalInvocationIndex] = sum / float(HIST);
    barrier();
    if (grp == 0u && x0 + int(col) < W) {
        float total = w[B3];
        for (uint g = 0u; g < groups; g++) total += partial[g * TILE + col];
        scores[n * p.C + s + uint(x0) + col] = total;
    }
}
