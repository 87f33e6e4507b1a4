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
//! The flow of a box, top to bottom:
//! 1. [`WasmBoxModule`] loads a module, instruments it (`instrument.rs`) so every global
//!    can be reached, compiles it once and prepares instantiation (shared by every box);
//! 2. [`WasmBoxBuilder::build`] instantiates it in the deterministic sandbox (`sandbox.rs`)
//!    and runs the guest's init; [`WasmBoxHost::message`] relays typed messages;
//! 3. [`WasmBoxHost::snapshot_state`] captures the state, [`snapshot`] encodes it;
//! 4. [`WasmBoxHost::restore_snapshot`] checks a snapshot, then builds a fresh instance from it
//!    and swaps it in only once everything succeeded.
#![deny(missing_docs)]

mod error;
mod instrument;
mod limits;
mod module;
mod sandbox;
pub mod snapshot;
mod template;

pub use error::{Error, SnapshotError};
pub use limits::{LimitKind, Limits};
pub use module::{ModuleOptions, PRECOMPILED_MAGIC, WasmBoxModule};
pub use sandbox::{Clock, DEFAULT_SEED, DEFAULT_START_MILLIS};
pub use snapshot::{GlobalValue, MemoryChunk, MemoryImage, Snapshot, Value};
pub use template::Template;

use instrument::ValKind;
use sandbox::BoxState;
use serde::Serialize;
use serde::de::DeserializeOwned;
use snapshot::{MemoryChunkRef, MemoryImageRef, SnapshotRef};
use std::borrow::Borrow;
use std::marker::PhantomData;
use std::path::Path;
use wasmbox::abi::{self, Status};
use wasmtime::{Global, InstancePre, Memory, Store, Trap, TypedFunc, Val};

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
    /// With `rollback_on_trap`, the state before the message being handled.
    last_good: Option<Snapshot>,
    /// Why the box is unusable, if it is.
    poisoned: Option<String>,
    /// Reused buffer for encoding inputs.
    scratch: Vec<u8>,
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

/// The per-box settings a builder chooses.
#[derive(Clone, Copy, Debug)]
struct BoxOptions {
    seed: u64,
    start_millis: u64,
    limits: Limits,
    rollback_on_trap: bool,
    stdout_to_stderr: bool,
}

/// An instance and the handles the host uses on it.
struct Live {
    store: Store<BoxState>,
    memory: Memory,
    init: TypedFunc<(), ()>,
    input_buffer: TypedFunc<u32, u32>,
    message: TypedFunc<u32, u32>,
    globals: Vec<Global>,
    /// The guest's input buffer `(address, capacity)` as last reported.
    input: Option<(u32, u32)>,
}

/// Configures a new box of a [`WasmBoxModule`]: seed, start time, limits, rollback.
pub struct WasmBoxBuilder<In = String, Out = String> {
    module: WasmBoxModule,
    options: BoxOptions,
    _types: PhantomData<fn(&In) -> Out>,
}

impl<In, Out> std::fmt::Debug for WasmBoxBuilder<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBoxBuilder")
            .field("module", &self.module)
            .field("options", &self.options)
            .finish()
    }
}

