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
// Both modes use the same arithmetic in the same order (conv1_at, TAP in order c1, dy, dx with
// fma, r_part, sum_groups, the cache sum in 4 fixed parts), so they give the same scores.
// When the candidate range grew by a column, columns from params[5] on (relative to s: the old
// last two and the new one) see new neighbours (their 5-column receptive field reaches the new
// column), so their cached inner rows are stale: mode 1 runs the step pass on every tile and then
// recomputes the inner rows 2 .. HIST-4 of just those columns (recompute_inner: one thread an
// (row, column) item, all 32 channels in the same order as above, so the same values).
//
// Workgroup (tile, n): TILE = 32 output columns, 128 threads. The tile's history rows are staged
// in shared memory (xs, 36 columns with the halo of both convolutions), h1 is computed from them
// into shared memory (h1v, 34 columns), w2 is staged transposed (w2s: per c1 and tap, 32 output
// channels as 8 vec4). Thread (pair, grp) computes 2 adjacent columns x 4 of the 32 h2 channels
// (one vec4 accumulator per row and column; no per-thread arrays but the 15 cache loads): per h1 channel it loads one vec4 of h1 per staged
// row (4 columns: 2 aligned vec2) and 9 weight vec4 (the same for the 16 threads of a group) for
// 2 x 4 x 9 FMAs per output row; in step mode the 5 rows share the weights (13 row taps).
#include "common.glsl"

layout(local_size_x_id = 0) in;                   // 128 = PAIRS x GROUPS
layout(constant_id = 1) const uint HIST = 64;
const uint TILE = 32u;                              // output columns per workgroup
const uint C1 = 16u;
const uint C2 = 32u;
const uint W1 = 0u, B1 = 144u, W2 = 160u, B2 = 4768u, W3 = 4800u, B3 = 4832u;
const uint COLS = TILE + 2u;                        // h1 columns incl. the halo
const uint HV = COLS / 2u;                          // vec2 per h1 row and channel
const uint XC = TILE + 4u;                          // staged history columns (both halos)
const uint PAIRS = 16u;                             // column pairs per tile (TILE = 32)
const uint GROUPS = 8u;                             // channel groups of 4
const uint THREADS = PAIRS * GROUPS;
const uint SLOTS = 7u;                              // h1 rows (step: 0, 1, 2, H-4 .. H-1)
const uint XSLOTS = 10u;                            // history rows; slot 9: zeros
const uint XZERO = 9u;
const uint RED = 3u * C1 * HV;                      // red[] lives in h1v slots 3 .. 6 (see main)

layout(set = 0, binding = 0) readonly buffer History { float hist[]; };
layout(set = 0, binding = 1) readonly buffer Weights { float w[]; };
// params[2] = oldest ring row, params[3] = s, params[4] = e (block columns),
// params[5] = first relative column that mode 1 recomputes fully
layout(set = 0, binding = 2) readonly buffer Params { uint params[]; };
layout(set = 0, binding = 3) writeonly buffer Out { float scores[]; };
layout(set = 0, binding = 4) coherent buffer Inner { float inner[]; };   // (N, HIST, C)

layout(push_constant) uniform Push {
    uint C;          // block columns of the history (and of the scores)
    uint mode;       // 0 full, 1 step
} p;

shared vec4 w2s[C1 * 9u * (C2 / 4u)];               // [c1][dy * 3 + dx][c2 / 4]
shared float w1s[C1 * 10u];                         // w1 (144), b1 (16)
shared float xs[XSLOTS * XC];                       // [slot][column x0 - 2 + k]
shared vec2 h1v[SLOTS * C1 * HV];                   // [slot][channel][column pair]

uint n_id, oldest, s_col, tid, pair, grp;
int W, x0;

