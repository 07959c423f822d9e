#version 450
// Attention of this step's queries over a float16 slot cache: see grilly_kv/ops/kv_slot_attention.py.
// Query t (position pos0 + t) sees the key in slot j < n_scan holding position p (slot_pos[j],
// or with POS_PER_HEAD slot_pos[(layer, kv head, j)]: heads that keep different tokens) iff
//   p <= pos0 + t  and  (p < sinks  or  pos0 + t - p < window).
// Slots [0, n_scan) are cut into chunks of max(SLOTS * U, ceil(n_scan / n_splits)) slots; only the
// first ceil(n_scan / chunk) splits are live (n_scan is read on the device, so one recording
// serves every step while the live length grows).
// The K/V buffers hold KV heads [h0, h0 + nh) of the layer (a part of a layer split by heads,
// policies/kv_store.py; layout [layer][kv head - h0][slot][D]): pass 0 is dispatched once per
// part, pass 1 once after all parts.
// Pass 0 (grid n_splits x nh x T): workgroup (s, kvh - h0, t) runs an online softmax over chunk s
//   for the G = HQ / HKV query heads of KV head kvh (each K/V row is read once for the group).
//   A cluster of LPT subgroup lanes holds one slot: each lane reads NVL of the row's D/4 float16
//   quads of K and of V, the logits are summed by shuffles; SLOTS = WG / LPT slots are in flight,
//   U per cluster per round (their loads issued together). No barrier in the loop; the clusters
//   are merged by shuffles, then across subgroups in shared memory, into
//   part[(t, h, s)] = [m, l, 0, 0, acc[D]] (max logit in log2 units, sum of 2^(logit - m),
//   sum of 2^(logit - m) v).
//   HG > 1 (decode plan, QT = 1 and P16 = 0 only): the workgroup's subgroups form HG head groups
//   (consecutive subgroup ids), group h holding heads h GH .. h GH + GH - 1 (GH = G / HG) of the
//   chunk's slots, SLOTS / HG in flight: each invocation keeps GH instead of G heads' queries and
//   accumulators (registers), and the HG groups load the same rows in the same round (one
//   workgroup: the repeats come from the L1 cache, not from memory).
// Pass 0 with QT > 1 (prefill chunks; grid n_splits x nh x ceil(T / QT)): workgroup (s, kvh - h0,
//   tile) holds QT consecutive query tokens, one cluster of LPT lanes per token (lanes over D, each
//   lane NVL quads of the token's G heads). The workgroup stages BLOCK K/V rows of chunk s (float16,
//   as loaded) and their positions in shared memory; every cluster then runs its own online softmax
//   over the staged rows, U per round, with the same round code (attend_round) and visibility rule
//   as QT = 1, so K/V are read from memory once per QT tokens instead of once per token. Each
//   cluster has seen the whole chunk, so it writes its part[(t, h, s)] directly (no merge).
//   The workgroup size is QT * LPT; tokens t >= T only help to stage.
// Pass 1 (grid HQ x T; always dispatched with QT = 1): log-sum-exp merge of the live splits into
//   O[t, h, :]. Both passes cut the chunks with the host's min_chunk (push constant).
// P16 = 1 (a model's numerics "ggml": llama.cpp's F16 K/V path without flash attention): q is
// rounded to float16, and each probability is normalised by the row's global max and sum, then
// rounded to float16 before it weights V: pass 0 (as above), pass 2 (grid HQ x T: the global max M
// and sum L of the live splits into O[t, h, 0].xy), pass 3 (grid as pass 0: per split, sum of
// fp16(2^(logit - M) * (1 / L)) v, with m = M and l = 1 for split 0 only), pass 1 (their sum).
// The host dispatches every pass with QT = 1 when P16 = 1 (passes 2 and 3 exist only untiled).
// Fused decode (push constant `fuse`, pass 0 untiled with T = 1; the host's GRILLY_KV_SLOT_FUSE):
//   FUSE_STORE: the dispatch also stores the step's token: workgroup (0, kvh) writes K and V of
//     KV head kvh (from the qkv row, rounded to float16 as kv-slot-store does) into slot
//     snew = step[SLOTS_AT], and the kvh = 0 one writes slot_pos[snew] = pos0 (the map shared by
//     the heads; not with POS_PER_HEAD). Every workgroup whose chunk holds snew takes that slot's
//     K/V and position from the qkv row and pos0 instead of memory, so no workgroup reads what
//     the dispatch writes (no race, no barrier); a ring slot that held an older token (streaming)
//     is thereby replaced as by the separate store before the attention.
//   FUSE_MERGE (P16 = 0): each live split's workgroup of (t = 0, kvh) counts itself done in
//     counter[kvh] (last_workgroup.glsl); the last to finish merges the G heads' splits into O as
//     pass 1 does (same code, same order) and resets the counter, so no pass 1 is dispatched.
#include "common.glsl"
#include "cluster_reduce.glsl"
#include "workgroup_reduce.glsl"

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint D = 64;
layout(constant_id = 2) const uint HQ = 9;
layout(constant_id = 3) const uint HKV = 3;
layout(constant_id = 4) const uint LPT = 8;      // lanes per slot (QT > 1: per token): a power of 2 dividing D/4, <= subgroup size
layout(constant_id = 5) const uint POS_PER_HEAD = 0;  // 1: slot_pos is (L, HKV, cap), a map per KV head
layout(constant_id = 6) const uint QT = 1;       // query tokens per pass-0 workgroup (1: decode layout)
layout(constant_id = 7) const uint P16 = 0;      // 1: float16 q and probabilities (see above)
layout(constant_id = 8) const uint HG = 1;       // pass 0 with QT = 1, P16 = 0: query-head groups per workgroup (header)
const uint G = HQ / HKV;
const uint GH = G / HG;                          // query heads held per invocation
const uint NV = D / 4u;                          // float16 quads (vec4s) per row
const uint NVL = NV / LPT;                       // quads per lane
const uint SLOTS = gl_WorkGroupSize.x / LPT;     // clusters per workgroup
const uint SLOTS_HG = SLOTS / HG;                // slots in flight per workgroup (QT = 1)
const uint U = 4u;                               // slots per cluster per round
const uint ROWV = (HQ + 2u * HKV) * NV;          // vec4s per qkv row
const uint PV = NV + 1u;                         // vec4s per partial result
const uint BLOCK = QT > 1u ? (NV < 16u ? 64u : 1024u / NV) / U * U : 1u;   // K/V rows staged at once (QT > 1)
const uint EMPTY = 0xFFFFFFFFu;
const float NEG = -1e30;
const float LOG2E = 1.4426950408889634;

