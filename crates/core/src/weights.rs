//! A model's weights in PyTorch's layout, written as safetensors: what
//! `genzoo export weights` hands to code outside genzoo
//! (`safetensors.torch.load_file` and `load_state_dict`).
//!
//! burn stores a linear layer's weight as `[in, out]` and calls a norm's
//! scale and shift `gamma` and `beta`; PyTorch has `[out, in]`, `weight` and
//! `bias`. [`pytorch_layout`] converts (burn-store's `BurnToPyTorchAdapter`);
//! convolutions and embeddings already agree.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};

/// Named tensors, in the order they are written.
pub type NamedTensors = Vec<(String, TensorData)>;

/// Every tensor of `module` (parameters and state such as BatchNorm's
/// running statistics) in PyTorch's layout, named by its path in the module
/// after `prefix` (`"generator."` → `generator.fc.weight`).
pub fn pytorch_layout<B: Backend, M: Module<B>>(module: &M, prefix: &str) -> Result<NamedTensors> {
    module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|snapshot| {
            let name = format!("{prefix}{}", snapshot.full_path());
            let data = snapshot
                .to_data()
                .map_err(|e| Error::Other(format!("cannot read tensor {name}: {e:?}")))?;
            Ok((name, data.convert::<f32>()))
        })
        .collect()
}

/// Writes `tensors` (as f32) to a safetensors file with `metadata`
/// (string pairs in the file's header).
pub fn write_safetensors(
    path: &Path,
    tensors: &NamedTensors,
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    if let Some((name, _)) = tensors.iter().find(|(n, _)| !seen.insert(n.clone())) {
        return Err(Error::Other(format!("two tensors are named {name}")));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, data)| {
            let values = data
                .to_vec::<f32>()
                .map_err(|e| Error::Other(format!("tensor {name} is not f32: {e:?}")))?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((name.clone(), data.shape.to_vec(), bytes))
        })
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::Other(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // No metadata is written as none: safetensors 0.7 writes an empty
    // metadata map of a file without tensors as a header it cannot read.
    let metadata = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    });
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| match e {
        // A full disk, a read-only directory: the OS's words, after the path.
        safetensors::SafeTensorError::IoError(e) => Error::io(path, e),
        e => Error::Other(format!("{}: cannot write safetensors: {e}", path.display())),
    })?;
    sort_header(path)
}

