//! The output file as an append-only log of finished lines, and the errors file.
//!
//! Exactly-once rests on three rules: a line is written with one `write` call ending in
//! `\n` (no user-space buffer, so a kill loses at most the line being written); on start,
//! bytes after the last `\n` are a torn line and are truncated away; and the ids of the
//! complete lines are the ones skipped on a rerun. `fsync` runs every `sync_lines` lines or
//! `sync_interval`, and at the end, so a machine crash loses little.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::BatchError;

/// An output file opened for appending, with the ids it already answers.
pub struct OutputLog {
    path: PathBuf,
    file: File,
    unsynced: usize,
    last_sync: Instant,
    sync_lines: usize,
    sync_interval: Duration,
}

/// What was found in an existing output file.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Ids of complete lines.
    pub done: HashSet<String>,
    /// Bytes of a torn last line that were cut off.
    pub truncated_bytes: u64,
}

impl OutputLog {
    /// Opens (or creates) `path`, cuts a torn last line and collects the answered ids.
    pub fn open(
        path: &Path,
        sync_lines: usize,
        sync_interval: Duration,
    ) -> Result<(Self, Recovered), BatchError> {
        let io = |e| BatchError::io(path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let mut recovered = Recovered::default();
        if keep < bytes.len() {
            recovered.truncated_bytes = (bytes.len() - keep) as u64;
            file.set_len(keep as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
            tracing::warn!(
                bytes = recovered.truncated_bytes,
                "cut a partly written last line from the output (the job was killed mid-write)"
            );
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        for (i, line) in String::from_utf8_lossy(&bytes[..keep]).lines().enumerate() {
            match answered_id(line) {
                Some(id) => {
                    recovered.done.insert(id);
                }
                None if line.trim().is_empty() => {}
                None => tracing::warn!(line = i + 1, "output line without an id: ignored"),
            }
        }
        let log = Self {
            path: path.to_path_buf(),
            file,
            unsynced: 0,
            last_sync: Instant::now(),
            sync_lines: sync_lines.max(1),
            sync_interval,
        };
        Ok((log, recovered))
    }

    /// Appends one JSON value as a line (one `write` call) and syncs when due.
    pub fn append(&mut self, value: &Value) -> Result<(), BatchError> {
        let mut line = value.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| BatchError::io(&self.path, e))?;
        self.unsynced += 1;
        if self.unsynced >= self.sync_lines || self.last_sync.elapsed() >= self.sync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Forces written lines to disk.
    pub fn sync(&mut self) -> Result<(), BatchError> {
        if self.unsynced > 0 {
            self.file
                .sync_data()
                .map_err(|e| BatchError::io(&self.path, e))?;
        }
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }
}

/// The id an output line answers: `custom_id` (OpenAI lines) or `id` (documents).
pub fn answered_id(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    let id = v.get("custom_id").or_else(|| v.get("id"))?;
    match id {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The errors file: rewritten by each run, one JSON line per failed input line.
pub struct ErrorLog {
    path: PathBuf,
    file: File,
}

impl ErrorLog {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> Result<Self, BatchError> {
        let file = File::create(path).map_err(|e| BatchError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one failure.
    pub fn append(&mut self, value: &Value) -> Result<(), BatchError> {
        let mut line = value.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| BatchError::io(&self.path, e))
    }

    /// Forces the file to disk.
    pub fn sync(&mut self) -> Result<(), BatchError> {
        self.file
            .sync_data()
            .map_err(|e| BatchError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_last_line_is_cut_and_complete_ids_are_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"summary\":\"x\"}\n{\"custom_id\":\"b\",\"id\":\"batch_req_1\"}\n{\"id\":\"c\",\"summ",
        )
        .unwrap();
        let (mut log, rec) = OutputLog::open(&path, 10, Duration::from_secs(1)).unwrap();
        assert_eq!(rec.truncated_bytes, 15);
        let mut ids: Vec<_> = rec.done.into_iter().collect();
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
        log.append(&serde_json::json!({"id": "c"})).unwrap();
        log.sync().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("{\"id\":\"c\"}\n"));
    }
}