layout(set = 0, binding = 0) readonly buffer QKV { vec4 qkv[]; };
layout(set = 0, binding = 1) readonly buffer KC { uvec2 kc[]; };
layout(set = 0, binding = 1) writeonly buffer KCW { uvec2 kc_w[]; };     // FUSE_STORE only
layout(set = 0, binding = 2) readonly buffer VC { uvec2 vc[]; };
layout(set = 0, binding = 2) writeonly buffer VCW { uvec2 vc_w[]; };     // FUSE_STORE only
layout(set = 0, binding = 3) readonly buffer SlotPos { uint slot_pos[]; };
layout(set = 0, binding = 3) writeonly buffer SlotPosW { uint slot_pos_w[]; };   // FUSE_STORE only
layout(set = 0, binding = 4) readonly buffer Step { uint step[]; };
layout(set = 0, binding = 5) coherent buffer Part { vec4 part[]; };     // coherent: read by the merging workgroup (FUSE_MERGE)
layout(set = 0, binding = 6) buffer O { vec4 o[]; };        // P16: pass 2 leaves (M, L) here for pass 3
layout(set = 0, binding = 7) coherent buffer Counter { uint counter[]; };   // FUSE_MERGE: (HKV,) splits done, left 0

layout(push_constant) uniform Push {
    uint cap;        // slots per (layer, kv head)
    uint layer;
    uint n_splits;   // splits in the grid (an upper bound of the live ones)
    uint pass_id;
    uint scale_bits; // 1/sqrt(D) (float)
    uint h0;         // first KV head held by the K/V buffers
    uint nh;         // KV heads held by the K/V buffers (pass 0's grid y)
    uint n_tokens;   // T: query tokens of the step (tokens of the last tile past it are idle)
    uint min_chunk;  // fewest slots per split (the host's plan; equal in both passes)
    uint fuse;       // pass 0, T = 1, untiled: FUSE_STORE | FUSE_MERGE bits (see the header)
} p;

const uint FUSE_STORE = 1u, FUSE_MERGE = 2u;
const uint SLOTS_AT = 8u;                        // step words: slot of token 0 (ops/step_words.py)
shared bool sh_last;                             // last_workgroup.glsl