impl<In, Out: DeserializeOwned> WasmBoxBuilder<In, Out> {
    /// Seed of the box's ChaCha20 generator, the source of every random byte the guest sees
    /// (`getrandom`, `HashMap` seeds). Default: [`DEFAULT_SEED`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.options.seed = seed;
        self
    }

    /// Wall clock the box starts at, in milliseconds since the epoch. Default:
    /// [`DEFAULT_START_MILLIS`].
    pub fn start_time(mut self, millis: u64) -> Self {
        self.options.start_millis = millis;
        self
    }

    /// Limits on the box; see [`Limits`] for the defaults.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.options.limits = limits;
        self
    }

    /// Keep the state from before each message and roll back to it when the guest traps, so
    /// that a failing message leaves the box as it was instead of poisoning it. Costs a
    /// snapshot (a copy of the memory in use) per message. Default: off.
    pub fn rollback_on_trap(mut self, enabled: bool) -> Self {
        self.options.rollback_on_trap = enabled;
        self
    }

    /// Send what the guest prints on its stdout to the host's stderr instead of the host's
    /// stdout, e.g. when the host's stdout carries the guest's messages. Default: off.
    pub fn guest_stdout_to_stderr(mut self, enabled: bool) -> Self {
        self.options.stdout_to_stderr = enabled;
        self
    }

    /// Creates the box and runs the guest's initialisation. Outputs the guest sends while
    /// initialising reach `callback` before this returns.
    ///
    /// # Errors
    /// [`Error::AbiVersion`], [`Error::NotAGuest`], or any guest failure during init.
    pub fn build<F>(self, callback: F) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        let mut live = Live::new(&self.module, &self.options)?;
        live.store
            .data_mut()
            .clock
            .set_millis(self.options.start_millis);
        let mut host = WasmBoxHost::from_live(self.module, self.options, live, Box::new(callback));
        host.guest_call(|live| live.init.call(&mut live.store, ()))?;
        host.deliver_outputs()?;
        Ok(host)
    }

    /// Creates the box from a [`Template`] of this builder's module: its memory is mapped
    /// copy-on-write, so this takes the same time whatever the memory size. The seed set on
    /// the builder is ignored: the box gets the template's generator, clock and limits.
    ///
    /// # Errors
    /// [`Error::Snapshot`] if the template was prepared from another module.
    pub fn from_template<F>(
        mut self,
        template: &Template,
        callback: F,
    ) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        self.options.limits = template.inner.limits;
        let live = Live::from_template(&self.module, &self.options, template)?;
        Ok(WasmBoxHost::from_live(
            self.module,
            self.options,
            live,
            Box::new(callback),
        ))
    }

    /// Creates the box from a snapshot, without running the guest's initialisation.
    ///
    /// # Errors
    /// As [`WasmBoxHost::restore_snapshot`].
    pub fn restore<F>(self, snapshot: &Snapshot, callback: F) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        let live = Live::restored(&self.module, &self.options, &snapshot.view())?;
        let mut host = WasmBoxHost::from_live(self.module, self.options, live, Box::new(callback));
        host.options.limits = snapshot.limits;
        Ok(host)
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
        WasmBoxBuilder {
            _types: PhantomData,
            module: module.clone(),
            options: BoxOptions {
                seed: DEFAULT_SEED,
                start_millis: DEFAULT_START_MILLIS,
                limits: Limits::default(),
                rollback_on_trap: false,
                stdout_to_stderr: false,
            },
        }
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
            last_good: None,
            poisoned: None,
            scratch: Vec::new(),
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
    /// [`Error::InputRejected`] / [`Error::OutputDecode`] when the message types disagree.
    pub fn message<Q>(&mut self, input: &Q) -> Result<(), Error>
    where
        Q: Serialize + ?Sized,
        In: Borrow<Q>,
    {
        self.check_usable()?;
        abi::encode_into(input, &mut self.scratch).map_err(Error::InputEncode)?;
        let len = self.scratch.len() as u64;
        let max = self.options.limits.max_message_bytes;
        if len > max || len > u64::from(u32::MAX) {
            return Err(Error::MessageTooLarge { len, max });
        }
        if self.options.rollback_on_trap {
            match self.last_good.take() {
                Some(mut good) => {
                    self.capture_into(&mut good);
                    self.last_good = Some(good);
                }
                None => self.last_good = Some(self.capture()),
            }
        }
        let scratch = std::mem::take(&mut self.scratch);
        let status = self.guest_call(|live| live.send_input(&scratch));
        self.scratch = scratch;
        match Status::from_code(status?) {
            Some(Status::Ok) => self.deliver_outputs(),
            Some(Status::InputDecode) => Err(Error::InputRejected),
            Some(Status::Finished) => Err(Error::GuestFinished),
            Some(Status::NotInitialised) => Err(Error::GuestAbi(
                "the guest says it was never initialised".into(),
            )),
            None => Err(Error::GuestAbi(
                "the message export returned an unknown status code".into(),
            )),
        }
    }

    /// Captures the box's whole state.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the box is poisoned: its state is not worth keeping.
    pub fn snapshot_state(&mut self) -> Result<Snapshot, Error> {
        self.check_usable()?;
        Ok(self.capture())
    }

    /// Like [`WasmBoxHost::snapshot_state`], but into an existing snapshot, reusing its memory
    /// buffers: taking snapshots repeatedly (every message, say) then copies memory into
    /// memory that is already allocated and touched, instead of faulting in fresh pages.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the box is poisoned; `target` is then unchanged.
    pub fn snapshot_into(&mut self, target: &mut Snapshot) -> Result<(), Error> {
        self.check_usable()?;
        self.capture_into(target);
        Ok(())
    }

    /// Writes a snapshot of the box to `path` atomically: afterwards the file holds either
    /// its old content or the complete snapshot. Memory goes straight from the guest to the
    /// file.
    ///
    /// # Errors
    /// [`Error::Poisoned`], or [`Error::Io`] if the file cannot be written.
    pub fn snapshot_to_file(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        self.check_usable()?;
        let globals = self.live.read_globals(&self.module);
        let live = &self.live;
        let state = live.store.data();
        let data = live.memory.data(&live.store);
        let view = SnapshotRef {
            format_version: snapshot::FORMAT_VERSION,
            module_fingerprint: &self.module.inner.fingerprint,
            memory: MemoryImageRef {
                pages: data.len() as u64 / PAGE_SIZE,
                chunks: snapshot::nonzero_runs(data)
                    .into_iter()
                    .map(|(offset, bytes)| MemoryChunkRef { offset, bytes })
                    .collect(),
            },
            globals: &globals,
            clock: &state.clock,
            rng: &state.rng,
            limits: &self.options.limits,
        };
        snapshot::write_file(path.as_ref(), &view)
    }

    /// Restores a snapshot taken from a box of the same module, in this process or another.
    /// The box gets exactly the snapshot's memory (growing or shrinking), globals, clock,
    /// random generator and limits; the guest's init does not run again. A poisoned box is
    /// healed.
    ///
    /// # Errors
    /// [`Error::Snapshot`] if the snapshot is of another module or format, inconsistent, or
    /// larger than the box's memory limit. On error the box is left exactly as it was.
    pub fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        self.restore_view(&snapshot.view())
    }

    fn restore_view(&mut self, snapshot: &snapshot::SnapshotView<'_>) -> Result<(), Error> {
        self.live = Live::restored(&self.module, &self.options, snapshot)?;
        self.options.limits = snapshot.limits;
        self.poisoned = None;
        Ok(())
    }

    /// Restores a [`Template`]: like [`WasmBoxHost::restore_snapshot`] of the snapshot it
    /// was prepared from, but the memory is mapped copy-on-write instead of copied.
    ///
    /// # Errors
    /// [`Error::Snapshot`] if the template belongs to another module; the box is then left
    /// exactly as it was.
    pub fn restore_template(&mut self, template: &Template) -> Result<(), Error> {
        let mut options = self.options;
        options.limits = template.inner.limits;
        self.live = Live::from_template(&self.module, &options, template)?;
        self.options = options;
        self.poisoned = None;
        Ok(())
    }

    /// Reads a snapshot file (in one bulk read) and restores it.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Snapshot`] if it is damaged or
    /// does not fit; the box is then left exactly as it was.
    pub fn restore_snapshot_from_file(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        // The memory chunks are restored straight from the file's bytes, without a copy.
        let bytes = snapshot::read_file(path.as_ref())?;
        self.restore_view(&snapshot::decode_view(&bytes)?)
    }

    /// A new, independent box whose state equals this one's, made without going through a
    /// snapshot value or a file: memory (all-zero pages skipped), globals, clock, generator
    /// and limits are copied straight from this box. Its outputs go to `callback`.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if this box is poisoned; instantiation errors.
    pub fn fork<F>(&mut self, callback: F) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        self.check_usable()?;
        let globals = self.live.read_globals(&self.module);
        let mut live = Live::new(&self.module, &self.options)?;
        let source = self.live.memory.data(&self.live.store);
        let pages = source.len() as u64 / PAGE_SIZE;
        live.load(
            &self.module,
            pages,
            snapshot::nonzero_runs(source).into_iter(),
            &globals,
        )?;
        let state = self.live.store.data();
        let (clock, rng) = (state.clock, state.rng.clone());
        let new_state = live.store.data_mut();
        new_state.clock = clock;
        new_state.rng = rng;
        Ok(WasmBoxHost::from_live(
            self.module.clone(),
            self.options,
            live,
            Box::new(callback),
        ))
    }

    /// Sets the box's clock to `millis` since the Unix epoch. The guest's monotonic clock
    /// moves forward by the same amount, and never backwards.
    pub fn set_time(&mut self, millis: u64) {
        self.live.store.data_mut().clock.set_millis(millis);
    }

    /// The box's wall clock in milliseconds since the Unix epoch.
    pub fn time(&self) -> u64 {
        self.live.store.data().clock.millis()
    }

    /// The box's clock.
    pub fn clock(&self) -> Clock {
        self.live.store.data().clock
    }

    /// The limits in force.
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

    fn capture(&mut self) -> Snapshot {
        let state = self.live.store.data();
        let mut snapshot = Snapshot {
            format_version: snapshot::FORMAT_VERSION,
            module_fingerprint: self.module.inner.fingerprint,
            memory: MemoryImage {
                pages: 0,
                chunks: Vec::new(),
            },
            globals: Vec::new(),
            clock: state.clock,
            rng: state.rng.clone(),
            limits: self.options.limits,
        };
        self.capture_into(&mut snapshot);
        snapshot
    }

    /// Overwrites `target` with the box's state, reusing the buffers of its memory chunks.
    fn capture_into(&mut self, target: &mut Snapshot) {
        target.globals = self.live.read_globals(&self.module);
        let live = &self.live;
        let data = live.memory.data(&live.store);
        let state = live.store.data();
        // Old buffers, smallest capacity first, handed out to the runs that fit them.
        let mut spare: Vec<Vec<u8>> = target.memory.chunks.drain(..).map(|c| c.bytes).collect();
        spare.sort_by_key(Vec::capacity);
        for (offset, bytes) in snapshot::nonzero_runs(data) {
            let mut buffer = match spare.iter().position(|b| b.capacity() >= bytes.len()) {
                Some(i) => spare.remove(i),
                None => Vec::new(),
            };
            buffer.clear();
            buffer.extend_from_slice(bytes);
            target.memory.chunks.push(MemoryChunk {
                offset,
                bytes: buffer,
            });
        }
        target.format_version = snapshot::FORMAT_VERSION;
        target.module_fingerprint = self.module.inner.fingerprint;
        target.memory.pages = data.len() as u64 / PAGE_SIZE;
        target.clock = state.clock;
        target.rng = state.rng.clone();
        target.limits = self.options.limits;
    }

    /// Runs a guest call under the box's limits and turns a failure into an error, poisoning
    /// the box (or rolling it back).
    fn guest_call<R>(
        &mut self,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        let limits = self.options.limits;
        let live = &mut self.live;
        // Fuel is always on in the engine; "no limit" is all the fuel there is.
        let _ = live
            .store
            .set_fuel(limits.fuel_per_message.unwrap_or(u64::MAX));
        live.store.set_epoch_deadline(limits.deadline_ticks());
        let state = live.store.data_mut();
        state.outbox.clear();
        state.panic_message = None;
        state.abi_violation = None;
        state.limiter.hit = false;
        state.max_output = limits.max_message_bytes;
        match f(live) {
            Ok(r) => Ok(r),
            Err(e) => {
                let error = classify(e, live.store.data_mut());
                live.input = None;
                live.store.data_mut().outbox.clear();
                match self.last_good.take() {
                    Some(good) if self.options.rollback_on_trap => {
                        if let Err(restore_error) = self.restore_snapshot(&good) {
                            self.poisoned =
                                Some(format!("{error}; rolling back failed: {restore_error}"));
                        }
                    }
                    _ => self.poisoned = Some(error.to_string()),
                }
                Err(error)
            }
        }
    }

    /// Decodes the outputs of the last guest call and hands them to the callback in order.
    fn deliver_outputs(&mut self) -> Result<(), Error> {
        let outbox = std::mem::take(&mut self.live.store.data_mut().outbox);
        let mut result = Ok(());
        for bytes in &outbox {
            match abi::decode::<Out>(bytes) {
                Ok(output) => (self.callback)(output),
                Err(e) => {
                    result = Err(Error::OutputDecode(e));
                    break;
                }
            }
        }
        // Give the allocation back for the next call.
        let mut outbox = outbox;
        outbox.clear();
        self.live.store.data_mut().outbox = outbox;
        result
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

/// Turns a failed guest call into the most specific error.
fn classify(e: wasmtime::Error, state: &mut BoxState) -> Error {
    if let Some(error) = state.abi_violation.take() {
        return error;
    }
    if state.limiter.hit {
        return Error::LimitExceeded {
            limit: LimitKind::Memory,
        };
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Error::GuestExited(exit.0);
    }
    let trap = e.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::OutOfFuel) => {
            return Error::LimitExceeded {
                limit: LimitKind::Fuel,
            };
        }
        Some(Trap::Interrupt) => {
            return Error::LimitExceeded {
                limit: LimitKind::Deadline,
            };
        }
        _ => {}
    }
    if let Some(message) = state.panic_message.take() {
        return Error::GuestPanicked { message };
    }
    let message = match trap {
        Some(Trap::StackOverflow) => "stack overflow".to_string(),
        Some(t) => format!("{t}"),
        None => format!("{e:#}"),
    };
    Error::GuestTrapped { trap, message }
}

