//! Deltas: what changed in a box since its last snapshot, and how a full snapshot rolls forward
//! by one.
//!
//! A [`SnapshotDelta`] (taken by `capture::capture_delta`) holds the 4 KiB blocks the change
//! tracker (`tracking.rs`) reports as possibly written since the box's last capture or restore
//! — written blocks as runs of bytes, blocks that became zero as ranges — with the memory's
//! new size and the complete small state (globals, clock, generator). It names the [`SnapshotId`] it continues, and
//! [`Snapshot::apply`] refuses it on any other snapshot, so a chain base + d1 + … + dn compacts
//! into one full snapshot equal, byte for byte, to the one the box would have given at dn.

use crate::PAGE_SIZE;
use crate::error::SnapshotError;
use crate::limits::Limits;
use crate::sandbox::Clock;
use crate::snapshot::{
    GlobalValue, MemoryChunk, Snapshot, SnapshotId, check_version, hex, is_zero,
};
use crate::tracking::BLOCK;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The state a box changed since its last snapshot (full, delta, or the snapshot it was
/// restored from): plain serde data, like [`Snapshot`]. Take one with
/// [`WasmBoxHost::snapshot_delta`](crate::WasmBoxHost::snapshot_delta) and roll a snapshot
/// forward with [`Snapshot::apply`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDelta {
    /// Layout version ([`FORMAT_VERSION`](crate::snapshot::FORMAT_VERSION) when taken by this
    /// library).
    pub format_version: u32,
    /// The module's fingerprint, as in [`Snapshot::module_fingerprint`].
    pub module_fingerprint: [u8; 32],
    /// The id of the snapshot this delta continues: the only one it applies to.
    pub parent: SnapshotId,
    /// The id of the state it leads to (the id of the snapshot `apply` produces).
    pub id: SnapshotId,
    /// The memory's size afterwards, in 64 KiB pages (never smaller than the parent's).
    pub pages: u64,
    /// Runs of 4 KiB blocks that may have been written and are not all zeros, with their
    /// content; sorted, block-aligned, not overlapping each other or `zeroed`.
    pub chunks: Vec<MemoryChunk>,
    /// Runs of 4 KiB blocks that may have been written and are now all zeros.
    pub zeroed: Vec<ZeroRange>,
    /// Every mutable global, as in [`Snapshot::globals`].
    pub globals: Vec<GlobalValue>,
    /// The box's clock.
    pub clock: Clock,
    /// The box's random generator.
    pub rng: ChaCha20Rng,
    /// The limits the box ran under, for the record (as in [`Snapshot::limits`]).
    pub limits: Limits,
}

/// A block-aligned range of memory that is all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZeroRange {
    /// Byte offset in the linear memory.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl SnapshotDelta {
    /// Bytes of memory content the delta carries.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes.len() as u64).sum()
    }

    /// How many 4 KiB blocks it says changed (written or zeroed).
    pub fn changed_blocks(&self) -> u64 {
        let zeroed: u64 = self.zeroed.iter().map(|z| z.len).sum();
        (self.stored_bytes() + zeroed) / BLOCK as u64
    }
}

impl fmt::Debug for SnapshotDelta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotDelta")
            .field("module_fingerprint", &hex(&self.module_fingerprint))
            .field("parent", &self.parent)
            .field("id", &self.id)
            .field("pages", &self.pages)
            .field("chunks", &self.chunks)
            .field("zeroed", &self.zeroed)
            .field("globals", &self.globals)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// One block-sized step of a delta, in offset order.
enum Op<'a> {
    Write(&'a [u8]),
    Zero,
}

