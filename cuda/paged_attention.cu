// Paged attention over the key/value block pool, for decode and prefill alike.
//
//   q rows     q + row * q_stride + q_col + head * d      (inside the fused qkv output)
//   k, v pool  [slot][kv_heads][d], slot = table[p / block_size] * block_size + p % block_size
//   row r      its sequence's table at tables + table_off[r]; it attends to keys
//              max(0, pos - window + 1) ..= pos (causal; window 0 = unlimited)
//
// Flash-decoding: each (row, head) is split over its keys into `split_len` chunks, one
// block per chunk; a block's 4 warps take keys in turn, each warp keeping its own online
// softmax (max, sum, d-wide accumulator in registers, up to 256 wide), then the warps and
// afterwards the splits are merged by rescaling to a common max. GQA: query head h reads
// kv head kv_index[h]. Prefill rows use the same kernel; each row's causal limit is its
// own position, so a chunked prompt needs no special case.
// Reference: tessera_kernels::paged_attention.

#define PA_WARPS 4
#define PA_MAX_D 256
#define PA_PER_LANE (PA_MAX_D / 32)

// Copies each row's new key and value (columns k_col.., v_col.. of width kvw) to its slot.
extern "C" __global__ void kv_write_f32(const float* qkv, int stride, int k_col, int v_col,
                                        int kvw, const int* slots, float* k_cache,
                                        float* v_cache) {
    long row = blockIdx.x;
    long slot = slots[row];
    const float* src = qkv + row * stride;
    for (int i = threadIdx.x; i < kvw; i += blockDim.x) {
        k_cache[slot * kvw + i] = src[k_col + i];
        v_cache[slot * kvw + i] = src[v_col + i];
    }
}

extern "C" __global__ void __launch_bounds__(PA_WARPS * 32)
paged_attention_split_f32(const float* q, int q_stride, int q_col, const float* k_cache,
                          const float* v_cache, const int* tables, const int* table_off,
                          const int* positions, const int* kv_index, int d, int kv_heads,
                          int block_size, int window, int split_len, float scale,
                          float* part_m, float* part_l, float* part_acc) {
    int row = blockIdx.x, head = blockIdx.y, split = blockIdx.z;
    int hq = gridDim.y, splits = gridDim.z;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int pos = positions[row];
    int lo = (window > 0 && pos >= window) ? pos - window + 1 : 0;
    int s0 = max(lo, split * split_len);
    int s1 = min(pos + 1, (split + 1) * split_len);
    const float* qh = q + (long)row * q_stride + q_col + (long)head * d;
    const int* table = tables + table_off[row];
    long kvh = kv_index[head];

    float qr[PA_PER_LANE], acc[PA_PER_LANE];
#pragma unroll
    for (int j = 0; j < PA_PER_LANE; j++) {
        int i = lane + 32 * j;
        qr[j] = i < d ? qh[i] * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int key = s0 + warp; key < s1; key += PA_WARPS) {
        long slot = (long)table[key / block_size] * block_size + key % block_size;
        const float* kp = k_cache + (slot * kv_heads + kvh) * d;
        const float* vp = v_cache + (slot * kv_heads + kvh) * d;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < PA_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < d) s += qr[j] * kp[i];
        }
        s = warp_sum(s);
        float mn = fmaxf(m, s);
        float corr = __expf(m - mn);
        float p = __expf(s - mn);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < PA_PER_LANE; j++) {
            int i = lane + 32 * j;
            acc[j] = acc[j] * corr + (i < d ? p * vp[i] : 0.0f);
        }
        m = mn;
    }

    __shared__ float wm[PA_WARPS], wl[PA_WARPS];
    __shared__ float wacc[PA_WARPS * PA_MAX_D];
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < PA_PER_LANE; j++) {
        int i = lane + 32 * j;
        if (i < d) wacc[warp * PA_MAX_D + i] = acc[j];
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int w = 0; w < PA_WARPS; w++) mx = fmaxf(mx, wm[w]);
    long base = ((long)row * hq + head) * splits + split;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < PA_WARPS; w++)
            if (wm[w] != -INFINITY) a += wacc[w * PA_MAX_D + i] * __expf(wm[w] - mx);
        part_acc[base * d + i] = a;
    }
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int w = 0; w < PA_WARPS; w++)
            if (wm[w] != -INFINITY) sum += wl[w] * __expf(wm[w] - mx);
        part_m[base] = mx;
        part_l[base] = sum;
    }
}

// Merges the splits of each (row, head) into out[row][head * d + i]. Grid: (rows, hq).
extern "C" __global__ void paged_attention_reduce_f32(const float* part_m, const float* part_l,
                                                      const float* part_acc, int d, int splits,
                                                      float* out) {
    int row = blockIdx.x, head = blockIdx.y, hq = gridDim.y;
    long base = ((long)row * hq + head) * splits;
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, part_m[base + s]);
    float sum = 0.0f;
    for (int s = 0; s < splits; s++)
        if (part_m[base + s] != -INFINITY) sum += part_l[base + s] * __expf(part_m[base + s] - mx);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    float* o = out + ((long)row * hq + head) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < splits; s++)
            if (part_m[base + s] != -INFINITY)
                a += part_acc[(base + s) * d + i] * __expf(part_m[base + s] - mx);
        o[i] = a * inv;
    }
}
