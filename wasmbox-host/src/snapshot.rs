//! Snapshots: the plain-data form of a box's whole state, and the borrowed view every capture
//! produces and every restore consumes.
//!
//! [`Snapshot`] owns its memory; [`SnapshotView`] has the same fields and the same encoding but
//! borrows its memory chunks — from a live box's memory (a capture), from a file's bytes (a
//! decoded file) or from a [`Snapshot`]. The file format is in [`crate::file`] and re-exported
//! here ([`encode_file`], [`decode_file`], [`read_header`], ...).

use crate::PAGE_SIZE;
use crate::error::{Error, SnapshotError};
use crate::limits::Limits;
use crate::sandbox::Clock;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use wasmtime::Val;

pub use crate::file::{
    DELTA_MAGIC, FileHeader, MAGIC, SnapshotKey, decode_delta_file, decode_delta_file_keyed,
    decode_file, decode_file_keyed, encode_delta_file, encode_file, encode_file_keyed, read_header,
};

/// Version of the [`Snapshot`] layout and of the file format. A host refuses other versions.
pub const FORMAT_VERSION: u32 = 3;

/// A box's whole state as plain data: serialize it with any serde format, store it, and
/// restore it into any host of the same module, in this process or another.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Layout version of this struct ([`FORMAT_VERSION`] when taken by this library).
    pub format_version: u32,
    /// BLAKE3 hash of the original module bytes (before instrumentation). A snapshot restores
    /// only into a box of the module with this fingerprint.
    pub module_fingerprint: [u8; 32],
    /// Which state this is: a delta names the id of the snapshot it continues (its parent),
    /// and [`Snapshot::apply`](crate::Snapshot::apply) refuses a delta of another parent. See
    /// [`SnapshotId`].
    pub id: SnapshotId,
    /// The guest's linear memory.
    pub memory: MemoryImage,
    /// Every mutable global the module defines, in index order, including non-exported ones
    /// such as the stack pointer.
    pub globals: Vec<GlobalValue>,
    /// The box's clock.
    pub clock: Clock,
    /// The box's random generator, with its full state (seed, stream and position).
    pub rng: ChaCha20Rng,
    /// The limits the box ran under when it was captured, for the record. A restore never
    /// adopts them: the restoring host's own limits always apply.
    pub limits: Limits,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("format_version", &self.format_version)
            .field("module_fingerprint", &hex(&self.module_fingerprint))
            .field("id", &self.id)
            .field("memory", &self.memory)
            .field("globals", &self.globals)
            .field("clock", &self.clock)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The identity of a box's state, carried by snapshots and deltas.
///
/// It names the state's history, not its bytes: a new box's id is derived from its module,
/// seed, start time and codec, and each event that can change the state (a message, with its
/// encoded input; a clock change) derives the next id from the previous one and the event, as
/// a chain of 128-bit xxh3 hashes. A box is deterministic, so equal ids mean equal states:
/// two boxes that received the same history — in one process or in two, straight through or
/// restored and replayed — have the same id, and a restored, forked or rolled-back box has the
/// id of the state it went back to. Computing it costs a hash of each input, never a pass over
/// memory. It is a check against mistakes (a delta applied to the wrong snapshot), not against
/// tampering: for that, seal files with a [`SnapshotKey`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotId(pub [u8; 16]);

impl SnapshotId {
    /// The id of a new box's state, before any message.
    pub(crate) fn new_box(
        fingerprint: &[u8; 32],
        seed: u64,
        start_millis: u64,
        codec: u32,
    ) -> Self {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(b"wasmbox new box");
        h.update(fingerprint);
        h.update(&seed.to_le_bytes());
        h.update(&start_millis.to_le_bytes());
        h.update(&codec.to_le_bytes());
        SnapshotId(h.digest128().to_le_bytes())
    }