impl Snapshot {
    /// Rolls this snapshot forward by `delta`, which must continue it (`delta.parent ==
    /// self.id`): afterwards it is the snapshot the box would have given when the delta was
    /// taken. Applying a chain base + d1 + … + dn in order compacts it into one snapshot.
    ///
    /// # Errors
    /// [`SnapshotError::WrongParent`] for a delta of another snapshot,
    /// [`SnapshotError::WrongModule`], [`SnapshotError::Version`], or
    /// [`SnapshotError::Malformed`] for a delta that is inconsistent in itself or with this
    /// snapshot (unaligned or overlapping blocks, blocks outside the memory, a memory that
    /// shrinks, other globals). In every error case the snapshot is unchanged.
    pub fn apply(&mut self, delta: &SnapshotDelta) -> Result<(), SnapshotError> {
        self.check_delta(delta)?;
        let ops = block_ops(delta);
        let old = aligned_chunks(std::mem::take(&mut self.memory.chunks));
        let mut out: Vec<MemoryChunk> = Vec::with_capacity(old.len() + delta.chunks.len());
        let mut ops = ops.into_iter().peekable();
        for mut chunk in old {
            let start = chunk.offset;
            let end = start + chunk.bytes.len() as u64;
            // Ops in the gap before this chunk.
            while let Some(&(at, _)) = ops.peek().filter(|(at, _)| *at < start) {
                if let Some((_, Op::Write(bytes))) = ops.next() {
                    push_slice(&mut out, at, bytes);
                }
            }
            // Ops inside it: writes in place; a zeroed block splits it.
            let mut zero_blocks = Vec::new();
            while let Some((at, op)) = ops.next_if(|(at, _)| *at < end) {
                let i = (at - start) as usize;
                match op {
                    Op::Write(bytes) => chunk.bytes[i..i + BLOCK].copy_from_slice(bytes),
                    Op::Zero => zero_blocks.push(i),
                }
            }
            if zero_blocks.is_empty() {
                push_chunk(&mut out, chunk);
            } else {
                let mut piece = 0;
                for z in zero_blocks.into_iter().chain([chunk.bytes.len()]) {
                    if z > piece {
                        push_slice(&mut out, start + piece as u64, &chunk.bytes[piece..z]);
                    }
                    piece = z + BLOCK;
                }
            }
        }
        for (at, op) in ops {
            if let Op::Write(bytes) = op {
                push_slice(&mut out, at, bytes);
            }
        }
        self.memory.chunks = out;
        self.memory.pages = delta.pages;
        self.id = delta.id;
        self.globals.clone_from(&delta.globals);
        self.clock = delta.clock;
        self.rng.clone_from(&delta.rng);
        self.limits = delta.limits;
        Ok(())
    }

    /// Everything `apply` relies on, checked before anything changes.
    fn check_delta(&self, delta: &SnapshotDelta) -> Result<(), SnapshotError> {
        check_version(delta.format_version)?;
        if delta.module_fingerprint != self.module_fingerprint {
            return Err(SnapshotError::WrongModule {
                expected: hex(&self.module_fingerprint),
                found: hex(&delta.module_fingerprint),
            });
        }
        if delta.parent != self.id {
            return Err(SnapshotError::WrongParent {
                parent: delta.parent.to_string(),
                found: self.id.to_string(),
            });
        }
        let malformed = |what: String| Err(SnapshotError::Malformed(format!("delta: {what}")));
        if delta.pages < self.memory.pages || delta.pages > 65536 {
            return malformed(format!(
                "a memory of {} pages cannot follow one of {}",
                delta.pages, self.memory.pages
            ));
        }
        let same_globals = delta.globals.len() == self.globals.len()
            && delta
                .globals
                .iter()
                .zip(&self.globals)
                .all(|(d, s)| d.index == s.index && d.value.kind() == s.value.kind());
        if !same_globals {
            return malformed("its globals are not the snapshot's".into());
        }
        let size = delta.pages * PAGE_SIZE;
        let mut ranges: Vec<(u64, u64)> = delta
            .chunks
            .iter()
            .map(|c| (c.offset, c.bytes.len() as u64))
            .chain(delta.zeroed.iter().map(|z| (z.offset, z.len)))
            .collect();
        let sorted = |r: &[(u64, u64)]| r.windows(2).all(|w| w[0].0 < w[1].0);
        let lists_sorted =
            sorted(&ranges[..delta.chunks.len()]) && sorted(&ranges[delta.chunks.len()..]);
        if !lists_sorted {
            return malformed("its blocks are not sorted".into());
        }
        ranges.sort_unstable();
        let mut end = 0;
        for &(offset, len) in &ranges {
            let block = BLOCK as u64;
            let fits = offset.is_multiple_of(block)
                && len.is_multiple_of(block)
                && len > 0
                && offset >= end
                && offset.checked_add(len).is_some_and(|e| e <= size);
            if !fits {
                return malformed(format!(
                    "the block run at {offset:#x} ({len} bytes) is unaligned, overlaps another or lies outside the {size}-byte memory"
                ));
            }
            end = offset + len;
        }
        Ok(())
    }
}

