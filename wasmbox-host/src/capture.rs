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
    FORMAT_VERSION, MemoryChunk, MemoryView, SnapshotView, is_zero, nonzero_runs,
};
use crate::tracking::BLOCK;

/// The box's whole state, borrowing its memory: every mutable global, the memory's size and
/// non-zero 4 KiB blocks, the clock, the generator, and the limits it runs under.
///
/// # Errors
/// If a global holds a value a snapshot cannot hold (the load-time pass refuses such modules).
pub(crate) fn capture<'a>(
    live: &'a mut Live,
    module: &WasmBoxModule,
    limits: &Limits,
) -> Result<SnapshotView<'a>, Error> {
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
            chunks: nonzero_runs(data),
        },
        globals,
        clock: state.clock,
        rng: state.rng.clone(),
        limits: *limits,
    })
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
