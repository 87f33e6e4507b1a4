//! The builder of a box: per-box settings, then one of the three ways a box starts — new (the
//! guest's init runs), from a snapshot, or from a template.

use crate::WasmBoxHost;
use crate::error::Error;
use crate::file::{self, SnapshotKey};
use crate::limits::Limits;
use crate::live::{BoxOptions, Live};
use crate::module::WasmBoxModule;
use crate::restore::{self, Source};
use crate::sandbox::{Clock, DEFAULT_SEED, DEFAULT_START_MILLIS};
use crate::snapshot::Snapshot;
use crate::template::Template;
use crate::tracking::ChangeTracking;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::path::Path;
use wasmbox::abi::{Codec, Status};

/// Configures a new box of a [`WasmBoxModule`]: seed, start time, limits, rollback, snapshot key.
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

impl<In, Out> Clone for WasmBoxBuilder<In, Out> {
    fn clone(&self) -> Self {
        WasmBoxBuilder {
            module: self.module.clone(),
            options: self.options.clone(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> WasmBoxBuilder<In, Out> {
    /// The module boxes of this builder run.
    pub(crate) fn module(&self) -> &WasmBoxModule {
        &self.module
    }

    /// The snapshot key, if one is set.
    pub(crate) fn key(&self) -> Option<&SnapshotKey> {
        self.options.snapshot_key.as_ref()
    }
}

impl<In, Out: DeserializeOwned> WasmBoxBuilder<In, Out> {
    pub(crate) fn new(module: &WasmBoxModule) -> Self {
        WasmBoxBuilder {
            module: module.clone(),
            options: BoxOptions {
                seed: DEFAULT_SEED,
                start_millis: DEFAULT_START_MILLIS,
                limits: Limits::default(),
                rollback_on_trap: false,
                stdout_to_stderr: false,
                snapshot_key: None,
                codec: Codec::Bincode,
                change_tracking: ChangeTracking::Auto,
            },
            _types: PhantomData,
        }
    }

    /// Seed of the box's ChaCha20 generator, the source of every random byte the guest sees
    /// (`getrandom`, `HashMap` seeds). Default: [`DEFAULT_SEED`]. Ignored by the restoring
    /// constructors, which give the box the saved generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.options.seed = seed;
        self
    }

    /// Wall clock the box starts at, in milliseconds since the epoch. Default:
    /// [`DEFAULT_START_MILLIS`]. Ignored by the restoring constructors.
    pub fn start_time(mut self, millis: u64) -> Self {
        self.options.start_millis = millis;
        self
    }

    /// Limits on the box; see [`Limits`] for the defaults. They hold for the box's whole
    /// life: restoring a snapshot or template never changes them, whatever limits the
    /// snapshot recorded.
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

    /// Make this box's snapshot files tamper-evident: every file it writes
    /// ([`WasmBoxHost::snapshot_to_file`]) carries a keyed MAC, and every file it restores
    /// ([`WasmBoxHost::restore_snapshot_from_file`], [`WasmBoxBuilder::restore_from_file`])
    /// must carry a valid one, or is refused with
    /// [`SnapshotError::MacMissing`](crate::SnapshotError::MacMissing) /
    /// [`SnapshotError::MacMismatch`](crate::SnapshotError::MacMismatch). Default: no key —
    /// files carry a CRC, which detects damage but not deliberate changes.
    pub fn snapshot_key(mut self, key: SnapshotKey) -> Self {
        self.options.snapshot_key = Some(key);
        self
    }

    /// How messages and outputs are encoded: [`Codec::Bincode`] (the default; every guest
    /// speaks it) or [`Codec::Json`] (JSON text; for guests built with the `json` feature of
    /// the `wasmbox` crate — others are refused with [`Error::CodecUnsupported`]). The host's
    /// `In` and `Out` are encoded and decoded the same way, so `WasmBoxHost<serde_json::Value,
    /// serde_json::Value>` with JSON relays any guest's messages as JSON values. The codec is not
    /// part of a box's state: snapshots move between hosts of either codec.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.options.codec = codec;
        self
    }

    /// How the box finds the memory blocks a message wrote, for
    /// [`WasmBoxHost::snapshot_delta`] and [`WasmBoxBuilder::rollback_on_trap`]: by default
    /// ([`ChangeTracking::Auto`]) the kernel's write tracking where it is available (Linux ≥
    /// 6.7), otherwise per-block hashes. [`ChangeTracking::Hash`] forces hashes;
    /// [`ChangeTracking::Kernel`] makes the box fail with [`Error::ChangeTracking`] rather than
    /// fall back. Both give the same snapshots; only their cost differs.
    pub fn change_tracking(mut self, method: ChangeTracking) -> Self {
        self.options.change_tracking = method;
        self
    }

    /// Creates the box: runs the module's start function if it has one, then the guest's
    /// initialisation. Outputs the guest sends while initialising reach `callback` before this
    /// returns.
    ///
    /// # Errors
    /// [`Error::AbiVersion`], [`Error::NotAGuest`], or any guest failure during init.
    pub fn build<F>(self, callback: F) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        let mut live = Live::instantiate(&self.module, &self.module.inner.pre, &self.options)?;
        // A new box's monotonic clock starts at zero, whatever its wall clock starts at.
        live.store.data_mut().clock = Clock::starting_at(self.options.start_millis);
        let mut host = WasmBoxHost::from_live(self.module, self.options, live, Box::new(callback));
        let status = host.guest_call(Live::run_init)?;
        host.deliver_outputs()?;
        // The state after init is the first baseline: the parent of the box's first delta.
        // Init ran before the tracker was armed, so what it wrote is not known.
        host.live.forget_nonzero();
        host.live.mark_captured();
        match Status::from_code(status) {
            Some(Status::Ok) => Ok(host),
            Some(Status::CodecUnsupported) => Err(Error::CodecUnsupported {
                codec: host.options.codec,
            }),
            _ => Err(Error::GuestAbi(format!(
                "the init export returned the unexpected status code {status}"
            ))),
        }
    }

    /// Creates the box from a [`Template`] of this builder's module: its memory is mapped
    /// copy-on-write, so this takes the same time whatever the memory size. The box gets the
    /// template's state (memory, globals, generator, clock) and this builder's limits.
    ///
    /// # Errors
    /// [`Error::ForeignTemplate`] if the template was prepared from another module value;
    /// [`Error::Snapshot`] if its memory exceeds this builder's memory limit.
    pub fn from_template<F>(
        self,
        template: &Template,
        callback: F,
    ) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        self.restored(Source::Template(template), Box::new(callback))
    }