// pass 0 (QT = 1): one head's per-subgroup (m, l) and acc; pass 1: the per-thread partial sums
shared vec4 sh_acc[QT > 1u ? 1u : SLOTS * NV];
shared vec2 sh_ml[QT > 1u ? 1u : SLOTS];
// pass 0 (QT > 1): the staged K/V rows (float16 quads) and the positions they hold
shared uvec2 sh_k[BLOCK * NV], sh_v[BLOCK * NV];
shared uint sh_pos[BLOCK];

#define f16r f16_round      // common.glsl: rounding NVIDIA's compiler does not fold away
#define f16r4 f16_round4

// per invocation: its quads of the G scaled queries and accumulators, the running max and sum
vec4 qr[GH * NVL];
vec4 acc[GH * NVL];
float m[GH], l[GH];
// P16 pass 3: the rows' fixed max M (in m) and 1 / L per head; weighted: this is pass 3
float inv_l[GH];
bool weighted = false;
uint hg0 = 0u;              // the first of this invocation's GH heads within its KV head's G
// the round in flight: its U rows' visibility and this lane's quads of their K and V
bool vis[U];
uvec2 kr[U * NVL], vr[U * NVL];

bool visible(uint pos, uint qpos, uint sinks, uint window) {
    return pos != EMPTY && pos <= qpos && (pos < sinks || qpos - pos < window);
}

uint chunk_len(uint n_scan) { return max(p.min_chunk, ceil_div(n_scan, p.n_splits)); }

uint part_row(uint t, uint kvh, uint g, uint s) { return ((t * HQ + kvh * G + g) * p.n_splits + s) * PV; }

// Merge (m, l, acc) of held head g over each head group's subgroups into part (row of token t,
// head kvh * G + group * GH + g, split s); every invocation calls it.
void write_partial(uint g, uint t, uint kvh, uint s) {
    const uint lane = gl_SubgroupInvocationID % LPT;
    for (uint off = LPT; off < gl_SubgroupSize; off <<= 1) {    // clusters of a subgroup: shuffles
        const float mo = subgroupShuffleXor(m[g], off), lo = subgroupShuffleXor(l[g], off);
        const float mx = max(m[g], mo), fa = exp2(m[g] - mx), fb = exp2(mo - mx);
        l[g] = l[g] * fa + lo * fb;
        [[unroll]] for (uint i = 0u; i < NVL; i++)
            acc[g * NVL + i] = acc[g * NVL + i] * fa + subgroupShuffleXor(acc[g * NVL + i], off) * fb;
        m[g] = mx;
    }
    const uint sg = gl_SubgroupID;
    if (gl_SubgroupInvocationID < LPT) {                       // subgroups: shared memory
        if (lane == 0u) sh_ml[sg] = vec2(m[g], l[g]);
        [[unroll]] for (uint i = 0u; i < NVL; i++) sh_acc[sg * NV + lane + i * LPT] = acc[g * NVL + i];
    }
    barrier();
    const uint tid = gl_LocalInvocationIndex, sgh = gl_NumSubgroups / HG;
    for (uint h = 0u; tid < NV && h < HG; h++) {              // head group h: subgroups [h sgh, (h + 1) sgh)
        float mx = NEG;
        for (uint k = h * sgh; k < (h + 1u) * sgh; k++) mx = max(mx, sh_ml[k].x);
        float lt = 0.0;
        vec4 a = vec4(0.0);
        for (uint k = h * sgh; k < (h + 1u) * sgh; k++) {
            const float f = exp2(sh_ml[k].x - mx);
            lt += f * sh_ml[k].y;
            a += f * sh_acc[k * NV + tid];
        }
        const uint dst = part_row(t, kvh, h * GH + g, s);
        part[dst + 1u + tid] = a;
        if (tid == 0u) part[dst] = vec4(mx, lt, 0.0, 0.0);
    }
    barrier();
}

// Load this lane's quads of the G queries of token t (pre-scaled to log2 units); zero the state.
void init_queries(uint t, uint kvh, uint lane) {
    const float scale = PUSH_F(p.scale_bits) * LOG2E;
    [[unroll]] for (uint g = 0u; g < GH; g++) {
        [[unroll]] for (uint i = 0u; i < NVL; i++) {
            const vec4 q = qkv[t * ROWV + (kvh * G + hg0 + g) * NV + lane + i * LPT];
            qr[g * NVL + i] = (P16 != 0u ? f16r4(q) : q) * scale;
            acc[g * NVL + i] = vec4(0.0);
        }
        m[g] = NEG;
        l[g] = 0.0;
    }
    weighted = P16 != 0u && p.pass_id == 3u;                   // uniform
    [[unroll]] for (uint g = 0u; g < GH; g++) {
        inv_l[g] = 0.0;
        if (weighted) {
            const vec2 ml = o[(t * HQ + kvh * G + hg0 + g) * NV].xy;
            m[g] = ml.x;
            inv_l[g] = 1.0 / ml.y;
        }
    }
}