    /// The id after an event: `kind` says what happened, `data` its content.
    pub(crate) fn next(self, kind: &[u8], data: &[u8]) -> Self {
        // The hash of the concatenation; small events (most messages) in one call on the
        // stack, which is the same hash without the streaming state's setup.
        let mut small = [0u8; 128];
        let len = 16 + 8 + kind.len() + data.len();
        if len <= small.len() {
            small[..16].copy_from_slice(&self.0);
            small[16..24].copy_from_slice(&(kind.len() as u64).to_le_bytes());
            small[24..24 + kind.len()].copy_from_slice(kind);
            small[24 + kind.len()..len].copy_from_slice(data);
            return SnapshotId(xxhash_rust::xxh3::xxh3_128(&small[..len]).to_le_bytes());
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.0);
        h.update(&(kind.len() as u64).to_le_bytes());
        h.update(kind);
        h.update(data);
        SnapshotId(h.digest128().to_le_bytes())
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({self})")
    }
}

/// The linear memory: its size and the content of every page that is not all zeros.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryImage {
    /// Size of the memory in 64 KiB pages.
    pub pages: u64,
    /// Runs of consecutive non-zero 4 KiB blocks, sorted by offset and not overlapping. Every
    /// byte not covered by a chunk is zero.
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

/// The value types a snapshot can hold: the numeric ones. The load-time pass refuses modules
/// with mutable globals of any other type, so a box never holds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ValKind {
    I32,
    I64,
    F32,
    F64,
    V128,
}

impl Value {
    /// The snapshot form of a wasmtime value; `None` for references, which a snapshot cannot
    /// hold.
    pub(crate) fn from_val(val: Val) -> Option<Value> {
        Some(match val {
            Val::I32(v) => Value::I32(v),
            Val::I64(v) => Value::I64(v),
            Val::F32(v) => Value::F32(v),
            Val::F64(v) => Value::F64(v),
            Val::V128(v) => Value::V128(v.as_u128()),
            _ => return None,
        })
    }

    /// The wasmtime form of this value.
    pub(crate) fn to_val(self) -> Val {
        match self {
            Value::I32(v) => Val::I32(v),
            Value::I64(v) => Val::I64(v),
            Value::F32(v) => Val::F32(v),
            Value::F64(v) => Val::F64(v),
            Value::V128(v) => Val::V128(v.into()),
        }
    }

    /// This value's type.
    pub(crate) fn kind(self) -> ValKind {
        match self {
            Value::I32(_) => ValKind::I32,
            Value::I64(_) => ValKind::I64,
            Value::F32(_) => ValKind::F32,
            Value::F64(_) => ValKind::F64,
            Value::V128(_) => ValKind::V128,
        }
    }
}

// A snapshot whose memory chunks borrow from elsewhere. Invariants: it has exactly the fields
// of `Snapshot`, in the same order, with the same serde attributes, so the two encode to the
// same bytes (a unit test checks it). Captures produce it (borrowing the live memory), file
// decoding produces it (borrowing the file's bytes), and every restore consumes it.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotView<'a> {
    pub format_version: u32,
    pub module_fingerprint: [u8; 32],
    pub id: SnapshotId,
    #[serde(borrow)]
    pub memory: MemoryView<'a>,
    pub globals: Vec<GlobalValue>,
    pub clock: Clock,
    pub rng: ChaCha20Rng,
    pub limits: Limits,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct MemoryView<'a> {
    pub pages: u64,
    #[serde(borrow)]
    pub chunks: Vec<ChunkView<'a>>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ChunkView<'a> {
    pub offset: u64,
    #[serde(borrow, with = "serde_bytes")]
    pub bytes: &'a [u8],
}

