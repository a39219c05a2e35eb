// Seeded uniform weights generated on the device (benchmarks of large random-weight
// models need no host copy). Value i depends on (seed, i) only.

__device__ __forceinline__ float uniform_at(unsigned long long seed, long i, float scale) {
    unsigned long long z = seed + 0x9e3779b97f4a7c15ull * (unsigned long long)(i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    float u = (float)(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    return (2.0f * u - 1.0f) * scale;
}

extern "C" __global__ void fill_uniform_f32(float* out, long n, unsigned long long seed,
                                            float scale, float offset) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = offset + uniform_at(seed, i, scale);
}
extern "C" __global__ void fill_uniform_bf16(bf16_t* out, long n, unsigned long long seed,
                                             float scale, float offset) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16(offset + uniform_at(seed, i, scale));
}
extern "C" __global__ void fill_uniform_f16(f16_t* out, long n, unsigned long long seed,
                                            float scale, float offset) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_f16(offset + uniform_at(seed, i, scale));
}
