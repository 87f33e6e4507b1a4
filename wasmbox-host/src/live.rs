//! The live instance of a box and the handles the host uses on it: instantiation (the same for
//! new, restored and template boxes), globals, memory loading and the input buffer.

use crate::PAGE_SIZE;
use crate::error::{Error, SnapshotError};
use crate::file::SnapshotKey;
use crate::limits::{LimitKind, Limits};
use crate::module::WasmBoxModule;
use crate::sandbox::{BoxState, Clock};
use crate::snapshot::{
    GlobalValue, MemoryView, SnapshotId, Value, advise_huge_pages, unsupported_global,
};
use crate::tracking::{BLOCK, Blocks, ChangeTracking, Tracker};
use rand_chacha::ChaCha20Rng;
use wasmbox::abi::{self, Codec};
use wasmtime::{Global, Instance, InstancePre, Memory, Store, TypedFunc};

/// The per-box settings a builder chooses. They stay with the box for its whole life: no
/// restore changes them.
#[derive(Clone, Debug)]
pub(crate) struct BoxOptions {
    pub seed: u64,
    pub start_millis: u64,
    pub limits: Limits,
    pub rollback_on_trap: bool,
    pub stdout_to_stderr: bool,
    pub snapshot_key: Option<SnapshotKey>,
    pub codec: Codec,
    pub change_tracking: ChangeTracking,
}

/// A restore fills memory on huge pages from this size on (and when at least half of it is
/// stored).
const HUGE_MEMORY_FROM: usize = 4 << 20;

// An instance and the handles the host uses on it. Invariant: `globals[i]` is the export of
// `module.inner.info.mutable_globals[i]` of the module this instance was made from, so the two
// lists zip; `memory` is the module's only memory, also recorded in `store.data().memory`.
// `tracker` is the first field so that it is dropped — and stops tracking — while the memory
// is still mapped.
pub(crate) struct Live {
    /// Which blocks of memory were written (see `tracking.rs`).
    pub tracker: Tracker,
    /// Blocks that may have changed since the last capture or restore, as far as the tracker
    /// has been asked.
    pub changed: Blocks,
    /// Blocks that may be non-zero: every block outside `nonzero`, `changed` and what the
    /// tracker has not reported yet is zero. A capture reads only these (see `capture.rs`).
    /// Read it through [`Live::nonzero`] (while `untracked_writes` is set it is incomplete).
    nonzero: Blocks,
    /// Guest code ran before the tracker started, and `nonzero` does not count its writes yet.
    untracked_writes: bool,
    /// The id of the current state.
    pub id: SnapshotId,
    /// The id of the last captured or restored state: the parent of the next delta.
    pub baseline: SnapshotId,
    pub store: Store<BoxState>,
    pub memory: Memory,
    pub init: TypedFunc<u32, u32>,
    /// The module's start function, moved out of its start section by the load-time pass; run
    /// once, on a new box only.
    pub start: Option<TypedFunc<(), ()>>,
    input_buffer: TypedFunc<u32, u32>,
    message: TypedFunc<(u32, u32), u32>,
    /// The codec of every call.
    pub codec: Codec,
    globals: Vec<Global>,
    /// The guest's input buffer `(address, capacity)` as last reported.
    input: Option<(u32, u32)>,
}

/// Asks a module's first instance for its ABI version, which must be this host's, and the
/// codecs it speaks.
fn guest_codecs(instance: &Instance, store: &mut Store<BoxState>) -> Result<u32, Error> {
    let missing = |e: wasmtime::Error| Error::NotAGuest(format!("{e:#}"));
    let found = instance
        .get_typed_func::<(), u32>(&mut *store, abi::EXPORT_ABI_VERSION)
        .map_err(missing)?
        .call(&mut *store, ())
        .map_err(|e| store.data_mut().classify(e))?;
    if found != abi::ABI_VERSION {
        return Err(Error::AbiVersion {
            found,
            expected: abi::ABI_VERSION,
        });
    }
    instance
        .get_typed_func::<(), u32>(&mut *store, abi::EXPORT_CODECS)
        .map_err(missing)?
        .call(&mut *store, ())
        .map_err(|e| store.data_mut().classify(e))
}