    /// Creates the box from a snapshot, without running the guest's initialisation.
    ///
    /// # Errors
    /// As [`WasmBoxHost::restore_snapshot`].
    pub fn restore<F>(self, snapshot: &Snapshot, callback: F) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        self.restored(Source::Snapshot(&snapshot.view()), Box::new(callback))
    }

    /// Creates the box from a snapshot file, restoring straight from the file's bytes.
    ///
    /// # Errors
    /// As [`WasmBoxHost::restore_snapshot_from_file`].
    pub fn restore_from_file<F>(
        self,
        path: impl AsRef<Path>,
        callback: F,
    ) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        let bytes = file::read_file(path.as_ref())?;
        let view = file::decode_view(&bytes, self.options.snapshot_key.as_ref())?;
        self.restored(Source::Snapshot(&view), Box::new(callback))
    }

    /// Creates the box from a snapshot file's bytes, restoring straight from them.
    pub(crate) fn restore_from_bytes<F>(
        self,
        bytes: &[u8],
        callback: F,
    ) -> Result<WasmBoxHost<In, Out>, Error>
    where
        F: FnMut(Out) + Send + 'static,
    {
        let view = file::decode_view(bytes, self.options.snapshot_key.as_ref())?;
        self.restored(Source::Snapshot(&view), Box::new(callback))
    }

    fn restored(
        self,
        source: Source<'_, '_>,
        callback: Box<dyn FnMut(Out) + Send>,
    ) -> Result<WasmBoxHost<In, Out>, Error> {
        let live = restore::restore(&self.module, &self.options, source)?;
        Ok(WasmBoxHost::from_live(
            self.module,
            self.options,
            live,
            callback,
        ))
    }
}
