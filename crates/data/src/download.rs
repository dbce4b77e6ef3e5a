//! Downloads with checksum verification and atomic writes.
//!
//! A file is streamed into a temporary file beside its destination, its MD5
//! is checked against the published one, and only then is it renamed into
//! place: an interrupted or corrupted download leaves nothing half-written
//! where a later run would look.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use genzoo_core::{Error, Result};
use md5::{Digest, Md5};

/// Downloads `url` to `dest`, checking its MD5 (lowercase hex). On any
/// failure `dest` is untouched and no temporary file remains.
pub fn download_verified(url: &str, dest: &Path, md5_hex: &str) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| Error::Other(format!("{} has no parent directory", dest.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("download");
    let tmp = dir.join(format!(".{file_name}.part-{}", std::process::id()));
    let result = fetch_into(url, &tmp, md5_hex)
        .and_then(|()| std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn fetch_into(url: &str, tmp: &Path, md5_hex: &str) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(600)))
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .map_err(|e| Error::Data(format!("{url}: {e}")))?;
    let mut reader = response.into_body().into_reader();
    let mut file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::Data(format!("{url}: download interrupted: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| Error::io(tmp, e))?;
    }
    file.sync_all().map_err(|e| Error::io(tmp, e))?;
    let got = hex(&hasher.finalize());
    if got != md5_hex {
        return Err(Error::Data(format!(
            "{url}: checksum mismatch (MD5 {got}, expected {md5_hex}); the file was discarded"
        )));
    }
    Ok(())
}

/// Downloads `file` from the first of `mirrors` (base URLs) that serves it
/// with MD5 `md5_hex`, into `dest` as [`download_verified`] does; the error
/// lists every mirror's failure.
pub fn download_from_mirrors(
    mirrors: &[String],
    file: &str,
    dest: &Path,
    md5_hex: &str,
) -> Result<()> {
    let mut errors = Vec::new();
    for mirror in mirrors {
        let url = format!("{}/{file}", mirror.trim_end_matches('/'));
        eprintln!("downloading {url}");
        match download_verified(&url, dest, md5_hex) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(Error::Data(errors.join("; ")))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MD5 of a byte slice, as lowercase hex.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A one-thread HTTP server on 127.0.0.1 that serves `files` (path → bytes)
    /// for at most `max_requests` requests, then stops.
    pub fn serve(files: Vec<(String, Vec<u8>)>, max_requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(max_requests) {
                let mut stream = stream.unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                reader.read_line(&mut line).ok();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        stream.write_all(head.as_bytes()).ok();
                        stream.write_all(body).ok();
                    }
                    None => {
                        stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok();
                    }
                }
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn verifies_checksum_and_leaves_nothing_on_mismatch() {
        let body = b"hello idx".to_vec();
        let base = serve(vec![("/f.gz".into(), body.clone())], 2);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.gz");
        let err = download_verified(
            &format!("{base}/f.gz"),
            &dest,
            "00000000000000000000000000000000",
        )
        .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing may remain after a failed download"
        );
        download_verified(&format!("{base}/f.gz"), &dest, &md5_hex(&body)).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
