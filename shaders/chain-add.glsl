#version 450
// y[i] = x[n - 1 - i] + 1: every element depends on one written by a far-away workgroup of the
// previous dispatch, so a chain of these shows any missing compute->compute barrier.
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Push { uint n; } p;

void main() {
    const uint i = gl_GlobalInvocationID.x;
    if (i < p.n) y[i] = x[p.n - 1u - i] + 1.0;
}