// The round's U rows (vis, kr, vr) enter the online softmax of the G heads. Every lane of the
// cluster must call it (the logits are summed by shuffles over the cluster).
void attend_round() {
    [[unroll]] for (uint g = 0u; g < GH; g++) {
        float sc[U];
        [[unroll]] for (uint u = 0u; u < U; u++) {
            float d = 0.0;
            [[unroll]] for (uint i = 0u; i < NVL; i++) d += dot(qr[g * NVL + i], unpack_half4(kr[u * NVL + i]));
            d = cluster_add(d, LPT);
            sc[u] = vis[u] ? d : NEG;
        }
        if (weighted) {                                        // fixed M and L: rounded probabilities
            [[unroll]] for (uint u = 0u; u < U; u++) {
                if (vis[u]) {
                    const float w = f16r(exp2(sc[u] - m[g]) * inv_l[g]);
                    [[unroll]] for (uint i = 0u; i < NVL; i++) acc[g * NVL + i] += w * unpack_half4(vr[u * NVL + i]);
                }
            }
            continue;
        }
        float mx = m[g];                                       // online softmax over the U slots
        [[unroll]] for (uint u = 0u; u < U; u++) mx = max(mx, sc[u]);
        const float corr = exp2(m[g] - mx);
        l[g] *= corr;
        [[unroll]] for (uint i = 0u; i < NVL; i++) acc[g * NVL + i] *= corr;
        [[unroll]] for (uint u = 0u; u < U; u++) {
            if (vis[u]) {                                      // invisible slots (maybe never written) add nothing
                const float w = exp2(sc[u] - mx);
                l[g] += w;
                [[unroll]] for (uint i = 0u; i < NVL; i++) acc[g * NVL + i] += w * unpack_half4(vr[u * NVL + i]);
            }
        }
        m[g] = mx;
    }
}

uvec2 pack_half4(vec4 v) { return uvec2(packHalf2x16(v.xy), packHalf2x16(v.zw)); }
// FUSE_STORE: quad i of KV head kvh's key / value of token 0, from the qkv row, as stored
uvec2 fresh_k(uint kvh, uint i) { return pack_half4(qkv[(HQ + kvh) * NV + i]); }
uvec2 fresh_v(uint kvh, uint i) { return pack_half4(qkv[(HQ + HKV + kvh) * NV + i]); }

// FUSE_STORE: token 0's K/V of KV head kvh into slot snew of this part (row base + snew), and
// (kvh = 0) its position into the shared slot map.
void store_fresh(uint kvh, uint snew, uint base) {
    for (uint i = gl_LocalInvocationIndex; i < NV; i += gl_WorkGroupSize.x) {
        kc_w[(base + snew) * NV + i] = fresh_k(kvh, i);
        vc_w[(base + snew) * NV + i] = fresh_v(kvh, i);
    }
    if (kvh == 0u && POS_PER_HEAD == 0u && gl_LocalInvocationIndex == 0u) slot_pos_w[snew] = step[0];
}

void merge_if_last(uint kvh, uint t, uint n_live);

