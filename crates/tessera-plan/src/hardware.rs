//! Hardware profiles: the four numbers the cost model needs about a machine.
//!
//! A profile is data, like a plan: three are built in (`cpu-here`, `h200-nvlink`,
//! `h100-pcie`) and any other is a TOML file with the same fields (see
//! [`HardwareProfile::from_toml`]). Every built-in says where its numbers come from.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cost::CostError;

/// What one rank can do per second, and what a collective costs between ranks.
///
/// ```toml
/// name = "my-gpu"
/// flops_per_s = 989e12            # dense matmul rate of one rank, in the workload's dtype
/// memory_bytes_per_s = 4.8e12     # memory read bandwidth of one rank
/// link_bytes_per_s = 450e9        # bytes per second a rank reads from the others
/// collective_latency_s = 8e-6     # fixed cost of one collective call
/// shared_by_ranks = false         # true: all ranks share one machine's FLOP/s and bandwidth
/// source = "where the numbers come from"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    /// Name shown in reports.
    pub name: String,
    /// Sustained matmul FLOP/s of one rank (of the whole machine when `shared_by_ranks`).
    pub flops_per_s: f64,
    /// Sustained memory read bandwidth in bytes/s (per rank, or shared).
    pub memory_bytes_per_s: f64,
    /// Bytes per second a rank moves to or from the other ranks.
    pub link_bytes_per_s: f64,
    /// Fixed time of one collective call (synchronization), in seconds.
    pub collective_latency_s: f64,
    /// True when all ranks run on one machine and divide its FLOP/s and bandwidth among
    /// them (CPU ranks as threads); false when each rank is its own device.
    #[serde(default)]
    pub shared_by_ranks: bool,
    /// Where the numbers come from.
    #[serde(default)]
    pub source: String,
}