impl Live {
    /// A fresh instance with the module's initial state; the guest's init has not run.
    fn new(module: &WasmBoxModule, options: &BoxOptions) -> Result<Live, Error> {
        Live::instantiate(module, &module.inner.pre, options)
    }

    /// A fresh instance of `pre`, which is `module` itself or a template of it.
    fn instantiate(
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
        let version = instance
            .get_typed_func::<(), u32>(&mut store, abi::EXPORT_ABI_VERSION)
            .map_err(missing)?;
        let found = version
            .call(&mut store, ())
            .map_err(|e| classify(e, store.data_mut()))?;
        if found != abi::ABI_VERSION {
            return Err(Error::AbiVersion {
                found,
                expected: abi::ABI_VERSION,
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
        Ok(Live {
            init: instance
                .get_typed_func(&mut store, abi::EXPORT_INIT)
                .map_err(missing)?,
            input_buffer: instance
                .get_typed_func(&mut store, abi::EXPORT_INPUT_BUFFER)
                .map_err(missing)?,
            message: instance
                .get_typed_func(&mut store, abi::EXPORT_MESSAGE)
                .map_err(missing)?,
            store,
            memory,
            globals,
            input: None,
        })
    }

    /// A fresh instance holding exactly the snapshot's state. Everything is checked before the
    /// instance is made, so an error leaves no trace.
    fn restored(
        module: &WasmBoxModule,
        options: &BoxOptions,
        snapshot: &snapshot::SnapshotView<'_>,
    ) -> Result<Live, Error> {
        check_snapshot(module, &options.limits, snapshot)?;
        let mut live = Live::new(module, options)?;
        let chunks = snapshot.memory.chunks.iter().map(|c| (c.offset, c.bytes));
        live.load(module, snapshot.memory.pages, chunks, &snapshot.globals)?;
        let state = live.store.data_mut();
        state.clock = snapshot.clock;
        state.rng = snapshot.rng.clone();
        state.limiter.max_memory_bytes = snapshot.limits.max_memory_bytes;
        Ok(live)
    }

    /// A fresh instance of a template: its memory and globals come from the template module.
    fn from_template(
        module: &WasmBoxModule,
        options: &BoxOptions,
        template: &Template,
    ) -> Result<Live, Error> {
        let t = &template.inner;
        if t.base.inner.fingerprint != module.inner.fingerprint {
            return Err(Error::Snapshot(SnapshotError::WrongModule {
                expected: module.fingerprint_hex(),
                found: t.base.fingerprint_hex(),
            }));
        }
        let mut live = Live::instantiate(&t.base, &t.pre, options)?;
        let state = live.store.data_mut();
        state.clock = t.clock;
        state.rng = t.rng.clone();
        Ok(live)
    }

    /// Makes this fresh instance's memory exactly `pages` long and equal to `chunks` (zero
    /// elsewhere), and sets the mutable globals. The chunks must lie inside `pages`.
    fn load<'a>(
        &mut self,
        module: &WasmBoxModule,
        pages: u64,
        chunks: impl Iterator<Item = (u64, &'a [u8])>,
        globals: &[GlobalValue],
    ) -> Result<(), Error> {
        let current_pages = self.memory.size(&self.store);
        if pages > current_pages {
            self.memory
                .grow(&mut self.store, pages - current_pages)
                .map_err(|e| {
                    Error::Snapshot(SnapshotError::Malformed(format!(
                        "the memory cannot grow to {pages} pages: {e:#}"
                    )))
                })?;
        }
        let data = self.memory.data_mut(&mut self.store);
        // The fresh instance's memory is zero except where data segments were written.
        for range in &module.inner.info.data_ranges {
            let end = (range.end as usize).min(data.len());
            if let Some(bytes) = data.get_mut(range.start as usize..end) {
                bytes.fill(0);
            }
        }
        for (offset, bytes) in chunks {
            let start = offset as usize;
            let dst = data.get_mut(start..start + bytes.len()).ok_or_else(|| {
                Error::Snapshot(SnapshotError::Malformed(format!(
                    "memory chunk at {offset:#x} lies outside the memory"
                )))
            })?;
            dst.copy_from_slice(bytes);
        }
        for (global, saved) in self.globals.iter().zip(globals) {
            let value = match saved.value {
                Value::I32(v) => Val::I32(v),
                Value::I64(v) => Val::I64(v),
                Value::F32(v) => Val::F32(v),
                Value::F64(v) => Val::F64(v),
                Value::V128(v) => Val::V128(v.into()),
            };
            global.set(&mut self.store, value).map_err(|e| {
                Error::Snapshot(SnapshotError::Malformed(format!(
                    "global {}: {e:#}",
                    saved.index
                )))
            })?;
        }
        Ok(())
    }

    /// Makes sure the guest's input buffer holds `bytes`, then runs the message export.
    fn send_input(&mut self, bytes: &[u8]) -> wasmtime::Result<u32> {
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
        self.message.call(&mut self.store, len)
    }

    /// The values of the module's mutable globals.
    fn read_globals(&mut self, module: &WasmBoxModule) -> Vec<GlobalValue> {
        self.globals
            .iter()
            .zip(&module.inner.info.mutable_globals)
            .map(|(global, info)| {
                let value = match global.get(&mut self.store) {
                    Val::I32(v) => Value::I32(v),
                    Val::I64(v) => Value::I64(v),
                    Val::F32(v) => Value::F32(v),
                    Val::F64(v) => Value::F64(v),
                    Val::V128(v) => Value::V128(v.as_u128()),
                    // `instrument` refuses modules with reference-typed mutable globals.
                    _ => Value::I32(0),
                };
                GlobalValue {
                    index: info.index,
                    value,
                }
            })
            .collect()
    }
}

/// Checks that `snapshot` belongs to `module`, is consistent, and fits `limits`.
fn check_snapshot(
    module: &WasmBoxModule,
    limits: &Limits,
    snapshot: &snapshot::SnapshotView<'_>,
) -> Result<(), SnapshotError> {
    if snapshot.format_version != snapshot::FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: snapshot.format_version,
            supported: snapshot::FORMAT_VERSION,
        });
    }
    let inner = &module.inner;
    if snapshot.module_fingerprint != inner.fingerprint {
        return Err(SnapshotError::WrongModule {
            expected: module.fingerprint_hex(),
            found: snapshot::hex(&snapshot.module_fingerprint),
        });
    }
    snapshot::check_memory(&snapshot.memory)?;
    let pages = snapshot.memory.pages;
    let max_pages = limits
        .max_memory_pages()
        .min(snapshot.limits.max_memory_pages());
    let max_pages = inner
        .info
        .maximum_pages
        .map_or(max_pages, |m| m.min(max_pages));
    if pages > max_pages {
        return Err(SnapshotError::TooLarge { pages, max_pages });
    }
    if pages < inner.info.initial_pages {
        return Err(SnapshotError::Malformed(format!(
            "the snapshot has {pages} pages of memory, fewer than the module's minimum of {}",
            inner.info.initial_pages
        )));
    }
    let globals = &inner.info.mutable_globals;
    let matches = snapshot.globals.len() == globals.len()
        && snapshot.globals.iter().zip(globals).all(|(saved, info)| {
            saved.index == info.index
                && matches!(
                    (saved.value, info.ty),
                    (Value::I32(_), ValKind::I32)
                        | (Value::I64(_), ValKind::I64)
                        | (Value::F32(_), ValKind::F32)
                        | (Value::F64(_), ValKind::F64)
                        | (Value::V128(_), ValKind::V128)
                )
        });
    if !matches {
        return Err(SnapshotError::Malformed(
            "its globals do not match the module's".into(),
        ));
    }
    Ok(())
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
