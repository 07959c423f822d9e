#version 450
// Writes gl_SubgroupSize and gl_NumSubgroups of a 256-invocation workgroup (one workgroup):
// grilly_kv.ops.model_matmul_q.subgroup_size() sizes the matmul's lanes per row by it where the
// backend's property dict does not report the subgroup size.
#include "common.glsl"

layout(local_size_x = 256) in;
layout(set = 0, binding = 0) writeonly buffer Out { uint o[]; };

void main() {
    if (gl_LocalInvocationIndex == 0u) {
        o[0] = gl_SubgroupSize;
        o[1] = gl_NumSubgroups;
    }
}
