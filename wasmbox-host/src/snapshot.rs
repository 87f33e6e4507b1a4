//! Snapshots: the plain-data form of a box's whole state, and their file format.
//!
//! # File format
//!
//! ```text
//! offset  size  content
//!      0     8  magic bytes  b"WASMBOX\x1a"
//!      8     4  format version, u32 little endian (FORMAT_VERSION)
//!     12     8  content length in bytes, u64 little endian
//!     20     4  CRC-32 (IEEE) of the content, u32 little endian
//!     24     …  content: the Snapshot encoded with bincode 1 (wasmbox::abi::options)
//! ```
//!
//! Files are written to a temporary file in the same directory, synced, and renamed over the
//! target, so a crash or a full disk leaves either the old file or the complete new one.

use crate::error::{Error, SnapshotError};
use crate::sandbox::Clock;
use crate::{Limits, PAGE_SIZE};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Version of the [`Snapshot`] layout and of the file format. A host refuses other versions.
pub const FORMAT_VERSION: u32 = 1;
/// The first bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"WASMBOX\x1a";
const HEADER_LEN: usize = 24;

/// A box's whole state as plain data: serialize it with any serde format, store it, and
/// restore it into any host of the same module, in this process or another.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Layout version of this struct ([`FORMAT_VERSION`] when taken by this library).
    pub format_version: u32,
    /// BLAKE3 hash of the original module bytes (before instrumentation). A snapshot restores
    /// only into a box of the module with this fingerprint.
    pub module_fingerprint: [u8; 32],
    /// The guest's linear memory.
    pub memory: MemoryImage,
    /// Every mutable global the module defines, in index order, including non-exported ones
    /// such as the stack pointer.
    pub globals: Vec<GlobalValue>,
    /// The box's clock.
    pub clock: Clock,
    /// The box's random generator, with its full state (seed, stream and position).
    pub rng: ChaCha20Rng,
    /// The limits the box ran under; a restored box keeps them.
    pub limits: Limits,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("format_version", &self.format_version)
            .field("module_fingerprint", &hex(&self.module_fingerprint))
            .field("memory", &self.memory)
            .field("globals", &self.globals)
            .field("clock", &self.clock)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The linear memory: its size and the content of every page that is not all zeros.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryImage {
    /// Size of the memory in 64 KiB pages.
    pub pages: u64,
    /// Runs of consecutive non-zero pages, sorted by offset and not overlapping. Every byte
    /// not covered by a chunk is zero.
    pub chunks: Vec<MemoryChunk>,
}

impl MemoryImage {
    /// Bytes held in chunks (the snapshot's size is about this).
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes.len() as u64).sum()
    }
}

/// Bytes of memory starting at an offset.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryChunk {
    /// Byte offset in the linear memory.
    pub offset: u64,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl fmt::Debug for MemoryChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MemoryChunk {{ offset: {:#x}, len: {} }}",
            self.offset,
            self.bytes.len()
        )
    }
}

/// The value of one mutable global, with its index in the module's global index space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalValue {
    /// Index of the global in the module.
    pub index: u32,
    /// Its value.
    pub value: Value,
}

/// A global's value; floats are kept as their bit patterns so that snapshots compare exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// `i32`.
    I32(i32),
    /// `i64`.
    I64(i64),
    /// `f32` bits.
    F32(u32),
    /// `f64` bits.
    F64(u64),
    /// `v128`.
    V128(u128),
}

/// A borrowed view with the same encoding as [`Snapshot`], so that a box's memory goes
/// straight from guest memory to a file without an intermediate copy.
#[derive(Serialize)]
pub(crate) struct SnapshotRef<'a> {
    pub format_version: u32,
    pub module_fingerprint: &'a [u8; 32],
    pub memory: MemoryImageRef<'a>,
    pub globals: &'a [GlobalValue],
    pub clock: &'a Clock,
    pub rng: &'a ChaCha20Rng,
    pub limits: &'a Limits,
}

#[derive(Serialize)]
pub(crate) struct MemoryImageRef<'a> {
    pub pages: u64,
    pub chunks: Vec<MemoryChunkRef<'a>>,
}

#[derive(Serialize)]
pub(crate) struct MemoryChunkRef<'a> {
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: &'a [u8],
}

/// Granularity at which all-zero memory is left out of snapshots: the host's 4 KiB page, finer
/// than wasm's 64 KiB page, so that a sparse box stores little more than what it uses.
const ZERO_BLOCK: usize = 4096;