// history row u (time, oldest first) into xs slot `slot`: columns x0 - 2 .. x0 + TILE + 1,
// 0 outside the grid
void stage_x(uint k, int u, uint slot) {
    const int j = x0 - 2 + int(k);
    float v = 0.0;
    if (u >= 0 && u < int(HIST) && j >= 0 && j < W)
        v = hist[(n_id * HIST + (oldest + uint(u)) % HIST) * p.C + s_col + uint(j)];
    xs[slot * XC + k] = v;
}

// h1 of channel ch at time row t and tile column cc - 1 (x rows t-1, t, t+1 in xs slots xa, xb,
// xc); 0 outside the grid. Stored into h1v slot `slot`.
void conv1_at(uint i, int t, uint slot, uint xa, uint xb, uint xc) {
    const uint ch = i / COLS, cc = i % COLS;
    const int j = x0 - 1 + int(cc);
    float v = 0.0;
    if (t >= 0 && t < int(HIST) && j >= 0 && j < W) {
        v = w1s[144u + ch];
        const uint xr[3] = uint[3](xa * XC + cc, xb * XC + cc, xc * XC + cc);
        [[unroll]] for (uint dy = 0u; dy < 3u; dy++)
            [[unroll]] for (uint dx = 0u; dx < 3u; dx++)
                v = fma(w1s[ch * 9u + dy * 3u + dx], xs[xr[dy] + dx], v);
        v = max(v, 0.0);
    }
    const uint i1 = (slot * C1 + ch) * COLS + cc;
    h1v[i1 / 2u][i1 % 2u] = v;
}

// h1 row of slot s for this thread's 4 columns (tile columns 2 pair - 1 .. 2 pair + 2), channel c1
vec4 h1_at(uint s, uint c1) {
    const uint b = (s * C1 + c1) * HV + pair;
    return vec4(h1v[b], h1v[b + 1u]);
}

// one tap row dy of the 3x3 kernel onto the accumulators of this thread's 2 columns (4 channels)
#define TAP(A0, A1, H, K0, K1, K2)                                                                \
    A0 = fma(K0, vec4(H.x), A0); A0 = fma(K1, vec4(H.y), A0); A0 = fma(K2, vec4(H.z), A0);       \
    A1 = fma(K0, vec4(H.y), A1); A1 = fma(K1, vec4(H.z), A1); A1 = fma(K2, vec4(H.w), A1);

// the 3 weight vec4 of tap row dy for input channel c1 (this thread's 4 output channels)
#define WROW(c1, dy, K0, K1, K2)                                                                  \
    const vec4 K0 = w2s[((c1) * 9u + (dy) * 3u) * 8u + grp];                                      \
    const vec4 K1 = w2s[((c1) * 9u + (dy) * 3u + 1u) * 8u + grp];                                 \
    const vec4 K2 = w2s[((c1) * 9u + (dy) * 3u + 2u) * 8u + grp];

// this thread's part of r at one column: sum over its 4 channels of w3[c] relu(acc + b2[c])
float r_part(vec4 acc) {
    float s = 0.0;
    [[unroll]] for (uint k = 0u; k < 4u; k++)
        s = fma(w[W3 + grp * 4u + k], max(acc[k] + w[B2 + grp * 4u + k], 0.0), s);
    return s;
}

// red (in h1v, after RED): [row][group][column]
void red_put(uint row, vec4 a0, vec4 a1) {
    const uint q = RED + ((row * GROUPS + grp) * TILE + 2u * pair) / 2u;
    h1v[q] = vec2(r_part(a0), r_part(a1));
}

// r of output row `row` at tile column tid (tid < TILE): the 8 groups' parts in order
float sum_groups(uint row) {
    const uint q = row * GROUPS * TILE + tid;
    float s = 0.0;
    [[unroll]] for (uint g = 0u; g < GROUPS; g++) s += h1v[RED + (q + g * TILE) / 2u][(q + g * TILE) % 2u];
    return s;
}

