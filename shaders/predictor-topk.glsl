#version 450
// Top-k block columns of the predictor's scores, per history: see grilly_kv/ops/predictor_topk.py.
// scores: (N, C) float32 (columns [s, e) valid; s = params[3], e = params[4]); sel: (N, K) uint.
// When e - s <= K every candidate is chosen (s, s+1, .., then NONE); otherwise column s + j
// goes to sel[n, rank] with rank = #{j' : score_j' > score_j, or equal and j' < j}, so ties go
// to the lower column and sel holds the K best in descending order.
// from_hist = 1 ("last-row" predictor): the scores are the history ring (N, HIST, C) itself, its
// newest row (params[2] - 1) % HIST.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer Scores { float scores[]; };
layout(set = 0, binding = 1) readonly buffer Params { uint params[]; };
layout(set = 0, binding = 2) writeonly buffer Sel { uint sel[]; };

layout(push_constant) uniform Push { uint C; uint K; uint from_hist; } p;

const uint NONE = 0xFFFFFFFFu;

void main() {
    const uint n = gl_WorkGroupID.x, tid = gl_LocalInvocationIndex;
    const uint s = params[3], e = max(params[4], params[3]);
    const uint W = e - s;
    if (W <= p.K) {
        for (uint i = tid; i < p.K; i += 64u) sel[n * p.K + i] = i < W ? s + i : NONE;
        return;
    }
    const uint newest = (params[2] + 63u) % 64u;
    const uint base = (p.from_hist != 0u ? n * 64u + newest : n) * p.C + s;
    for (uint j = tid; j < W; j += 64u) {
        const float v = scores[base + j];
        uint rank = 0u;
        for (uint i = 0u; i < W; i++) {
            const float u = scores[base + i];
            rank += uint(u > v || (u == v && i < j));
        }
        if (rank < p.K) sel[n * p.K + rank] = s + j;
    }
}
