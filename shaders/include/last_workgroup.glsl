// The "last workgroup to finish" handshake of the fused one-dispatch passes (decode-attention,
// topk-select, gaussian-select). The including shader declares `coherent buffer ... { uint
// counter[]; }` and `shared bool sh_last;` before including this file.
#ifndef GRILLY_KV_LAST_WORKGROUP_GLSL
#define GRILLY_KV_LAST_WORKGROUP_GLSL

// Adds 1 to counter[i] once the workgroup's writes are visible; true (in every invocation) in
// the workgroup that brings it to n, which then sees every other workgroup's writes and resets
// it to 0 (so a recording replays). Call from uniform control flow.
bool last_to_finish(uint i, uint n) {
    memoryBarrierBuffer();                        // this workgroup's writes before its count
    barrier();
    if (gl_LocalInvocationIndex == 0u) sh_last = atomicAdd(counter[i], 1u) == n - 1u;
    barrier();
    const bool last = sh_last;                    // uniform over the workgroup
    barrier();
    if (!last) return false;
    memoryBarrierBuffer();                        // every other workgroup's writes are visible
    if (gl_LocalInvocationIndex == 0u) counter[i] = 0u;
    return true;
}

#endif
