//! Files: the snapshot file format (header, checksum, optional keyed MAC), atomic writes and
//! bounded reads. Every file the library or the CLI writes goes through [`write_atomically`].
//!
//! # Snapshot file format (version 2)
//!
//! ```text
//! offset  size  content
//!      0     8  magic bytes  b"WASMBOX\x1a"
//!      8     4  format version, u32 little endian (FORMAT_VERSION)
//!     12     4  flags, u32 little endian: bit 0 = a MAC is present; other bits are zero
//!     16     8  content length in bytes, u64 little endian
//!     24     4  CRC-32 (IEEE) of the content, u32 little endian
//!     28     4  zero
//!     32    32  MAC: keyed BLAKE3 of (content, then bytes 0..32 of this header); zero if none
//!     64     …  content: the Snapshot encoded with bincode 1 (wasmbox::abi::options)
//! ```
//!
//! A **delta file** ([`encode_delta_file`]) has the same layout with the magic bytes
//! `b"WBDELTA\x1a"`, and a [`SnapshotDelta`] as its content, which names the id of the
//! snapshot it continues. Each kind of file is refused where the other is expected
//! ([`SnapshotError::WrongKind`]).
//!
//! The CRC detects damage (a torn write, a flipped bit). It does not detect tampering: anyone
//! can recompute it. The MAC does, for a host that holds the key ([`SnapshotKey`]): such a host
//! refuses files whose MAC is missing or wrong. Files are written to a temporary file in the
//! same directory, synced, and renamed over the target, so a crash or a full disk leaves either
//! the old file or the complete new one.

use crate::delta::SnapshotDelta;
use crate::error::{Error, SnapshotError};
use crate::snapshot::{FORMAT_VERSION, Snapshot, SnapshotView, check_version};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The first bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"WASMBOX\x1a";
/// The first bytes of every delta file.
pub const DELTA_MAGIC: [u8; 8] = *b"WBDELTA\x1a";

/// The two kinds of file, which share the layout and differ in magic and content.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Snapshot,
    Delta,
}

impl Kind {
    fn magic(self) -> [u8; 8] {
        match self {
            Kind::Snapshot => MAGIC,
            Kind::Delta => DELTA_MAGIC,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshot",
            Kind::Delta => "delta",
        }
    }

    fn other(self) -> Kind {
        match self {
            Kind::Snapshot => Kind::Delta,
            Kind::Delta => Kind::Snapshot,
        }
    }
}
const HEADER_LEN: usize = 64;
/// The part of the header the MAC covers (everything before the MAC itself).
const SEALED_HEADER: usize = 32;
const FLAG_MAC: u32 = 1;

/// A secret key that makes snapshot files tamper-evident: a host given one (see
/// [`WasmBoxBuilder::snapshot_key`](crate::WasmBoxBuilder::snapshot_key)) writes a keyed
/// BLAKE3 MAC into every snapshot file and refuses files whose MAC is missing or wrong.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotKey([u8; 32]);

impl SnapshotKey {
    /// A key from 32 secret bytes (e.g. from a secrets manager).
    pub fn from_bytes(key: [u8; 32]) -> Self {
        SnapshotKey(key)
    }

    /// A key derived from secret material of any length (a passphrase, a master key) with
    /// BLAKE3's key derivation, for the given application context string.
    pub fn derive(context: &str, material: &[u8]) -> Self {
        SnapshotKey(blake3::derive_key(context, material))
    }

    fn hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.0)
    }
}

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotKey(..)")
    }
}

/// Writes a file atomically: `fill` writes the content into a temporary file in the same
/// directory, which is then synced and renamed over `path` (and the directory synced).
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".wasmbox-tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    fill(tmp.as_file_mut()).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // Make the rename itself durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a file in one bulk read, allocating exactly the size it has when opened.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| io(std::io::Error::other(e)))?;
    if bytes.capacity() >= crate::snapshot::HUGE_BUFFERS_FROM {
        crate::snapshot::advise_huge_pages(bytes.as_ptr(), bytes.capacity(), true);
    }
    // Read what the file holds, never more than its size said.
    file.take(len).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Writes `value` (a [`Snapshot`] or a [`SnapshotView`]) as a snapshot file at `path`,
