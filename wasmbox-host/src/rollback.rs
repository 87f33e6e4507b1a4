//! Rollback: with `rollback_on_trap`, what a box keeps so that a failed message can be undone,
//! at a cost that follows the blocks the message wrote.
//!
//! The box keeps a copy of its memory as it was before the current message (the *shadow*),
//! kept equal to the memory between messages by copying in only the blocks each message wrote
//! — the change tracker (`tracking.rs`) names them. Before a message it saves the small state
//! (globals, clock, generator, state id). When the message fails, the blocks it wrote are
//! copied back from the shadow, in place, and the small state is put back; only a message that
//! grew the memory (which cannot shrink in place) is undone by restoring the shadow into a
//! fresh instance. The shadow is filled once, with a full copy, before the first message after
//! the box starts or is restored.

use crate::error::Error;
use crate::live::Live;
use crate::module::WasmBoxModule;
use crate::sandbox::Clock;
use crate::snapshot::{GlobalValue, MemoryView, SnapshotId, SnapshotView, nonzero_runs};
use crate::tracking::{BLOCK, Blocks};
use crate::{PAGE_SIZE, limits::Limits};
use rand_chacha::ChaCha20Rng;

/// What undoes the current message.
#[derive(Default)]
pub(crate) struct Undo {
    /// The memory before the current message; meaningful when `valid`.
    shadow: Vec<u8>,
    /// Whether `shadow` equals the live memory as of the tracker's last scan.
    valid: bool,
    /// The small state before the current message, while one runs.
    saved: Option<Saved>,
    /// Blocks the current message wrote (reused).
    written: Blocks,
}

struct Saved {
    globals: Vec<GlobalValue>,
    clock: Clock,
    rng: ChaCha20Rng,
    id: SnapshotId,
}

impl std::fmt::Debug for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Undo")
            .field("shadow_bytes", &self.shadow.len())
            .field("valid", &self.valid)
            .finish_non_exhaustive()
    }
}

impl Undo {
    /// The live memory changed other than by a message (a restore): the shadow is stale.
    pub fn invalidate(&mut self) {
        self.valid = false;
        self.saved = None;
    }

    /// Whether a message is under way (between `before` and `succeeded`/`failed`).
    pub fn in_message(&self) -> bool {
        self.saved.is_some()
    }

    /// Before a message: the shadow equals the memory, the small state is saved.
    pub fn before(&mut self, live: &mut Live, module: &WasmBoxModule) -> Result<(), Error> {
        live.arm_tracking()?;
        if !self.valid {
            // Account for anything not yet scanned, then take the full copy.
            live.collect_changes()?;
            let data = live.memory.data(&live.store);
            self.shadow.clear();
            self.shadow.extend_from_slice(data);
            self.valid = true;
        }
        let state = live.store.data();
        let (clock, rng) = (state.clock, state.rng.clone());
        self.saved = Some(Saved {
            globals: live.read_globals(module)?,
            clock,
            rng,
            id: live.id,
        });
        Ok(())
    }

    /// After a message that succeeded: the blocks it wrote go into the shadow.
    pub fn succeeded(&mut self, live: &mut Live) -> Result<(), Error> {
        self.saved = None;
        self.written.clear();
        let data = live.memory.data(&live.store);
        if let Err(e) = live.tracker.collect(data, &mut self.written) {
            self.valid = false;
            return Err(e);
        }
        live.changed.union(&self.written);
        if self.shadow.len() < data.len() {
            self.shadow.resize(data.len(), 0);
        }
        copy_blocks(&self.written, data, &mut self.shadow);
        Ok(())
    }

    /// After a message that failed: puts back what it changed, in place (`None`), or — when
    /// the message grew the memory — returns the state before it, for the caller to restore
    /// into a fresh instance.
    pub fn failed(
        &mut self,
        live: &mut Live,
        module: &WasmBoxModule,
        limits: &Limits,
    ) -> Result<Option<SnapshotView<'_>>, Error> {
        let Some(saved) = self.saved.take() else {
            return Err(Error::GuestAbi("no message to roll back".into()));
        };
        self.written.clear();
        let data = live.memory.data(&live.store);
        // What the message wrote, leaving it marked written: the blocks are put back below
        // and only then protected again, so putting them back costs no write faults.
        let peeked = live.tracker.peek(data, &mut self.written);
        live.changed.union(&self.written);
        if peeked.is_err() || data.len() > self.shadow.len() {
            // The memory grew (or the tracker lost track): restore the shadow whole. The shadow
            // stays valid: it is exactly what the new instance's memory will hold.
            let view = SnapshotView {
                format_version: crate::snapshot::FORMAT_VERSION,
                module_fingerprint: module.inner.fingerprint,
                id: saved.id,
                memory: MemoryView {
                    pages: self.shadow.len() as u64 / PAGE_SIZE,
                    chunks: nonzero_runs(&self.shadow),
                },
                globals: saved.globals,
                clock: saved.clock,
                rng: saved.rng,
                limits: *limits,
            };
            return Ok(Some(view));
        }
        let data = live.memory.data_mut(&mut live.store);
        copy_blocks(&self.written, &self.shadow, data);
        let data = live.memory.data(&live.store);
        live.tracker.rearm(data, &self.written)?;
        live.write_globals(&saved.globals)?;
        live.install(saved.clock, saved.rng);
        live.id = saved.id;
        Ok(None)
    }
}

/// Copies the blocks of `blocks` from `from` to `to` (both at least as long as each block).
fn copy_blocks(blocks: &Blocks, from: &[u8], to: &mut [u8]) {
    let len = from.len().min(to.len());
    for run in blocks.runs() {
        let start = (run.start * BLOCK).min(len);
        let end = (run.end * BLOCK).min(len);
        to[start..end].copy_from_slice(&from[start..end]);
    }
}
