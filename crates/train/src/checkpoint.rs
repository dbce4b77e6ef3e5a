//! Checkpoints: written atomically, verified by checksum, pruned to the
//! newest K, and loaded only into the model that wrote them.
//!
//! Layout: `checkpoints/step-00001000/` holding the family's files (weights,
//! optimizer states), `config.toml` when the run has one, and
//! `manifest.json` (format version, model identity, counters, SHA-256 of
//! every file). A checkpoint is assembled in a temporary directory and
//! renamed into place only when complete, so a crash never leaves a
//! half-written `step-*` directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};
use genzoo_models::ModelConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The checkpoint format this build writes and the only one it reads.
/// Format 2 holds weights and optimizer states as safetensors; format 1
/// (up to git revision 9406647) held burn's MessagePack records.
pub const FORMAT_VERSION: u32 = 2;

/// What a checkpoint must match to be loaded: the model's name and its
/// config's fingerprint (the model config as TOML).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointIdentity {
    /// Preset or model name (`vae-mlp`).
    pub model: String,
    /// The model config, serialised; any change in architecture changes it.
    pub fingerprint: String,
}

/// The contents of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Checkpoint format version.
    pub format_version: u32,
    /// genzoo version that wrote it.
    pub genzoo_version: String,
    /// Which model and config wrote it.
    pub identity: CheckpointIdentity,
    /// Optimizer steps taken.
    pub step: u64,
    /// Data position: the epoch of the next batch.
    pub epoch: u64,
    /// Data position: the index of the next batch within `epoch`.
    pub batch_in_epoch: usize,
    /// The run's batch size (`batch_size`): the unit of its steps and of
    /// its data position. Absent from checkpoints written before it was
    /// recorded.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Batches in an epoch of the run's training data: with `batch_size`,
    /// what `batch_in_epoch` counts in. Absent from older checkpoints.
    #[serde(default)]
    pub batches_per_epoch: Option<usize>,
    /// A digest of the run's training examples
    /// ([`TrainData::fingerprint`](genzoo_core::TrainData::fingerprint)):
    /// a resume on data that gives another one is refused. Absent from older
    /// checkpoints, and for data that gives none.
    #[serde(default)]
    pub data_fingerprint: Option<String>,
    /// A digest of the run's held-out examples
    /// ([`TrainData::held_out_fingerprint`](genzoo_core::TrainData::held_out_fingerprint)):
    /// a resume on other held-out data is warned of, or refused when the run
    /// keeps its best checkpoint by them. Absent from older checkpoints.
    #[serde(default)]
    pub held_out_fingerprint: Option<String>,
    /// The run's total steps (the schedule's horizon).
    pub total_steps: u64,
    /// The run's seed; with `step` it determines every later random draw
    /// (genzoo re-seeds from (seed, step) at each step, so this is the RNG state).
    pub seed: u64,
    /// The learning rate of the last step taken (the schedule's state is `step`).
    pub lr: f64,
    /// Seconds of training (fetching batches and taking steps) up to `step`,
    /// over all calls: what a `minutes` budget has spent.
    #[serde(default)]
    pub train_seconds: f64,
    /// The `minutes` budget `total_steps` was planned for, if any: a resumed
    /// run keeps that plan while the budget stays the same.
    #[serde(default)]
    pub planned_minutes: Option<f64>,
    /// The lowest held-out value of the metric the run watches
    /// (`keep_best`) up to `step`, kept so that a resumed run goes on
    /// comparing against it.
    #[serde(default)]
    pub best: Option<BestValue>,
    /// Evaluations since `best` last improved (what `patience` counts).
    #[serde(default)]
    pub evaluations_since_best: u64,
    /// SHA-256 of every other file in the checkpoint.
    pub files: Vec<(String, String)>,
}

/// A held-out metric's lowest value so far, and the step it was measured at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestValue {
    /// The metric's logged name (`val_loss`, `test_neg_elbo`).
    pub metric: String,
    /// Its value.
    pub value: f64,
    /// The step it was measured after.
    pub step: u64,
}

/// Name of the directory (beside the `step-N` ones) that holds the
/// checkpoint of the best held-out value, when the run keeps one.
pub const BEST: &str = "best";

pub(crate) const MANIFEST: &str = "manifest.json";

