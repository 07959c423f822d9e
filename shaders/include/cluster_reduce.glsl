// Sums over clusters of LANES consecutive subgroup lanes (LANES a power of 2, <= the subgroup
// size), by butterfly shuffles: every lane of a cluster gets the cluster's sum. Every lane of a
// cluster must be active. Include after common.glsl.
#ifndef GRILLY_KV_CLUSTER_REDUCE_GLSL
#define GRILLY_KV_CLUSTER_REDUCE_GLSL
#extension GL_KHR_shader_subgroup_shuffle : require

float cluster_add(float x, uint lanes) {
    [[unroll]] for (uint o = 1u; o < lanes; o <<= 1) x += subgroupShuffleXor(x, o);
    return x;
}

#endif
