//! TensorBoard event files: a run's metrics, sample grids and text samples
//! as `tensorboard --logdir runs` shows them, beside `metrics.jsonl`.
//!
//! An event file is a sequence of TFRecords (a length, its masked CRC-32C,
//! the bytes, their masked CRC-32C), each holding one `tensorflow.Event`
//! protobuf message. The few messages written here (scalars, PNG images,
//! text for the text plugin, the file version and the restart marker) are
//! encoded by hand: a protobuf crate and TensorFlow's `.proto` files would
//! be a build-time dependency for six fields.
//!
//! A resumed run redoes the steps after its last checkpoint. Its new event
//! file starts with TensorBoard's restart marker (a `SessionLog` START at
//! the first step redone), which makes TensorBoard drop what the earlier
//! files logged at that step and after, as PyTorch's `SummaryWriter`
//! (`purge_step`) does.
//!
//! ```
//! # use genzoo_train::tensorboard::EventWriter;
//! # let run = tempfile::tempdir().unwrap();
//! let mut events = EventWriter::new(run.path());
//! assert!(events.path().is_none()); // no file before the first event
//! events.scalars(10, &[("train/loss".into(), 0.5)]).unwrap();
//! let name = events.path().unwrap().file_name().unwrap().to_str().unwrap();
//! assert!(name.starts_with("events.out.tfevents."));
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use genzoo_core::{Error, Result};

/// The prefix TensorBoard looks for in a directory's file names.
const PREFIX: &str = "events.out.tfevents.";

/// Appends events to one new event file in a run directory, created at
/// the first event: a run that logs nothing leaves no file.
#[derive(Debug)]
pub struct EventWriter {
    dir: PathBuf,
    file: Option<(PathBuf, File)>,
    restart_at: Option<u64>,
}

impl EventWriter {
    /// A writer for a new event file in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            file: None,
            restart_at: None,
        }
    }

    /// Marks this file as the continuation of a run from `step` on: what
    /// the directory's earlier event files hold for `step` and later steps
    /// is dropped by TensorBoard. Takes effect with the file's first event.
    pub fn restart_at(&mut self, step: u64) {
        self.restart_at = Some(step);
    }

    /// The file written, once an event has been.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(path, _)| path.as_path())
    }

    /// One event of scalars at `step`, a value per tag (TensorBoard draws
    /// a chart per tag, in sections named by what precedes a tag's first
    /// `/`: the engine logs `train_loss` as `train/loss`).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        self.write(step, Payload::Summary(scalars_summary(values)))
    }

    /// An image at `step` under `tag`, from its PNG bytes.
    pub fn png(&mut self, step: u64, tag: &str, png: &[u8]) -> Result<()> {
        let summary = png_summary(tag, png)?;
        self.write(step, Payload::Summary(summary))
    }

    /// A text at `step` under `tag`, shown by TensorBoard's text plugin as
    /// written (it renders Markdown: the text goes in as a code block, so
    /// line breaks and spaces stay).
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        self.write(step, Payload::Summary(text_summary(tag, text)))
    }

    fn write(&mut self, step: u64, payload: Payload) -> Result<()> {
        if self.file.is_none() {
            let path = self.dir.join(new_file_name(&self.dir)?);
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            let mut head = record(&event(wall_time(), 0, &Payload::FileVersion));
            if let Some(step) = self.restart_at {
                head.extend(record(&event(wall_time(), step, &Payload::Restart)));
            }
            file.write_all(&head).map_err(|e| Error::io(&path, e))?;
            self.file = Some((path, file));
        }
        let (path, file) = self.file.as_mut().expect("opened above");
        // One write per event, unbuffered: a TensorBoard watching the run
        // sees each as it comes, and a killed run loses none it logged.
        file.write_all(&record(&event(wall_time(), step, &payload)))
            .map_err(|e| Error::io(&*path, e))
    }
}

/// A `Summary` of scalars, one `simple_value` per tag.
fn scalars_summary(values: &[(String, f64)]) -> Vec<u8> {
    let mut summary = Message::default();
    for (tag, value) in values {
        let mut v = Message::default();
        v.string(1, tag);
        // TensorBoard's scalars are f32.
        v.fixed32(2, (*value as f32).to_bits());
        summary.message(1, &v);
    }
    summary.0
}

/// A `Summary` of one image (`Summary.Image`, PNG-encoded).
fn png_summary(tag: &str, png: &[u8]) -> Result<Vec<u8>> {
    let (width, height, colorspace) = png_header(png)?;
    let mut image = Message::default();
    image.varint(1, height.into());
    image.varint(2, width.into());
    image.varint(3, colorspace);
    image.bytes(4, png);
    let mut value = Message::default();
    value.string(1, tag);
    value.message(4, &image);
    let mut summary = Message::default();
    summary.message(1, &value);
    Ok(summary.0)
}

