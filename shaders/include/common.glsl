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

// Rounding to float16 and back (as a float16 cache stores a value). Not written as
// unpackHalf2x16(packHalf2x16(x)): NVIDIA's compiler (driver 580, H200) folds that pair to x, so
// the "rounded" key of this step's token stayed float32 there while lavapipe rounded it
// (benchmarks/diag_predictor_split.py found it). The half's bits are decoded with integer
// operations instead, which no compiler folds back to x; exact for every float16 value.
float half_bits_to_float(uint h) {
    const uint sign = (h & 0x8000u) << 16u, e = (h >> 10u) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0u) return uintBitsToFloat(sign | floatBitsToUint(float(m) * (1.0 / 16777216.0)));
    return uintBitsToFloat(sign | ((e == 31u ? 255u : e + 112u) << 23u) | (m << 13u));
}
vec2 f16_round2(vec2 v) {
    const uint w = packHalf2x16(v);
    return vec2(half_bits_to_float(w & 0xFFFFu), half_bits_to_float(w >> 16u));
}
float f16_round(float v) { return f16_round2(vec2(v, 0.0)).x; }
vec4 f16_round4(vec4 v) { return vec4(f16_round2(v.xy), f16_round2(v.zw)); }

uint ceil_div(uint a, uint b) { return (a + b - 1u) / b; }

// Order-preserving map of a float to a uint: a > b as floats <=> key_of(a) > key_of(b).
uint key_of(float f) {
    const uint u = floatBitsToUint(f);
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}
