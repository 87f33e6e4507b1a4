//! # wasmbox-host — run WasmBox guests, snapshot them, restore them anywhere
//!
//! A guest built with the `wasmbox` crate runs in a wasmtime sandbox, exchanges typed serde
//! messages with its host, and its whole state — linear memory, every mutable global, clock
//! and random generator — can be captured into a plain [`Snapshot`], written to a file and
//! restored later, in another process, where it carries on exactly as before.
//!
//! ```no_run
//! use wasmbox_host::WasmBoxHost;
//! # fn main() -> Result<(), wasmbox_host::Error> {
//! let mut mybox = WasmBoxHost::from_wasm_file("counter.wasm", |out: String| println!("{out}"))?;
//! mybox.message("up")?;                        // prints value=1
//! mybox.snapshot_to_file("counter.snap")?;
//! mybox.message("up")?;                        // prints value=2
//! mybox.restore_snapshot_from_file("counter.snap")?;
//! mybox.message("up")?;                        // prints value=2 again
//! # Ok(()) }
//! ```
//!
//! ## The flow of a snapshot, one module per step
//!
//! 1. **instrument** (`instrument.rs`): [`WasmBoxModule`] checks a module, learns the facts the
//!    later steps need (globals, data segments, start function), refuses what a snapshot
//!    could not hold (table changes, `data.drop`), exports every mutable global, compiles it
//!    once and prepares instantiation for every box.
//! 2. **instantiate** (`live.rs`, `builder.rs`): [`WasmBoxBuilder`] makes an instance in the
//!    deterministic sandbox (`sandbox.rs`) under the host's [`Limits`]; a new box runs the
//!    module's start function and the guest's init, then [`WasmBoxHost::message`] relays
//!    typed messages (`relay.rs`).
//! 3. **capture** (`capture.rs`): one routine reads the whole state into a view that borrows
//!    the live memory; [`WasmBoxHost::snapshot_state`], [`WasmBoxHost::snapshot_into`],
//!    [`WasmBoxHost::snapshot_to_file`] and [`WasmBoxHost::fork`] copy or stream that view.
//!    **Deltas** (`delta.rs`): [`WasmBoxHost::snapshot_delta`] reads only the 4 KiB blocks the
//!    change tracker (`tracking.rs`; the kernel's write tracking in `sys.rs`, or hashes)
//!    reports written since the last capture; [`Snapshot::apply`] rolls a snapshot forward by
//!    one. `rollback_on_trap` (`rollback.rs`) uses the same tracker to undo a failed message
//!    in place.
//! 4. **encode** (`file.rs`, [`snapshot`]): a [`Snapshot`] is plain serde data; the file
//!    format adds a header, a CRC-32 and, with a [`SnapshotKey`], a keyed MAC.
//! 5. **decode**: a file is read in one bulk read and decoded into a view that borrows its
//!    bytes (no copy of the memory), checking magic, version, length, CRC and MAC.
//! 6. **check** (`check.rs`): the one place that checks a snapshot against a module: format
//!    version, fingerprint, memory consistency, the host's memory limit, globals.
//! 7. **restore** (`restore.rs`): one routine builds a fresh instance holding exactly the
//!    state — from a snapshot (value, file, builder, fork, rollback) or a [`Template`] — under
//!    the host's limits, and the box swaps it in only once everything succeeded. A snapshot
//!    restored into a healthy box whose memory is not larger is written in place instead
//!    (its memory is mapped and resident already: about the cost of a `memcpy`).
//!
//! ## Incremental snapshots
//!
//! ```no_run
//! use wasmbox_host::{WasmBoxHost, snapshot};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut mybox = WasmBoxHost::from_wasm_file("counter.wasm", |out: String| println!("{out}"))?;
//! let mut base = mybox.snapshot_state()?;      // a full snapshot: the chain's base
//! mybox.message("up")?;
//! let d1 = mybox.snapshot_delta()?;            // only the blocks the message wrote
//! mybox.message("up")?;
//! mybox.snapshot_delta_to_file("counter.d2")?; // the same, as a file naming its parent
//! base.apply(&d1)?;
//! base.apply(&snapshot::decode_delta_file(&std::fs::read("counter.d2")?)?)?;
//! assert!(base == mybox.snapshot_state()?);    // byte for byte what a full snapshot gives
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod builder;
mod capture;
mod check;
mod delta;
pub mod durable;
mod error;
mod file;
mod instrument;
mod limits;
mod live;
mod module;
mod relay;
mod restore;
mod rollback;
mod sandbox;
pub mod snapshot;
#[cfg(target_os = "linux")]
mod sys;
mod template;
mod tracking;

