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
// Rows 2 .. HIST-3 of h2 do not see the time padding, so they do not change when the window
// slides: gsum[n, c, s + j] keeps their sum, and a decode step needs h2 on 6 rows, not HIST:
//   mode 0 (full):     all rows; writes gsum and the scores
//   mode 1 (retire):   before the ring update: gsum -= h2 row 2 (it becomes a boundary row)
//   mode 2 (admit):    after the ring update:  gsum += h2 row HIST-3; scores from gsum and the
//                      four boundary rows 0, 1, HIST-2, HIST-1
// When the candidate range grew by a column, columns from params[6] (relative; the old last two
// and the new one) see new neighbours: retire skips them and admit recomputes their tiles fully.
// Workgroup (tile, n) owns TILE output columns; h1 rows are staged in shared memory (3 rows,
// TILE + 2 columns, 16 channels); thread (column, group) computes CPT of the 32 h2 channels.
#include "common.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint HIST = 64;
layout(constant_id = 2) const uint TILE = 32;      // output columns per workgroup
const uint C1 = 16u;
const uint C2 = 32u;
const uint W1 = 0u, B1 = 144u, W2 = 160u, B2 = 4768u, W3 = 4800u, B3 = 4832u;
const uint COLS = TILE + 2u;                        // h1 columns incl. the halo
const uint MAX_THREADS = 1024u;
const uint CPT = C2 * TILE / gl_WorkGroupSize.x;    // h2 channels per thread

layout(set = 0, binding = 0) readonly buffer History { float hist[]; };
layout(set = 0, binding = 1) readonly buffer Weights { float w[]; };
// params[2] = oldest ring row, params[3] = s, params[4] = e (block columns),
// params[5] = oldest ring row before this step's ring update (mode 1),
// params[6] = first relative column recomputed fully in modes 1 and 2
layout(set = 0, binding = 2) readonly buffer Params { uint params[]; };
layout(set = 0, binding = 3) writeonly buffer Out { float scores[]; };
layout(set = 0, binding = 4) buffer GSum { float gsum[]; };   // (N, 32, C)

layout(push_constant) uniform Push {
    uint C;          // block columns of the history (and of the scores)
    uint mode;       // 0 full, 1 retire, 2 admit
} p;

shared float h1[3u * C1 * COLS];                    // [slot][channel][column]
shared float partial[MAX_THREADS];

uint n_id, oldest, s_col;
int W, x0;

float x_at(int t, int j) {
    if (t < 0 || t >= int(HIST) || j < 0 || j >= W) return 0.0;
    return hist[(n_id * HIST + (oldest + uint(t)) % HIST) * p.C + s_col + uint(j)];
}

// h1 time row t (all channels, columns x0 - 1 .. x0 + TILE) into ring slot t mod 3
void conv1_row(int t) {
    const uint slot = uint(t + 3) % 3u;
    for (uint i = gl_LocalInvocationIndex; i < COLS * C1; i += gl_WorkGroupSize.x) {
        const uint ch = i / COLS, cc = i % COLS;
        const int j = x0 - 1 + int(cc);
        float v = 0.0;
        if (t >= 0 && t < int(HIST) && j >= 0 && j < W) {
            v = w[B1 + ch];
            for (int dy = 0; dy < 3; dy++)
                for (int dx = 0; dx < 3; dx++)
                    v += w[W1 + ch * 9u + uint(dy * 3 + dx)] * x_at(t - 1 + dy, j - 1 + dx);
            v = max(v, 0.0);
        }
        h1[(slot * C1 + ch) * COLS + cc] = v;
    }
}

