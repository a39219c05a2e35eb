//! The kernels of `cuda/` as the C++ build exports them (same names and parameters; `long`
//! is `i64`, `bf16_t`/`f16_t` are `u16` bit patterns). Call them only inside
//! [`crate::launch`], with pointers into [`crate::DevBuf`]s.
#![allow(missing_docs)]

extern "C" {
    // activation.cu
    pub fn silu_mul_f32(gate_up: *const f32, out: *mut f32, inter: i32, n: i64);
    pub fn add_bias_f32(y: *mut f32, bias: *const f32, n: i32, total: i64);
    pub fn cast_f32_bf16(x: *const f32, y: *mut u16, n: i64);
    pub fn cast_f32_f16(x: *const f32, y: *mut u16, n: i64);

    // embedding.cu
    pub fn embedding_f32(
        ids: *const i32,
        t: *const f32,
        out: *mut f32,
        hidden: i32,
        vs: i32,
        vl: i32,
    );
    pub fn embedding_bf16(
        ids: *const i32,
        t: *const u16,
        out: *mut f32,
        hidden: i32,
        vs: i32,
        vl: i32,
    );
    pub fn embedding_f16(
        ids: *const i32,
        t: *const u16,
        out: *mut f32,
        hidden: i32,
        vs: i32,
        vl: i32,
    );
    pub fn gather_rows_f32(x: *const f32, rows: *const i32, width: i32, out: *mut f32);
    pub fn unpad_logits_f32(
        gathered: *const f32,
        starts: *const i32,
        lens: *const i32,
        block: i64,
        vocab: i32,
        out: *mut f32,
    );

    // norm.cu
    pub fn rms_norm_f32(x: *const f32, w: *const f32, out: *mut f32, dim: i32, eps: f32);
    pub fn add_rms_norm_f32(
        residual: *mut f32,
        delta: *const f32,
        w: *const f32,
        out: *mut f32,
        dim: i32,
        eps: f32,
    );
    pub fn add_f32(x: *mut f32, delta: *const f32, n: i64);

    // random.cu
    pub fn fill_uniform_f32(out: *mut f32, n: i64, seed: u64, scale: f32, offset: f32);
    pub fn fill_uniform_bf16(out: *mut u16, n: i64, seed: u64, scale: f32, offset: f32);
    pub fn fill_uniform_f16(out: *mut u16, n: i64, seed: u64, scale: f32, offset: f32);

    // rope.cu
    pub fn rope_f32(
        x: *mut f32,
        stride: i32,
        col: i32,
        head_dim: i32,
        positions: *const i32,
        cos_table: *const f32,
        sin_table: *const f32,
    );

    // paged_attention.cu
    pub fn kv_write_f32(
        qkv: *const f32,
        stride: i32,
        k_col: i32,
        v_col: i32,
        kvw: i32,
        slots: *const i32,
        k_cache: *mut f32,
        v_cache: *mut f32,
    );
    pub fn paged_attention_split_f32(
        q: *const f32,
        q_stride: i32,
        q_col: i32,
        k_cache: *const f32,
        v_cache: *const f32,
        tables: *const i32,
        table_off: *const i32,
        positions: *const i32,
        row_ids: *const i32,
        kv_index: *const i32,
        d: i32,
        kv_heads: i32,
        block_size: i32,
        window: i32,
        split_len: i32,
        scale: f32,
        part_m: *mut f32,
        part_l: *mut f32,
        part_acc: *mut f32,
    );
    pub fn paged_attention_reduce_f32(
        part_m: *const f32,
        part_l: *const f32,
        part_acc: *const f32,
        row_ids: *const i32,
        d: i32,
        splits: i32,
        out: *mut f32,
    );
    pub fn prefill_attention_f32(
        q: *const f32,
        q_stride: i32,
        q_col: i32,
        k_cache: *const f32,
        v_cache: *const f32,
        tables: *const i32,
        table_off: *const i32,
        positions: *const i32,
        tile_first: *const i32,
        tile_rows: *const i32,
        kv_index: *const i32,
        d: i32,
        kv_heads: i32,
        block_size: i32,
        window: i32,
        scale: f32,
        out: *mut f32,
    );

    // sampling.cu
    pub fn argmax_f32(logits: *const f32, vocab: i32, out: *mut i32);
    pub fn sample_rows_f32(
        logits: *const f32,
        vocab: i32,
        temperature: *const f32,
        top_k: *const i32,
        top_p: *const f32,
        uniforms: *const f32,
        out: *mut i32,
    );
    pub fn sample_f32(
        logits: *const f32,
        vocab: i32,
        temperature: f32,
        top_k: i32,
        top_p: f32,
        uniforms: *const f32,
        out: *mut i32,
    );
}

extern "C" {
    // emu/selftest.cpp: checks of the emulation itself.
    pub fn emu_selftest_reverse(data: *mut i32);
    pub fn emu_selftest_shuffles(input: *const i32, sum: *mut i32, next: *mut i32);
    pub fn emu_selftest_divergent_barrier(out: *mut i32);
}

extern "C" {
    // decode_attention.cu
    pub fn kv_write_bf16(
        qkv: *const f32,
        stride: i32,
        k_col: i32,
        v_col: i32,
        kvw: i32,
        slots: *const i32,
        k_cache: *mut u16,
        v_cache: *mut u16,
    );
    pub fn decode_attention_bf16(
        q: *const f32,
        q_stride: i32,
        q_col: i32,
        k_cache: *const u16,
        v_cache: *const u16,
        tables: *const i32,
        table_off: *const i32,
        positions: *const i32,
        row_ids: *const i32,
        row_splits: *const i32,
        part_off: *const i32,
        group_heads: *const i32,
        group: i32,
        d: i32,
        kv_heads: i32,
        block_size: i32,
        window: i32,
        scale: f32,
        part_m: *mut f32,
        part_l: *mut f32,
        part_acc: *mut f32,
    );
    pub fn prefill_attention_bf16(
        q: *const f32,
        q_stride: i32,
        q_col: i32,
        k_cache: *const u16,
        v_cache: *const u16,
        tables: *const i32,
        table_off: *const i32,
        positions: *const i32,
        tile_first: *const i32,
        tile_rows: *const i32,
        kv_index: *const i32,
        d: i32,
        kv_heads: i32,
        block_size: i32,
        window: i32,
        scale: f32,
        out: *mut f32,
    );
    pub fn decode_attention_combine_f32(
        part_m: *const f32,
        part_l: *const f32,
        part_acc: *const f32,
        row_ids: *const i32,
        row_splits: *const i32,
        part_off: *const i32,
        group_heads: *const i32,
        d: i32,
        out: *mut f32,
    );
}
