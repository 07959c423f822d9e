#version 450
// y[i] = x[i] over n_vec4 vec4s: the reference point for memory bandwidth (read + write).
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0) readonly buffer X { vec4 x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { vec4 y[]; };
layout(push_constant) uniform Push { uint n_vec4; } p;

void main() {
    const uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < p.n_vec4; i += stride) y[i] = x[i];
}