pub use builder::WasmBoxBuilder;
pub use delta::{SnapshotDelta, ZeroRange};
pub use error::{DurableError, Error, SnapshotError};
pub use file::SnapshotKey;
pub use limits::{LimitKind, Limits};
pub use module::{ModuleOptions, PRECOMPILED_MAGIC, WasmBoxModule};
pub use sandbox::{Clock, DEFAULT_SEED, DEFAULT_START_MILLIS};
pub use snapshot::{GlobalValue, MemoryChunk, MemoryImage, Snapshot, SnapshotId, Value};
pub use template::Template;
pub use tracking::ChangeTracking;
pub use wasmbox::abi::Codec;

use live::{BoxOptions, Live};
use restore::Source;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Borrow;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

/// Size of a WebAssembly page in bytes.
pub const PAGE_SIZE: u64 = 65536;

/// A running guest: send it typed messages, receive its outputs through a callback, snapshot
/// and restore it.
///
/// `In` is the type of the messages the guest takes and `Out` the type of what it sends back;
/// they must match the guest's own types (any serde types).
pub struct WasmBoxHost<In = String, Out = String> {
    module: WasmBoxModule,
    live: Live,
    callback: Box<dyn FnMut(Out) + Send>,
    options: BoxOptions,
    /// With `rollback_on_trap`, what undoes the message being handled.
    undo: rollback::Undo,
    /// Why the box is unusable, if it is.
    poisoned: Option<String>,
    /// Reused buffer for encoding inputs.
    scratch: Vec<u8>,
    /// Replaying a journal (`durable`): ten times the deadline, which a replay must not hit
    /// where the original run did not.
    replaying: bool,
    _input: PhantomData<fn(&In)>,
}

impl<In, Out> std::fmt::Debug for WasmBoxHost<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBoxHost")
            .field("module", &self.module)
            .field("options", &self.options)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<In, Out> WasmBoxHost<In, Out>