impl Snapshot {
    /// The borrowed view of this snapshot.
    pub(crate) fn view(&self) -> SnapshotView<'_> {
        SnapshotView {
            format_version: self.format_version,
            module_fingerprint: self.module_fingerprint,
            id: self.id,
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

impl SnapshotView<'_> {
    /// An owned copy.
    pub(crate) fn to_snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            format_version: self.format_version,
            module_fingerprint: self.module_fingerprint,
            id: self.id,
            memory: MemoryImage {
                pages: 0,
                chunks: Vec::with_capacity(self.memory.chunks.len()),
            },
            globals: Vec::new(),
            clock: self.clock,
            rng: self.rng.clone(),
            limits: self.limits,
        };
        self.copy_into(&mut snapshot);
        snapshot
    }

    /// Overwrites `target` with this view, reusing `target`'s chunk buffers in order: in time
    /// linear in the number of chunks, and without allocating when the layout is unchanged
    /// (as from one message to the next).
    pub(crate) fn copy_into(&self, target: &mut Snapshot) {
        let mut spare = std::mem::take(&mut target.memory.chunks).into_iter();
        let chunks = self
            .memory
            .chunks
            .iter()
            .map(|chunk| {
                let mut bytes = spare.next().map(|c| c.bytes).unwrap_or_default();
                bytes.clear();
                if bytes.capacity() < chunk.bytes.len() {
                    bytes = fresh_buffer(chunk.bytes.len());
                }
                bytes.extend_from_slice(chunk.bytes);
                MemoryChunk {
                    offset: chunk.offset,
                    bytes,
                }
            })
            .collect();
        target.memory.chunks = chunks;
        target.memory.pages = self.memory.pages;
        target.format_version = self.format_version;
        target.module_fingerprint = self.module_fingerprint;
        target.id = self.id;
        target.globals.clear();
        target.globals.extend_from_slice(&self.globals);
        target.clock = self.clock;
        target.rng.clone_from(&self.rng);
        target.limits = self.limits;
    }
}

/// Buffers from this size on are allocated on huge pages. It is glibc's largest threshold for
/// serving an allocation from its own mapping, so the advice goes away with the buffer instead
/// of staying on the heap.
pub(crate) const HUGE_BUFFERS_FROM: usize = 32 << 20;

/// Asks for huge pages under `[ptr, ptr + len)` (`huge`), or for none from now on (see
/// `sys::advise_huge_pages`); nothing off Linux.
pub(crate) fn advise_huge_pages(ptr: *const u8, len: usize, huge: bool) {
    #[cfg(target_os = "linux")]
    crate::sys::advise_huge_pages(ptr, len, huge);
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len, huge);
}

/// An empty buffer with room for `capacity` bytes, on huge pages if it is large.
pub(crate) fn fresh_buffer(capacity: usize) -> Vec<u8> {
    let bytes = Vec::with_capacity(capacity);
    if capacity >= HUGE_BUFFERS_FROM {
        advise_huge_pages(bytes.as_ptr(), bytes.capacity(), true);
    }
    bytes
}

/// Granularity at which all-zero memory is left out of snapshots: the host's 4 KiB page, finer
/// than wasm's 64 KiB page, so that a sparse box stores little more than what it uses. It is
/// also the granularity of change tracking and deltas.
const ZERO_BLOCK: usize = crate::tracking::BLOCK;

/// Splits `memory` into runs of 4 KiB blocks that are not all zeros.
pub(crate) fn nonzero_runs(memory: &[u8]) -> Vec<ChunkView<'_>> {
    nonzero_ranges(memory)
        .into_iter()
        .map(|r| ChunkView {
            offset: r.start as u64,
            bytes: &memory[r],
        })
        .collect()
}

/// The byte ranges of [`nonzero_runs`].
pub(crate) fn nonzero_ranges(memory: &[u8]) -> Vec<std::ops::Range<usize>> {
    nonzero_ranges_among(memory, 0..memory.len().div_ceil(ZERO_BLOCK))
}

/// The same runs among the given blocks only (ascending; those past the memory's end are
/// ignored): the others are known to be zero.
pub(crate) fn nonzero_ranges_among(
    memory: &[u8],
    blocks: impl IntoIterator<Item = usize>,
) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for i in blocks {
        let start = i * ZERO_BLOCK;
        let Some(block) = memory.get(start..memory.len().min(start + ZERO_BLOCK)) else {
            break;
        };
        if block.is_empty() || is_zero(block) {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.end == start => r.end += block.len(),
            _ => runs.push(start..start + block.len()),
        }
    }
    runs
}

pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    // OR each 64-byte block together (vectorised), stopping at the first non-zero block.
    let mut blocks = bytes.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

/// Lowercase hex, the form in which fingerprints (and generator seeds) are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a format version: the one place where versions are compared.
pub(crate) fn check_version(found: u32) -> Result<(), SnapshotError> {
    if found == FORMAT_VERSION {
        Ok(())
    } else {
        Err(SnapshotError::Version {
            found,
            supported: FORMAT_VERSION,
        })
    }
}

