// Decode attention of the 8B path: a bf16 paged KV cache read once per query-head group
// (GQA), f32 accumulation, split-K flash-decoding with a split count per row, then a
// combine kernel. Reference: tessera_kernels::paged_attention on the bf16-rounded pool.
//
//   k, v pool  [slot][kv_heads][d] bf16, slot = table[p / block_size] * block_size + p % block_size
//   item       decode row row_ids[item] at positions[row]; it attends to keys lo ..= pos,
//              lo = max(0, pos - window + 1) (window 0 = unlimited)
//   group      kv head kvh serves query heads group_heads[kvh * group + g], g < group
//   splits     item's keys cut into row_splits[item] chunks of ceil(keys / splits), so a
//              short row takes few blocks and a long one many (the host picks the count
//              from the batch and the SM count)
//   partials   (m, l, acc[d]) of (item, c = kvh * group + g, split) at index
//              part_off[item] + c * row_splits[item] + split (part_off: prefix sums of
//              group * kv_heads * row_splits, so scratch is sized by the decode rows)
//
// Grid: (items, kv_heads, most splits of any row); a block past its row's split count
// returns at once. Block: DA_WARPS warps; warp w takes keys s0 + w, s0 + w + DA_WARPS,
// ...; it loads each key and value once (bf16 -> f32) for every query head of the group,
// each head keeping its own online softmax in registers.

#define DA_WARPS 4
#define DA_MAX_D 256
#define DA_PER_LANE (DA_MAX_D / 32)
#define DA_MAX_GROUP 8

// Copies each row's new key and value (f32 columns k_col.., v_col.. of width kvw) to its
// slot of the bf16 cache, rounded to nearest even.
extern "C" __global__ void kv_write_bf16(const float* qkv, int stride, int k_col, int v_col,
                                         int kvw, const int* slots, bf16_t* k_cache,
                                         bf16_t* v_cache) {
    long row = blockIdx.x;
    long slot = slots[row];
    const float* src = qkv + row * stride;
    for (int i = threadIdx.x; i < kvw; i += blockDim.x) {
        k_cache[slot * kvw + i] = f32_to_bf16(src[k_col + i]);
        v_cache[slot * kvw + i] = f32_to_bf16(src[v_col + i]);
    }
}

// One query head's online-softmax step with score s and value row vr.
__device__ __forceinline__ void da_step(float s, const float* vr, float& m, float& l,
                                        float* acc) {
    float mn = fmaxf(m, s);
    float corr = __expf(m - mn);
    float p = __expf(s - mn);
    l = l * corr + p;
#pragma unroll
    for (int j = 0; j < DA_PER_LANE; j++) acc[j] = acc[j] * corr + p * vr[j];
    m = mn;
}