// Step mode after growth: the inner rows t = 2 .. HIST-4 of the columns [j0, j1) (relative to s)
// into the cache (row HIST-3 comes from the step pass). Item (t, j): the 5 x 5 history values
// around it, h1 of its 3 x 3 neighbourhood per channel (as conv1_at), h2 of the 32 channels with
// the fma order of TAP (c1, dy, dx), r_part per group and the groups summed in order (as
// sum_groups). Inner rows never touch the time padding, so only the columns are bounds-checked.
void recompute_inner(int j0, int j1) {
    const uint rows = HIST - 5u;
    const uint items = rows * uint(j1 - j0);
    for (uint it = tid; it < items; it += THREADS) {
        const int t = 2 + int(it % rows), j = j0 + int(it / rows);
        float xv[25];
        [[unroll]] for (uint a = 0u; a < 5u; a++) {
            const uint rowg = (n_id * HIST + (oldest + uint(t - 2) + a) % HIST) * p.C + s_col;
            [[unroll]] for (uint b = 0u; b < 5u; b++) {
                const int jj = j - 2 + int(b);
                xv[a * 5u + b] = (jj >= 0 && jj < W) ? hist[rowg + uint(jj)] : 0.0;
            }
        }
        vec4 acc[GROUPS];
        [[unroll]] for (uint g = 0u; g < GROUPS; g++) acc[g] = vec4(0.0);
        for (uint c1 = 0u; c1 < C1; c1++) {
            float h[9];
            [[unroll]] for (uint a = 0u; a < 3u; a++)
                [[unroll]] for (uint b = 0u; b < 3u; b++) {
                    const int jj = j - 1 + int(b);
                    float v = 0.0;
                    if (jj >= 0 && jj < W) {
                        v = w1s[144u + c1];
                        [[unroll]] for (uint dy = 0u; dy < 3u; dy++)
                            [[unroll]] for (uint dx = 0u; dx < 3u; dx++)
                                v = fma(w1s[c1 * 9u + dy * 3u + dx], xv[(a + dy) * 5u + b + dx], v);
                        v = max(v, 0.0);
                    }
                    h[a * 3u + b] = v;
                }
            [[unroll]] for (uint g = 0u; g < GROUPS; g++)
                [[unroll]] for (uint k = 0u; k < 9u; k++)
                    acc[g] = fma(w2s[(c1 * 9u + k) * 8u + g], vec4(h[k]), acc[g]);
        }
        float r = 0.0;
        [[unroll]] for (uint g = 0u; g < GROUPS; g++) {
            float sg = 0.0;
            [[unroll]] for (uint k = 0u; k < 4u; k++)
                sg = fma(w[W3 + g * 4u + k], max(acc[g][k] + w[B2 + g * 4u + k], 0.0), sg);
            r += sg;
        }
        inner[(n_id * HIST + (oldest + uint(t)) % HIST) * p.C + s_col + uint(j)] = r;
    }
}

// x slot of history row u in step mode (rows 0 .. 3 in slots 0 .. 3, HIST-5 .. HIST-1 in 4 .. 8)
uint xslot_step(int u) {
    return (u < 0 || u >= int(HIST)) ? XZERO : u < 4 ? uint(u) : uint(u - int(HIST) + 9);
}

uint xslot_full(int u) { return (u < 0 || u >= int(HIST)) ? XZERO : uint(u) % 9u; }

