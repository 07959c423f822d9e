#version 450
// AttentionPredictor CNN: per history n, scores of the block columns [s, e) for the next step.
// See grilly_kv/ops/predictor_cnn.py and grilly_kv/reference/predictor_cnn.py.
//
// x(t, j) = history[n, (oldest + t) % HIST, s + j], t in [0, HIST) oldest first, j in [0, W = e - s)
// h1 = relu(conv3x3(x; w1, b1))            16 channels, zero padding 1
// h2 = relu(conv3x3(h1; w2, b2))           32 channels, zero padding 1 (h1 is 0 outside the grid)
// r(t, j) = sum_c w3[c] h2[c, t, j];       out[n, s + j] = b3 + (1 / HIST) sum_t r(t, j)
// Weights (one flat float buffer): w1[16][3][3], b1[16], w2[32][16][3][3], b2[32], w3[32], b3.
//
// Rows t = 2 .. HIST-3 of h2 ("inner" rows) do not see the time padding: r(t, j) of an inner row
// depends only on the 5 history rows around it, so it is the same in every window that holds it
// as an inner row. inner[n, ring row, s + j] caches it, keyed by the ring row of its time step.
//   mode 0 (full):  all HIST rows; writes the inner cache of rows 2 .. HIST-3, then the scores
//   mode 1 (step):  after a ring update that slid the window by one row: computes h2 only on the
//                   new inner row HIST-3 (cached) and the 4 boundary rows 0, 1, HIST-2, HIST-1;
//                   the inner rows 2 .. HIST-4 come from the cache
// Both modes sum the cache over t = 2 .. HIST-3 in the same order, then the boundary rows.
// When the candidate range grew by a column, columns from params[5] on (relative to s: the old
// last two and the new one) see new neighbours: mode 1 runs their tiles as mode 0.
//
// Workgroup (tile, n): TILE output columns, 64 threads. Thread (pair, group) computes 2 adjacent
// columns x 8 of the 32 h2 channels (COLS is even, so its 4 h1 columns are 2 aligned vec2): per
// h1 channel it loads 4 columns of each staged h1 row and the 72 weights (as vec4, broadcast)
// from shared memory for 2 x 8 x 9 FMAs per output row; 5 rows share the weights in step mode.
#include "common.glsl"

layout(local_size_x_id = 0) in;                   // 64 = PAIRS x GROUPS
layout(constant_id = 1) const uint HIST = 64;
const uint TILE = 32u;                              // output columns per workgroup
const uint C1 = 16u;
const uint C2 = 32u;
const uint W1 = 0u, B1 = 144u, W2 = 160u, B2 = 4768u, W3 = 4800u, B3 = 4832u;
const uint COLS = TILE + 2u;                        // h1 columns incl. the halo
const uint PAIRS = 16u;                             // column pairs per tile (TILE = 32)
const uint GROUPS = 4u;                             // channel groups of 8
const uint SLOTS = 7u;                              // staged h1 rows (step: 0, 1, 2, H-4 .. H-1)

layout(set = 0, binding = 0) readonly buffer History { float hist[]; };
layout(set = 0, binding = 1) readonly buffer Weights { float w[]; };
// params[2] = oldest ring row, params[3] = s, params[4] = e (block columns),
// params[5] = first relative column that mode 1 recomputes fully
layout(set = 0, binding = 2) readonly buffer Params { uint params[]; };
layout(set = 0, binding = 3) writeonly buffer Out { float scores[]; };
layout(set = 0, binding = 4) buffer Inner { float inner[]; };    // (N, HIST, C)

layout(push_constant) uniform Push {
    uint C;          // block columns of the history (and of the scores)
    uint mode;       // 0 full, 1 step
} p;

shared vec4 w2s[C1 * 9u * (C2 / 4u)];               // [c1][dy * 3 + dx][c2 / 4]
shared vec2 h1v[SLOTS * C1 * COLS / 2u];            // [slot][channel][column], 2 columns a word pair
shared float red[5u * GROUPS * TILE];               // channel-group parts of r: [row][group][col]

uint n_id, oldest, s_col;
int W, x0;

