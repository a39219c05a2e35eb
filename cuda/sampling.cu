// Sampling on the device, so only token ids cross to the host. One block (1024 threads)
// per row of logits.
//
// argmax: the first maximum; NaN never wins; -1 when the row has no number.
// sample: softmax(logits / temperature) restricted to the top_k largest logits (0 = all),
// then to the smallest set of largest probabilities whose mass reaches top_p of what top_k
// kept (1 = all; top_p after top_k, as vLLM and Hugging Face apply them); then the kept
// token whose cumulative mass, in index order, first exceeds u * kept mass. The host form
// of this rule is tessera_model::RowChooser (crates/tessera-model/src/choice.rs).
// Both thresholds are found by bisection over the logits' order-preserving bit patterns
// (32 counting passes), so they are exact up to ties. NaN logits are never kept.

#define SAMPLE_THREADS 1024

__device__ __forceinline__ unsigned int order_key(float x) {
    unsigned int u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// First maximum of row x (NaN skipped; -1 without a number), returned to every thread.
__device__ int argmax_row(const float* x, int vocab) {
    __shared__ float bv[SAMPLE_THREADS];
    __shared__ int bi[SAMPLE_THREADS];
    float best = -INFINITY;
    int idx = -1;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = x[i];
        if (v != v) continue;
        if (idx < 0 || v > best) { best = v; idx = i; }
    }
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = idx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float v = bv[threadIdx.x + s];
            int j = bi[threadIdx.x + s];
            int i0 = bi[threadIdx.x];
            if (j >= 0 && (i0 < 0 || v > bv[threadIdx.x] || (v == bv[threadIdx.x] && j < i0))) {
                bv[threadIdx.x] = v;
                bi[threadIdx.x] = j;
            }
        }
        __syncthreads();
    }
    return bi[0];
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
argmax_f32(const float* logits, int vocab, int* out) {
    int pick = argmax_row(logits + (long)blockIdx.x * vocab, vocab);
    if (threadIdx.x == 0) out[blockIdx.x] = pick;
}

// Count (or mass) of logits whose key is >= t.
__device__ float mass_at_least(const float* x, int vocab, unsigned int t, float mx, float inv_t,
                               bool count, float* scratch) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = x[i];
        if (v == v && order_key(v) >= t) acc += count ? 1.0f : __expf((v - mx) * inv_t);
    }
    return block_sum(acc, scratch);
}

// Largest t with f(t) >= goal (f falls as t grows; f(0) is the whole row).
__device__ unsigned int bisect(const float* x, int vocab, float goal, float mx, float inv_t,
                               bool count, float* scratch) {
    unsigned int lo = 0;
    for (int bit = 31; bit >= 0; bit--) {
        unsigned int t = lo | (1u << bit);
        if (mass_at_least(x, vocab, t, mx, inv_t, count, scratch) >= goal) lo = t;
    }
    return lo;
}

// The draw of row x for uniform u (see the top of the file), returned to every thread.
__device__ int sample_row(const float* x, int vocab, float temperature, int top_k, float top_p,
                          float u) {
    __shared__ float scratch[32];
    __shared__ float chunk_sum[SAMPLE_THREADS];
    __shared__ int last_kept[SAMPLE_THREADS];
    __shared__ int found;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (x[i] == x[i]) mx = fmaxf(mx, x[i]);
    mx = block_max(mx, scratch);
    float inv_t = 1.0f / temperature;
    unsigned int thr = 0;
    if (top_k > 0 && top_k < vocab) thr = bisect(x, vocab, (float)top_k, mx, inv_t, true, scratch);
    if (top_p < 1.0f) {
        // The mass top_k kept; its own floor meets the goal, so bisection lands at or above it.
        float total = mass_at_least(x, vocab, thr, mx, inv_t, false, scratch);
        unsigned int tp = bisect(x, vocab, top_p * total, mx, inv_t, false, scratch);
        thr = max(thr, tp);
    }
    // Contiguous chunks per thread, so the running sum follows index order.
    int per = (vocab + blockDim.x - 1) / blockDim.x;
    int c0 = threadIdx.x * per, c1 = min(vocab, c0 + per);
    float s = 0.0f;
    int lk = -1;
    for (int i = c0; i < c1; i++) {
        float v = x[i];
        if (v == v && order_key(v) >= thr) { s += __expf((v - mx) * inv_t); lk = i; }
    }
    chunk_sum[threadIdx.x] = s;
    last_kept[threadIdx.x] = lk;
    if (threadIdx.x == 0) found = -1;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        int last = -1;
        for (int t = 0; t < blockDim.x; t++) {
            total += chunk_sum[t];
            if (last_kept[t] >= 0) last = last_kept[t];
        }
        float target = u * total;
        float run = 0.0f;
        int pick = last;
        for (int t = 0; t < blockDim.x && pick == last; t++) {
            if (chunk_sum[t] > 0.0f && run + chunk_sum[t] > target) {
                int a = t * per, b = min(vocab, a + per);
                for (int i = a; i < b; i++) {
                    float v = x[i];
                    if (v == v && order_key(v) >= thr) {
                        run += __expf((v - mx) * inv_t);
                        if (run > target) { pick = i; break; }
                    }
                }
                break;
            }
            run += chunk_sum[t];
        }
        found = pick;
    }
    __syncthreads();
    return found;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_f32(const float* logits, int vocab, float temperature, int top_k, float top_p,
           const float* uniforms, int* out) {
    long row = blockIdx.x;
    int pick = sample_row(logits + row * vocab, vocab, temperature, top_k, top_p, uniforms[row]);
    if (threadIdx.x == 0) out[row] = pick;
}

// A decode step's batch with its own parameters per row: temperature[r] <= 0 picks the
// first maximum (greedy), else the draw of sample_row with top_k[r] (0 = all), top_p[r]
// (1 = all) and uniforms[r]. One id per row is all the host downloads.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_rows_f32(const float* logits, int vocab, const float* temperature, const int* top_k,
                const float* top_p, const float* uniforms, int* out) {
    long row = blockIdx.x;
    const float* x = logits + row * vocab;
    float t = temperature[row];
    int pick = t > 0.0f ? sample_row(x, vocab, t, top_k[row], top_p[row], uniforms[row])
                        : argmax_row(x, vocab);
    if (threadIdx.x == 0) out[row] = pick;
}
