//! Token choice on the device (`cuda/sampling.cu`): greedy and top-k/top-p sampling, so
//! only ids cross to the host.

use cudarc::driver::CudaSlice;
use tessera_model::RowChoice;

use super::i32_of;
use crate::device::{Arg, Gpu};
use crate::error::{ensure, CudaError};

/// Greedy token of each of `rows` rows of `vocab` logits (`-1`: a row without a number).
pub fn argmax(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
) -> Result<Vec<i32>, CudaError> {
    ensure(logits.len() >= rows * vocab && vocab > 0, "argmax", || {
        format!("{rows} rows of {vocab}")
    })?;
    let out = gpu.zeros::<i32>(rows)?;
    gpu.launch(
        "argmax_f32",
        (rows as u32, 1, 1),
        1024,
        &[
            Arg::Ptr(gpu.ptr(logits)),
            Arg::I32(i32_of("argmax", vocab)?),
            Arg::Ptr(gpu.ptr(&out)),
        ],
    )?;
    gpu.download_prefix(&out, rows)
}

/// Sampling parameters of [`sample`].
#[derive(Clone, Copy, Debug)]
pub struct SampleParams {
    /// Softmax temperature (> 0).
    pub temperature: f32,
    /// Keep the k largest logits (0 = all).
    pub top_k: usize,
    /// Keep the smallest most-probable set of this share of the kept mass (1 = all).
    pub top_p: f32,
}

impl SampleParams {
    /// These parameters with the draw `uniform`, as one row's [`RowChoice`].
    pub fn choice(self, uniform: f32) -> RowChoice {
        RowChoice {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            uniform,
        }
    }
}

/// One token per row drawn with `uniforms[row]` in [0, 1) (see `cuda/sampling.cu`).
pub fn sample(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    params: SampleParams,
    uniforms: &[f32],
) -> Result<Vec<i32>, CudaError> {
    ensure(
        logits.len() >= rows * vocab && vocab > 0 && uniforms.len() == rows,
        "sample",
        || format!("{rows} rows of {vocab}, {} uniforms", uniforms.len()),
    )?;
    ensure(
        params.temperature > 0.0 && params.top_p > 0.0 && params.top_p <= 1.0,
        "sample",
        || format!("{params:?}"),
    )?;
    let u = gpu.upload(uniforms)?;
    let out = gpu.zeros::<i32>(rows)?;
    gpu.launch(
        "sample_f32",
        (rows as u32, 1, 1),
        1024,
        &[
            Arg::Ptr(gpu.ptr(logits)),
            Arg::I32(i32_of("sample", vocab)?),
            Arg::F32(params.temperature),
            Arg::I32(i32_of("sample", params.top_k)?),
            Arg::F32(params.top_p),
            Arg::Ptr(gpu.ptr(&u)),
            Arg::Ptr(gpu.ptr(&out)),
        ],
    )?;
    gpu.download_prefix(&out, rows)
}

/// The per-row parameters and ids of `sample_rows_f32`, kept between steps (grown to the
/// most rows seen), so a step's choice allocates nothing and downloads only the ids.
pub struct RowSampler {
    temperature: CudaSlice<f32>,
    top_k: CudaSlice<i32>,
    top_p: CudaSlice<f32>,
    uniforms: CudaSlice<f32>,
    out: CudaSlice<i32>,
}

impl RowSampler {
    /// Buffers for one row (they grow in [`RowSampler::pick`]).
    pub fn new(gpu: &Gpu) -> Result<Self, CudaError> {
        Ok(Self {
            temperature: gpu.zeros(1)?,
            top_k: gpu.zeros(1)?,
            top_p: gpu.zeros(1)?,
            uniforms: gpu.zeros(1)?,
            out: gpu.zeros(1)?,
        })
    }

    /// One token per row of `logits` (`rows` rows of `vocab`), row i chosen as
    /// `choices[i]` says by the rule of `tessera_model::RowChooser` (`-1`: a row without a
    /// number).
    pub fn pick(
        &mut self,
        gpu: &Gpu,
        logits: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        choices: &[RowChoice],
    ) -> Result<Vec<i32>, CudaError> {
        ensure(
            logits.len() >= rows * vocab && vocab > 0 && choices.len() == rows,
            "sample_rows",
            || format!("{rows} rows of {vocab}, {} choices", choices.len()),
        )?;
        ensure(
            choices.iter().all(|c| {
                c.temperature <= 0.0 || (c.top_p > 0.0 && c.top_p <= 1.0 && c.uniform < 1.0)
            }),
            "sample_rows",
            || "top_p must be in (0, 1] and uniforms below 1".into(),
        )?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        if self.out.len() < rows {
            let n = rows.next_power_of_two();
            *self = Self {
                temperature: gpu.zeros(n)?,
                top_k: gpu.zeros(n)?,
                top_p: gpu.zeros(n)?,
                uniforms: gpu.zeros(n)?,
                out: gpu.zeros(n)?,
            };
        }
        let top_k = choices
            .iter()
            .map(|c| i32_of("sample_rows", c.top_k))
            .collect::<Result<Vec<_>, _>>()?;
        let stream = gpu.stream();
        let col = |f: fn(&RowChoice) -> f32| choices.iter().map(f).collect::<Vec<f32>>();
        stream.memcpy_htod(
            &col(|c| c.temperature),
            &mut self.temperature.slice_mut(..rows),
        )?;
        stream.memcpy_htod(&top_k, &mut self.top_k.slice_mut(..rows))?;
        stream.memcpy_htod(&col(|c| c.top_p), &mut self.top_p.slice_mut(..rows))?;
        stream.memcpy_htod(&col(|c| c.uniform), &mut self.uniforms.slice_mut(..rows))?;
        gpu.launch(
            "sample_rows_f32",
            (rows as u32, 1, 1),
            1024,
            &[
                Arg::Ptr(gpu.ptr(logits)),
                Arg::I32(i32_of("sample_rows", vocab)?),
                Arg::Ptr(gpu.ptr(&self.temperature)),
                Arg::Ptr(gpu.ptr(&self.top_k)),
                Arg::Ptr(gpu.ptr(&self.top_p)),
                Arg::Ptr(gpu.ptr(&self.uniforms)),
                Arg::Ptr(gpu.ptr(&self.out)),
            ],
        )?;
        gpu.download_prefix(&self.out, rows)
    }
}
