// Quest's page score (Tang et al.): per query head g of the KV head's group, sum over d of
// max(q_d lo_d, q_d hi_d) (lo, hi: the page's per-dimension key minimum and maximum), each head's
// partial sums of a lane cluster added by cluster_add; the page's score is the heads' maximum, or
// their mean with REDUCE_MEAN != 0. One definition, so that every shader that scores pages
// (topk-select's score pass, decode-attention's one-dispatch quest step) computes bit-identical
// scores. Expects G and REDUCE_MEAN (constants) and cluster_add (cluster_reduce.glsl).
//   OUT: float receiving the score; QR: vec4[G * NVX] the group's query quads of this lane;
//   LO, HI: vec4[NVX] the page's min and max quads of this lane; LANES: lanes per page cluster.
#ifndef GRILLY_KV_QUEST_SCORE_GLSL
#define GRILLY_KV_QUEST_SCORE_GLSL

#define QUEST_PAGE_SCORE(OUT, QR, LO, HI, NVX, LANES) {                                  \
    float best_ = -3.0e38, total_ = 0.0;                                                 \
    [[unroll]] for (uint g_ = 0u; g_ < G; g_++) {                                        \
        float s_ = 0.0;                                                                  \
        [[unroll]] for (uint j_ = 0u; j_ < NVX; j_++) {                                  \
            const vec4 qv_ = QR[g_ * NVX + j_];                                          \
            const vec4 b_ = max(qv_ * LO[j_], qv_ * HI[j_]);                             \
            s_ += b_.x + b_.y + b_.z + b_.w;                                             \
        }                                                                                \
        s_ = cluster_add(s_, LANES);                                                     \
        best_ = max(best_, s_);                                                          \
        total_ += s_;                                                                    \
    }                                                                                    \
    OUT = REDUCE_MEAN != 0u ? total_ / float(G) : best_;                                 \
}

#endif