/// atomically, streaming it: memory goes straight from its source to the file.
pub(crate) fn write_file<T: Serialize>(
    path: &Path,
    value: &T,
    key: Option<&SnapshotKey>,
) -> Result<(), Error> {
    write_kind(Kind::Snapshot, path, value, key)
}

/// Writes a delta file at `path`, atomically.
pub(crate) fn write_delta_file(
    path: &Path,
    delta: &SnapshotDelta,
    key: Option<&SnapshotKey>,
) -> Result<(), Error> {
    write_kind(Kind::Delta, path, delta, key)
}

fn write_kind<T: Serialize>(
    kind: Kind,
    path: &Path,
    value: &T,
    key: Option<&SnapshotKey>,
) -> Result<(), Error> {
    write_atomically(path, |file| {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0; HEADER_LEN])?;
        let mut sealing = SealingWriter::new(&mut out, key);
        bincode::Options::serialize_into(wasmbox::abi::options(u64::MAX), &mut sealing, value)
            .map_err(|e| match *e {
                bincode::ErrorKind::Io(source) => source,
                other => std::io::Error::other(other.to_string()),
            })?;
        let header = sealing.header(kind);
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&header)?;
        out.flush()
    })
}

/// Encodes a snapshot into the file format, in memory, without a MAC.
pub fn encode_file(snapshot: &Snapshot) -> Vec<u8> {
    encode_file_keyed(snapshot, None)
}

/// Encodes a snapshot into the file format, in memory, with a MAC when `key` is given.
pub fn encode_file_keyed(snapshot: &Snapshot, key: Option<&SnapshotKey>) -> Vec<u8> {
    encode_kind(Kind::Snapshot, snapshot, key)
}

/// Encodes a delta into the delta file format, in memory, with a MAC when `key` is given.
pub fn encode_delta_file(delta: &SnapshotDelta, key: Option<&SnapshotKey>) -> Vec<u8> {
    encode_kind(Kind::Delta, delta, key)
}

/// Decodes the bytes of a delta file, checking magic, version, length, checksum and, with a
/// key, the MAC, as [`decode_file_keyed`] does for snapshots. A delta of another parent is
/// refused later, by [`Snapshot::apply`].
///
/// # Errors
/// A [`SnapshotError`] naming what is wrong ([`SnapshotError::WrongKind`] for a snapshot
/// file); never allocates more than `bytes.len()`.
pub fn decode_delta_file_keyed(
    bytes: &[u8],
    key: Option<&SnapshotKey>,
) -> Result<SnapshotDelta, SnapshotError> {
    decode_content(checked_content(Kind::Delta, bytes, key)?)
}

/// [`decode_delta_file_keyed`] without a key (a MAC, if present, is not checked).
///
/// # Errors
/// As [`decode_delta_file_keyed`].
pub fn decode_delta_file(bytes: &[u8]) -> Result<SnapshotDelta, SnapshotError> {
    decode_delta_file_keyed(bytes, None)
}

fn encode_kind<T: Serialize>(kind: Kind, value: &T, key: Option<&SnapshotKey>) -> Vec<u8> {
    let mut content = vec![0; HEADER_LEN];
    bincode::Options::serialize_into(wasmbox::abi::options(u64::MAX), &mut content, value)
        .unwrap_or_else(|e| unreachable!("snapshots and deltas always encode into a Vec: {e}"));
    let mut sealing = SealingWriter::new(std::io::sink(), key);
    sealing.absorb(&content[HEADER_LEN..]);
    content[..HEADER_LEN].copy_from_slice(&sealing.header(kind));
    content
}