/// A `Summary` of one text for the text plugin: a string tensor of shape
/// [1], as PyTorch's `add_text` writes, holding the text as a Markdown
/// code block.
fn text_summary(tag: &str, text: &str) -> Vec<u8> {
    let block: String = text.lines().map(|l| format!("    {l}\n")).collect();
    let mut plugin = Message::default();
    plugin.string(1, "text");
    let mut metadata = Message::default();
    metadata.message(1, &plugin);
    let mut dim = Message::default();
    dim.varint(1, 1);
    let mut shape = Message::default();
    shape.message(2, &dim);
    let mut tensor = Message::default();
    tensor.varint(1, DT_STRING);
    tensor.message(2, &shape);
    tensor.bytes(8, block.as_bytes());
    let mut value = Message::default();
    value.string(1, tag);
    value.message(8, &tensor);
    value.message(9, &metadata);
    let mut summary = Message::default();
    summary.message(1, &value);
    summary.0
}

/// `tensorflow.DataType.DT_STRING`.
const DT_STRING: u64 = 7;

/// What an event holds besides its time and step.
enum Payload {
    /// The first event of every file: the format's version.
    FileVersion,
    /// `SessionLog { status: START }`: the run restarts at this step.
    Restart,
    /// An encoded `Summary` message.
    Summary(Vec<u8>),
}

/// An encoded `tensorflow.Event`.
fn event(wall_time: f64, step: u64, payload: &Payload) -> Vec<u8> {
    let mut e = Message::default();
    e.fixed64(1, wall_time.to_bits());
    if step > 0 {
        e.varint(2, step);
    }
    match payload {
        Payload::FileVersion => e.string(3, "brain.Event:2"),
        Payload::Restart => {
            let mut log = Message::default();
            log.varint(1, 1);
            e.message(7, &log);
        }
        Payload::Summary(summary) => e.bytes(5, summary),
    }
    e.0
}

/// A protobuf message under construction: fields appended in order.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn key(&mut self, field: u32, wire_type: u8) {
        put_varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire_type));
    }
    fn varint(&mut self, field: u32, value: u64) {
        self.key(field, 0);
        put_varint(&mut self.0, value);
    }
    fn fixed64(&mut self, field: u32, bits: u64) {
        self.key(field, 1);
        self.0.extend(bits.to_le_bytes());
    }
    fn fixed32(&mut self, field: u32, bits: u32) {
        self.key(field, 5);
        self.0.extend(bits.to_le_bytes());
    }
    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, 2);
        put_varint(&mut self.0, bytes.len() as u64);
        self.0.extend(bytes);
    }
    fn string(&mut self, field: u32, text: &str) {
        self.bytes(field, text.as_bytes());
    }
    fn message(&mut self, field: u32, message: &Message) {
        self.bytes(field, &message.0);
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One TFRecord: the length and the data, each followed by its masked
/// CRC-32C.
fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend(length);
    out.extend(masked_crc(&length).to_le_bytes());
    out.extend(data);
    out.extend(masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's mask over a CRC-32C, so that a CRC of data holding CRCs
/// stays a good check.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli), bit by bit: event records are small and written
/// once per logged step.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82f6_3b78 & mask);
        }
    }
    !crc
}

/// A PNG's width, height and TensorBoard colorspace (1 grey, 2 grey and
/// alpha, 3 RGB, 4 RGBA), read from its IHDR chunk.
fn png_header(png: &[u8]) -> Result<(u32, u32, u64)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 33 || &png[..8] != SIGNATURE || &png[12..16] != b"IHDR" {
        return Err(Error::Other("not a PNG image".into()));
    }
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    let colorspace = match png[25] {
        0 => 1,
        4 => 2,
        2 | 3 => 3,
        6 => 4,
        other => return Err(Error::Other(format!("PNG of unknown colour type {other}"))),
    };
    Ok((be(16), be(20), colorspace))
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `events.out.tfevents.<seconds>.<host>.<pid>`, its seconds past those of
/// every event file already in `dir`: TensorBoard reads a directory's event
/// files in the order of their names, and a resumed run's must come last.
fn new_file_name(dir: &Path) -> Result<String> {
    let mut seconds = wall_time() as u64;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let earlier = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|rest| rest.split('.').next())
                .and_then(|digits| digits.parse::<u64>().ok());
            if let Some(earlier) = earlier {
                seconds = seconds.max(earlier + 1);
            }
        }
    }
    Ok(format!(
        "{PREFIX}{seconds:010}.{}.{}",
        host_name(),
        std::process::id()
    ))
}