float x_at(int t, int j) {
    if (t < 0 || t >= int(HIST) || j < 0 || j >= W) return 0.0;
    return hist[(n_id * HIST + (oldest + uint(t)) % HIST) * p.C + s_col + uint(j)];
}

// h1 time row t (all channels, columns x0 - 1 .. x0 + TILE) into slot `slot`; 0 outside the grid
void conv1_row(int t, uint slot) {
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
        const uint i1 = (slot * C1 + ch) * COLS + cc;
        h1v[i1 / 2u][i1 % 2u] = v;
    }
}

// Pre-activation h2 of this thread's 8 channels (from 8 grp) x 2 columns (tile columns 2 pair,
// 2 pair + 1) for R output rows whose h1 rows t-1, t, t+1 are in slots sl[r][0..2] (-1: zero
// row), accumulated onto acc[r][column][channel]. Per h1 channel and dy: one vec4 of h1 per row
// (2 x vec2 loads), then per dx 8 weights (2 x vec4, the same for all threads of a group) used
// for 2 columns x R rows.
#define H2_ROWS(R, sl, acc)                                                                        \
    for (uint c1 = 0u; c1 < C1; c1++) {                                                            \
        [[unroll]] for (int dy = 0; dy < 3; dy++) {                                                \
            vec4 h[R];                                                                             \
            [[unroll]] for (int r = 0; r < R; r++) {                                               \
                const uint hb = ((uint(max(sl[r][dy], 0)) * C1 + c1) * COLS) / 2u + pair;          \
                h[r] = sl[r][dy] < 0 ? vec4(0.0) : vec4(h1v[hb], h1v[hb + 1u]);                    \
            }                                                                                      \
            [[unroll]] for (int dx = 0; dx < 3; dx++) {                                            \
                const uint wb = (c1 * 9u + uint(dy * 3 + dx)) * 8u + 2u * grp;                     \
                const vec4 wa = w2s[wb], wc = w2s[wb + 1u];                                        \
                [[unroll]] for (int r = 0; r < R; r++) {                                           \
                    if (sl[r][dy] < 0) continue;                                                   \
                    const float u = h[r][dx], v = h[r][dx + 1];                                    \
                    acc[r][0][0] += wa.x * u;     acc[r][1][0] += wa.x * v;                        \
                    acc[r][0][1] += wa.y * u;     acc[r][1][1] += wa.y * v;                        \
                    acc[r][0][2] += wa.z * u;     acc[r][1][2] += wa.z * v;                        \
                    acc[r][0][3] += wa.w * u;     acc[r][1][3] += wa.w * v;                        \
                    acc[r][0][4] += wc.x * u;     acc[r][1][4] += wc.x * v;                        \
                    acc[r][0][5] += wc.y * u;     acc[r][1][5] += wc.y * v;                        \
                    acc[r][0][6] += wc.z * u;     acc[r][1][6] += wc.z * v;                        \
                    acc[r][0][7] += wc.w * u;     acc[r][1][7] += wc.w * v;                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

uint pair, grp;

// r of output row `row` of the reduction buffer at the calling thread's column (tid < TILE)
float sum_groups(uint row) {
    const uint q = row * GROUPS * TILE + gl_LocalInvocationIndex;
    return ((red[q] + red[q + TILE]) + red[q + 2u * TILE]) + red[q + 3u * TILE];
}

// this thread's part of r for column a of output row acc[r]: sum over its 8 channels of
// w3[c] relu(acc + b2[c])
float r_part(float acc[8]) {
    float s = 0.0;
    [[unroll]] for (uint k = 0u; k < 8u; k++) s += w[W3 + grp * 8u + k] * max(acc[k] + w[B2 + grp * 8u + k], 0.0);
    return s;
}

void main() {
    n_id = gl_WorkGroupID.y;
    oldest = params[2];
    s_col = params[3];
    W = int(params[4]) - int(s_col);
    x0 = int(gl_WorkGroupID.x * TILE);
    if (x0 >= W) return;                             // whole workgroup: uniform exit
    const uint tid = gl_LocalInvocationIndex;
    pair = tid % PAIRS;
    grp = tid / PAIRS;
    const int last = int(HIST) - 1;
    for (uint i = tid; i < C1 * 9u * (C2 / 4u); i += gl_WorkGroupSize.x) {
        const uint c1k = i / 8u, c2 = (i % 8u) * 4u;          // c1k = c1 * 9 + dy * 3 + dx
        const uint c1 = c1k / 9u, k = c1k % 9u;
        w2s[i] = vec4(w[W2 + ((c2 + 0u) * C1 + c1) * 9u + k], w[W2 + ((c2 + 1u) * C1 + c1) * 9u + k],
                      w[W2 + ((c2 + 2u) * C1 + c1) * 9u + k], w[W2 + ((c2 + 3u) * C1 + c1) * 9u + k]);
    }
    // thread tid < TILE finishes column tid of the tile
    const bool own = tid < TILE && x0 + int(tid) < W;
    const uint col_g = n_id * HIST * p.C + s_col + uint(x0) + tid;   // + ring row * C
    float bsum = 0.0;                                // boundary rows 0, 1, HIST-2, HIST-1 (in order)

    const int full_from = int(params[5]);
    if (p.mode == 0u || full_from < min(x0 + int(TILE), W)) {
        conv1_row(-1, 2u);
        conv1_row(0, 0u);
        float b[4] = float[4](0.0, 0.0, 0.0, 0.0);
        for (int t = 0; t <= last; t++) {
            conv1_row(t + 1, uint(t + 1) % 3u);
            barrier();
            const int sl[1][3] = int[1][3](int[3](int(uint(t + 2) % 3u), int(uint(t) % 3u), int(uint(t + 1) % 3u)));
            float acc[1][2][8];
            [[unroll]] for (uint a = 0u; a < 2u; a++) [[unroll]] for (uint k = 0u; k < 8u; k++) acc[0][a][k] = 0.0;
            H2_ROWS(1, sl, acc)
            red[grp * TILE + 2u * pair] = r_part(acc[0][0]);
            red[grp * TILE + 2u * pair + 1u] = r_part(acc[0][1]);
            barrier();
            if (own) {
                const float r = sum_groups(0u);
                if (t >= 2 && t <= last - 2) inner[col_g + ((oldest + uint(t)) % HIST) * p.C] = r;
                else b[t < 2 ? t : t - last + 3] = r;
            }
        }
        bsum = ((b[0] + b[1]) + b[2]) + b[3];
    } else {
        // slots 0, 1, 2: h1 rows 0, 1, 2; slots 3 .. 6: h1 rows HIST-4 .. HIST-1
        conv1_row(0, 0u); conv1_row(1, 1u); conv1_row(2, 2u);
        conv1_row(last - 3, 3u); conv1_row(last - 2, 4u); conv1_row(last - 1, 5u); conv1_row(last, 6u);
        barrier();
        // output rows HIST-3 (inner), 0, 1, HIST-2, HIST-1
        const int sl[5][3] = int[5][3](int[3](3, 4, 5), int[3](-1, 0, 1), int[3](0, 1, 2),
                                      int[3](4, 5, 6), int[3](5, 6, -1));
        float acc[5][2][8];
        [[unroll]] for (uint r = 0u; r < 5u; r++) [[unroll]] for (uint a = 0u; a < 2u; a++)
            [[unroll]] for (uint k = 0u; k < 8u; k++) acc[r][a][k] = 0.0;
        H2_ROWS(5, sl, acc)
        [[unroll]] for (uint r = 0u; r < 5u; r++) [[unroll]] for (uint a = 0u; a < 2u; a++)
            red[(r * GROUPS + grp) * TILE + 2u * pair + a] = r_part(acc[r][a]);
        barrier();
        if (own) {
            inner[col_g + ((oldest + uint(last - 2)) % HIST) * p.C] = sum_groups(0u);
            bsum = ((sum_groups(1u) + sum_groups(2u)) + sum_groups(3u)) + sum_groups(4u);
        }
    }
    if (!own) return;
    float isum = 0.0;
    for (int t = 2; t <= last - 2; t++) isum += inner[col_g + ((oldest + uint(t)) % HIST) * p.C];
    scores[n_id * p.C + s_col + uint(x0) + tid] = w[B3] + (isum + bsum) / float(HIST);
}