/// A snapshot whose memory chunks borrow from elsewhere (a file's bytes, or a [`Snapshot`]):
/// what a restore reads. Decoding a file into it copies no memory.
#[derive(Deserialize)]
pub(crate) struct SnapshotView<'a> {
    pub format_version: u32,
    pub module_fingerprint: [u8; 32],
    #[serde(borrow)]
    pub memory: MemoryView<'a>,
    pub globals: Vec<GlobalValue>,
    pub clock: Clock,
    pub rng: ChaCha20Rng,
    pub limits: Limits,
}

#[derive(Deserialize)]
pub(crate) struct MemoryView<'a> {
    pub pages: u64,
    #[serde(borrow)]
    pub chunks: Vec<ChunkView<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChunkView<'a> {
    pub offset: u64,
    #[serde(borrow)]
    pub bytes: &'a [u8],
}

impl Snapshot {
    /// The borrowed view of this snapshot.
    pub(crate) fn view(&self) -> SnapshotView<'_> {
        SnapshotView {
            format_version: self.format_version,
            module_fingerprint: self.module_fingerprint,
            memory: MemoryView {
                pages: self.memory.pages,
                chunks: self
                    .memory
                    .chunks
                    .iter()
                    .map(|c| ChunkView {
                        offset: c.offset,
                        bytes: &c.bytes,
                    })
                    .collect(),
            },
            globals: self.globals.clone(),
            clock: self.clock,
            rng: self.rng.clone(),
            limits: self.limits,
        }
    }
}

/// Splits `memory` into runs of 4 KiB blocks that are not all zeros: `(offset, bytes)`.
pub(crate) fn nonzero_runs(memory: &[u8]) -> Vec<(u64, &[u8])> {
    let page = ZERO_BLOCK;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, chunk) in memory.chunks(page).enumerate() {
        if is_zero(chunk) {
            continue;
        }
        let start = i * page;
        match runs.last_mut() {
            Some((s, len)) if *s + *len == start => *len += chunk.len(),
            _ => runs.push((start, chunk.len())),
        }
    }
    runs.into_iter()
        .map(|(s, len)| (s as u64, &memory[s..s + len]))
        .collect()
}

fn is_zero(bytes: &[u8]) -> bool {
    // OR each 64-byte block together (vectorised), stopping at the first non-zero block.
    let mut blocks = bytes.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

/// Hex form of a fingerprint.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `value` (a [`Snapshot`] or [`SnapshotRef`]) as a snapshot file at `path`, atomically.
pub(crate) fn write_file<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".wasmbox-snapshot")
        .tempfile_in(dir)
        .map_err(io)?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        out.write_all(&[0; HEADER_LEN]).map_err(io)?;
        let mut hashing = CrcWriter {
            inner: &mut out,
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        bincode::Options::serialize_into(wasmbox::abi::options(u64::MAX), &mut hashing, value)
            .map_err(|e| match *e {
                bincode::ErrorKind::Io(source) => io(source),
                other => Error::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
        let (len, crc) = (hashing.len, hashing.crc.finalize());
        out.seek(SeekFrom::Start(0)).map_err(io)?;
        out.write_all(&header(len, crc)).map_err(io)?;
        out.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // Make the rename itself durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn header(len: u64, crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&len.to_le_bytes());
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a snapshot file in one bulk read, allocating exactly its size.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    // Read what the file holds, never more than its size says.
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|e| io(std::io::Error::other(e)))?;
    file.take(len).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Encodes a snapshot into the file format, in memory.
pub fn encode_file(snapshot: &Snapshot) -> Vec<u8> {
    let content = bincode::Options::serialize(wasmbox::abi::options(u64::MAX), snapshot)
        .unwrap_or_else(|e| unreachable!("a Snapshot always encodes: {e}"));
    let mut out = Vec::with_capacity(HEADER_LEN + content.len());
    out.extend_from_slice(&header(content.len() as u64, crc32fast::hash(&content)));
    out.extend_from_slice(&content);
    out
}

/// Decodes the bytes of a snapshot file, checking magic, version, length and checksum.
///
/// # Errors
/// A [`SnapshotError`] naming what is wrong; never allocates more than `bytes.len()`.
pub fn decode_file(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let content = checked_content(bytes)?;
    let snapshot: Snapshot = decode_content(content)?;
    check_version(snapshot.format_version)?;
    Ok(snapshot)
}

/// Decodes a snapshot file's bytes into a view borrowing its memory chunks from `bytes`.
pub(crate) fn decode_view(bytes: &[u8]) -> Result<SnapshotView<'_>, SnapshotError> {
    let view: SnapshotView<'_> = decode_content(checked_content(bytes)?)?;
    check_version(view.format_version)?;
    Ok(view)
}

fn decode_content<'a, T: Deserialize<'a>>(content: &'a [u8]) -> Result<T, SnapshotError> {
    bincode::Options::deserialize(wasmbox::abi::options(content.len() as u64), content)
        .map_err(|e| SnapshotError::Malformed(format!("the content does not decode: {e}")))
}

fn check_version(found: u32) -> Result<(), SnapshotError> {
    if found == FORMAT_VERSION {
        Ok(())
    } else {
        Err(SnapshotError::Version {
            found,
            supported: FORMAT_VERSION,
        })
    }
}

/// Checks magic, version, length and checksum, and returns the content after the header.
fn checked_content(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        // A prefix of the magic is a truncated snapshot, anything else is not one.
        if !bytes.is_empty() && MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) {
            return Err(SnapshotError::Truncated {
                found: bytes.len() as u64,
                expected: HEADER_LEN as u64,
            });
        }
        return Err(SnapshotError::NotASnapshot);
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(SnapshotError::Truncated {
            found: bytes.len() as u64,
            expected: HEADER_LEN as u64,
        });
    };
    let u32_at = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let len = u64::from_le_bytes(len);
    let expected_crc = u32_at(20);
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
    let found_crc = crc32fast::hash(content);
    if found_crc != expected_crc {
        return Err(SnapshotError::Checksum {
            expected: expected_crc,
            found: found_crc,
        });
    }
    Ok(content)
}