/// Checks that a snapshot's memory image is consistent in itself: a size a 32-bit memory can
/// have, chunks sorted, not overlapping and inside it.
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

/// The error for a global whose value a snapshot cannot hold.
pub(crate) fn unsupported_global(index: u32) -> Error {
    Error::NotAGuest(format!(
        "global {index} holds a reference, which a snapshot cannot hold"
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn accept_ids_hash_the_event_whatever_its_size() {
        // The small-event path must give the streaming hash of the same bytes: ids are
        // stored, and a durable box recomputes them on recovery.
        let start = SnapshotId([7; 16]);
        for len in [0usize, 1, 16, 88, 89, 90, 100, 200, 5000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&start.0);
            h.update(&(b"message bincode".len() as u64).to_le_bytes());
            h.update(b"message bincode");
            h.update(&data);
            let streamed = SnapshotId(h.digest128().to_le_bytes());
            assert_eq!(
                start.next(b"message bincode", &data),
                streamed,
                "{len} bytes"
            );
        }
    }
    use rand_core::SeedableRng;

    pub(crate) fn sample() -> Snapshot {
        Snapshot {
            format_version: FORMAT_VERSION,
            module_fingerprint: [7; 32],
            id: SnapshotId([1; 16]),
            memory: MemoryImage {
                pages: 2,
                chunks: vec![
                    MemoryChunk {
                        offset: 4096,
                        bytes: vec![9; 4096],
                    },
                    MemoryChunk {
                        offset: 65536,
                        bytes: vec![1, 2, 3],
                    },
                ],
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
    fn accept_view_encodes_like_the_owned_snapshot() {
        let s = sample();
        let options = wasmbox::abi::options(u64::MAX);
        let owned = bincode::Options::serialize(options, &s).unwrap();
        let view = bincode::Options::serialize(options, &s.view()).unwrap();
        assert_eq!(owned, view);
        assert_eq!(s.view().to_snapshot(), s);
    }

    #[test]
    fn accept_copy_into_any_previous_snapshot() {
        let s = sample();
        let mut bigger = sample();
        bigger.memory.chunks.push(MemoryChunk {
            offset: 70000,
            bytes: vec![5; 10],
        });
        bigger.globals.push(GlobalValue {
            index: 1,
            value: Value::I64(3),
        });
        s.view().copy_into(&mut bigger);
        assert_eq!(bigger, s);
        let mut empty = sample();
        empty.memory.chunks.clear();
        s.view().copy_into(&mut empty);
        assert_eq!(empty, s);
    }

    #[test]
    fn accept_zero_blocks_are_skipped() {
        let mut mem = vec![0u8; 4 * PAGE_SIZE as usize];
        let p = PAGE_SIZE as usize;
        mem[p + 5] = 1;
        mem[p + 4096] = 1; // the next 4 KiB block: same run
        mem[2 * p] = 2; // a separate run
        let runs = nonzero_runs(&mem);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].offset, runs[0].bytes.len()), (PAGE_SIZE, 8192));
        assert_eq!((runs[1].offset, runs[1].bytes.len()), (2 * PAGE_SIZE, 4096));
    }

    #[test]
    fn reject_overlapping_chunks() {
        let mut s = sample();
        s.memory.chunks.push(MemoryChunk {
            offset: 65537,
            bytes: vec![1],
        });
        assert!(check_memory(&s.view().memory).is_err());
        s.memory.chunks.pop();
        s.memory.chunks[1].offset = 2 * 65536 - 2;
        assert!(check_memory(&s.view().memory).is_err());
    }

    #[test]
    fn accept_values_round_trip_through_wasmtime() {
        for v in [
            Value::I32(-1),
            Value::I64(1 << 40),
            Value::F32(f32::NAN.to_bits() | 1),
            Value::F64(0x7ff8_0000_0000_0001),
            Value::V128(u128::MAX - 5),
        ] {
            assert_eq!(Value::from_val(v.to_val()), Some(v));
        }
        assert_eq!(Value::from_val(Val::ExternRef(None)), None);
    }
}