/// Decodes the bytes of a snapshot file, checking magic, version, length and checksum. A MAC,
/// if present, is not checked (there is no key): see [`decode_file_keyed`].
///
/// # Errors
/// A [`SnapshotError`] naming what is wrong; never allocates more than `bytes.len()`.
pub fn decode_file(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    decode_file_keyed(bytes, None)
}

/// Like [`decode_file`], and with a key also checks the MAC: a file without one is refused
/// with [`SnapshotError::MacMissing`], a file whose MAC is wrong with
/// [`SnapshotError::MacMismatch`].
///
/// # Errors
/// As [`decode_file`], and the MAC errors.
pub fn decode_file_keyed(
    bytes: &[u8],
    key: Option<&SnapshotKey>,
) -> Result<Snapshot, SnapshotError> {
    decode_content(checked_content(Kind::Snapshot, bytes, key)?)
}

/// Decodes a snapshot file's bytes into a view borrowing its memory chunks from `bytes`.
pub(crate) fn decode_view<'a>(
    bytes: &'a [u8],
    key: Option<&SnapshotKey>,
) -> Result<SnapshotView<'a>, SnapshotError> {
    decode_content(checked_content(Kind::Snapshot, bytes, key)?)
}

fn decode_content<'a, T: Deserialize<'a>>(content: &'a [u8]) -> Result<T, SnapshotError> {
    bincode::Options::deserialize(wasmbox::abi::options(content.len() as u64), content)
        .map_err(|e| SnapshotError::Malformed(format!("the content does not decode: {e}")))
}

/// Computes the CRC (and the MAC, with a key) of the content as it is written.
struct SealingWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    mac: Option<blake3::Hasher>,
    len: u64,
}

impl<W> SealingWriter<W> {
    fn new(inner: W, key: Option<&SnapshotKey>) -> Self {
        SealingWriter {
            inner,
            crc: crc32fast::Hasher::new(),
            mac: key.map(SnapshotKey::hasher),
            len: 0,
        }
    }

    fn absorb(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        if let Some(mac) = &mut self.mac {
            mac.update(bytes);
        }
        self.len += bytes.len() as u64;
    }

    /// The header for the content absorbed so far.
    fn header(self, kind: Kind) -> [u8; HEADER_LEN] {
        let flags = if self.mac.is_some() { FLAG_MAC } else { 0 };
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&kind.magic());
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        h[16..24].copy_from_slice(&self.len.to_le_bytes());
        h[24..28].copy_from_slice(&self.crc.finalize().to_le_bytes());
        if let Some(mut mac) = self.mac {
            mac.update(&h[..SEALED_HEADER]);
            h[SEALED_HEADER..].copy_from_slice(mac.finalize().as_bytes());
        }
        h
    }
}

impl<W: Write> Write for SealingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.absorb(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a snapshot file's header says, read by [`read_header`] without decoding the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileHeader {
    /// The format version (the only one this library reads is
    /// [`FORMAT_VERSION`](crate::snapshot::FORMAT_VERSION)).
    pub version: u32,
    /// Whether the file carries a keyed MAC (it was written by a host with a [`SnapshotKey`]).
    pub has_mac: bool,
    /// Length of the content after the header, in bytes.
    pub content_len: u64,
    /// The CRC-32 (IEEE) of the content, as recorded.
    pub checksum: u32,
}

/// Reads the header of a snapshot file's bytes: checks magic, version, flags and that the file
/// has exactly the length the header announces, as [`decode_file`] does, without checking the
/// content's checksum or MAC or decoding it.
///
/// # Errors
/// The [`SnapshotError`] that [`decode_file`] would return for the same header fault.
///
/// # Examples
/// ```
/// use wasmbox_host::SnapshotError;
/// use wasmbox_host::snapshot::read_header;
///
/// assert!(matches!(read_header(b"WASMBOX"), Err(SnapshotError::Truncated { .. })));
/// assert!(matches!(read_header(b"hello"), Err(SnapshotError::NotASnapshot)));
/// ```
pub fn read_header(bytes: &[u8]) -> Result<FileHeader, SnapshotError> {
    split_file(Kind::Snapshot, bytes).map(|(header, _)| header)
}