impl HardwareProfile {
    /// Names of the built-in profiles.
    pub const BUILTIN: [&'static str; 3] = ["cpu-here", "h200-nvlink", "h100-pcie"];

    /// This project's machine: 2 AMD EPYC cores with AVX-512, ranks as threads.
    pub fn cpu_here() -> Self {
        Self {
            name: "cpu-here".into(),
            // BENCHMARKS.md: numpy/OpenBLAS sgemm 2048^3 on 2 threads 195 GFLOP/s, Tessera's
            // GEMM 178-195 GFLOP/s (criterion, m=64..256, k=576, n=1536, 2 threads).
            flops_per_s: 190e9,
            // `tessera bench bandwidth` (2 threads, 1 GiB read): 33.3-36 GB/s between runs.
            memory_bytes_per_s: 36e9,
            // Collectives go through shared memory: a rank writes its slot and reads the
            // others', at memory speed (small payloads stay in cache and go faster).
            link_bytes_per_s: 36e9,
            // Two barrier crossings of spinning threads. `tessera bench scaling --tp 1,2
            // --batch 2 --prompt-tokens 16 --decode-steps 4` (2026-11-28): 9.8 and 14.1 us per
            // collective on the two ranks at tp 2 in decode (the larger one includes waiting for
            // the slower rank); 10 us.
            collective_latency_s: 10e-6,
            shared_by_ranks: true,
            source: "measured on this machine: BENCHMARKS.md (sgemm, bench bandwidth); latency from bench scaling at tp 2".into(),
        }
    }

    /// One NVIDIA H200 SXM per rank, NVLink 4 between ranks, bf16 weights.
    pub fn h200_nvlink() -> Self {
        Self {
            name: "h200-nvlink".into(),
            // Datasheet: 989 TFLOP/s dense BF16 tensor core.
            flops_per_s: 989e12,
            // Datasheet: 4.8 TB/s HBM3e.
            memory_bytes_per_s: 4.8e12,
            // Datasheet: NVLink 4 900 GB/s bidirectional = 450 GB/s each way.
            link_bytes_per_s: 450e9,
            // Assumption: a small NCCL collective inside one NVLink node, launch included.
            collective_latency_s: 8e-6,
            shared_by_ranks: false,
            source: "NVIDIA H200 SXM datasheet (BF16 dense, HBM3e, NVLink 4); latency assumed, not measured".into(),
        }
    }

    /// One NVIDIA H100 PCIe per rank, PCIe Gen5 x16 between ranks, bf16 weights.
    pub fn h100_pcie() -> Self {
        Self {
            name: "h100-pcie".into(),
            // Datasheet: 756 TFLOP/s dense BF16 tensor core (PCIe card).
            flops_per_s: 756e12,
            // Datasheet: 2.0 TB/s HBM2e.
            memory_bytes_per_s: 2.0e12,
            // PCIe Gen5 x16: 64 GB/s each way.
            link_bytes_per_s: 64e9,
            // Assumption: a small NCCL collective over PCIe, launch included.
            collective_latency_s: 20e-6,
            shared_by_ranks: false,
            source: "NVIDIA H100 PCIe datasheet (BF16 dense, HBM2e), PCIe Gen5 x16; latency assumed, not measured".into(),
        }
    }

    /// The built-in profile called `name`, if any.
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "cpu-here" => Some(Self::cpu_here()),
            "h200-nvlink" => Some(Self::h200_nvlink()),
            "h100-pcie" => Some(Self::h100_pcie()),
            _ => None,
        }
    }

    /// A built-in name, or else a path to a TOML profile.
    pub fn resolve(name_or_path: &str) -> Result<Self, CostError> {
        if let Some(p) = Self::builtin(name_or_path) {
            return Ok(p);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(CostError::UnknownHardware(name_or_path.to_string()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| CostError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            CostError::Toml { message, .. } => CostError::Toml {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks a profile written in TOML (fields as in the struct).
    pub fn from_toml(text: &str) -> Result<Self, CostError> {
        let p: Self = toml::from_str(text).map_err(|e| CostError::Toml {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Checks that every rate is positive and finite and the latency is not negative.
    pub fn validate(&self) -> Result<(), CostError> {
        let rates = [
            ("flops_per_s", self.flops_per_s),
            ("memory_bytes_per_s", self.memory_bytes_per_s),
            ("link_bytes_per_s", self.link_bytes_per_s),
        ];
        for (field, v) in rates {
            if !(v.is_finite() && v > 0.0) {
                return Err(CostError::BadProfile {
                    name: self.name.clone(),
                    field,
                    value: v,
                });
            }
        }
        let l = self.collective_latency_s;
        if !(l.is_finite() && l >= 0.0) {
            return Err(CostError::BadProfile {
                name: self.name.clone(),
                field: "collective_latency_s",
                value: l,
            });
        }
        Ok(())
    }

    /// FLOP/s and memory bytes/s available to one rank of `world` running at once.
    pub fn per_rank_rates(&self, world: usize) -> (f64, f64) {
        let share = if self.shared_by_ranks {
            world.max(1) as f64
        } else {
            1.0
        };
        (self.flops_per_s / share, self.memory_bytes_per_s / share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_resolves_and_validates() {
        for name in HardwareProfile::BUILTIN {
            let p = HardwareProfile::resolve(name).expect("built-in");
            assert_eq!(p.name, name);
            p.validate().expect("valid");
            assert!(!p.source.is_empty());
        }
    }

    #[test]
    fn toml_profile_round_trips_and_rejects_unknown_fields() {
        let text = toml::to_string(&HardwareProfile::h100_pcie()).expect("serializes");
        assert_eq!(
            HardwareProfile::from_toml(&text).expect("parses"),
            HardwareProfile::h100_pcie()
        );
        let err = HardwareProfile::from_toml(&format!("{text}\nflops = 1.0\n"));
        assert!(matches!(err, Err(CostError::Toml { .. })));
    }

    #[test]
    fn toml_profile_with_zero_bandwidth_is_rejected() {
        let text = "name = \"x\"\nflops_per_s = 1e12\nmemory_bytes_per_s = 0.0\nlink_bytes_per_s = 1e9\ncollective_latency_s = 1e-6\n";
        match HardwareProfile::from_toml(text) {
            Err(CostError::BadProfile { field, .. }) => assert_eq!(field, "memory_bytes_per_s"),
            other => panic!("expected BadProfile, got {other:?}"),
        }
    }

    #[test]
    fn unknown_name_that_is_no_file_is_an_error() {
        assert!(matches!(
            HardwareProfile::resolve("tpu-v9"),
            Err(CostError::UnknownHardware(_))
        ));
    }

    #[test]
    fn shared_profile_divides_rates_among_ranks() {
        let p = HardwareProfile::cpu_here();
        let (f2, m2) = p.per_rank_rates(2);
        assert_eq!(f2 * 2.0, p.flops_per_s);
        assert_eq!(m2 * 2.0, p.memory_bytes_per_s);
        let g = HardwareProfile::h200_nvlink();
        assert_eq!(g.per_rank_rates(8).0, g.flops_per_s);
    }
}
