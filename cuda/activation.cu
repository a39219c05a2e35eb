// SwiGLU gate, bias add and dtype casts.
// Reference: tessera_kernels::silu_mul (gate = silu(gate) * up).

// gate_up rows hold [gate (inter) | up (inter)]; out[r, i] = silu(gate) * up.
extern "C" __global__ void silu_mul_f32(const float* gate_up, float* out, int inter, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long r = i / inter, c = i % inter;
    float g = gate_up[r * 2 * inter + c], u = gate_up[r * 2 * inter + inter + c];
    out[i] = g / (1.0f + expf(-g)) * u;
}

// y[r, j] += bias[j] for rows of width n.
extern "C" __global__ void add_bias_f32(float* y, const float* bias, int n, long total) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] += bias[i % n];
}

// Activations are cast to the weights' dtype before a half-precision GEMM.
extern "C" __global__ void cast_f32_bf16(const float* x, bf16_t* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f32_to_bf16(x[i]);
}
extern "C" __global__ void cast_f32_f16(const float* x, f16_t* y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f32_to_f16(x[i]);
}