/// Checks magic, version, flags and length, and returns what the header says and the content
/// after it. The one place the header is parsed.
fn split_file(kind: Kind, bytes: &[u8]) -> Result<(FileHeader, &[u8]), SnapshotError> {
    let magic = kind.magic();
    if bytes.starts_with(&kind.other().magic()) {
        return Err(SnapshotError::WrongKind {
            expected: kind.name(),
            found: kind.other().name(),
        });
    }
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != magic {
        // A prefix of the magic is a truncated snapshot, anything else is not one.
        if !bytes.is_empty() && magic.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) {
            return Err(SnapshotError::Truncated {
                found: bytes.len() as u64,
                expected: HEADER_LEN as u64,
            });
        }
        return Err(SnapshotError::NotASnapshot);
    }
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    // The version first: an older or newer file may have another header length.
    if let Some(version) = u32_at(8) {
        check_version(version)?;
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(SnapshotError::Truncated {
            found: bytes.len() as u64,
            expected: HEADER_LEN as u64,
        });
    };
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let flags = word(12);
    if flags & !FLAG_MAC != 0 || word(28) != 0 {
        return Err(SnapshotError::Malformed(format!(
            "the header has unknown flags {flags:#x}"
        )));
    }
    // The MAC field is zero exactly when the flags say there is no MAC (a real MAC is zero
    // with probability 2^-256): a flipped bit in it, or in the flag, is damage a host without
    // the key can still see.
    let mac_is_zero = header[SEALED_HEADER..].iter().all(|&b| b == 0);
    if (flags & FLAG_MAC != 0) == mac_is_zero {
        return Err(SnapshotError::Malformed(if mac_is_zero {
            "the header says a MAC follows, but its MAC field is zero".to_string()
        } else {
            "the header says there is no MAC, but its MAC field is not zero".to_string()
        }));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let len = u64::from_le_bytes(len);
    let content = &bytes[HEADER_LEN..];
    let have = content.len() as u64;
    if have < len {
        return Err(SnapshotError::Truncated {
            found: bytes.len() as u64,
            expected: len.saturating_add(HEADER_LEN as u64),
        });
    }
    if have > len {
        return Err(SnapshotError::TrailingBytes { extra: have - len });
    }
    let facts = FileHeader {
        version: word(8),
        has_mac: flags & FLAG_MAC != 0,
        content_len: len,
        checksum: word(24),
    };
    Ok((facts, content))
}