void main() {
    n_id = gl_WorkGroupID.y;
    oldest = params[2];
    s_col = params[3];
    W = int(params[4]) - int(s_col);
    x0 = int(gl_WorkGroupID.x * TILE);
    if (x0 >= W) return;                             // whole workgroup: uniform exit
    tid = gl_LocalInvocationIndex;
    pair = tid % PAIRS;
    grp = tid / PAIRS;
    const int last = int(HIST) - 1;
    // w2 read in order (coalesced), stored transposed: w2[c2][c1][k] -> w2s[c1 * 9 + k][c2]
    for (uint i = tid; i < C2 * C1 * 9u; i += THREADS) {
        const uint c2 = i / (C1 * 9u), c1k = i % (C1 * 9u);
        w2s[c1k * 8u + c2 / 4u][c2 % 4u] = w[W2 + i];
    }
    for (uint i = tid; i < C1 * 10u; i += THREADS) w1s[i] = w[W1 + i];
    // thread tid < TILE finishes column tid of the tile
    const bool own = tid < TILE && x0 + int(tid) < W;
    const uint col_g = n_id * HIST * p.C + s_col + uint(x0) + tid % TILE;   // + ring row * C
    float bsum = 0.0;                                // boundary rows 0, 1, HIST-2, HIST-1 (in order)

    if (p.mode == 0u) {
        // h1 row t in h1v slot t % 3 (row -1: slot 2, zeros); history row u in xs slot u % 9
        for (uint k = tid; k < 4u * XC; k += THREADS) {
            const uint r = k / XC;                   // x rows 0, 1, 2 and the zero slot
            stage_x(k % XC, r == 3u ? -1 : int(r), r == 3u ? XZERO : r);
        }
        barrier();
        for (uint i = tid; i < 2u * C1 * COLS; i += THREADS) {
            const int t = int(i / (C1 * COLS)) - 1;   // h1 rows -1 and 0
            conv1_at(i % (C1 * COLS), t, t < 0 ? 2u : 0u, xslot_full(t - 1), xslot_full(t), xslot_full(t + 1));
        }
        float b0 = 0.0, b1 = 0.0, b2 = 0.0, b3 = 0.0;
        for (int t = 0; t <= last; t++) {
            // h1 row t + 1 (x rows t .. t + 2, staged before the last barrier); history row t + 3
            for (uint i = tid; i < C1 * COLS; i += THREADS)
                conv1_at(i, t + 1, uint(t + 1) % 3u, xslot_full(t), xslot_full(t + 1), xslot_full(t + 2));
            if (t + 3 < int(HIST))
                for (uint k = tid; k < XC; k += THREADS) stage_x(k, t + 3, uint(t + 3) % 9u);
            barrier();
            const uint sa = uint(t + 2) % 3u, sb = uint(t) % 3u, sc = uint(t + 1) % 3u;
            vec4 a0 = vec4(0.0), a1 = vec4(0.0);
            for (uint c1 = 0u; c1 < C1; c1++) {
                const vec4 ha = h1_at(sa, c1), hb = h1_at(sb, c1), hc = h1_at(sc, c1);
                { WROW(c1, 0u, k0, k1, k2) TAP(a0, a1, ha, k0, k1, k2) }
                { WROW(c1, 1u, k0, k1, k2) TAP(a0, a1, hb, k0, k1, k2) }
                { WROW(c1, 2u, k0, k1, k2) TAP(a0, a1, hc, k0, k1, k2) }
            }
            red_put(0u, a0, a1);
            barrier();
            if (own) {
                const float r = sum_groups(0u);
                if (t >= 2 && t <= last - 2) inner[col_g + ((oldest + uint(t)) % HIST) * p.C] = r;
                else if (t == 0) b0 = r;
                else if (t == 1) b1 = r;
                else if (t == last - 1) b2 = r;
                else b3 = r;
            }
        }
        bsum = ((b0 + b1) + b2) + b3;
    } else {
        // xs slots 0 .. 3: history rows 0 .. 3; 4 .. 8: rows HIST-5 .. HIST-1; 9: zeros
        for (uint k = tid; k < XSLOTS * XC; k += THREADS) {
            const uint sl = k / XC;
            stage_x(k % XC, sl == XZERO ? -1 : sl < 4u ? int(sl) : int(sl) + int(HIST) - 9, sl);
        }
        barrier();
        // h1v slots 0, 1, 2: h1 rows 0, 1, 2; slots 3 .. 6: h1 rows HIST-4 .. HIST-1
        for (uint i = tid; i < SLOTS * C1 * COLS; i += THREADS) {
            const uint sl = i / (C1 * COLS);
            const int t = sl < 3u ? int(sl) : int(sl) + int(HIST) - 7;
            conv1_at(i % (C1 * COLS), t, sl, xslot_step(t - 1), xslot_step(t), xslot_step(t + 1));
        }
        barrier();
        // output rows HIST-3 (inner; h1 slots 3, 4, 5), 0 (-, 0, 1), 1 (0, 1, 2), HIST-2 (4, 5, 6),
        // HIST-1 (5, 6, -): the zero rows' taps are left out
        vec4 i0 = vec4(0.0), i1 = vec4(0.0), a0 = vec4(0.0), a1 = vec4(0.0), b0 = vec4(0.0),
             b1 = vec4(0.0), c0 = vec4(0.0), c1_ = vec4(0.0), d0 = vec4(0.0), d1 = vec4(0.0);
        for (uint c1 = 0u; c1 < C1; c1++) {
            const vec4 h0 = h1_at(0u, c1), h1 = h1_at(1u, c1), h2 = h1_at(2u, c1), h3 = h1_at(3u, c1),
                       h4 = h1_at(4u, c1), h5 = h1_at(5u, c1), h6 = h1_at(6u, c1);
            {
                WROW(c1, 0u, k0, k1, k2)
                TAP(i0, i1, h3, k0, k1, k2) TAP(b0, b1, h0, k0, k1, k2)
                TAP(c0, c1_, h4, k0, k1, k2) TAP(d0, d1, h5, k0, k1, k2)
            }
            {
                WROW(c1, 1u, k0, k1, k2)
                TAP(i0, i1, h4, k0, k1, k2) TAP(a0, a1, h0, k0, k1, k2) TAP(b0, b1, h1, k0, k1, k2)
                TAP(c0, c1_, h5, k0, k1, k2) TAP(d0, d1, h6, k0, k1, k2)
            }
            {
                WROW(c1, 2u, k0, k1, k2)
                TAP(i0, i1, h5, k0, k1, k2) TAP(a0, a1, h1, k0, k1, k2) TAP(b0, b1, h2, k0, k1, k2)
                TAP(c0, c1_, h6, k0, k1, k2)
            }
        }
        barrier();                                   // red overwrites h1v slots 3 .. 6
        red_put(0u, i0, i1); red_put(1u, a0, a1); red_put(2u, b0, b1); red_put(3u, c0, c1_);
        red_put(4u, d0, d1);
        barrier();
        if (own) {
            inner[col_g + ((oldest + uint(last - 2)) % HIST) * p.C] = sum_groups(0u);
            bsum = ((sum_groups(1u) + sum_groups(2u)) + sum_groups(3u)) + sum_groups(4u);
        }
        const int j0 = max(int(params[5]), x0), j1 = min(x0 + int(TILE), W);
        if (j0 < j1) recompute_inner(j0, j1);        // uniform: the workgroup's tile and params
    }
    // the cache sum over t = 2 .. HIST-3 in 4 parts (thread tid: column tid % TILE, part tid / TILE)
    memoryBarrierBuffer();
    barrier();
    const uint part = tid / TILE;
    const uint n_part = (HIST - 4u) / 4u;            // HIST = 64: 15 rows a part, loads issued together
    float psum = 0.0;
    if (x0 + int(tid % TILE) < W) {
        float v[n_part];
        [[unroll]] for (uint k = 0u; k < n_part; k++)
            v[k] = inner[col_g + ((oldest + 2u + part * n_part + k) % HIST) * p.C];
        [[unroll]] for (uint k = 0u; k < n_part; k++) psum += v[k];
    }
    h1v[RED + tid / 2u][tid % 2u] = psum;
    barrier();
    if (!own) return;
    const float isum = ((psum + h1v[RED + (tid + TILE) / 2u][(tid + TILE) % 2u])
                        + h1v[RED + (tid + 2u * TILE) / 2u][(tid + 2u * TILE) % 2u])
                       + h1v[RED + (tid + 3u * TILE) / 2u][(tid + 3u * TILE) % 2u];
    scores[n_id * p.C + s_col + uint(x0) + tid] = w[B3] + (isum + bsum) / float(HIST);
}