// h2 of this thread's CPT channels (from c0) at row t, column col of the tile (h1 rows t-1 .. t+1
// staged); each h1 value is loaded once for all CPT channels
void h2_row(uint c0, int t, uint col, out float v[CPT]) {
    for (uint k = 0u; k < CPT; k++) v[k] = w[B2 + c0 + k];
    for (int dy = 0; dy < 3; dy++) {
        const uint slot = uint(t - 1 + dy + 3) % 3u;
        for (uint c1 = 0u; c1 < C1; c1++) {
            const uint hb = (slot * C1 + c1) * COLS + col;
            const vec3 h = vec3(h1[hb], h1[hb + 1u], h1[hb + 2u]);
            const uint wb = W2 + (c0 * C1 + c1) * 9u + uint(dy) * 3u;
            for (uint k = 0u; k < CPT; k++) {
                const uint wk = wb + k * C1 * 9u;
                v[k] += dot(vec3(w[wk], w[wk + 1u], w[wk + 2u]), h);
            }
        }
    }
    for (uint k = 0u; k < CPT; k++) v[k] = max(v[k], 0.0);
}

// stage h1 rows t-1 .. t+1 (standalone rows of the retire / admit modes)
void stage_rows(int t) {
    barrier();
    conv1_row(t - 1);
    conv1_row(t);
    conv1_row(t + 1);
    barrier();
}

void main() {
    n_id = gl_WorkGroupID.y;
    oldest = p.mode == 1u ? params[5] : params[2];
    s_col = params[3];
    W = int(params[4]) - int(s_col);
    x0 = int(gl_WorkGroupID.x * TILE);
    if (x0 >= W) return;                             // whole workgroup: uniform exit
    const uint groups = gl_WorkGroupSize.x / TILE;   // channel groups per column
    const uint col = gl_LocalInvocationIndex % TILE;
    const uint grp = gl_LocalInvocationIndex / TILE;
    const bool valid = x0 + int(col) < W;
    const uint g_base = (n_id * C2 + grp * CPT) * p.C + s_col + uint(x0) + col;   // + k * C
    const int last = int(HIST) - 1;
    const uint c0 = grp * CPT;                       // this thread's first h2 channel
    float all_rows[CPT];
    float inner[CPT];
    float v[CPT];
    for (uint k = 0u; k < CPT; k++) { all_rows[k] = 0.0; inner[k] = 0.0; }

    const int full_from = int(params[6]);
    if (p.mode == 0u || (p.mode == 2u && full_from < min(x0 + int(TILE), W))) {   // tile has such columns
        conv1_row(-1);
        conv1_row(0);
        for (int t = 0; t <= last; t++) {
            conv1_row(t + 1);
            barrier();
            h2_row(c0, t, col, v);
            for (uint k = 0u; k < CPT; k++) {
                all_rows[k] += v[k];
                if (t >= 2 && t <= last - 2) inner[k] += v[k];
            }
            barrier();
        }
        if (valid) for (uint k = 0u; k < CPT; k++) gsum[g_base + k * p.C] = inner[k];
    } else if (p.mode == 1u) {
        stage_rows(2);
        h2_row(c0, 2, col, v);
        if (valid && x0 + int(col) < full_from)
            for (uint k = 0u; k < CPT; k++) gsum[g_base + k * p.C] -= v[k];
        return;
    } else {
        stage_rows(last - 2);
        h2_row(c0, last - 2, col, v);
        for (uint k = 0u; k < CPT; k++) {
            inner[k] = valid ? gsum[g_base + k * p.C] + v[k] : 0.0;
            all_rows[k] = inner[k];
        }
        if (valid) for (uint k = 0u; k < CPT; k++) gsum[g_base + k * p.C] = inner[k];
        const int edge[4] = int[4](0, 1, last - 1, last);
        for (uint r = 0u; r < 4u; r++) {
            stage_rows(edge[r]);
            h2_row(c0, edge[r], col, v);
            for (uint k = 0u; k < CPT; k++) all_rows[k] += v[k];
        }
    }
    float sum = 0.0;
    for (uint k = 0u; k < CPT; k++) sum += w[W3 + grp * CPT + k] * all_rows[k];
    partial[gl_LocalInvocationIndex] = sum / float(HIST);
    barrier();
    if (grp == 0u && valid) {
        float total = w[B3];
        for (uint g = 0u; g < groups; g++) total += partial[g * TILE + col];
        scores[n_id * p.C + s_col + uint(x0) + col] = total;
    }
}
