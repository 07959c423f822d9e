// Workgroup-wide exclusive prefix sum over uint, for compaction. Include after common.glsl.
#ifndef GRILLY_KV_WORKGROUP_SCAN_GLSL
#define GRILLY_KV_WORKGROUP_SCAN_GLSL

const uint SCAN_MAX_SUBGROUPS = 128u;
shared uint sh_scan[SCAN_MAX_SUBGROUPS];

// The sum of v over the invocations before this one (by local index); total: the sum over all.
// Every invocation of the workgroup must call it (it has barriers).
uint exclusive_scan(uint v, out uint total) {
    const uint within = subgroupExclusiveAdd(v);
    if (gl_SubgroupInvocationID == gl_SubgroupSize - 1u) sh_scan[gl_SubgroupID] = within + v;
    barrier();
    uint before = 0u;
    total = 0u;
    for (uint s = 0u; s < gl_NumSubgroups; s++) {
        if (s == gl_SubgroupID) before = total;
        total += sh_scan[s];
    }
    barrier();
    return before + within;
}

#endif