impl Live {
    /// A fresh instance of `pre` (the module itself or a template of it) in a store with the
    /// box's limits. Neither the start function nor the guest's init has run.
    pub fn instantiate(
        module: &WasmBoxModule,
        pre: &InstancePre<BoxState>,
        options: &BoxOptions,
    ) -> Result<Live, Error> {
        let inner = &module.inner;
        let mut store = Store::new(
            &inner.engine,
            BoxState::new(options.seed, &options.limits, options.stdout_to_stderr),
        );
        store.limiter(|s| &mut s.limiter);
        let _ = store.set_fuel(options.limits.fuel_per_message.unwrap_or(u64::MAX));
        store.set_epoch_deadline(options.limits.deadline_ticks());
        let instance = pre.instantiate(&mut store).map_err(|e| {
            if store.data().limiter.hit {
                Error::LimitExceeded {
                    limit: LimitKind::Memory,
                }
            } else {
                Error::Wasmtime(format!("instantiation failed: {e:#}"))
            }
        })?;
        let memory = instance
            .get_memory(&mut store, &inner.info.memory_export)
            .ok_or_else(|| Error::NotAGuest("the module's memory export is missing".into()))?;
        store.data_mut().memory = Some(memory);
        let missing = |e: wasmtime::Error| Error::NotAGuest(format!("{e:#}"));
        // A fresh instance's memory is zero outside the module's data segments, unless guest
        // code ran in it (the first instance of a module is asked for its codecs).
        let mut nonzero = Blocks::covering(inner.info.data_ranges.iter().cloned());
        let codecs = match inner.guest_codecs.get() {
            Some(codecs) => *codecs,
            None => {
                nonzero.insert_range(0..memory.data_size(&store) / BLOCK);
                let codecs = guest_codecs(&instance, &mut store)?;
                let _ = inner.guest_codecs.set(codecs);
                codecs
            }
        };
        if codecs & options.codec.bit() == 0 {
            return Err(Error::CodecUnsupported {
                codec: options.codec,
            });
        }
        let globals = inner
            .info
            .mutable_globals
            .iter()
            .map(|g| {
                instance.get_global(&mut store, &g.export).ok_or_else(|| {
                    Error::NotAGuest(format!("global export `{}` is missing", g.export))
                })
            })
            .collect::<Result<_, _>>()?;
        let start = match &inner.info.start_export {
            Some(name) => Some(instance.get_typed_func(&mut store, name).map_err(missing)?),
            None => None,
        };
        Ok(Live {
            tracker: Tracker::new(options.change_tracking)?,
            changed: Blocks::default(),
            nonzero,
            untracked_writes: false,
            id: SnapshotId::new_box(
                &inner.fingerprint,
                options.seed,
                options.start_millis,
                options.codec as u32,
            ),
            baseline: SnapshotId::default(),
            init: instance
                .get_typed_func(&mut store, abi::EXPORT_INIT)
                .map_err(missing)?,
            input_buffer: instance
                .get_typed_func(&mut store, abi::EXPORT_INPUT_BUFFER)
                .map_err(missing)?,
            message: instance
                .get_typed_func(&mut store, abi::EXPORT_MESSAGE)
                .map_err(missing)?,
            start,
            store,
            memory,
            globals,
            input: None,
            codec: options.codec,
        })
    }

    /// Starts the change tracker if it has not started: called before every guest call, so
    /// that no write goes unrecorded (see `tracking.rs`).
    pub fn arm_tracking(&mut self) -> Result<(), Error> {
        if self.tracker.is_armed() {
            return Ok(());
        }
        self.collect_changes()
    }

