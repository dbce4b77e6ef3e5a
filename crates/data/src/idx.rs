//! The IDX format of MNIST (Yann LeCun's `*-idx3-ubyte` files), raw or gzipped.
//!
//! Layout: two zero bytes, a type code (0x08 = unsigned byte), the number
//! of dimensions, each dimension as a big-endian u32, then the data. Every
//! check failure is an error naming the file and what is wrong: a truncated
//! file never yields fewer images silently.

use std::io::Read;
use std::path::Path;

use genzoo_core::{Error, Result};

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first (`[n, 28, 28]` for MNIST images).
    pub dims: Vec<usize>,
    /// The values in row-major order.
    pub data: Vec<u8>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UBYTE: u8 = 0x08;

/// Reads an IDX file, decompressing it first if it is gzipped (detected from
/// its first bytes, not its name).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Data(format!(
                    "{}: corrupt or truncated gzip stream: {e}",
                    path.display()
                ))
            })?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|msg| Error::Data(format!("{}: {msg}", path.display())))
}

/// Parses IDX bytes; the error says what is wrong (without the file name).
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!("not an IDX file: only {} bytes", bytes.len()));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "not an IDX file: wrong magic number {:02x}{:02x}{:02x}{:02x} (expected 0000 08 0N)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    if bytes[2] != UBYTE {
        return Err(format!(
            "IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08, as in MNIST)",
            bytes[2]
        ));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err("IDX file declares zero dimensions".into());
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format!(
            "truncated header: {} bytes, {header} expected for {ndims} dimensions",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    let found = bytes.len() - header;
    if found < expected {
        return Err(format!(
            "truncated: dimensions {dims:?} need {expected} bytes of data, the file has {found}"
        ));
    }
    if found > expected {
        return Err(format!(
            "{} trailing bytes after the {expected} bytes that dimensions {dims:?} declare",
            found - expected
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Encodes an array as IDX bytes (for tests and tools that write datasets).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, UBYTE, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_a_good_file() {
        let bytes = encode_idx(&[2, 2, 3], &(0..12).collect::<Vec<u8>>());
        let a = parse_idx(&bytes).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data[11], 11);
    }

    #[test]
    fn rejects_truncated_data_and_header() {
        let bytes = encode_idx(&[2, 2, 3], &[0; 12]);
        let err = parse_idx(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            err.contains("truncated") && err.contains("12") && err.contains("11"),
            "{err}"
        );
        let err = parse_idx(&bytes[..9]).unwrap_err();
        assert!(err.contains("truncated header"), "{err}");
    }

    #[test]
    fn rejects_wrong_magic_type_and_trailing_bytes() {
        let mut bytes = encode_idx(&[1, 2], &[0; 2]);
        bytes[0] = 7;
        assert!(parse_idx(&bytes).unwrap_err().contains("magic"));
        let mut bytes = encode_idx(&[1, 2], &[0; 2]);
        bytes[2] = 0x0D; // float
        assert!(parse_idx(&bytes).unwrap_err().contains("not supported"));
        let mut bytes = encode_idx(&[1, 2], &[0; 2]);
        bytes.push(1);
        assert!(parse_idx(&bytes).unwrap_err().contains("trailing"));
    }

    #[test]
    fn reads_gzip_and_names_the_file_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode_idx(&[3, 2], &[1, 2, 3, 4, 5, 6]);
        let gz = dir.path().join("a.idx.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&bytes).unwrap();
        enc.finish().unwrap();
        assert_eq!(read_idx(&gz).unwrap().data, vec![1, 2, 3, 4, 5, 6]);

        // A gzip file cut in half is an error naming the file.
        let full = std::fs::read(&gz).unwrap();
        let cut = dir.path().join("cut.gz");
        std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
        let err = read_idx(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.gz"), "{err}");

        let raw = dir.path().join("short-idx3-ubyte");
        std::fs::write(&raw, &bytes[..bytes.len() - 2]).unwrap();
        let err = read_idx(&raw).unwrap_err().to_string();
        assert!(
            err.contains("short-idx3-ubyte") && err.contains("truncated"),
            "{err}"
        );
    }
}