where
    Out: DeserializeOwned,
{
    /// Starts a box of an already compiled module with default settings.
    ///
    /// # Errors
    /// See [`WasmBoxBuilder::build`].
    pub fn new<F>(module: &WasmBoxModule, callback: F) -> Result<Self, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        Self::builder(module).build(callback)
    }

    /// A builder for a box of `module`.
    pub fn builder(module: &WasmBoxModule) -> WasmBoxBuilder<In, Out> {
        WasmBoxBuilder::new(module)
    }

    fn from_live(
        module: WasmBoxModule,
        options: BoxOptions,
        live: Live,
        callback: Box<dyn FnMut(Out) + Send>,
    ) -> Self {
        WasmBoxHost {
            module,
            live,
            callback,
            options,
            undo: rollback::Undo::default(),
            poisoned: None,
            scratch: Vec::new(),
            replaying: false,
            _input: PhantomData,
        }
    }

    /// Sends one message to the guest and hands every output it sends in reply to the
    /// callback, in order, before returning.
    ///
    /// `input` is an `&In`, or anything `In` borrows as (an `&str` for a `String` input).
    ///
    /// # Errors
    /// [`Error::Poisoned`] after an earlier trap; [`Error::GuestPanicked`],
    /// [`Error::GuestTrapped`], [`Error::LimitExceeded`] when the guest fails (the box is then
    /// poisoned, or rolled back if [`WasmBoxBuilder::rollback_on_trap`] is on);
    /// [`Error::InputRejected`] (with the guest's reason; the box goes on) /
    /// [`Error::OutputDecode`] when the message types disagree.
    pub fn message<Q>(&mut self, input: &Q) -> Result<(), Error>
    where
        Q: Serialize + ?Sized,
        In: Borrow<Q>,
    {
        self.check_usable()?;
        relay::encode_into(self.options.codec, input, &mut self.scratch)?;
        self.relay_message()
    }

    /// Captures the box's whole state.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the box is poisoned: its state is not worth keeping.
    pub fn snapshot_state(&mut self) -> Result<Snapshot, Error> {
        self.check_usable()?;
        Ok(self.capture()?.to_snapshot())
    }

    /// What changed since the box's last snapshot — full ([`WasmBoxHost::snapshot_state`],
    /// [`WasmBoxHost::snapshot_into`], [`WasmBoxHost::snapshot_to_file`]), delta, or the
    /// snapshot or template it was restored from — which it then becomes: the 4 KiB blocks
    /// that may have been written (never missing one that changed), the memory's size and the
    /// complete small state. Its cost follows the blocks written, not the memory's size, with
    /// the kernel's change tracking ([`WasmBoxHost::change_tracking`]). Apply it to that
    /// snapshot with [`Snapshot::apply`].
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the box is poisoned; [`Error::ChangeTracking`] if the kernel's
    /// tracking was required and fails.
    pub fn snapshot_delta(&mut self) -> Result<SnapshotDelta, Error> {
        self.check_usable()?;
        capture::capture_delta(&mut self.live, &self.module, &self.options.limits)
    }

    /// Writes [`WasmBoxHost::snapshot_delta`] to a delta file at `path`, atomically (see
    /// [`snapshot::encode_delta_file`] for the format); with a
    /// [`WasmBoxBuilder::snapshot_key`], it carries a keyed MAC.
    ///
    /// # Errors
    /// As [`WasmBoxHost::snapshot_delta`], and [`Error::Io`]; when the file cannot be written,
    /// the next delta still continues the previous snapshot, as if this one was never taken.
    pub fn snapshot_delta_to_file(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        let delta = self.snapshot_delta()?;
        let key = self.options.snapshot_key.as_ref();
        let written = file::write_delta_file(path.as_ref(), &delta, key);
        if written.is_err() {
            capture::take_back(&mut self.live, &delta);
        }
        written
    }

    /// The method this box uses to find what a message wrote: [`ChangeTracking::Kernel`] or
    /// [`ChangeTracking::Hash`] (see [`WasmBoxBuilder::change_tracking`]).
    pub fn change_tracking(&self) -> ChangeTracking {
        self.live.tracker.method()
    }

    /// The id of the box's current state: what a snapshot taken now would carry.
    pub fn state_id(&self) -> SnapshotId {
        self.live.id
    }

    /// Like [`WasmBoxHost::snapshot_state`], but into an existing snapshot, reusing its memory
    /// buffers: taking snapshots repeatedly (every message, say) then copies memory into
    /// memory that is already allocated and touched, instead of faulting in fresh pages.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the box is poisoned; `target` is then unchanged.
    pub fn snapshot_into(&mut self, target: &mut Snapshot) -> Result<(), Error> {
        self.check_usable()?;
        self.capture()?.copy_into(target);
        Ok(())
    }

    /// Writes a snapshot of the box to `path` atomically: afterwards the file holds either
    /// its old content or the complete snapshot. Memory goes straight from the guest to the
    /// file. With a [`WasmBoxBuilder::snapshot_key`], the file carries a keyed MAC.
    ///
    /// # Errors
    /// [`Error::Poisoned`], or [`Error::Io`] if the file cannot be written.
    pub fn snapshot_to_file(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        self.check_usable()?;
        let key = self.options.snapshot_key.clone();
        file::write_file(path.as_ref(), &self.capture()?, key.as_ref())
    }

    /// Replaces the box's whole state with the snapshot's. The guest's init does not run
    /// again. The box keeps its own limits. Restoring heals a poisoned box.
    ///
    /// A healthy box whose memory is not larger than the snapshot's gets the state in place
    /// (with the kernel's change tracking): its instance is kept, its memory overwritten where
    /// the snapshot differs. Otherwise a fresh instance is made and swapped in. The result is
    /// the same.
    ///
    /// # Errors
    /// [`Error::Snapshot`] if the snapshot belongs to another module, has another format
    /// version, is inconsistent, or needs more memory than the box's limit allows. The box is
    /// unchanged in every error case.
    pub fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        self.replace_live(Source::Snapshot(&snapshot.view()))
    }

    /// Reads a snapshot file written by [`WasmBoxHost::snapshot_to_file`] and restores it,
    /// straight from the file's bytes (the memory is copied once, into the box).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Snapshot`] if it is damaged (bad
    /// magic, version, length, checksum, or a missing or wrong MAC when the box has a snapshot
    /// key) or does not fit, as for [`WasmBoxHost::restore_snapshot`]. The box is unchanged in
    /// every error case.
    pub fn restore_snapshot_from_file(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        let bytes = file::read_file(path.as_ref())?;
        let view = file::decode_view(&bytes, self.options.snapshot_key.as_ref())?;
        self.replace_live(Source::Snapshot(&view))
    }

    /// Replaces the box's state with a template's, mapping its memory copy-on-write. The box
    /// keeps its own limits.
    ///
    /// # Errors
    /// [`Error::ForeignTemplate`] if the template was prepared from another module value;
    /// [`Error::Snapshot`] if its memory exceeds the box's memory limit. The box is then
    /// unchanged.
    pub fn restore_template(&mut self, template: &Template) -> Result<(), Error> {
        self.replace_live(Source::Template(template))
    }

    /// An independent copy of this box, with its own callback, made without going through a
    /// file: the copy goes on from the same state, with the same settings.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if this box is poisoned; instantiation errors.
    pub fn fork<F>(&mut self, callback: F) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        self.check_usable()?;
        let view = capture::capture(&mut self.live, &self.module, &self.options.limits, false)?;
        let live = restore::restore(&self.module, &self.options, Source::Snapshot(&view))?;
        Ok(WasmBoxHost::from_live(
            self.module.clone(),
            self.options.clone(),
            live,
            Box::new(callback),
        ))
    }

    /// Sets the box's clock to `millis` since the Unix epoch. The guest's monotonic clock
    /// moves forward by the same amount, and never backwards.
    pub fn set_time(&mut self, millis: u64) {
        self.live.store.data_mut().clock.set_millis(millis);
        self.live.id = self.live.id.next(b"set_time", &millis.to_le_bytes());
    }

    /// Moves the box's wall and monotonic clocks forward by `by`, to the nanosecond.
    pub fn advance_time(&mut self, by: Duration) {
        self.live.store.data_mut().clock.advance(by);
        self.live.id = self
            .live
            .id
            .next(b"advance_time", &by.as_nanos().to_le_bytes());
    }

    /// The box's wall clock in milliseconds since the Unix epoch.
    pub fn time(&self) -> u64 {
        self.live.store.data().clock.millis()
    }

    /// The box's clock.
    pub fn clock(&self) -> Clock {
        self.live.store.data().clock
    }

    /// The limits in force: the builder's, for the box's whole life.
    pub fn limits(&self) -> Limits {
        self.options.limits
    }

    /// The module this box runs.
    pub fn module(&self) -> &WasmBoxModule {
        &self.module
    }

    /// Why the box is poisoned, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The size of the guest's linear memory in bytes.
    pub fn memory_size(&self) -> u64 {
        self.live.memory.data_size(&self.live.store) as u64
    }

    fn check_usable(&self) -> Result<(), Error> {
        match &self.poisoned {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Sends an input already encoded with the box's codec (a journaled one).
    pub(crate) fn message_encoded(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.check_usable()?;
        self.scratch.clear();
        self.scratch.extend_from_slice(bytes);
        self.relay_message()
    }

    /// The whole state, without making it the parent of the next delta (a durable box's
    /// checkpoints are the chain; looking at its state must not break it).
    pub(crate) fn capture_state(&mut self) -> Result<Snapshot, Error> {
        self.check_usable()?;
        Ok(
            capture::capture(&mut self.live, &self.module, &self.options.limits, false)?
                .to_snapshot(),
        )
    }

    /// The codec of the box's messages.
    pub(crate) fn codec(&self) -> Codec {
        self.options.codec
    }

    /// The box's state, borrowing its memory (see `capture.rs`), for the caller to keep: it
    /// becomes the parent of the next delta.
    fn capture(&mut self) -> Result<snapshot::SnapshotView<'_>, Error> {
        capture::capture(&mut self.live, &self.module, &self.options.limits, true)
    }

    /// Restores `source` into the box: a snapshot in place into a healthy box where it can
    /// (see `restore::restore_in_place`), else into a fresh instance swapped in; on error the
    /// box is unchanged.
    fn replace_live(&mut self, source: Source<'_, '_>) -> Result<(), Error> {
        if let Source::Snapshot(view) = &source
            && self.poisoned.is_none()
            && restore::restore_in_place(&mut self.live, &self.module, &self.options, view)?
        {
            self.undo.invalidate();
            return Ok(());
        }
        self.live = restore::restore(&self.module, &self.options, source)?;
        self.poisoned = None;
        self.undo.invalidate();
        Ok(())
    }
}