/// Rewrites the header of the safetensors file at `path` with the keys of
/// every JSON object in order. safetensors (and burn-store through it)
/// writes the metadata from a `HashMap`, in an order that changes from one
/// process to the next, so two runs that computed the same weights would
/// write files of different bytes, with different SHA-256s in their
/// checkpoints' manifests. The sorted header has the same length (the same
/// keys and values), so only its bytes are rewritten, in place.
pub fn sort_header(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let io = |e| Error::io(path, e);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let mut len = [0u8; HEADER_LEN_BYTES];
    file.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(io)?.len();
    if len > size.saturating_sub(HEADER_LEN_BYTES as u64) {
        return Err(Error::Other(format!(
            "{}: not a safetensors file: a header of {len} bytes in a file of {size}",
            path.display()
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let value: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::Other(format!("{}: not a safetensors header: {e}", path.display())))?;
    let mut sorted = serde_json::to_vec(&sort_keys(value)).expect("JSON values serialise");
    if sorted.len() > header.len() {
        // Not a header as safetensors writes one (compact JSON): left as it is.
        return Ok(());
    }
    // safetensors pads the header with spaces to a multiple of 8 bytes.
    sorted.resize(header.len(), b' ');
    if sorted != header {
        file.seek(SeekFrom::Start(HEADER_LEN_BYTES as u64))
            .and_then(|_| file.write_all(&sorted))
            .map_err(io)?;
    }
    Ok(())
}

/// `value` with every object's keys in order, however serde_json's maps
/// keep them.
fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// One tensor read back from a safetensors file: name, shape, f32 values.
pub type StoredTensor = (String, Vec<usize>, Vec<f32>);

/// What a safetensors file holds.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredWeights {
    /// Every tensor, in name order.
    pub tensors: Vec<StoredTensor>,
    /// The header's metadata, in key order.
    pub metadata: Vec<(String, String)>,
}

/// The little-endian u64 before a safetensors header: the header's length.
const HEADER_LEN_BYTES: usize = 8;

/// Reads every f32 tensor of a safetensors file, with the file's metadata.
pub fn read_safetensors(path: &Path) -> Result<StoredWeights> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let invalid = |e: safetensors::SafeTensorError| {
        Error::Other(format!("{}: not a safetensors file: {e}", path.display()))
    };
    // One parse of the header: it checks that the tensors' offsets tile
    // the data exactly, so each slice below is in bounds and whole.
    let (header_len, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let data = &bytes[HEADER_LEN_BYTES + header_len..];
    let mut infos: Vec<_> = header.tensors().into_iter().collect();
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors = infos
        .into_iter()
        .map(|(name, info)| {
            if info.dtype != Dtype::F32 {
                return Err(Error::Other(format!(
                    "{}: tensor {name} is {:?}, not f32",
                    path.display(),
                    info.dtype
                )));
            }
            let (start, end) = info.data_offsets;
            let values = data[start..end]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((name, info.shape.clone(), values))
        })
        .collect::<Result<_>>()?;
    let mut metadata: Vec<(String, String)> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    metadata.sort();
    Ok(StoredWeights { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuBackend, CpuDevice};
    use burn::nn::{BatchNormConfig, Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        fc: Linear<B>,
        norm: burn::nn::BatchNorm<B>,
    }

    /// A linear layer and a norm: both of burn's layout conversions.
    fn net() -> Net<CpuBackend> {
        let dev = CpuDevice::default();
        Net {
            fc: LinearConfig::new(3, 2).init(&dev),
            norm: BatchNormConfig::new(2).init(&dev),
        }
    }

    #[test]
    fn weights_are_written_in_pytorch_layout_and_read_back() {
        let net = net();
        let tensors = pytorch_layout(&net, "net.").unwrap();
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            "net.fc.weight",
            "net.fc.bias",
            "net.norm.weight",
            "net.norm.bias",
            "net.norm.running_mean",
            "net.norm.running_var",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        write_safetensors(&path, &tensors, &[("format", "pt".into())]).unwrap();
        let StoredWeights {
            tensors: stored,
            metadata,
        } = read_safetensors(&path).unwrap();
        assert_eq!(metadata, vec![("format".to_string(), "pt".to_string())]);
        // The linear weight is PyTorch's [out, in]: burn's [in, out] transposed.
        let (_, shape, values) = stored.iter().find(|(n, ..)| n == "net.fc.weight").unwrap();
        assert_eq!(shape, &vec![2, 3]);
        let burn: Vec<f32> = net.fc.weight.val().into_data().to_vec().unwrap();
        for (o, i) in [(0, 0), (1, 0), (0, 2), (1, 2)] {
            assert_eq!(values[o * 3 + i], burn[i * 2 + o], "weight[{o}][{i}]");
        }
        assert_eq!(stored.len(), tensors.len());
        let stored_names: Vec<&str> = stored.iter().map(|(n, ..)| n.as_str()).collect();
        assert!(stored_names.is_sorted(), "{stored_names:?}");
        for (name, data) in &tensors {
            let (_, shape, values) = stored.iter().find(|(n, ..)| n == name).unwrap();
            assert_eq!(shape, &data.shape.to_vec(), "{name}");
            assert_eq!(values, &data.to_vec::<f32>().unwrap(), "{name}");
        }
        // A truncated file, and a tensor of another dtype, are refused.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_safetensors(&cut).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
        let half = TensorView::new(Dtype::F16, vec![2], &[0u8; 4]).unwrap();
        safetensors::serialize_to_file([("h", half)], None, &cut).unwrap();
        let err = read_safetensors(&cut).unwrap_err().to_string();
        assert!(err.contains("tensor h is F16, not f32"), "{err}");
        // A file without tensors or metadata (an optimizer before its first step).
        write_safetensors(&path, &Vec::new(), &[]).unwrap();
        assert!(read_safetensors(&path).unwrap().tensors.is_empty());
        // Two tensors of one name are refused.
        let twice = vec![tensors[0].clone(), tensors[0].clone()];
        let err = write_safetensors(&path, &twice, &[]).unwrap_err();
        assert!(err.to_string().contains("two tensors are named"), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_said_after_the_path_once() {
        let tensors = vec![("w".to_string(), TensorData::new(vec![1.0f32; 4], [2, 2]))];
        // Linux's /dev/full takes the file's creation and refuses every write.
        let err = write_safetensors(Path::new("/dev/full"), &tensors, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/full: No space left on device (os error 28)"
        );
        // A module's weights (written by burn-store) into a file that is
        // /dev/full.
        let net = net();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join("model.safetensors")).unwrap();
        let err = crate::record::save_module(&net, &dir.path().join("model")).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "model.safetensors: cannot write weights: No space left on device (os error 28)"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_same_weights_and_metadata_make_the_same_bytes() {
        let net = net();
        let tensors = pytorch_layout(&net, "").unwrap();
        // As many keys as an optimizer's state has (a step count per
        // parameter): a HashMap would write them in a new order each time.
        let metadata: Vec<(&str, String)> = ["e", "b", "h", "a", "f", "c", "g", "d"]
            .into_iter()
            .map(|k| (k, format!("value of {k}")))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let path = dir.path().join(name);
            write_safetensors(&path, &tensors, &metadata).unwrap();
            std::fs::read(path).unwrap()
        };
        let first = write("0.safetensors");
        for i in 1..8 {
            assert_eq!(write(&format!("{i}.safetensors")), first, "file {i}");
        }
        let stored = read_safetensors(&dir.path().join("0.safetensors")).unwrap();
        assert_eq!(stored.metadata.len(), 8);
        // burn-store's module files likewise (its metadata: producer, version, format).
        let save = |name: &str| {
            let stem = dir.path().join(name);
            crate::record::save_module(&net, &stem).unwrap();
            std::fs::read(stem.with_extension("safetensors")).unwrap()
        };
        let module = save("m0");
        for i in 1..8 {
            assert_eq!(save(&format!("m{i}")), module, "module file {i}");
        }
        // A file that is not safetensors is refused, not rewritten.
        let text = dir.path().join("text.safetensors");
        std::fs::write(&text, b"\xff\xff\xff\xff\xff\xff\xff\x7f not a header").unwrap();
        let err = sort_header(&text).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
