//! Finding NVRTC and compiling the kernels of `cuda/` to PTX, with an on-disk cache.
//!
//! The sources are embedded in the binary. Each file is compiled on its own, with
//! `cuda/common.cuh` prepended, for the device's compute capability (`compute_XY` PTX,
//! which the driver assembles at load). No CUDA header is included, so NVRTC needs no
//! include path: its shared library alone is enough (`libnvrtc.so.13`).

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::CudaError;

/// Prepended to every kernel file.
pub const COMMON: &str = include_str!("../../../cuda/common.cuh");

/// Every kernel file of `cuda/`: (file name, source).
pub const KERNEL_FILES: [(&str, &str); 8] = [
    ("norm.cu", include_str!("../../../cuda/norm.cu")),
    ("rope.cu", include_str!("../../../cuda/rope.cu")),
    ("activation.cu", include_str!("../../../cuda/activation.cu")),
    ("embedding.cu", include_str!("../../../cuda/embedding.cu")),
    ("random.cu", include_str!("../../../cuda/random.cu")),
    (
        "paged_attention.cu",
        include_str!("../../../cuda/paged_attention.cu"),
    ),
    ("sampling.cu", include_str!("../../../cuda/sampling.cu")),
    (
        "decode_attention.cu",
        include_str!("../../../cuda/decode_attention.cu"),
    ),
];

/// A compute capability, e.g. 9.0 for Hopper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    /// Major version.
    pub major: i32,
    /// Minor version.
    pub minor: i32,
}

impl Arch {
    /// The NVRTC target name (`compute_90`).
    pub fn target(self) -> String {
        format!("compute_{}{}", self.major, self.minor)
    }
}

/// PTX of one kernel file and NVRTC's log (empty when it had nothing to say).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// PTX text.
    pub ptx: String,
    /// Warnings, if any.
    pub log: String,
}

/// The `nvidia/cu13/lib` and `nvidia/nccl/lib` folders of Python's site-packages (where
/// the pip wheels `nvidia-cuda-nvrtc`, `nvidia-cublas`, `nvidia-nccl-cu13` and PyTorch's
/// CUDA libraries land). Runs `python3`; returns nothing when it is missing.
pub fn python_cuda_lib_dirs() -> Vec<PathBuf> {
    let script = "import site,sys\nfor p in site.getsitepackages()+[site.getusersitepackages()]+sys.path: print(p)";
    let Ok(out) = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
    else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        for sub in ["nvidia/cu13/lib", "nvidia/nccl/lib"] {
            let dir = Path::new(line.trim()).join(sub);
            if dir.is_dir() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Makes libnvrtc loadable: fine when it is on the loader's path already; otherwise
/// loads `libnvrtc.so.13` from the first of `dirs` that has it and keeps it loaded, so
/// cudarc's later load by name finds it by its soname.
pub fn ensure_nvrtc(dirs: &[PathBuf]) -> Result<(), CudaError> {
    // SAFETY: probing dlopen of a library name; no symbol is called.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    for dir in dirs {
        let path = dir.join("libnvrtc.so.13");
        if !path.is_file() {
            continue;
        }
        // NVRTC opens its builtins library by name at compile time: load it first, from
        // the same folder, so that name resolves to it.
        let builtins = dir.join("libnvrtc-builtins.so.13.0");
        if builtins.is_file() {
            // SAFETY: loading NVIDIA's library runs only its initializers, which have no
            // preconditions.
            if let Ok(lib) = unsafe { libloading::Library::new(&builtins) } {
                std::mem::forget(lib);
            }
        }
        // SAFETY: as above.
        if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
            // Kept loaded for the life of the process: cudarc resolves its symbols later.
            std::mem::forget(lib);
            // SAFETY: as above.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                tracing::debug!(path = %path.display(), "loaded NVRTC");
                return Ok(());
            }
        }
    }
    let tried = if dirs.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!(" (also looked in {})", list.join(", "))
    };
    Err(CudaError::NoNvrtc { tried })
}

/// NVRTC's version, (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the caller made NVRTC loadable ([`ensure_nvrtc`]); both are valid out-pointers.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    status.result().map_err(|e| CudaError::Compile {
        file: String::new(),
        arch: String::new(),
        log: format!("nvrtcVersion: {e:?}"),
    })?;
    Ok((major, minor))
}

