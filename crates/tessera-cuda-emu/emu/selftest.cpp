// Kernels that check the emulation itself (tests/runtime.rs).
#include "cuda_emu.h"

// Reverses a block's values through shared memory: right only if __syncthreads waits.
extern "C" __global__ void emu_selftest_reverse(int* data) {
    __shared__ int s[1024];
    int t = threadIdx.x, n = blockDim.x;
    s[t] = data[blockIdx.x * n + t];
    __syncthreads();
    data[blockIdx.x * n + t] = s[n - 1 - t];
}

// Each lane gets the warp's sum (xor butterfly) and lane + 1's value (down shuffle).
extern "C" __global__ void emu_selftest_shuffles(const int* in, int* sum, int* next) {
    int t = threadIdx.x, v = in[t], total = v;
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
    sum[t] = total;
    next[t] = __shfl_down_sync(0xffffffffu, v, 1);
}

// Only the first warp reaches the barrier: a hang on the device, an error here.
extern "C" __global__ void emu_selftest_divergent_barrier(int* out) {
    if (threadIdx.x >= 32) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}
