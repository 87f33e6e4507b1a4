//! Capture: the one routine that reads a box's whole state. Every way of capturing goes
//! through [`capture`] — a snapshot value, into an existing snapshot, to a file, for a fork —
//! and differs only in where the borrowed view it returns is copied (or streamed) to. Deltas
//! (`delta.rs`) read only the blocks the change tracker reports.

use crate::PAGE_SIZE;
use crate::error::Error;
use crate::limits::Limits;
use crate::live::Live;
use crate::module::WasmBoxModule;
use crate::snapshot::{FORMAT_VERSION, MemoryView, SnapshotView, nonzero_runs};

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