extern "C" __global__ void __launch_bounds__(DA_WARPS * 32)
decode_attention_bf16(const float* q, int q_stride, int q_col, const bf16_t* k_cache,
                      const bf16_t* v_cache, const int* tables, const int* table_off,
                      const int* positions, const int* row_ids, const int* row_splits,
                      const int* part_off, const int* group_heads, int group, int d,
                      int kv_heads, int block_size, int window, float scale, float* part_m,
                      float* part_l, float* part_acc) {
    int item = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    int splits = row_splits[item];
    if (split >= splits) return;  // the whole block: no barrier is left waiting
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int row = row_ids[item], pos = positions[row];
    int lo = (window > 0 && pos >= window) ? pos - window + 1 : 0;
    int per = (pos + 1 - lo + splits - 1) / splits;
    int s0 = lo + split * per, s1 = min(pos + 1, s0 + per);
    const int* table = tables + table_off[row];
    const int* heads = group_heads + kvh * group;

    float qr[DA_MAX_GROUP][DA_PER_LANE], acc[DA_MAX_GROUP][DA_PER_LANE];
    float m[DA_MAX_GROUP], l[DA_MAX_GROUP];
#pragma unroll
    for (int g = 0; g < DA_MAX_GROUP; g++) {
        const float* qh = q + (long)row * q_stride + q_col + (long)heads[min(g, group - 1)] * d;
#pragma unroll
        for (int j = 0; j < DA_PER_LANE; j++) {
            int i = lane + 32 * j;
            qr[g][j] = (g < group && i < d) ? qh[i] * scale : 0.0f;
            acc[g][j] = 0.0f;
        }
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    for (int key = s0 + warp; key < s1; key += DA_WARPS) {
        long slot = (long)table[key / block_size] * block_size + key % block_size;
        const bf16_t* kp = k_cache + (slot * kv_heads + kvh) * d;
        const bf16_t* vp = v_cache + (slot * kv_heads + kvh) * d;
        float kr[DA_PER_LANE], vr[DA_PER_LANE];
#pragma unroll
        for (int j = 0; j < DA_PER_LANE; j++) {
            int i = lane + 32 * j;
            kr[j] = i < d ? load_f(kp, i) : 0.0f;
            vr[j] = i < d ? load_f(vp, i) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < DA_MAX_GROUP; g++) {
            if (g >= group) break;  // warp-uniform
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < DA_PER_LANE; j++) s += qr[g][j] * kr[j];
            da_step(warp_sum(s), vr, m[g], l[g], acc[g]);
        }
    }

    // Merge the warps' softmaxes of each head, then write the split's partials.
    __shared__ float wm[DA_WARPS * DA_MAX_GROUP], wl[DA_WARPS * DA_MAX_GROUP];
    __shared__ float wacc[DA_WARPS * DA_MAX_GROUP * DA_MAX_D];
#pragma unroll
    for (int g = 0; g < DA_MAX_GROUP; g++) {
        if (g >= group) break;
        int w = warp * DA_MAX_GROUP + g;
        if (lane == 0) {
            wm[w] = m[g];
            wl[w] = l[g];
        }
#pragma unroll
        for (int j = 0; j < DA_PER_LANE; j++) {
            int i = lane + 32 * j;
            if (i < d) wacc[w * DA_MAX_D + i] = acc[g][j];
        }
    }
    __syncthreads();
    long base = part_off[item] + (long)kvh * group * splits + split;
    for (int e = threadIdx.x; e < group * d; e += blockDim.x) {
        int g = e / d, i = e - g * d;
        float mx = -INFINITY;
        for (int w = 0; w < DA_WARPS; w++) mx = fmaxf(mx, wm[w * DA_MAX_GROUP + g]);
        float a = 0.0f;
        for (int w = 0; w < DA_WARPS; w++) {
            float mw = wm[w * DA_MAX_GROUP + g];
            if (mw != -INFINITY) a += wacc[(w * DA_MAX_GROUP + g) * DA_MAX_D + i] * __expf(mw - mx);
        }
        part_acc[(base + (long)g * splits) * d + i] = a;
    }
    if (threadIdx.x < group) {
        int g = threadIdx.x;
        float mx = -INFINITY, sum = 0.0f;
        for (int w = 0; w < DA_WARPS; w++) mx = fmaxf(mx, wm[w * DA_MAX_GROUP + g]);
        for (int w = 0; w < DA_WARPS; w++) {
            float mw = wm[w * DA_MAX_GROUP + g];
            if (mw != -INFINITY) sum += wl[w * DA_MAX_GROUP + g] * __expf(mw - mx);
        }
        part_m[base + (long)g * splits] = mx;
        part_l[base + (long)g * splits] = sum;
    }
}

// Merges the splits of each (item, group slot c) into out[row][group_heads[c] * d + i],
// rows of gridDim.y heads. Grid: (items, kv_heads * group); block: d rounded up to warps.
extern "C" __global__ void decode_attention_combine_f32(const float* part_m, const float* part_l,
                                                        const float* part_acc,
                                                        const int* row_ids,
                                                        const int* row_splits,
                                                        const int* part_off,
                                                        const int* group_heads, int d,
                                                        float* out) {
    int item = blockIdx.x, c = blockIdx.y, hq = gridDim.y;
    int row = row_ids[item], splits = row_splits[item];
    long base = part_off[item] + (long)c * splits;
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, part_m[base + s]);
    float sum = 0.0f;
    for (int s = 0; s < splits; s++)
        if (part_m[base + s] != -INFINITY) sum += part_l[base + s] * __expf(part_m[base + s] - mx);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    float* o = out + ((long)row * hq + group_heads[c]) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < splits; s++)
            if (part_m[base + s] != -INFINITY)
                a += part_acc[(base + s) * d + i] * __expf(part_m[base + s] - mx);
        o[i] = a * inv;
    }
}
