// Shared helpers for grilly_kv shaders. Requires GL_KHR_shader_subgroup_arithmetic.
// Conventions: buffers are arrays of 32-bit words; float16 data is packed two per uint
// (element 2i in the low half); per-call sizes are uint push constants, floats bit-cast.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require     // [[unroll]]

#define PUSH_F(x) uintBitsToFloat(x)

// 4 consecutive elements starting at element 4*i of a float32 (as uvec4) or float16 (as uvec2)
// array. Both views alias the same binding; exactly one is read per specialisation.
// The float16 branch loads the uvec2 whole (one 64-bit load), then unpacks it.
vec4 unpack_half4(uvec2 w) { return vec4(unpackHalf2x16(w.x), unpackHalf2x16(w.y)); }
#define LOAD_VEC4(F16, view32, view16, i) \
    ((F16) != 0u ? unpack_half4((view16)[i]) : uintBitsToFloat((view32)[i]))

// Element i of a float32 (as float) or packed float16 (as uint) array; the same aliasing rule.
#define LOAD_SCALAR(F16, view32, view16, i) \
    ((F16) != 0u ? unpackHalf2x16((view16)[(i) >> 1u])[(i) & 1u] : (view32)[i])

uint ceil_div(uint a, uint b) { return (a + b - 1u) / b; }

// Order-preserving map of a float to a uint: a > b as floats <=> key_of(a) > key_of(b).
uint key_of(float f) {
    const uint u = floatBitsToUint(f);
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}
