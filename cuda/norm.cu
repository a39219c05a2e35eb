// RMSNorm and the fused residual add + RMSNorm (one block per row, f32 accumulation).
// Blocks of up to 1024 threads: __launch_bounds__ keeps registers within what that needs.
// Reference: tessera_kernels::rms_norm / add_rms_norm.

__device__ __forceinline__ void norm_row(const float* x, const float* w, float* out, int dim,
                                         float eps, float* scratch) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += x[i] * x[i];
    ss = block_sum(ss, scratch);
    float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = x[i] * inv * w[i];
}

extern "C" __global__ void __launch_bounds__(1024) rms_norm_f32(const float* x, const float* w, float* out, int dim,
                                        float eps) {
    __shared__ float scratch[32];
    long row = blockIdx.x;
    norm_row(x + row * dim, w, out + row * dim, dim, eps, scratch);
}

// residual += delta; out = rmsnorm(residual) * w.
extern "C" __global__ void __launch_bounds__(1024) add_rms_norm_f32(float* residual, const float* delta, const float* w,
                                            float* out, int dim, float eps) {
    __shared__ float scratch[32];
    long row = blockIdx.x;
    float* r = residual + row * dim;
    const float* d = delta + row * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) r[i] += d[i];
    __syncthreads();
    norm_row(r, w, out + row * dim, dim, eps, scratch);
}

// x += delta over n elements (the last layer's pending residual add).
extern "C" __global__ void add_f32(float* x, const float* delta, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += delta[i];
}