// QT = 1: the workgroup's clusters share token t's chunk s slot by slot, then merge.
void split_pass(uint s, uint kvh, uint t) {
    const uint qpos = step[0] + t, n_scan = step[2], sinks = step[3], window = step[4];
    const uint chunk = chunk_len(n_scan);
    const uint a0 = s * chunk;
    const uint base = (p.layer * p.nh + kvh - p.h0) * p.cap;          // this part's K/V rows
    const bool store = p.pass_id == 0u && (p.fuse & FUSE_STORE) != 0u; // uniform (T = 1)
    const uint snew = store ? step[SLOTS_AT] : EMPTY;          // EMPTY: no slot j < cap matches
    if (store && s == 0u) store_fresh(kvh, snew, base);
    if (a0 >= n_scan) return;                                  // not live at this length
    const uint a1 = min(a0 + chunk, n_scan);
    const uint lane = gl_SubgroupInvocationID % LPT, sgh = gl_NumSubgroups / HG;
    const uint slot = gl_SubgroupID % sgh * (gl_SubgroupSize / LPT) + gl_SubgroupInvocationID / LPT;
    hg0 = gl_SubgroupID / sgh * GH;
    init_queries(t, kvh, lane);
    const uint pos_base = POS_PER_HEAD != 0u ? (p.layer * HKV + kvh) * p.cap : 0u;
    for (uint r0 = a0; r0 < a1; r0 += SLOTS_HG * U) {         // rounds: uniform over the workgroup
        [[unroll]] for (uint u = 0u; u < U; u++) {             // loads first, all in flight
            const uint j = r0 + u * SLOTS_HG + slot, jc = min(j, a1 - 1u);
            const uint row = (base + jc) * NV + lane;
            if (jc == snew) {                                  // being stored by this dispatch: from qkv
                vis[u] = j < a1 && visible(step[0], qpos, sinks, window);
                [[unroll]] for (uint i = 0u; i < NVL; i++) {
                    kr[u * NVL + i] = fresh_k(kvh, lane + i * LPT);
                    vr[u * NVL + i] = fresh_v(kvh, lane + i * LPT);
                }
            } else {
                vis[u] = j < a1 && visible(slot_pos[pos_base + jc], qpos, sinks, window);
                [[unroll]] for (uint i = 0u; i < NVL; i++) {
                    kr[u * NVL + i] = kc[row + i * LPT];
                    vr[u * NVL + i] = vc[row + i * LPT];
                }
            }
        }
        attend_round();
    }
    if (weighted) {                                            // the merge then sums the splits
        const bool first = s == 0u && gl_SubgroupID % sgh == 0u && gl_SubgroupInvocationID == 0u;
        [[unroll]] for (uint g = 0u; g < GH; g++) l[g] = first ? 1.0 : 0.0;
    }
    [[unroll]] for (uint g = 0u; g < GH; g++) write_partial(g, t, kvh, s);
    if (p.pass_id == 0u && (p.fuse & FUSE_MERGE) != 0u) merge_if_last(kvh, t, ceil_div(n_scan, chunk));
}

// Stage rows [b0, b0 + BLOCK) of this part's K/V (rows >= a1: empty) and their positions.
void stage_block(uint b0, uint a1, uint base, uint pos_base) {
    const uint WG = gl_WorkGroupSize.x;
    for (uint k = 0u; k < (BLOCK * NV + WG - 1u) / WG; k++) {   // a constant trip count: the loads can go out together
        const uint e = k * WG + gl_LocalInvocationIndex, j = b0 + e / NV;
        if (e < BLOCK * NV) {
            const uint src = (base + min(j, a1 - 1u)) * NV + e % NV;
            sh_k[e] = j < a1 ? kc[src] : uvec2(0u);
            sh_v[e] = j < a1 ? vc[src] : uvec2(0u);
        }
    }
    for (uint r = gl_LocalInvocationIndex; r < BLOCK; r += WG)
        sh_pos[r] = b0 + r < a1 ? slot_pos[pos_base + b0 + r] : EMPTY;
}

// QT > 1: the workgroup's clusters are QT tokens; each reads every staged row of chunk s.
void tile_pass(uint s, uint kvh, uint tile) {
    const uint n_scan = step[2], sinks = step[3], window = step[4];
    const uint chunk = chunk_len(n_scan);
    const uint a0 = s * chunk;
    if (a0 >= n_scan) return;                                  // not live at this length (uniform)
    const uint a1 = min(a0 + chunk, n_scan);
    const uint lane = gl_SubgroupInvocationID % LPT;
    const uint t = tile * QT + gl_SubgroupID * (gl_SubgroupSize / LPT) + gl_SubgroupInvocationID / LPT;
    const bool has_token = t < p.n_tokens;                        // uniform over a cluster
    const uint qpos = step[0] + t;
    if (has_token) init_queries(t, kvh, lane);
    const uint base = (p.layer * p.nh + kvh - p.h0) * p.cap;
    const uint pos_base = POS_PER_HEAD != 0u ? (p.layer * HKV + kvh) * p.cap : 0u;
    for (uint b0 = a0; b0 < a1; b0 += BLOCK) {                // blocks: uniform over the workgroup
        stage_block(b0, a1, base, pos_base);
        barrier();
        const uint nb = min(BLOCK, a1 - b0);
        for (uint r0 = 0u; has_token && r0 < nb; r0 += U) {
            [[unroll]] for (uint u = 0u; u < U; u++) {
                vis[u] = visible(sh_pos[r0 + u], qpos, sinks, window);    // rows >= nb hold EMPTY
                [[unroll]] for (uint i = 0u; i < NVL; i++) {
                    kr[u * NVL + i] = sh_k[(r0 + u) * NV + lane + i * LPT];
                    vr[u * NVL + i] = sh_v[(r0 + u) * NV + lane + i * LPT];
                }
            }
            bool any_vis = false;                              // the cluster agrees on vis
            [[unroll]] for (uint u = 0u; u < U; u++) any_vis = any_vis || vis[u];
            if (any_vis) attend_round();
        }
        barrier();
    }
    if (!has_token) return;
    [[unroll]] for (uint g = 0u; g < GH; g++) {                // HG = 1 here: GH = G
        const uint dst = part_row(t, kvh, g, s);
        [[unroll]] for (uint i = 0u; i < NVL; i++) part[dst + 1u + lane + i * LPT] = acc[g * NVL + i];
        if (lane == 0u) part[dst] = vec4(m[g], l[g], 0.0, 0.0);
    }
}

