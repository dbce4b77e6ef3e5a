//! Metrics files: `metrics.jsonl` (one JSON object per logged step) and
//! `metrics.csv` (long format: `step,name,value`, easy to plot).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};

/// Appends metric records to a run's metrics files.
#[derive(Debug)]
pub struct MetricsLogger {
    jsonl: PathBuf,
    csv: PathBuf,
}

impl MetricsLogger {
    /// A logger writing to `jsonl` and `csv` (created on first write).
    pub fn new(jsonl: PathBuf, csv: PathBuf) -> Self {
        Self { jsonl, csv }
    }

    /// Appends one record: `{"step": step, name: value, ...}`. Non-finite
    /// values are written as `null` in JSON (JSON has no NaN).
    pub fn log(&self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        for (k, v) in values {
            obj.insert(
                k.clone(),
                serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into),
            );
        }
        let line = serde_json::Value::Object(obj).to_string();
        append(&self.jsonl, &format!("{line}\n"))?;
        let new_csv = !self.csv.exists();
        let mut rows = String::new();
        if new_csv {
            rows.push_str("step,name,value\n");
        }
        for (k, v) in values {
            rows.push_str(&format!("{step},{k},{v}\n"));
        }
        append(&self.csv, &rows)
    }

    /// Drops records of steps after `step` (from a run that was interrupted
    /// after its last checkpoint), so a resumed run does not log them twice.
    pub fn truncate_after(&self, step: u64) -> Result<()> {
        rewrite_filtered(&self.jsonl, |line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_none_or(|s| s <= step)
        })?;
        rewrite_filtered(&self.csv, |line| {
            line.split(',')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .is_none_or(|s| s <= step)
        })
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

fn rewrite_filtered(path: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: String = text
        .lines()
        .filter(|l| keep(l))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() == text.len() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, kept).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads `metrics.jsonl` back as JSON objects.
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
        })
        .collect()
}
