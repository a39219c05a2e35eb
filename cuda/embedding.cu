// Embedding gather, vocabulary-parallel aware: this rank holds rows
// vocab_start .. vocab_start + vocab_len of the table; other ids give zero rows (the
// all-reduce that follows sums the ranks' rows). Grid: rows; block: any.

template <typename T>
__device__ void embed(const int* ids, const T* table, float* out, int hidden, int vocab_start,
                      int vocab_len) {
    long row = blockIdx.x;
    int local = ids[row] - vocab_start;
    float* o = out + row * hidden;
    bool mine = local >= 0 && local < vocab_len;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        o[i] = mine ? load_f(table, (long)local * hidden + i) : 0.0f;
}

extern "C" __global__ void embedding_f32(const int* ids, const float* t, float* out, int hidden,
                                         int vs, int vl) { embed(ids, t, out, hidden, vs, vl); }
extern "C" __global__ void embedding_bf16(const int* ids, const bf16_t* t, float* out, int hidden,
                                          int vs, int vl) { embed(ids, t, out, hidden, vs, vl); }
extern "C" __global__ void embedding_f16(const int* ids, const f16_t* t, float* out, int hidden,
                                         int vs, int vl) { embed(ids, t, out, hidden, vs, vl); }

// out[i] = x[rows[i]] for n rows of `width` (the rows that need logits). Grid: n.
extern "C" __global__ void gather_rows_f32(const float* x, const int* rows, int width,
                                           float* out) {
    long i = blockIdx.x;
    const float* src = x + (long)rows[i] * width;
    float* dst = out + i * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) dst[j] = src[j];
}

// Gathered logits to full rows: rank r's block (at r * block, rows of lens[r] values
// back to back) fills columns starts[r] .. starts[r] + lens[r] of out[row][vocab].
// Grid: (rows, ranks).
extern "C" __global__ void unpad_logits_f32(const float* gathered, const int* starts,
                                            const int* lens, long block, int vocab,
                                            float* out) {
    long row = blockIdx.x;
    int r = blockIdx.y;
    int len = lens[r];
    const float* src = gathered + r * block + row * len;
    float* dst = out + row * vocab + starts[r];
    for (int i = threadIdx.x; i < len; i += blockDim.x) dst[i] = src[i];
}