/// The delta's changes as one step per block, in offset order (the lists are checked sorted
/// and disjoint). A written block that is all zeros is a zeroing, so the result has the
/// canonical layout a capture gives.
fn block_ops(delta: &SnapshotDelta) -> Vec<(u64, Op<'_>)> {
    let mut ops: Vec<(u64, Op<'_>)> = Vec::new();
    for chunk in &delta.chunks {
        for (i, bytes) in chunk.bytes.chunks_exact(BLOCK).enumerate() {
            let at = chunk.offset + (i * BLOCK) as u64;
            ops.push((
                at,
                if is_zero(bytes) {
                    Op::Zero
                } else {
                    Op::Write(bytes)
                },
            ));
        }
    }
    for z in &delta.zeroed {
        ops.extend(
            (z.offset..z.offset + z.len)
                .step_by(BLOCK)
                .map(|at| (at, Op::Zero)),
        );
    }
    ops.sort_by_key(|(at, _)| *at);
    ops
}

/// Chunks widened to whole blocks (the bytes they add are zeros, as the image says), merging
/// chunks that share a block. Captured snapshots are already in blocks: then nothing moves.
fn aligned_chunks(chunks: Vec<MemoryChunk>) -> Vec<MemoryChunk> {
    let block = BLOCK as u64;
    let aligned = |c: &MemoryChunk| {
        c.offset.is_multiple_of(block) && (c.bytes.len() as u64).is_multiple_of(block)
    };
    if chunks.iter().all(aligned) {
        return chunks;
    }
    let mut out: Vec<MemoryChunk> = Vec::with_capacity(chunks.len());
    for c in chunks {
        let start = c.offset / block * block;
        let end = (c.offset + c.bytes.len() as u64).div_ceil(block) * block;
        let last_end = out.last().map(|l| l.offset + l.bytes.len() as u64);
        let target = match last_end {
            Some(e) if e > start => out.last_mut().map(|l| (l.offset, &mut l.bytes)),
            _ => {
                out.push(MemoryChunk {
                    offset: start,
                    bytes: Vec::new(),
                });
                out.last_mut().map(|l| (l.offset, &mut l.bytes))
            }
        };
        if let Some((base, bytes)) = target {
            bytes.resize((end - base) as usize, 0);
            let at = (c.offset - base) as usize;
            bytes[at..at + c.bytes.len()].copy_from_slice(&c.bytes);
        }
    }
    out
}

/// Appends `bytes` at `offset`, extending the last chunk when they are contiguous.
fn push_slice(out: &mut Vec<MemoryChunk>, offset: u64, bytes: &[u8]) {
    match out.last_mut() {
        Some(last) if last.offset + last.bytes.len() as u64 == offset => {
            last.bytes.extend_from_slice(bytes);
        }
        _ => out.push(MemoryChunk {
            offset,
            bytes: bytes.to_vec(),
        }),
    }
}

/// Appends a whole chunk, moving it unless it continues the last one.
fn push_chunk(out: &mut Vec<MemoryChunk>, chunk: MemoryChunk) {
    match out.last_mut() {
        Some(last) if last.offset + last.bytes.len() as u64 == chunk.offset => {
            last.bytes.extend_from_slice(&chunk.bytes);
        }
        _ => out.push(chunk),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;
    use crate::snapshot::{FORMAT_VERSION, MemoryImage, nonzero_runs};
    use proptest::prelude::*;

    /// The snapshot a capture of `memory` gives (canonical chunks).
    fn image_of(memory: &[u8]) -> MemoryImage {
        MemoryImage {
            pages: memory.len() as u64 / PAGE_SIZE,
            chunks: nonzero_runs(memory)
                .into_iter()
                .map(|c| MemoryChunk {
                    offset: c.offset,
                    bytes: c.bytes.to_vec(),
                })
                .collect(),
        }
    }

    /// The delta from `before` to `after` over `changed` blocks, as a capture builds it.
    fn delta_of(parent: &Snapshot, after: &[u8], changed: &[usize]) -> SnapshotDelta {
        let mut d = SnapshotDelta {
            format_version: FORMAT_VERSION,
            module_fingerprint: parent.module_fingerprint,
            parent: parent.id,
            id: parent.id.next(b"test", b""),
            pages: after.len() as u64 / PAGE_SIZE,
            chunks: Vec::new(),
            zeroed: Vec::new(),
            globals: parent.globals.clone(),
            clock: parent.clock,
            rng: parent.rng.clone(),
            limits: parent.limits,
        };
        for &b in changed {
            let at = (b * BLOCK) as u64;
            let bytes = &after[b * BLOCK..(b + 1) * BLOCK];
            if is_zero(bytes) {
                d.zeroed.push(ZeroRange {
                    offset: at,
                    len: BLOCK as u64,
                });
            } else {
                d.chunks.push(MemoryChunk {
                    offset: at,
                    bytes: bytes.to_vec(),
                });
            }
        }
        d
    }

    proptest! {
        #[test]
        fn accept_applied_deltas_equal_a_fresh_capture(
            pages in 1usize..4,
            grow in 0usize..3,
            writes in proptest::collection::vec((0usize..(6 * 16), any::<u8>(), 0usize..3), 0..40),
        ) {
            let mut before = vec![0u8; pages * PAGE_SIZE as usize];
            for (i, b) in before.iter_mut().enumerate() {
                if (i / BLOCK) % 3 == 1 { *b = (i % 251) as u8 + 1; }
            }
            let mut base = sample();
            base.memory = image_of(&before);
            let mut after = before.clone();
            after.resize((pages + grow) * PAGE_SIZE as usize, 0);
            let blocks = after.len() / BLOCK;
            let mut changed: Vec<usize> = Vec::new();
            for (block, value, kind) in writes {
                let block = block % blocks;
                let bytes = &mut after[block * BLOCK..(block + 1) * BLOCK];
                match kind {
                    0 => bytes.fill(0),             // zeroed
                    1 => bytes[value as usize * 7 % BLOCK] = value, // one byte
                    _ => {}                          // reported, written back unchanged
                }
                changed.push(block);
            }
            // Growth: every new block counts as changed.
            changed.extend(before.len() / BLOCK..blocks);
            changed.sort_unstable();
            changed.dedup();
            let delta = delta_of(&base, &after, &changed);
            let mut applied = base.clone();
            applied.apply(&delta).unwrap();
            let expected = image_of(&after);
            prop_assert_eq!(&applied.memory, &expected);
            prop_assert_eq!(applied.id, delta.id);
        }
    }

    #[test]
    fn reject_a_delta_of_another_parent_and_leave_the_snapshot() {
        let base = sample();
        let mut other = sample();
        other.id = SnapshotId([9; 16]);
        let delta = delta_of(&other, &vec![0u8; 2 * PAGE_SIZE as usize], &[0]);
        let mut target = base.clone();
        let err = target.apply(&delta).unwrap_err();
        assert!(matches!(err, SnapshotError::WrongParent { .. }), "{err}");
        assert_eq!(target, base);
    }

    #[test]
    fn reject_inconsistent_deltas_and_leave_the_snapshot() {
        let base = sample();
        let good = delta_of(&base, &vec![1u8; 2 * PAGE_SIZE as usize], &[0, 1, 17]);
        let mut cases: Vec<(&str, SnapshotDelta)> = Vec::new();
        let mut d = good.clone();
        d.chunks[0].offset = 100;
        cases.push(("unaligned", d));
        let mut d = good.clone();
        d.chunks[2].offset = 2 * PAGE_SIZE;
        cases.push(("outside", d));
        let mut d = good.clone();
        d.zeroed.push(ZeroRange {
            offset: 0,
            len: 4096,
        });
        cases.push(("overlap", d));
        let mut d = good.clone();
        d.chunks.swap(0, 2);
        cases.push(("unsorted", d));
        let mut d = good.clone();
        d.pages = 1;
        cases.push(("shrinks", d));
        let mut d = good.clone();
        d.globals.clear();
        cases.push(("globals", d));
        let mut d = good.clone();
        d.module_fingerprint = [0; 32];
        cases.push(("module", d));
        let mut d = good.clone();
        d.chunks[1].bytes.pop();
        cases.push(("partial block", d));
        for (name, delta) in cases {
            let mut target = base.clone();
            assert!(target.apply(&delta).is_err(), "{name} was accepted");
            assert_eq!(target, base, "{name} changed the snapshot");
        }
        let mut target = base.clone();
        target.apply(&good).unwrap();
    }

    #[test]
    fn accept_unaligned_chunks_of_a_hand_made_snapshot() {
        // `sample` has a 3-byte chunk at 64 KiB: writing the block after it must keep it.
        let mut base = sample();
        let mut memory = vec![0u8; 2 * PAGE_SIZE as usize];
        memory[4096..8192].fill(9);
        memory[65536..65539].copy_from_slice(&[1, 2, 3]);
        memory[65536 + 4096] = 4;
        let delta = delta_of(&base, &memory, &[17]);
        base.apply(&delta).unwrap();
        assert_eq!(base.memory, image_of(&memory));
    }
}
