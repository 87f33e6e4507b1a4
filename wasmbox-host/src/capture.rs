//! Capture: the one routine that reads a box's whole state. Every way of capturing goes
//! through [`capture`] — a snapshot value, into an existing snapshot, to a file, for a fork —
//! and differs only in where the borrowed view it returns is copied (or streamed) to.
//! [`capture_delta`] reads only the blocks the change tracker reports (a `SnapshotDelta`).

use crate::PAGE_SIZE;
use crate::delta::{SnapshotDelta, ZeroRange};
use crate::error::Error;
use crate::limits::Limits;
use crate::live::Live;
use crate::module::WasmBoxModule;
use crate::snapshot::{
    ChunkView, FORMAT_VERSION, MemoryChunk, MemoryView, SnapshotView, is_zero, nonzero_ranges,
    nonzero_ranges_among,
};
use crate::tracking::{BLOCK, Blocks, ChangeTracking};

/// The box's whole state, borrowing its memory: every mutable global, the memory's size and
/// non-zero 4 KiB blocks, the clock, the generator, and the limits it runs under. With
/// `baseline`, it becomes the parent of the box's next delta.
///
/// With the kernel's change tracking, only the blocks that may be non-zero are read
/// ([`Live::nonzero`] plus what one scan of the page tables reports; before the tracker is
/// armed nothing was written since the instance was made, so no scan is needed): the cost
/// follows the memory in use, not the memory's size. With hash tracking the whole memory is
/// read, as a hash pass would cost as much (those boxes are also the reference the tests
/// compare the kernel's with).
///
/// # Errors
/// If a global holds a value a snapshot cannot hold (the load-time pass refuses such modules),
/// or the kernel's tracking was required and fails.
pub(crate) fn capture<'a>(
    live: &'a mut Live,
    module: &WasmBoxModule,
    limits: &Limits,
    baseline: bool,
) -> Result<SnapshotView<'a>, Error> {
    let kernel = live.tracker.method() == ChangeTracking::Kernel;
    if baseline || (kernel && live.tracker.is_armed()) {
        live.collect_changes()?;
    }
    // The kernel's tracker may have fallen back to hashes in `collect_changes`.
    let runs = if kernel && live.tracker.method() == ChangeTracking::Kernel {
        candidate_runs(live)
    } else {
        nonzero_ranges(live.memory.data(&live.store))
    };
    if baseline {
        live.mark_captured();
    }
    let globals = live.read_globals(module)?;
    let live = &*live;
    let data = live.memory.data(&live.store);
    let state = live.store.data();
    Ok(SnapshotView {
        format_version: FORMAT_VERSION,
        module_fingerprint: module.inner.fingerprint,
        id: live.id,
        memory: MemoryView {
            pages: data.len() as u64 / PAGE_SIZE,
            chunks: runs
                .into_iter()
                .map(|r| ChunkView {
                    offset: r.start as u64,
                    bytes: &data[r],
                })
                .collect(),
        },
        globals,
        clock: state.clock,
        rng: state.rng.clone(),
        limits: *limits,
    })
}

/// The runs of non-zero blocks among those that may be non-zero (`nonzero` and `changed`), as
/// byte ranges — the same runs [`nonzero_ranges`] finds in the whole memory — which then become
/// `nonzero`, exactly. The tracker must have reported every write.
fn candidate_runs(live: &mut Live) -> Vec<std::ops::Range<usize>> {
    let mut candidates = live.changed.clone();
    candidates.union(live.nonzero());
    let runs = nonzero_ranges_among(live.memory.data(&live.store), candidates.iter());
    *live.nonzero() = Blocks::covering(runs.iter().map(|r| r.start as u64..r.end as u64));
    runs
}

/// The delta of a live box since its last capture, which it then becomes: the blocks the
/// tracker reports, read from memory.
pub(crate) fn capture_delta(
    live: &mut Live,
    module: &WasmBoxModule,
    limits: &Limits,
) -> Result<SnapshotDelta, Error> {
    live.collect_changes()?;
    let globals = live.read_globals(module)?;
    let data = live.memory.data(&live.store);
    let blocks = data.len() / BLOCK;
    let mut chunks: Vec<MemoryChunk> = Vec::new();
    let mut zeroed: Vec<ZeroRange> = Vec::new();
    for block in live.changed.iter().take_while(|&b| b < blocks) {
        let offset = block * BLOCK;
        let bytes = &data[offset..offset + BLOCK];
        if is_zero(bytes) {
            match zeroed.last_mut() {
                Some(z) if z.offset + z.len == offset as u64 => z.len += BLOCK as u64,
                _ => zeroed.push(ZeroRange {
                    offset: offset as u64,
                    len: BLOCK as u64,
                }),
            }
        } else {
            match chunks.last_mut() {
                Some(c) if c.offset + c.bytes.len() as u64 == offset as u64 => {
                    c.bytes.extend_from_slice(bytes);
                }
                _ => chunks.push(MemoryChunk {
                    offset: offset as u64,
                    bytes: bytes.to_vec(),
                }),
            }
        }
    }
    let state = live.store.data();
    let delta = SnapshotDelta {
        format_version: FORMAT_VERSION,
        module_fingerprint: module.inner.fingerprint,
        parent: live.baseline,
        id: live.id,
        pages: data.len() as u64 / PAGE_SIZE,
        chunks,
        zeroed,
        globals,
        clock: state.clock,
        rng: state.rng.clone(),
        limits: *limits,
    };
    live.mark_captured();
    Ok(delta)
}

/// Undoes the bookkeeping of a delta nobody received: its blocks count as changed again and
/// its parent is the baseline again, so the next delta continues the same snapshot.
pub(crate) fn take_back(live: &mut Live, delta: &SnapshotDelta) {
    let block = BLOCK as u64;
    let ranges = delta
        .chunks
        .iter()
        .map(|c| (c.offset, c.bytes.len() as u64))
        .chain(delta.zeroed.iter().map(|z| (z.offset, z.len)));
    for (offset, len) in ranges {
        live.changed
            .insert_range((offset / block) as usize..(offset + len).div_ceil(block) as usize);
    }
    live.baseline = delta.parent;
}