/// Compiles kernel file `file` (source `src`, without the common header) to PTX for
/// `arch`. NVRTC must be loadable ([`ensure_nvrtc`]).
pub fn compile(file: &str, src: &str, arch: Arch) -> Result<Compiled, CudaError> {
    compile_to(file, src, arch, false)
}

/// Compiles to machine code (`sm_XY`, through NVRTC's built-in assembler, which also
/// checks inline PTX) and returns the cubin's size in `Compiled::ptx` as text; the log
/// holds warnings of both stages.
pub fn compile_cubin(file: &str, src: &str, arch: Arch) -> Result<Compiled, CudaError> {
    compile_to(file, src, arch, true)
}

/// NVRTC's options for `target` (`compute_XY` or `sm_XY`); part of the PTX cache key.
fn nvrtc_options(target: &str) -> [String; 3] {
    [
        format!("--gpu-architecture={target}"),
        "--std=c++17".to_string(),
        "--device-as-default-execution-space".to_string(),
    ]
}

fn compile_to(file: &str, src: &str, arch: Arch, cubin: bool) -> Result<Compiled, CudaError> {
    let target = if cubin {
        format!("sm_{}{}", arch.major, arch.minor)
    } else {
        arch.target()
    };
    let err = |log: String| CudaError::Compile {
        file: file.to_string(),
        arch: target.clone(),
        log,
    };
    let full = format!("{COMMON}\n#line 1 \"{file}\"\n{src}");
    let c_src = CString::new(full).map_err(|_| err("source holds a NUL byte".into()))?;
    let c_name = CString::new(file).map_err(|_| err("file name holds a NUL byte".into()))?;
    let prog = cudarc::nvrtc::result::create_program(&c_src, Some(&c_name))
        .map_err(|e| err(format!("create: {e:?}")))?;
    let options = nvrtc_options(&target);
    // SAFETY: `prog` was created above and is destroyed once, at the end.
    let status = unsafe { cudarc::nvrtc::result::compile_program(prog, &options) };
    // SAFETY: as above.
    let log = unsafe { cudarc::nvrtc::result::get_program_log(prog) }
        .map(|raw| c_chars_to_string(&raw))
        .unwrap_or_default();
    let ptx = match status {
        Ok(()) if cubin => {
            let mut size = 0usize;
            // SAFETY: as above; compilation succeeded; `size` is a valid out-pointer.
            unsafe { cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map(|()| format!("cubin of {size} bytes"))
                .map_err(|e| err(format!("get CUBIN size: {e:?}")))
        }
        // SAFETY: as above; compilation succeeded.
        Ok(()) => unsafe { cudarc::nvrtc::result::get_ptx(prog) }
            .map(|raw| c_chars_to_string(&raw))
            .map_err(|e| err(format!("get PTX: {e:?}"))),
        Err(e) => Err(err(format!("{e:?}\n{log}"))),
    };
    // SAFETY: as above.
    let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
    Ok(Compiled {
        ptx: ptx?,
        log: log.trim().to_string(),
    })
}

fn c_chars_to_string(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Compiles `file`, or reads its PTX from `cache_dir` when the same source, architecture,
/// NVRTC options and NVRTC version were compiled before. Warnings are logged, not fatal, at run time.
pub fn compile_cached(
    file: &str,
    src: &str,
    arch: Arch,
    cache_dir: Option<&Path>,
) -> Result<String, CudaError> {
    let (major, minor) = nvrtc_version()?;
    let mut hasher = Sha256::new();
    let options = nvrtc_options(&arch.target()).join(" ");
    for part in [
        COMMON,
        src,
        &arch.target(),
        &options,
        &format!("nvrtc {major}.{minor}"),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let key: String = hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = cache_dir.map(|d| d.join(format!("{}-{key}.ptx", file.trim_end_matches(".cu"))));
    if let Some(p) = &path {
        if let Ok(ptx) = std::fs::read_to_string(p) {
            return Ok(ptx);
        }
    }
    let compiled = compile(file, src, arch)?;
    if !compiled.log.is_empty() {
        tracing::warn!(file, log = %compiled.log, "NVRTC warnings");
    }
    if let (Some(p), Some(dir)) = (&path, cache_dir) {
        // A cache that cannot be written only costs a recompile next time.
        if std::fs::create_dir_all(dir).is_ok() {
            // One temp name per process and thread: rank threads compile concurrently.
            let tmp = p.with_extension(
                format!(
                    "tmp{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                )
                .replace(['(', ')'], ""),
            );
            if std::fs::write(&tmp, &compiled.ptx).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    }
    Ok(compiled.ptx)
}