    /// Asks the tracker which blocks were written since it was last asked, into `changed`.
    pub fn collect_changes(&mut self) -> Result<(), Error> {
        self.settle_nonzero();
        let data = self.memory.data(&self.store);
        self.tracker.collect(data, &mut self.changed)
    }

    /// Makes the current state the baseline of the next delta: called by every capture that
    /// gives the caller a snapshot of this box, and by every restore.
    pub fn mark_captured(&mut self) {
        // (Not settled: this only adds to it.)
        self.nonzero.union(&self.changed);
        self.changed.clear();
        self.baseline = self.id;
    }

    /// After guest code ran without the tracker (the guest's init): any block it touched may
    /// be non-zero. Which ones is asked of the kernel only when needed ([`Live::settle_nonzero`]),
    /// so that making a box does not pay for it.
    pub fn forget_nonzero(&mut self) {
        self.untracked_writes = true;
    }

    /// Adds to `nonzero` what guest code may have written before the tracker started: the
    /// blocks the kernel has given a page, or every block where it cannot say. (An absent page
    /// of the module's image holds the image's bytes, not zeros, but those blocks are in
    /// `nonzero` from the start.) Must run before the tracker is armed (its write-protection
    /// marks untouched pages too) — so at its first collection — or before `nonzero` is read.
    fn settle_nonzero(&mut self) {
        if std::mem::take(&mut self.untracked_writes) {
            let data = self.memory.data(&self.store);
            if self.tracker.is_armed() || !self.tracker.touched(data, &mut self.nonzero) {
                self.nonzero.insert_range(0..data.len() / BLOCK);
            }
        }
    }

    /// The blocks that may be non-zero, apart from `changed` and what the tracker has not
    /// reported yet (see the field).
    pub fn nonzero(&mut self) -> &mut Blocks {
        self.settle_nonzero();
        &mut self.nonzero
    }

    /// Gives the box this clock and generator: the one place where they are installed.
    pub fn install(&mut self, clock: Clock, rng: ChaCha20Rng) {
        let state = self.store.data_mut();
        state.clock = clock;
        state.rng = rng;
    }

    /// The values of the module's mutable globals, in index order.
    ///
    /// # Errors
    /// If a global holds a reference (the load-time pass refuses such modules).
    pub fn read_globals(&mut self, module: &WasmBoxModule) -> Result<Vec<GlobalValue>, Error> {
        self.globals
            .iter()
            .zip(&module.inner.info.mutable_globals)
            .map(|(global, info)| {
                let value = Value::from_val(global.get(&mut self.store))
                    .ok_or_else(|| unsupported_global(info.index))?;
                Ok(GlobalValue {
                    index: info.index,
                    value,
                })
            })
            .collect()
    }

    /// Sets the mutable globals (already checked against the module).
    pub fn write_globals(&mut self, globals: &[GlobalValue]) -> Result<(), Error> {
        for (global, saved) in self.globals.iter().zip(globals) {
            global
                .set(&mut self.store, saved.value.to_val())
                .map_err(|e| {
                    Error::Snapshot(SnapshotError::Malformed(format!(
                        "global {}: {e:#}",
                        saved.index
                    )))
                })?;
        }
        Ok(())
    }