/// This machine's name, as TensorFlow puts it in event file names (dots,
/// which would split the name's fields, replaced).
fn host_name() -> String {
    #[cfg(unix)]
    let name = {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is writable for its length; gethostname
        // NUL-terminates within it on success.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
        ok.then(|| String::from_utf8_lossy(&buf[..end]).into_owned())
    };
    #[cfg(not(unix))]
    let name = std::env::var("COMPUTERNAME").ok();
    let name = crate::run_dir::file_name_part(&name.unwrap_or_default());
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnolis() {
        // The check value of CRC-32C (RFC 3720, B.4).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A 3×2 grey PNG.
    const PNG: &str = "89504e470d0a1a0a0000000d4948445200000003000000020800000000b81f39c6000000104944\
        4154789c6360d0086060d70f07000352010616801fe50000000049454e44ae426082";

    #[test]
    fn events_are_the_bytes_tensorflows_protos_and_record_writer_give() {
        // Written by TensorBoard 2.21's own event_pb2 messages and
        // RecordWriter (Python) for the same five events at this wall time.
        let expected = unhex(concat!(
            "1800000000000000a37f4b2209000010d0f04cda411a0d627261696e2e4576656e743a32ed424cde",
            "0f000000000000006d532b0909000010d0f04cda4110073a02080192afbcf42b00000000000000",
            "861bc34b09000010d0f04cda41100a2a1e0a110a0a747261696e5f6c6f7373150000003f0a090a",
            "026c72156f12833a52c66bcc6c00000000000000f5dab0d709000010d0f04cda4110ac022a5e0a",
            "5c0a0773616d706c65732251080210031801224989504e470d0a1a0a0000000d49484452000000",
            "03000000020800000000b81f39c60000001049444154789c6360d0086060d70f07000352010616",
            "801fe50000000049454e44ae4260827d7b1788410000000000000000a9c2ab09000010d0f04cda",
            "4110d00f2a330a310a0773616d706c6573421c0807120412020801421220202020524f4d454f3a",
            "0a2020202068690a4a080a060a04746578746846112a",
        ));
        let png = unhex(&PNG.replace(' ', ""));
        let wall_time = 1_765_000_000.25;
        let events = [
            (0, Payload::FileVersion),
            (7, Payload::Restart),
            (
                10,
                Payload::Summary(scalars_summary(&[
                    ("train_loss".into(), 0.5),
                    ("lr".into(), 1e-3),
                ])),
            ),
            (300, Payload::Summary(png_summary("samples", &png).unwrap())),
            (
                2000,
                Payload::Summary(text_summary("samples", "ROMEO:\nhi")),
            ),
        ];
        let written: Vec<u8> = events
            .iter()
            .flat_map(|(step, payload)| record(&event(wall_time, *step, payload)))
            .collect();
        assert_eq!(written, expected);
    }

    #[test]
    fn png_headers_give_size_and_colorspace_and_other_bytes_are_refused() {
        let png = unhex(&PNG.replace(' ', ""));
        assert_eq!(png_header(&png).unwrap(), (3, 2, 1));
        let mut rgb = png.clone();
        rgb[25] = 2;
        assert_eq!(png_header(&rgb).unwrap(), (3, 2, 3));
        assert!(png_header(b"GIF89a not a png at all, but long enough").is_err());
    }

    /// The records of an event file, each one's CRCs checked.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let length = &bytes[at..at + 8];
            assert_eq!(le32(at + 8), masked_crc(length));
            let len = u64::from_le_bytes(length.try_into().unwrap()) as usize;
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(le32(at + 12 + len), masked_crc(data));
            out.push(data.to_vec());
            at += 16 + len;
        }
        out
    }

    /// An event's bytes after its wall time (9 bytes: key and f64).
    fn timeless(event: &[u8]) -> &[u8] {
        &event[9..]
    }

    #[test]
    fn a_file_appears_at_the_first_event_and_a_resumed_runs_sorts_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = EventWriter::new(dir.path());
        assert!(first.path().is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let losses = |loss: f64| vec![("train_loss".to_string(), loss)];
        first.scalars(1, &losses(2.0)).unwrap();
        first.scalars(2, &losses(1.0)).unwrap();
        let first_path = first.path().unwrap().to_path_buf();
        let written = records(&std::fs::read(&first_path).unwrap());
        let expected = [
            event(0.0, 0, &Payload::FileVersion),
            event(0.0, 1, &Payload::Summary(scalars_summary(&losses(2.0)))),
            event(0.0, 2, &Payload::Summary(scalars_summary(&losses(1.0)))),
        ];
        assert_eq!(written.len(), expected.len());
        for (written, expected) in written.iter().zip(&expected) {
            assert_eq!(timeless(written), timeless(expected));
        }
        // A resumed run's writer, started within the same second.
        let mut second = EventWriter::new(dir.path());
        second.restart_at(2);
        second.scalars(2, &losses(1.5)).unwrap();
        let second_path = second.path().unwrap();
        assert!(second_path.file_name() > first_path.file_name());
        let written = records(&std::fs::read(second_path).unwrap());
        assert_eq!(written.len(), 3);
        assert_eq!(
            timeless(&written[1]),
            timeless(&event(0.0, 2, &Payload::Restart))
        );
    }
}
