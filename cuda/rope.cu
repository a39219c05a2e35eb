// Rotary embedding in place, Hugging Face rotate_half layout, on `heads` heads starting at
// column `col` of rows of width `stride` (so q and k are rotated inside the fused qkv
// output). cos/sin come from a host table [position][head_dim / 2] built like
// tessera_kernels::RopeTable (Llama 3 scaling is folded into its frequencies).
// Grid: (rows, heads); block: head_dim / 2 threads (any count works).

extern "C" __global__ void __launch_bounds__(1024) rope_f32(float* x, int stride, int col, int head_dim,
                                    const int* positions, const float* cos_table,
                                    const float* sin_table) {
    int row = blockIdx.x, head = blockIdx.y, half = head_dim / 2;
    long pos = positions[row];
    float* h = x + (long)row * stride + col + (long)head * head_dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float c = cos_table[pos * half + i], s = sin_table[pos * half + i];
        float x1 = h[i], x2 = h[i + half];
        h[i] = x1 * c - x2 * s;
        h[i + half] = x2 * c + x1 * s;
    }
}
