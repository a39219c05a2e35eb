//! One layer's attention on the device, as the shared forward pass asks for it: rotary
//! embedding of q and k in the fused qkv rows, keys and values into the pool, attention
//! of every row over its sequence's blocks.
//!
//! ```text
//!   f32 pool:   kv_write_f32  -> prefill tiles: prefill_attention_f32
//!                                decode rows:   paged_attention_split_f32 + reduce
//!   bf16 pool:  kv_write (bf16) -> prefill tiles: prefill_attention_bf16
//!                                decode rows:   decode_attention_bf16 + combine
//!                                               (K/V read once per GQA group)
//! ```

use cudarc::driver::CudaSlice;
use tessera_model::HeadLayout;

use crate::backend::CudaBackend;
use crate::cache::{CudaKvCache, LayerPool};
use crate::device::Gpu;
use crate::device_step::StepInputs;
use crate::error::{ensure, CudaError};
use crate::ops::{self, GroupedHeads, PoolShape};

/// [`tessera_model::Backend::attention`] on the CUDA backend.
pub(crate) fn attention(
    gpu: &Gpu,
    qkv: &mut CudaSlice<f32>,
    rows: usize,
    heads: &HeadLayout<'_, CudaBackend>,
    cache: &mut CudaKvCache,
    step: &StepInputs,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let d = heads.head_dim;
    let (qw, kvw) = (heads.q_heads * d, heads.kv_heads * d);
    if kvw == 0 {
        // No heads on this rank: the output has no columns.
        return Ok(());
    }
    ensure(rows == step.rows.rows, "attention", || {
        format!(
            "{rows} rows, but the step was prepared for {}",
            step.rows.rows
        )
    })?;
    let width = qw + 2 * kvw;
    // q and k heads sit side by side (columns 0..qw, then qw..qw + kvw): one launch
    // rotates both.
    ops::rope(
        gpu,
        qkv,
        width,
        0,
        heads.q_heads + heads.kv_heads,
        step.rows.positions(),
        &step.rows.host_positions,
        heads.rope,
    )?;
    let shape = PoolShape {
        head_dim: d,
        kv_heads: heads.kv_heads,
        block_size: cache.block_size(),
        window: heads.window,
        kv_index: &heads.kv_index_dev.kv_index,
        q_heads: heads.q_heads,
    };
    let (rows, scratch) = (&step.rows, &step.scratch);
    match cache.layer(heads.layer)? {
        LayerPool::F32(k, v) => {
            ops::kv_write(gpu, qkv, width, qw, qw + kvw, kvw, rows, k, v)?;
            ops::paged_attention(gpu, qkv, width, 0, k, v, rows, &shape, scratch, out)
        }
        LayerPool::Bf16(k, v) => {
            ops::kv_write(gpu, qkv, width, qw, qw + kvw, kvw, rows, k, v)?;
            ops::prefill_attention_bf16(gpu, qkv, width, 0, k, v, rows, &shape, out)?;
            decode_bf16(gpu, qkv, width, heads, k, v, step, shape.block_size, out)
        }
    }
}

/// The decode rows of a step over the bf16 pool (keys already written): the grouped
/// split kernel, which needs every key/value head to serve the same number of query
/// heads.
#[allow(clippy::too_many_arguments)]
fn decode_bf16(
    gpu: &Gpu,
    qkv: &CudaSlice<f32>,
    width: usize,
    heads: &HeadLayout<'_, CudaBackend>,
    k: &CudaSlice<u16>,
    v: &CudaSlice<u16>,
    step: &StepInputs,
    block_size: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    if step.rows.decode_count == 0 {
        return Ok(());
    }
    let map = heads.kv_index_dev;
    ensure(
        map.group > 0 && map.group * heads.kv_heads == heads.q_heads,
        "attention",
        || {
            format!(
                "{} query heads do not form even groups over {} kv heads; \
                 this plan needs the f32 KV pool",
                heads.q_heads, heads.kv_heads
            )
        },
    )?;
    let grouped = GroupedHeads {
        head_dim: heads.head_dim,
        kv_heads: heads.kv_heads,
        group: map.group,
        group_heads: &map.group_heads,
        block_size,
        window: heads.window,
    };
    let (rows, splits, scratch) = (&step.rows, &step.splits, &step.scratch);
    ops::decode_attention(
        gpu, qkv, width, 0, k, v, rows, splits, &grouped, scratch, out,
    )
}