/// Checks that a snapshot's memory image is consistent in itself.
pub(crate) fn check_memory(image: &MemoryView<'_>) -> Result<(), SnapshotError> {
    let size = image
        .pages
        .checked_mul(PAGE_SIZE)
        .filter(|_| image.pages <= 65536)
        .ok_or_else(|| {
            SnapshotError::Malformed(format!(
                "{} pages is more than a 32-bit memory can have",
                image.pages
            ))
        })?;
    let mut end = 0u64;
    for chunk in &image.chunks {
        let chunk_end = chunk.offset.checked_add(chunk.bytes.len() as u64);
        match chunk_end {
            Some(e) if chunk.offset >= end && e <= size => end = e,
            _ => {
                return Err(SnapshotError::Malformed(format!(
                    "memory chunk at {:#x} ({} bytes) overlaps another or lies outside the {size}-byte memory",
                    chunk.offset,
                    chunk.bytes.len()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn sample() -> Snapshot {
        Snapshot {
            format_version: FORMAT_VERSION,
            module_fingerprint: [7; 32],
            memory: MemoryImage {
                pages: 2,
                chunks: vec![MemoryChunk {
                    offset: 65536,
                    bytes: vec![1, 2, 3],
                }],
            },
            globals: vec![GlobalValue {
                index: 0,
                value: Value::I32(1024),
            }],
            clock: Clock::default(),
            rng: ChaCha20Rng::seed_from_u64(1),
            limits: Limits::default(),
        }
    }

    #[test]
    fn file_round_trip() {
        let s = sample();
        assert_eq!(decode_file(&encode_file(&s)).unwrap(), s);
    }

    #[test]
    fn borrowed_view_encodes_like_the_owned_snapshot() {
        let s = sample();
        let view = SnapshotRef {
            format_version: s.format_version,
            module_fingerprint: &s.module_fingerprint,
            memory: MemoryImageRef {
                pages: s.memory.pages,
                chunks: s
                    .memory
                    .chunks
                    .iter()
                    .map(|c| MemoryChunkRef {
                        offset: c.offset,
                        bytes: &c.bytes,
                    })
                    .collect(),
            },
            globals: &s.globals,
            clock: &s.clock,
            rng: &s.rng,
            limits: &s.limits,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_file(&path, &view).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), encode_file(&s));
    }

    #[test]
    fn zero_blocks_are_skipped() {
        let mut mem = vec![0u8; 4 * PAGE_SIZE as usize];
        let p = PAGE_SIZE as usize;
        mem[p + 5] = 1;
        mem[p + 4096] = 1; // the next 4 KiB block: same run
        mem[2 * p] = 2; // a separate run
        let runs = nonzero_runs(&mem);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].0, runs[0].1.len()), (PAGE_SIZE, 8192));
        assert_eq!((runs[1].0, runs[1].1.len()), (2 * PAGE_SIZE, 4096));
    }

    #[test]
    fn rejects_overlapping_chunks() {
        let mut s = sample();
        s.memory.chunks.push(MemoryChunk {
            offset: 65537,
            bytes: vec![1],
        });
        assert!(check_memory(&s.view().memory).is_err());
        s.memory.chunks.pop();
        s.memory.chunks[0].offset = 2 * 65536 - 2;
        assert!(check_memory(&s.view().memory).is_err());
    }
}