// Query t, head h: the live splits (n_live, their partials from row b) and their global max logit
// (log2 units) and sum of 2^(logit - max).
vec2 split_stats(uint h, uint t, out uint b, out uint n_live) {
    const uint tid = gl_LocalInvocationIndex, WG = gl_WorkGroupSize.x;
    const uint n_scan = step[2];
    n_live = ceil_div(n_scan, chunk_len(n_scan));
    b = (t * HQ + h) * p.n_splits;
    float mx = NEG;
    for (uint s = tid; s < n_live; s += WG) mx = max(mx, part[(b + s) * PV].x);
    mx = workgroup_max(mx);
    float lt = 0.0;
    for (uint s = tid; s < n_live; s += WG) { const vec2 ml = part[(b + s) * PV].xy; lt += exp2(ml.x - mx) * ml.y; }
    return vec2(mx, workgroup_sum(vec4(lt, 0.0, 0.0, 0.0)).x);
}

void merge_pass(uint h, uint t) {
    const uint tid = gl_LocalInvocationIndex, WG = gl_WorkGroupSize.x;
    uint b, n_live;
    const vec2 stats = split_stats(h, t, b, n_live);
    const float mx = stats.x, lt = stats.y;
    const uint i = tid % NV, grp = tid / NV, n_grp = WG / NV;
    vec4 a = vec4(0.0);
    if (grp < n_grp)
        for (uint s = grp; s < n_live; s += n_grp) a += exp2(part[(b + s) * PV].x - mx) * part[(b + s) * PV + 1u + i];
    sh_acc[tid] = a;
    barrier();
    if (tid < NV) {
        for (uint k = 1u; k < n_grp; k++) a += sh_acc[k * NV + tid];
        o[(t * HQ + h) * NV + tid] = a / lt;
    }
}

#include "last_workgroup.glsl"

// FUSE_MERGE (T = 1, P16 = 0): the last of the n_live split workgroups of KV head kvh to finish
// merges its G heads' splits into O (pass 1's code, one head after the other).
void merge_if_last(uint kvh, uint t, uint n_live) {
    if (!last_to_finish(t * HKV + kvh, n_live)) return;
    for (uint g = 0u; g < G; g++) {
        merge_pass(kvh * G + g, t);
        barrier();                                             // sh_acc is reused by the next head
    }
}

// P16 pass 2: the global max and sum of query t, head h over the live splits into O[t, h, 0].xy.
void stats_pass(uint h, uint t) {
    uint b, n_live;
    const vec2 stats = split_stats(h, t, b, n_live);
    if (gl_LocalInvocationIndex == 0u) o[(t * HQ + h) * NV] = vec4(stats, 0.0, 0.0);
}

void main() {
    if (p.pass_id == 0u && QT > 1u) tile_pass(gl_WorkGroupID.x, p.h0 + gl_WorkGroupID.y, gl_WorkGroupID.z);
    else if (p.pass_id == 0u || p.pass_id == 3u) split_pass(gl_WorkGroupID.x, p.h0 + gl_WorkGroupID.y, gl_WorkGroupID.z);
    else if (p.pass_id == 2u) stats_pass(gl_WorkGroupID.x, gl_WorkGroupID.y);
    else merge_pass(gl_WorkGroupID.x, gl_WorkGroupID.y);
}
