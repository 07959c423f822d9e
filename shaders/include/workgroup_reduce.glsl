// Workgroup-wide reductions over subgroups: an exclusive prefix sum (for compaction), a sum and
// a maximum.
// Include after common.glsl. Every invocation of the workgroup must call them (they have barriers).
#ifndef GRILLY_KV_WORKGROUP_REDUCE_GLSL
#define GRILLY_KV_WORKGROUP_REDUCE_GLSL

const uint REDUCE_MAX_SUBGROUPS = 128u;   // 1024 invocations in subgroups of 8
shared uint sh_scan[REDUCE_MAX_SUBGROUPS];
shared vec4 sh_sum[REDUCE_MAX_SUBGROUPS];

// The sum of v over the invocations before this one (by local index); total: the sum over all.
uint exclusive_scan(uint v, out uint total) {
    const uint within = subgroupExclusiveAdd(v);
    if (gl_SubgroupInvocationID == gl_SubgroupSize - 1u) sh_scan[gl_SubgroupID] = within + v;
    barrier();
    uint before = 0u;
    total = 0u;
    for (uint s0 = 0u; s0 < gl_NumSubgroups; s0 += gl_SubgroupSize) {   // a subgroup's worth at a time
        const uint s = s0 + gl_SubgroupInvocationID;
        const uint t = s < gl_NumSubgroups ? sh_scan[s] : 0u;
        before += subgroupAdd(s < gl_SubgroupID ? t : 0u);
        total += subgroupAdd(t);
    }
    barrier();
    return before + within;
}

// The sum of v over the workgroup, bit-identical in every invocation.
vec4 workgroup_sum(vec4 v) {
    v = subgroupAdd(v);
    if (subgroupElect()) sh_sum[gl_SubgroupID] = v;
    barrier();
    vec4 t = vec4(0.0);
    for (uint s = 0u; s < gl_NumSubgroups; s++) t += sh_sum[s];
    barrier();
    return t;
}

// The maximum of v over the workgroup, in every invocation.
float workgroup_max(float v) {
    v = subgroupMax(v);
    if (subgroupElect()) sh_sum[gl_SubgroupID].x = v;
    barrier();
    for (uint s = 0u; s < gl_NumSubgroups; s++) v = max(v, sh_sum[s].x);
    barrier();
    return v;
}

#endif