/// Checks the header ([`split_file`]), the checksum and (with a key) the MAC, and returns the
/// content after the header.
fn checked_content<'a>(
    kind: Kind,
    bytes: &'a [u8],
    key: Option<&SnapshotKey>,
) -> Result<&'a [u8], SnapshotError> {
    let (facts, content) = split_file(kind, bytes)?;
    let found_crc = crc32fast::hash(content);
    if found_crc != facts.checksum {
        return Err(SnapshotError::Checksum {
            expected: facts.checksum,
            found: found_crc,
        });
    }
    if let Some(key) = key {
        if !facts.has_mac {
            return Err(SnapshotError::MacMissing);
        }
        let mut mac = key.hasher();
        mac.update(content);
        mac.update(&bytes[..SEALED_HEADER]);
        // blake3::Hash compares in constant time.
        let recorded: [u8; 32] = bytes[SEALED_HEADER..HEADER_LEN]
            .try_into()
            .map_err(|_| SnapshotError::MacMismatch)?;
        if mac.finalize() != blake3::Hash::from_bytes(recorded) {
            return Err(SnapshotError::MacMismatch);
        }
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    #[test]
    fn accept_file_round_trip_with_and_without_key() {
        let s = sample();
        assert_eq!(decode_file(&encode_file(&s)).unwrap(), s);
        let key = SnapshotKey::from_bytes([3; 32]);
        let sealed = encode_file_keyed(&s, Some(&key));
        assert_eq!(decode_file_keyed(&sealed, Some(&key)).unwrap(), s);
        // Without a key, a sealed file reads as any other.
        assert_eq!(decode_file(&sealed).unwrap(), s);
    }

    #[test]
    fn accept_streamed_file_equals_encoded_file() {
        let s = sample();
        let dir = tempfile::tempdir().unwrap();
        let key = SnapshotKey::derive("wasmbox tests", b"secret");
        for key in [None, Some(&key)] {
            let path = dir.path().join("s.snap");
            write_file(&path, &s.view(), key).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), encode_file_keyed(&s, key));
        }
    }

    #[test]
    fn reject_missing_or_wrong_mac() {
        let s = sample();
        let key = SnapshotKey::from_bytes([3; 32]);
        let other = SnapshotKey::from_bytes([4; 32]);
        assert!(matches!(
            decode_file_keyed(&encode_file(&s), Some(&key)),
            Err(SnapshotError::MacMissing)
        ));
        assert!(matches!(
            decode_file_keyed(&encode_file_keyed(&s, Some(&other)), Some(&key)),
            Err(SnapshotError::MacMismatch)
        ));
        // Tampered content with a recomputed CRC: the CRC passes, the MAC does not.
        let mut forged = s.clone();
        forged.limits = crate::Limits::unlimited();
        let mut bytes = encode_file_keyed(&forged, None);
        let sealed = encode_file_keyed(&s, Some(&key));
        bytes[12..16].copy_from_slice(&FLAG_MAC.to_le_bytes());
        bytes[SEALED_HEADER..HEADER_LEN].copy_from_slice(&sealed[SEALED_HEADER..HEADER_LEN]);
        assert!(matches!(
            decode_file_keyed(&bytes, Some(&key)),
            Err(SnapshotError::MacMismatch)
        ));
        // Clearing the flag of a sealed file does not get it past the key either.
        let mut stripped = sealed.clone();
        stripped[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode_file_keyed(&stripped, Some(&key)).is_err());
    }

    #[test]
    fn accept_header_facts_with_and_without_key() {
        let s = sample();
        let plain = encode_file(&s);
        let header = read_header(&plain).unwrap();
        assert_eq!(header.version, FORMAT_VERSION);
        assert!(!header.has_mac);
        assert_eq!(header.content_len, (plain.len() - HEADER_LEN) as u64);
        assert_eq!(header.checksum, crc32fast::hash(&plain[HEADER_LEN..]));
        let key = SnapshotKey::from_bytes([3; 32]);
        assert!(
            read_header(&encode_file_keyed(&s, Some(&key)))
                .unwrap()
                .has_mac
        );
    }

    #[test]
    fn reject_header_faults_as_decode_file_does() {
        let good = encode_file(&sample());
        let mut truncated = good.clone();
        truncated.pop();
        let mut trailing = good.clone();
        trailing.push(0);
        let mut flags = good.clone();
        flags[12] = 2;
        for bytes in [&good[..10], &truncated, &trailing, &flags, &b"garbage"[..]] {
            let header = read_header(bytes).unwrap_err().to_string();
            assert_eq!(header, decode_file(bytes).unwrap_err().to_string());
        }
        // The header does not cover the content: a damaged content byte reads, and only the
        // full decode refuses it.
        let mut damaged = good;
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        assert!(read_header(&damaged).is_ok());
        assert!(matches!(
            decode_file(&damaged),
            Err(SnapshotError::Checksum { .. })
        ));
    }

    #[test]
    fn reject_unknown_flags_and_versions() {
        let mut bytes = encode_file(&sample());
        bytes[12] = 2;
        assert!(matches!(
            decode_file(&bytes),
            Err(SnapshotError::Malformed(_))
        ));
        let mut bytes = encode_file(&sample());
        bytes[8] = 1;
        assert!(matches!(
            decode_file(&bytes),
            Err(SnapshotError::Version { found: 1, .. })
        ));
    }
}
