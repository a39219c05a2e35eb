//! Which SIMD instruction set a pool's kernels use, detected once when a pool is made.

/// An instruction-set path for the matmul and attention kernels; all paths give identical bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, `f32::mul_add` per lane: the fallback on every CPU.
    Scalar,
    /// x86-64 AVX2 + FMA: each 16-lane accumulator is two `ymm` registers.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + FMA: each 16-lane accumulator is one `zmm` register.
    Avx512,
    /// [`Isa::Avx512`] on a CPU with AVX-512 BF16: bf16 weights are multiplied with
    /// `vdpbf16ps`, whose order the other paths follow with fmas.
    Avx512Bf16,
}

impl Isa {
    /// Parses `avx512bf16`, `avx512`, `avx2` or `scalar` (the `--isa` flag).
    pub fn parse(s: &str) -> Option<Isa> {
        match s {
            "avx512bf16" | "avx512-bf16" => Some(Isa::Avx512Bf16),
            "avx512" | "avx-512" => Some(Isa::Avx512),
            "avx2" => Some(Isa::Avx2),
            "scalar" => Some(Isa::Scalar),
            _ => None,
        }
    }

    /// The fastest path this CPU supports (runs CPUID; call once, not per kernel).
    ///
    /// AVX-512 BF16 is chosen only on AMD CPUs: there `vdpbf16ps` doubled the bf16 GEMM
    /// rate, while on the Intel Xeon measured (2026-12-05, BENCHMARKS.md) the two fmas per
    /// pair of [`Isa::Avx512`] ran bf16 prefill faster. Both give the same bits but for
    /// running sums below 2^-126 (README); `--isa avx512bf16` still forces the instruction.
    pub fn detect() -> Isa {
        if Isa::Avx512Bf16.is_available() && bf16_instruction_pays() {
            Isa::Avx512Bf16
        } else if Isa::Avx512.is_available() {
            Isa::Avx512
        } else if Isa::Avx2.is_available() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => Isa::Avx512.is_available() && is_x86_feature_detected!("avx512bf16"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16 => false,
        }
    }

    /// Whether the path runs the AVX-512 kernels (with or without BF16).
    pub fn has_avx512(self) -> bool {
        matches!(self, Isa::Avx512 | Isa::Avx512Bf16)
    }

    /// Every path this CPU supports, slowest first (for tests and benchmarks).
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16]
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }
}

/// Whether `vdpbf16ps` is the faster way to multiply bf16 pairs here: on AMD CPUs (CPUID
/// vendor "AuthenticAMD"), as measured; elsewhere two fmas per pair.
fn bf16_instruction_pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0 (the vendor string) exists on every x86-64 CPU.
        let id = std::arch::x86_64::__cpuid(0);
        let mut vendor = [0u8; 12];
        for (i, reg) in [id.ebx, id.edx, id.ecx].into_iter().enumerate() {
            vendor[4 * i..4 * i + 4].copy_from_slice(&reg.to_le_bytes());
        }
        &vendor == b"AuthenticAMD"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
