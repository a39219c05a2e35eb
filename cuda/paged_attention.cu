// Paged attention over the key/value block pool, for decode and prefill alike.
//
//   q rows     q + row * q_stride + q_col + head * d      (inside the fused qkv output)
//   k, v pool  [slot][kv_heads][d], slot = table[p / block_size] * block_size + p % block_size
//   row r      its sequence's table at tables + table_off[r]; it attends to keys
//              max(0, pos - window + 1) ..= pos (causal; window 0 = unlimited)
//
// Decode rows (one new token of a sequence), flash-decoding: each (row, head) is split
// over its keys into `split_len` chunks, one block per chunk; a block's 4 warps take keys
// in turn, each warp keeping its own online softmax (max, sum, d-wide accumulator in
// registers, up to 256 wide), then the warps and afterwards the splits are merged by
// rescaling to a common max. The rows it runs are listed in `row_ids` (grid x indexes the
// list), so a CUDA graph can run a fixed grid and splits past a row's keys are empty.
//
// Prefill rows (several new tokens of one sequence), tiled: a block takes a tile of up
// to 16 consecutive rows of one sequence and one query head; key/value tiles of 16 keys
// go through shared memory once for all the tile's rows (each warp owns 4 rows and keeps
// their online softmax in registers), and each row stops at its own causal limit.
//
// GQA: query head h reads kv head kv_index[h]. Reference: tessera_kernels::paged_attention.

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
                          const int* positions, const int* row_ids, const int* kv_index, int d,
                          int kv_heads, int block_size, int window, int split_len, float scale,
                          float* part_m, float* part_l, float* part_acc) {
    int item = blockIdx.x, head = blockIdx.y, split = blockIdx.z;
    int row = row_ids[item];
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
    long base = ((long)item * hq + head) * splits + split;
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

// Merges the splits of each (listed row, head) into out[row][head * d + i].
// Grid: (listed rows, hq).
extern "C" __global__ void paged_attention_reduce_f32(const float* part_m, const float* part_l,
                                                      const float* part_acc, const int* row_ids,
                                                      int d, int splits, float* out) {
    int item = blockIdx.x, head = blockIdx.y, hq = gridDim.y;
    int row = row_ids[item];
    long base = ((long)item * hq + head) * splits;
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

#define PF_ROWS 16
#define PF_KEYS 16
#define PF_ROWS_PER_WARP (PF_ROWS / PA_WARPS)

// Tiled causal attention of prefill rows. Tile t covers rows tile_first[t] ..
// tile_first[t] + tile_rows[t] (at most PF_ROWS, consecutive positions of one sequence).
// Grid: (tiles, hq); block: PA_WARPS warps. The pool is f32 (prefill_attention_f32) or
// bf16 (prefill_attention_bf16, widened exactly as tiles are loaded); ks and vs are the
// kernel's shared key/value tiles.
template <typename KV>
__device__ __forceinline__ void prefill_tile(const float* q, int q_stride, int q_col,
                                             const KV* k_cache, const KV* v_cache,
                                             const int* tables, const int* table_off,
                                             const int* positions, const int* tile_first,
                                             const int* tile_rows, const int* kv_index, int d,
                                             int kv_heads, int block_size, int window,
                                             float scale, float* out, float* ks, float* vs) {
    int tile = blockIdx.x, head = blockIdx.y, hq = gridDim.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int first = tile_first[tile], nrows = tile_rows[tile];
    const int* table = tables + table_off[first];
    long kvh = kv_index[head];

    // Warp w owns tile rows w, w + PA_WARPS, ...; everything per row is warp-uniform.
    float qr[PF_ROWS_PER_WARP][PA_PER_LANE], acc[PF_ROWS_PER_WARP][PA_PER_LANE];
    float m[PF_ROWS_PER_WARP], l[PF_ROWS_PER_WARP];
    int pos[PF_ROWS_PER_WARP], lo[PF_ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < PF_ROWS_PER_WARP; r++) {
        int rr = warp + PA_WARPS * r;
        bool live = rr < nrows;
        long row = first + rr;
        pos[r] = live ? positions[row] : -1;
        lo[r] = (window > 0 && pos[r] >= window) ? pos[r] - window + 1 : 0;
        const float* qh = q + row * q_stride + q_col + (long)head * d;
#pragma unroll
        for (int j = 0; j < PA_PER_LANE; j++) {
            int i = lane + 32 * j;
            qr[r][j] = (live && i < d) ? qh[i] * scale : 0.0f;
            acc[r][j] = 0.0f;
        }
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    int p_first = positions[first], p_last = positions[first + nrows - 1];
    int k_lo = (window > 0 && p_first >= window) ? p_first - window + 1 : 0;
    int k_hi = p_last + 1;
    for (int k0 = k_lo; k0 < k_hi; k0 += PF_KEYS) {
        int kn = min(PF_KEYS, k_hi - k0);
        __syncthreads();  // every warp is done with the previous tile
        for (int e = threadIdx.x; e < kn * d; e += blockDim.x) {
            int kk = e / d, i = e - kk * d;
            int key = k0 + kk;
            long slot = (long)table[key / block_size] * block_size + key % block_size;
            long at = (slot * kv_heads + kvh) * d + i;
            ks[kk * PA_MAX_D + i] = load_f(k_cache, at);
            vs[kk * PA_MAX_D + i] = load_f(v_cache, at);
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < PF_ROWS_PER_WARP; r++) {
            if (pos[r] < 0) continue;
            for (int kk = 0; kk < kn; kk++) {
                int key = k0 + kk;
                if (key < lo[r] || key > pos[r]) continue;
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < PA_PER_LANE; j++) {
                    int i = lane + 32 * j;
                    if (i < d) s += qr[r][j] * ks[kk * PA_MAX_D + i];
                }
                s = warp_sum(s);
                float mn = fmaxf(m[r], s);
                float corr = __expf(m[r] - mn);
                float p = __expf(s - mn);
                l[r] = l[r] * corr + p;
#pragma unroll
                for (int j = 0; j < PA_PER_LANE; j++) {
                    int i = lane + 32 * j;
                    acc[r][j] = acc[r][j] * corr + (i < d ? p * vs[kk * PA_MAX_D + i] : 0.0f);
                }
                m[r] = mn;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < PF_ROWS_PER_WARP; r++) {
        if (pos[r] < 0) continue;
        long row = first + warp + PA_WARPS * r;
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        float* o = out + (row * hq + head) * d;
#pragma unroll
        for (int j = 0; j < PA_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < d) o[i] = acc[r][j] * inv;
        }
    }
}

extern "C" __global__ void __launch_bounds__(PA_WARPS * 32)
prefill_attention_f32(const float* q, int q_stride, int q_col, const float* k_cache,
                      const float* v_cache, const int* tables, const int* table_off,
                      const int* positions, const int* tile_first, const int* tile_rows,
                      const int* kv_index, int d, int kv_heads, int block_size, int window,
                      float scale, float* out) {
    __shared__ float ks[PF_KEYS * PA_MAX_D];
    __shared__ float vs[PF_KEYS * PA_MAX_D];
    prefill_tile(q, q_stride, q_col, k_cache, v_cache, tables, table_off, positions, tile_first,
                 tile_rows, kv_index, d, kv_heads, block_size, window, scale, out, ks, vs);
}

extern "C" __global__ void __launch_bounds__(PA_WARPS * 32)
prefill_attention_bf16(const float* q, int q_stride, int q_col, const bf16_t* k_cache,
                       const bf16_t* v_cache, const int* tables, const int* table_off,
                       const int* positions, const int* tile_first, const int* tile_rows,
                       const int* kv_index, int d, int kv_heads, int block_size, int window,
                       float scale, float* out) {
    __shared__ float ks[PF_KEYS * PA_MAX_D];
    __shared__ float vs[PF_KEYS * PA_MAX_D];
    prefill_tile(q, q_stride, q_col, k_cache, v_cache, tables, table_off, positions, tile_first,
                 tile_rows, kv_index, d, kv_heads, block_size, window, scale, out, ks, vs);
}