impl<Out: DeserializeOwned> WasmBoxHost<String, Out> {
    /// Loads a `.wasm` guest whose input is a `String` and starts a box of it: the one-line
    /// path. For other input types, or many boxes of one module, load a [`WasmBoxModule`]
    /// once and use [`WasmBoxHost::new`] or [`WasmBoxHost::builder`]. (The input type is
    /// fixed here so that `message("text")` needs no type annotation, as `HashMap::new` fixes
    /// its hasher.)
    ///
    /// # Errors
    /// See [`WasmBoxModule::from_file`] and [`WasmBoxBuilder::build`].
    pub fn from_wasm_file<F>(path: impl AsRef<Path>, callback: F) -> Result<Self, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        Self::new(&WasmBoxModule::from_file(path)?, callback)
    }

    /// Loads a guest from the bytes of a `.wasm` module and starts a box of it.
    ///
    /// # Errors
    /// See [`WasmBoxModule::from_bytes`] and [`WasmBoxBuilder::build`].
    pub fn from_wasm_bytes<F>(wasm: &[u8], callback: F) -> Result<Self, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        Self::new(&WasmBoxModule::from_bytes(wasm)?, callback)
    }
}

/// The README's code blocks, compiled and run as doc-tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_move_between_threads_and_modules_are_shared() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<WasmBoxHost<String, String>>();
        send_sync::<WasmBoxModule>();
        send_sync::<Template>();
        send_sync::<Snapshot>();
    }
}