    /// Makes the memory exactly as large as `image` and equal to it (zero outside its chunks):
    /// for a fresh instance, or a live one being restored in place. The memory must not be
    /// larger than `image`'s; the tracker must not be armed (these writes are the restore's,
    /// not the guest's); every block that may be non-zero must be in `nonzero` or `changed`
    /// (only those are cleared). `image` is already checked against the module and the limits.
    ///
    /// # Errors
    /// If the memory cannot grow (nothing is changed then) or a chunk lies outside it.
    pub fn load_memory(&mut self, image: &MemoryView<'_>) -> Result<(), Error> {
        // Before the memory grows: the kernel's answer covers the current memory.
        self.settle_nonzero();
        let current_pages = self.memory.size(&self.store);
        if image.pages > current_pages {
            self.memory
                .grow(&mut self.store, image.pages - current_pages)
                .map_err(|e| {
                    Error::Snapshot(SnapshotError::Malformed(format!(
                        "the memory cannot grow to {} pages: {e:#}",
                        image.pages
                    )))
                })?;
        }
        let data = self.memory.data_mut(&mut self.store);
        debug_assert_eq!(data.len() as u64, image.pages * PAGE_SIZE);
        // Memory about to be filled mostly: huge pages spare most of the page faults of the
        // pages not yet touched. The advice is taken back once it is filled, so that pages the
        // guest touches later (or the next instance of a pooled slot) are not 2 MiB each.
        // Change tracking stays per 4 KiB: the kernel splits a huge page on its first tracked
        // write.
        let stored: usize = image.chunks.iter().map(|c| c.bytes.len()).sum();
        let huge = stored >= HUGE_MEMORY_FROM && stored >= data.len() / 2;
        if huge {
            advise_huge_pages(data.as_ptr(), data.len(), true);
        }
        let covered = Blocks::covering(
            image
                .chunks
                .iter()
                .map(|c| c.offset..c.offset + c.bytes.len() as u64),
        );
        // Clear what may be non-zero and no chunk overwrites.
        let mut stale = std::mem::take(&mut self.nonzero);
        stale.union(&self.changed);
        let blocks = data.len() / BLOCK;
        for run in stale.runs() {
            for block in run.start.min(blocks)..run.end.min(blocks) {
                if !covered.contains(block) {
                    data[block * BLOCK..(block + 1) * BLOCK].fill(0);
                }
            }
        }
        self.nonzero = covered;
        for chunk in &image.chunks {
            let start = chunk.offset as usize;
            let dst = data
                .get_mut(start..start + chunk.bytes.len())
                .ok_or_else(|| {
                    Error::Snapshot(SnapshotError::Malformed(format!(
                        "memory chunk at {:#x} lies outside the memory",
                        chunk.offset
                    )))
                })?;
            dst.copy_from_slice(chunk.bytes);
        }
        if huge {
            advise_huge_pages(data.as_ptr(), data.len(), false);
        }
        Ok(())
    }

    /// Resets what the store holds for the host besides the guest's state (WASI's descriptor
    /// table, the transient state of calls) to what a fresh instance's has.
    pub fn reset_store_state(&mut self, options: &BoxOptions) {
        let memory = self.store.data().memory;
        let state = self.store.data_mut();
        *state = BoxState::new(options.seed, &options.limits, options.stdout_to_stderr);
        state.memory = memory;
        self.input = None;
    }

    /// Forgets the cached input buffer (after a failed call: the guest may not have kept it).
    pub fn forget_input_buffer(&mut self) {
        self.input = None;
    }

    /// Makes sure the guest's input buffer holds `bytes`, then runs the message export.
    pub fn send_input(&mut self, bytes: &[u8]) -> wasmtime::Result<u32> {
        let len = bytes.len() as u32;
        let ptr = match self.input {
            Some((ptr, cap)) if cap >= len => ptr,
            _ => {
                let ptr = self.input_buffer.call(&mut self.store, len)?;
                self.input = Some((ptr, len));
                ptr
            }
        };
        let start = ptr as usize;
        let Some(dst) = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(start..start + bytes.len())
        else {
            self.input = None;
            let e = Error::GuestAbi(format!(
                "input_buffer returned {ptr:#x}, which cannot hold {len} bytes"
            ));
            let text = e.to_string();
            self.store.data_mut().abi_violation = Some(e);
            return Err(wasmtime::Error::msg(text));
        };
        dst.copy_from_slice(bytes);
        self.message.call(&mut self.store, (len, self.codec as u32))
    }

    /// Runs the guest's init (after the start function, if the module has one).
    pub fn run_init(&mut self) -> wasmtime::Result<u32> {
        if let Some(start) = &self.start {
            start.call(&mut self.store, ())?;
        }
        self.init.call(&mut self.store, self.codec as u32)
    }
}