/// Name of the checkpoint directory for `step`.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The directory this process writes checkpoint `name` into before the
/// rename that publishes it; [`prune`] deletes those other processes left.
fn writing_dir_name(name: &str) -> String {
    format!(".tmp-{name}-{}", std::process::id())
}

/// Whether `name` is a directory [`writing_dir_name`] gave another
/// process: one that was killed before it renamed it.
fn left_by_another_writer(name: &str) -> bool {
    name.starts_with(".tmp-") && !name.ends_with(&format!("-{}", std::process::id()))
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(genzoo_data::download::hex(&hasher.finalize()))
}

/// Writes a checkpoint into `checkpoints/step-N` atomically: `write_files`
/// fills a temporary directory, then checksums and the manifest are added
/// and the directory is renamed into place. Returns its path.
pub fn write_checkpoint(
    checkpoints: &Path,
    manifest: Manifest,
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let name = dir_name(manifest.step);
    write_checkpoint_as(checkpoints, &name, manifest, write_files)
}

/// [`write_checkpoint`] into `checkpoints/<name>` (the [`BEST`] checkpoint,
/// which replaces the one before it as atomically).
pub fn write_checkpoint_as(
    checkpoints: &Path,
    name: &str,
    mut manifest: Manifest,
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(checkpoints).map_err(|e| Error::io(checkpoints, e))?;
    let final_dir = checkpoints.join(name);
    let tmp = checkpoints.join(writing_dir_name(name));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        write_files(&tmp)?;
        let mut names: Vec<String> = std::fs::read_dir(&tmp)
            .map_err(|e| Error::io(&tmp, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != MANIFEST)
            .collect();
        names.sort();
        manifest.files = names
            .into_iter()
            .map(|n| {
                let p = tmp.join(&n);
                // Flush each file to disk before the rename publishes the checkpoint.
                std::fs::File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(&p, e))?;
                Ok((n, sha256_file(&p)?))
            })
            .collect::<Result<_>>()?;
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Other(e.to_string()))?;
        let mpath = tmp.join(MANIFEST);
        std::fs::write(&mpath, json).map_err(|e| Error::io(&mpath, e))?;
        std::fs::File::open(&mpath)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&mpath, e))?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        if let Ok(d) = std::fs::File::open(checkpoints) {
            let _ = d.sync_all();
        }
        Ok(final_dir.clone())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Bytes of the files directly in `dir` (a checkpoint's).
pub fn size_on_disk(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let meta = entry
            .and_then(|e| e.metadata())
            .map_err(|e| Error::io(dir, e))?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Bytes free to this user on the file system that holds `path`; `None`
/// where that cannot be told (outside Unix, or the call fails).
pub fn available_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs fills the zeroed struct it is given and reads a
        // NUL-terminated path that outlives the call.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // the fields' widths differ by platform
        Some(stats.f_bavail as u64 * stats.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The warning to give after a checkpoint of `size` bytes when `free` bytes
/// are left: the next checkpoint is written in full before the oldest is
/// pruned, so with less than `size` free it will fail and stop the run.
pub fn space_warning(checkpoints: &Path, free: u64, size: u64) -> Option<String> {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    (free < size).then(|| {
        format!(
            "warning: {} has {:.1} MB free and a checkpoint takes {:.1} MB: the next one will \
             not fit and training will stop there; free space before then",
            checkpoints.display(),
            mb(free),
            mb(size)
        )
    })
}

/// The checkpoint directories under `checkpoints`, oldest first.
pub fn list_checkpoints(checkpoints: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !checkpoints.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(checkpoints)
        .map_err(|e| Error::io(checkpoints, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Deletes all but the newest `keep` checkpoints, and what a process that
/// was killed while it wrote one left behind (its `.tmp-<name>-<pid>`
/// directory, which no checkpoint list shows).
pub fn prune(checkpoints: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(checkpoints)?;
    let excess = all.len().saturating_sub(keep);
    for (_, dir) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    let entries = std::fs::read_dir(checkpoints).map_err(|e| Error::io(checkpoints, e))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if left_by_another_writer(&name) && entry.path().is_dir() {
            let dir = entry.path();
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    Ok(())
}

/// Why a checkpoint cannot be used.
#[derive(Debug)]
pub enum Unusable {
    /// Damaged (unreadable manifest, missing file, checksum mismatch): try an older one.
    Corrupt(String),
    /// Intact but not for this run (other model or config, newer format): stop.
    Incompatible(Error),
}

/// Reads and verifies a checkpoint: manifest, format version, identity and
/// every file's checksum.
pub fn verify(
    dir: &Path,
    identity: &CheckpointIdentity,
) -> std::result::Result<Manifest, Unusable> {
    let mpath = dir.join(MANIFEST);
    let text = std::fs::read(&mpath)
        .map_err(|e| Unusable::Corrupt(format!("cannot read {MANIFEST}: {e}")))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| Unusable::Corrupt(format!("{MANIFEST} is not valid: {e}")))?;
    if manifest.format_version > FORMAT_VERSION {
        return Err(Unusable::Incompatible(Error::checkpoint(
            dir,
            format!(
                "written in checkpoint format {} by genzoo {}; this genzoo ({}) reads format {FORMAT_VERSION} at most: upgrade genzoo",
                manifest.format_version,
                manifest.genzoo_version,
                env!("CARGO_PKG_VERSION")
            ),
        )));
    }
    if manifest.format_version < FORMAT_VERSION {
        return Err(Unusable::Incompatible(Error::checkpoint(
            dir,
            format!(
                "written in checkpoint format {} (burn's MessagePack records); this genzoo reads format {FORMAT_VERSION} (safetensors) only: sample or resume it with a genzoo that reads format 1 (git revision 9406647 or earlier), or train it again",
                manifest.format_version,
            ),
        )));
    }
    if manifest.identity.model != identity.model {
        return Err(Unusable::Incompatible(Error::checkpoint(
            dir,
            format!(
                "it belongs to model '{}', not '{}'",
                manifest.identity.model, identity.model
            ),
        )));
    }
    if !same_model_config(&manifest.identity.fingerprint, &identity.fingerprint) {
        return Err(Unusable::Incompatible(Error::checkpoint(
            dir,
            match config_differences(&manifest.identity.fingerprint, &identity.fingerprint) {
                Some(keys) => format!(
                    "it was written with another model config: {}",
                    keys.join("; ")
                ),
                None => format!(
                    "it was written with another model config:\n--- checkpoint\n{}\n--- this run\n{}",
                    manifest.identity.fingerprint.trim(),
                    identity.fingerprint.trim()
                ),
            },
        )));
    }
    for (name, want) in &manifest.files {
        let p = dir.join(name);
        let got = sha256_file(&p).map_err(|e| Unusable::Corrupt(e.to_string()))?;
        if &got != want {
            return Err(Unusable::Corrupt(format!(
                "{name} fails its checksum (corrupt or truncated)"
            )));
        }
    }
    Ok(manifest)
}

/// Whether two fingerprints describe the same model config. Model configs
/// are compared as values, so a checkpoint written before a config key
/// existed matches a run that has the key at the value its absence means.
/// Fingerprints that are not model configs must be equal as text.
fn same_model_config(checkpoint: &str, run: &str) -> bool {
    checkpoint == run
        || matches!(
            (
                toml::from_str::<ModelConfig>(checkpoint),
                toml::from_str::<ModelConfig>(run),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

/// The keys whose values differ between two model-config fingerprints,
/// one entry each: `hidden = 400 in the checkpoint, 300 in this run`.
/// Model configs are read as [`ModelConfig`]s first, so a key an older
/// checkpoint lacks shows at the value its absence means, not as missing.
/// `None` when either fingerprint is not a TOML table.
fn config_differences(checkpoint: &str, run: &str) -> Option<Vec<String>> {
    let keys = |text: &str| -> Option<BTreeMap<String, toml::Value>> {
        let filled = toml::from_str::<ModelConfig>(text)
            .ok()
            .and_then(|config| toml::to_string(&config).ok());
        let table: toml::Table = toml::from_str(filled.as_deref().unwrap_or(text)).ok()?;
        let mut flat = BTreeMap::new();
        flatten("", table, &mut flat);
        Some(flat)
    };
    let (there, here) = (keys(checkpoint)?, keys(run)?);
    let shown = |value: Option<&toml::Value>| value.map_or("absent".into(), ToString::to_string);
    let names: BTreeSet<&String> = there.keys().chain(here.keys()).collect();
    Some(
        names
            .into_iter()
            .filter(|name| there.get(*name) != here.get(*name))
            .map(|name| {
                format!(
                    "{name} = {} in the checkpoint, {} in this run",
                    shown(there.get(name)),
                    shown(here.get(name))
                )
            })
            .collect(),
    )
}

/// A table's values under dotted keys (`unet.channels`).
fn flatten(prefix: &str, table: toml::Table, into: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&name, inner, into),
            value => {
                into.insert(name, value);
            }
        }
    }
}

/// The newest usable checkpoint, falling back past corrupt ones with a
/// warning (through `warn`). `Ok(None)` when there is no checkpoint at all.
/// An incompatible checkpoint is an error: it means the run directory
/// belongs to another model or config, and nothing should be overwritten.
pub fn latest_good(
    checkpoints: &Path,
    identity: &CheckpointIdentity,
    mut warn: impl FnMut(&str),
) -> Result<Option<(PathBuf, Manifest)>> {
    let all = list_checkpoints(checkpoints)?;
    if all.is_empty() {
        return Ok(None);
    }
    let mut problems = Vec::new();
    for (_, dir) in all.iter().rev() {
        match verify(dir, identity) {
            Ok(m) => return Ok(Some((dir.clone(), m))),
            Err(Unusable::Incompatible(e)) => return Err(e),
            Err(Unusable::Corrupt(why)) => {
                warn(&format!(
                    "warning: checkpoint {} is unusable ({why}); falling back to the previous one",
                    dir.display()
                ));
                problems.push(format!("{}: {why}", dir.display()));
            }
        }
    }
    Err(Error::checkpoint(
        checkpoints,
        format!("no usable checkpoint: {}", problems.join("; ")),
    ))
}

/// Verifies the checkpoint a run starts from (`init_from`): one of another
/// run's checkpoint directories, intact and of this run's model and config.
pub fn verify_source(dir: &Path, identity: &CheckpointIdentity) -> Result<Manifest> {
    if !dir.join(MANIFEST).is_file() {
        return Err(Error::checkpoint(
            dir,
            "not a checkpoint directory (no manifest.json): give one of a run's \
             checkpoints/step-… or its checkpoints/best",
        ));
    }
    verify_named(dir, identity)
}

/// [`verify`] of a checkpoint named by the user, where a damaged one is an
/// error too (there is nothing to fall back to).
fn verify_named(dir: &Path, identity: &CheckpointIdentity) -> Result<Manifest> {
    verify(dir, identity).map_err(|unusable| match unusable {
        Unusable::Incompatible(e) => e,
        Unusable::Corrupt(why) => Error::checkpoint(dir, why),
    })
}

/// The checkpoint `which` names in `checkpoints`: `latest` (the newest
/// usable one), `best` (the best held-out value's, of a run with
/// `keep_best`), or a step (`1200` or `step-00001200`). Verified in full;
/// an error names the checkpoints there are.
pub fn find_checkpoint(
    checkpoints: &Path,
    identity: &CheckpointIdentity,
    which: &str,
    warn: impl FnMut(&str),
) -> Result<(PathBuf, Manifest)> {
    if which == "latest" {
        return latest_good(checkpoints, identity, warn)?.ok_or_else(|| {
            Error::checkpoint(checkpoints, "no checkpoint yet: train the run first")
        });
    }
    let dir = match which.strip_prefix("step-").unwrap_or(which).parse::<u64>() {
        Ok(step) => checkpoints.join(dir_name(step)),
        Err(_) if which == BEST => checkpoints.join(BEST),
        Err(_) => {
            return Err(Error::Config(format!(
                "--checkpoint {which}: expected latest, best or a step number"
            )));
        }
    };
    if !dir.is_dir() {
        let mut there: Vec<String> = list_checkpoints(checkpoints)?
            .into_iter()
            .map(|(step, _)| step.to_string())
            .collect();
        if checkpoints.join(BEST).is_dir() {
            there.push(BEST.into());
        }
        let why = match which {
            BEST => "the run keeps no best checkpoint (train it with --keep-best METRIC)",
            _ => "no such checkpoint",
        };
        return Err(Error::checkpoint(
            &dir,
            format!("{why}; there are: {}", there.join(", ")),
        ));
    }
    let manifest = verify_named(&dir, identity)?;
    Ok((dir, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use genzoo_models::gpt::GptConfig;

    #[test]
    fn a_disk_with_less_room_than_a_checkpoint_is_warned_of() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("model.safetensors"), vec![0u8; 3000]).unwrap();
        std::fs::write(tmp.path().join("manifest.json"), b"{}").unwrap();
        std::fs::create_dir(tmp.path().join("not-a-file")).unwrap();
        assert_eq!(size_on_disk(tmp.path()).unwrap(), 3002);
        #[cfg(unix)]
        assert!(available_bytes(tmp.path()).is_some_and(|free| free > 0));
        let dir = Path::new("runs/v/checkpoints");
        let warning = space_warning(dir, 2_400_000, 7_500_000).unwrap();
        assert!(
            warning.contains("runs/v/checkpoints has 2.4 MB free and a checkpoint takes 7.5 MB"),
            "{warning}"
        );
        assert_eq!(space_warning(dir, 7_500_000, 7_500_000), None);
    }

    #[test]
    fn prune_keeps_the_newest_and_clears_what_a_killed_writer_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for step in 1..=4 {
            std::fs::create_dir(dir.join(dir_name(step))).unwrap();
        }
        let killed = dir.join(format!(".tmp-{}-999999999", dir_name(5)));
        std::fs::create_dir(&killed).unwrap();
        std::fs::write(killed.join("model.safetensors"), b"half").unwrap();
        // This process's own writing directory is not another's leftover.
        let ours = dir.join(writing_dir_name(&dir_name(6)));
        std::fs::create_dir(&ours).unwrap();
        prune(dir, 2).unwrap();
        let steps: Vec<u64> = list_checkpoints(dir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, [3, 4]);
        assert!(!killed.exists());
        assert!(ours.exists());
    }

    #[test]
    fn model_configs_compare_as_values_with_absent_keys_at_their_meaning() {
        let fingerprint = |config: GptConfig| toml::to_string(&ModelConfig::Gpt(config)).unwrap();
        let new = |decay_embeddings| {
            fingerprint(GptConfig {
                decay_embeddings,
                ..Default::default()
            })
        };
        // A checkpoint from before `decay_embeddings` existed: those runs decayed embeddings.
        let old = new(true).replace("decay_embeddings = true\n", "");
        assert_ne!(
            old,
            new(true),
            "the key must be gone from the old fingerprint"
        );
        assert!(same_model_config(&old, &new(true)));
        assert!(!same_model_config(&old, &new(false)));
        // Another value of any key is another config.
        let wider = fingerprint(GptConfig {
            n_embd: 256,
            ..Default::default()
        });
        assert!(!same_model_config(&wider, &new(false)));
        assert!(same_model_config(&new(false), &new(false)));
        // Fingerprints that are no model config compare as text.
        assert!(same_model_config("custom", "custom"));
        assert!(!same_model_config("custom", "custom "));
    }

    #[test]
    fn a_config_mismatch_names_the_keys_that_differ() {
        let fingerprint = |config: GptConfig| toml::to_string(&ModelConfig::Gpt(config)).unwrap();
        let wider = fingerprint(GptConfig {
            n_embd: 256,
            dropout: 0.1,
            ..Default::default()
        });
        let base = fingerprint(GptConfig::default());
        let default = GptConfig::default();
        assert_eq!(
            config_differences(&wider, &base).unwrap(),
            [
                format!(
                    "dropout = 0.1 in the checkpoint, {:?} in this run",
                    default.dropout
                ),
                format!(
                    "n_embd = 256 in the checkpoint, {} in this run",
                    default.n_embd
                ),
            ]
        );
        // A key an older checkpoint lacks reads at its meaning: here the
        // one difference is the value the new run gave it.
        let old = fingerprint(GptConfig {
            decay_embeddings: true,
            ..Default::default()
        })
        .replace("decay_embeddings = true\n", "");
        let new = fingerprint(GptConfig {
            decay_embeddings: false,
            ..Default::default()
        });
        assert_eq!(
            config_differences(&old, &new).unwrap(),
            ["decay_embeddings = true in the checkpoint, false in this run"]
        );
        // Tables other than model configs compare key by key; text that is
        // no TOML table has no keys to name.
        assert_eq!(
            config_differences("a = 1\n[b]\nc = \"x\"\n", "a = 1\n").unwrap(),
            ["b.c = \"x\" in the checkpoint, absent in this run"]
        );
        assert_eq!(config_differences("custom", "a = 1"), None);
    }
}
