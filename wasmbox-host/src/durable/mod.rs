//! Durable boxes: a journal and checkpoints, so that a crash loses nothing.
//!
//! A [`DurableBox`] writes each input — and each clock change — to an append-only journal
//! before running it, and from time to time a checkpoint (a delta of the box's state, or a full
//! snapshot when the deltas since the last one hold half the
//! memory, or every [`FULL_EVERY`] checkpoints). Opening a box after a crash loads the latest
//! checkpoint and replays the journal after it. A box is deterministic, so the state reached
//! is exactly the one it had: a full snapshot taken after recovery equals, byte for byte, the
//! one a box that never crashed would give.
//!
//! ```no_run
//! use wasmbox_host::WasmBoxModule;
//! use wasmbox_host::durable::{BoxStore, DurableBox, Durability};
//! # fn main() -> Result<(), wasmbox_host::Error> {
//! let module = WasmBoxModule::from_file("counter.wasm")?;
//! let store = BoxStore::open_dir("state")?;
//! let mut counter = DurableBox::<String, String>::builder(&module, &store, "counter-1")
//!     .durability(Durability::Buffered)
//!     .checkpoint_every(1_000)
//!     .open(|seq, reply| println!("{seq}: {reply}"))?; // creates or recovers
//! let seq = counter.message("up")?; // journaled before it runs
//! counter.checkpoint()?;
//! let state = counter.snapshot_state()?;
//! # Ok(()) }
//! ```
//!
//! Files, per box: `checkpoint-<seq>.snap` / `checkpoint-<seq>.delta` (the snapshot and delta
//! file formats) and `journal-<seq>.wbj` (see `journal.rs`), where `<seq>` is the sequence
//! number of the last event the checkpoint includes; the journal segment `journal-<S>` holds
//! the events after checkpoint `S`.
//!
//! Stores: a local directory ([`BoxStore::open_dir`]) or, with the `s3` feature (on by
//! default), S3-compatible object storage ([`BoxStore::open_s3`], [`BoxStore::open_url`]),
//! where a lease with a fencing epoch lets one host at a time write a box, and
//! [`DurableBox::release`] moves a box to another host (see `s3.rs`).

mod journal;
#[cfg(feature = "s3")]
mod s3;
mod store;

#[cfg(feature = "s3")]
pub use s3::S3Options;
pub use store::{Appender, Backend, BoxStore};

use crate::error::{DurableError, Error};
use crate::file::SnapshotKey;
use crate::snapshot::{Snapshot, decode_delta_file_keyed, decode_file_keyed};
use crate::{WasmBoxBuilder, WasmBoxHost, WasmBoxModule};
use journal::Record;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Borrow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// At most this many delta checkpoints follow a full one. A full one comes sooner once the
/// deltas since the last hold half of the box's memory: recovery then reads at most about 1.5
/// memories, and a large box that writes little rarely pays for a full snapshot.
pub const FULL_EVERY: usize = 1024;

/// When a journal record is safe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The record reaches the operating system before the message runs: nothing is lost when
    /// the process is killed; a power cut may lose the last messages.
    #[default]
    Buffered,
    /// The record is on disk (fsync) before the message runs and its outputs are delivered.
    Sync,
}

/// What opening a box found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// The box did not exist and was created.
    pub created: bool,
    /// The sequence number of the checkpoint recovery started from.
    pub checkpoint: u64,
    /// Journal events replayed after it.
    pub replayed: u64,
    /// A torn record at the journal's tail (a crash during an append), discarded: the
    /// segment, the offset and the length of what was cut off.
    pub torn_tail: Option<(String, u64, u64)>,
    /// Checkpoints that could not be used, and why (recovery then started from an older one).
    pub notes: Vec<String>,
    /// With [`DurableBuilder::verify`]: the checkpoint that replaying from the one before it
    /// reproduced.
    pub verified: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpoint {
    seq: u64,
    full: bool,
}

impl Checkpoint {
    fn object(self) -> String {
        let ext = if self.full { "snap" } else { "delta" };
        format!("checkpoint-{:020}.{ext}", self.seq)
    }
}

fn segment_object(seq: u64) -> String {
    format!("journal-{seq:020}.wbj")
}

/// Configures a durable box: see [`DurableBox::builder`].
pub struct DurableBuilder<In, Out> {
    host: WasmBoxBuilder<In, Out>,
    settings: Settings,
    verify: bool,
}

impl<In, Out> std::fmt::Debug for DurableBuilder<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableBuilder")
            .field("settings", &self.settings)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

impl<In, Out: DeserializeOwned + Send + 'static> DurableBuilder<In, Out> {
    /// When journal records are safe (default [`Durability::Buffered`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.settings.durability = durability;
        self
    }

    /// Checkpoint after this many journaled events (default 1,000; 0: only on
    /// [`DurableBox::checkpoint`] and by journal size).
    pub fn checkpoint_every(mut self, events: u64) -> Self {
        self.settings.every = events;
        self
    }

    /// Checkpoint when the journal since the last checkpoint reaches this many bytes (default
    /// 64 MiB).
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.settings.bytes = bytes;
        self
    }

    /// How many checkpoints to keep (default 2, at least 1): older ones, and the journal
    /// before the oldest kept, are deleted. [`DurableBox::snapshot_at`] reaches back to the
    /// oldest kept.
    pub fn keep_checkpoints(mut self, n: usize) -> Self {
        self.settings.keep = n.max(1);
        self
    }

    /// On open, replay from the checkpoint before the latest and check that it reproduces the
    /// latest, byte for byte: catches a changed module or a non-deterministic host
    /// ([`DurableError::Diverged`]).
    pub fn verify(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }

    /// Settings of the box itself (seed, start time, limits, codec, snapshot key) for a box
    /// that does not exist yet; limits, codec and key apply to every open.
    pub fn configure(
        mut self,
        f: impl FnOnce(WasmBoxBuilder<In, Out>) -> WasmBoxBuilder<In, Out>,
    ) -> Self {
        self.host = f(self.host);
        self
    }

    /// Creates the box, or recovers it: the latest usable checkpoint, then the journal after
    /// it. `callback` receives every output with the sequence number of the input that
    /// produced it; outputs of replayed messages are not delivered again.
    ///
    /// # Errors
    /// [`DurableError::Locked`] if the box is open elsewhere; [`DurableError::Corrupt`],
    /// [`DurableError::WrongModule`], [`DurableError::Diverged`] for stored state that cannot
    /// be used (nothing is overwritten); I/O and guest errors.
    pub fn open(
        self,
        callback: impl FnMut(u64, Out) + Send + 'static,
    ) -> Result<DurableBox<In, Out>, Error> {
        let DurableBuilder {
            host,
            settings,
            verify,
        } = self;
        let name = settings.name.clone();
        store::check_name(&name)?;
        let backend = Arc::clone(&settings.store.backend);
        let lock = backend.lock(&name)?;
        // No `rollback_on_trap`: a failed message is undone by rebuilding the box from its
        // checkpoint and journal (see `DurableBox::message`), so that messages that succeed
        // pay nothing for it.
        let module = host.module().clone();
        let fingerprint = module.fingerprint();
        let key = host.key().cloned();
        let (checkpoints, segments) = list(&*backend, &name)?;
        let outputs: Arc<Mutex<Vec<Out>>> = Arc::default();
        let mut recovery = Recovery::default();
        let mut durable = if checkpoints.is_empty() {
            if let Some(first) = segments.first() {
                return Err(corrupt(
                    &segment_object(*first),
                    0,
                    "a journal without a checkpoint",
                ));
            }
            let mut inner = host.clone().build(sink(&outputs))?;
            let snapshot = inner.snapshot_state()?;
            let first = Checkpoint { seq: 0, full: true };
            backend.write(
                &name,
                &first.object(),
                &crate::file::encode_file_keyed(&snapshot, key.as_ref()),
            )?;
            recovery.created = true;
            let journal = backend.append(&name, &segment_object(0), 0)?;
            DurableBox::assemble(
                settings,
                host,
                inner,
                lock,
                journal,
                vec![first],
                vec![0],
                1,
                outputs,
                callback,
                key,
                recovery,
            )
        } else {
            let place = Place {
                backend: &*backend,
                name: &name,
                key: key.as_ref(),
                fingerprint: &fingerprint,
            };
            let rebuilt =
                place.rebuild(&host, &checkpoints, &segments, u64::MAX, || sink(&outputs))?;
            let (inner, from, replayed) = (rebuilt.inner, rebuilt.from, rebuilt.replayed);
            recovery.notes = rebuilt.notes;
            recovery.checkpoint = from;
            recovery.replayed = replayed.events;
            recovery.torn_tail = replayed.torn.clone();
            let latest = checkpoints.last().map_or(0, |c| c.seq);
            if replayed.last_seq < latest {
                return Err(corrupt(
                    &segment_object(from),
                    0,
                    &format!(
                        "the journal ends at {} but checkpoint {latest} exists",
                        replayed.last_seq
                    ),
                ));
            }
            if verify {
                recovery.verified = place.verify(&host, &checkpoints, &segments)?;
            }
            outputs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            // Append where the journal's good part ends (cutting a torn tail), or start the
            // segment of the latest checkpoint if the crash came before it existed.
            let (segment, keep) = match replayed.last_segment {
                Some(s) => s,
                None => (from, 0),
            };
            let mut segments = segments;
            if !segments.contains(&segment) {
                segments.push(segment);
            }
            let journal = backend.append(&name, &segment_object(segment), keep)?;
            let fell_back = from < latest;
            let mut durable = DurableBox::assemble(
                settings,
                host,
                inner,
                lock,
                journal,
                checkpoints,
                segments,
                replayed.last_seq + 1,
                outputs,
                callback,
                key,
                recovery,
            );
            if keep < journal::HEADER_LEN as u64 {
                durable.write_segment_header()?;
            } else {
                durable.journal_len = keep;
            }
            if fell_back {
                // The newer checkpoints are unusable: start a new chain, leaving them be.
                durable.write_checkpoint(true)?;
            }
            return Ok(durable);
        };
        durable.write_segment_header()?;
        // What the guest said while it initialised: sequence number 0.
        let said = std::mem::take(
            &mut *durable
                .outputs
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        durable.held.extend(said.into_iter().map(|out| (0, out)));
        durable.deliver_now();
        Ok(durable)
    }
}

impl BoxStore {
    /// A store named by a URL: `file:///path/to/dir` (or a plain path) for a local directory,
    /// `s3://bucket/prefix?endpoint=http://127.0.0.1:8333` for S3-compatible object storage
    /// (see [`S3Options::from_url`]).
    ///
    /// # Errors
    /// [`Error::BadUrl`]; the errors of [`BoxStore::open_dir`] and [`BoxStore::open_s3`].
    pub fn open_url(url: &str) -> Result<BoxStore, Error> {
        if url.starts_with("s3://") {
            #[cfg(feature = "s3")]
            return BoxStore::open_s3(S3Options::from_url(url)?);
            #[cfg(not(feature = "s3"))]
            return Err(Error::BadUrl {
                url: url.to_string(),
                why: "this build has no object storage (the `s3` feature)".to_string(),
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            return BoxStore::open_dir(path);
        }
        if url.contains("://") {
            return Err(Error::BadUrl {
                url: url.to_string(),
                why: "a store URL starts with s3:// or file://".to_string(),
            });
        }
        BoxStore::open_dir(url)
    }
}

/// The builder's settings a box keeps.
#[derive(Debug)]
struct Settings {
    store: BoxStore,
    name: String,
    durability: Durability,
    every: u64,
    bytes: u64,
    keep: usize,
}

/// A box whose state survives crashes: see the [module docs](self).
pub struct DurableBox<In, Out> {
    inner: WasmBoxHost<In, Out>,
    host: WasmBoxBuilder<In, Out>,
    settings: Settings,
    _lock: Box<dyn std::any::Any + Send>,
    journal: Box<dyn store::Appender>,
    /// Bytes appended to the current segment (its header included).
    journal_len: u64,
    frame: Vec<u8>,
    input: Vec<u8>,
    next_seq: u64,
    since_checkpoint: u64,
    checkpoints: Vec<Checkpoint>,
    segments: Vec<u64>,
    outputs: Arc<Mutex<Vec<Out>>>,
    callback: Box<dyn FnMut(u64, Out) + Send>,
    key: Option<SnapshotKey>,
    recovery: Recovery,
    /// Why the box stopped taking messages (a journal write failed), if it did.
    stopped: Option<String>,
    /// Bytes of delta checkpoints written since the last full one (since the box was opened).
    delta_bytes_since_full: u64,
    /// Outputs of submitted messages, held until their records are durable.
    held: Vec<(u64, Out)>,
    /// The group-commit flush that makes the held outputs' records durable.
    ticket: u64,
}

impl<In, Out> std::fmt::Debug for DurableBox<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableBox")
            .field("name", &self.settings.name)
            .field("next_seq", &self.next_seq)
            .field("checkpoints", &self.checkpoints)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl<In, Out> Drop for DurableBox<In, Out> {
    fn drop(&mut self) {
        // What an object store still holds in memory goes up (a file has it already).
        if self.stopped.is_none() {
            let _ = self.journal.flush();
        }
        if self.settings.durability == Durability::Sync {
            self.settings.store.group.leave();
        }
    }
}

impl<In, Out: DeserializeOwned + Send + 'static> DurableBox<In, Out> {
    /// A builder for the box `name` of `store`, running `module`.
    pub fn builder(
        module: &WasmBoxModule,
        store: &BoxStore,
        name: &str,
    ) -> DurableBuilder<In, Out> {
        DurableBuilder {
            host: WasmBoxHost::builder(module),
            settings: Settings {
                store: store.clone(),
                name: name.to_string(),
                durability: Durability::Buffered,
                every: 1_000,
                bytes: 64 << 20,
                keep: 2,
            },
            verify: false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        b: Settings,
        host: WasmBoxBuilder<In, Out>,
        inner: WasmBoxHost<In, Out>,
        lock: Box<dyn std::any::Any + Send>,
        journal: Box<dyn store::Appender>,
        checkpoints: Vec<Checkpoint>,
        segments: Vec<u64>,
        next_seq: u64,
        outputs: Arc<Mutex<Vec<Out>>>,
        callback: impl FnMut(u64, Out) + Send + 'static,
        key: Option<SnapshotKey>,
        recovery: Recovery,
    ) -> Self {
        if b.durability == Durability::Sync {
            b.store.group.join();
        }
        DurableBox {
            inner,
            host,
            settings: b,
            _lock: lock,
            journal,
            journal_len: 0,
            frame: Vec::new(),
            input: Vec::new(),
            next_seq,
            since_checkpoint: 0,
            checkpoints,
            segments,
            outputs,
            callback: Box::new(callback),
            key,
            recovery,
            stopped: None,
            delta_bytes_since_full: 0,
            held: Vec::new(),
            ticket: 0,
        }
    }

    /// A new (or emptied) segment gets its header before any record: it follows the last
    /// event.
    fn write_segment_header(&mut self) -> Result<(), Error> {
        let seq = self.next_seq - 1;
        let header = journal::header(&self.inner.module().fingerprint(), seq);
        self.journal.append(&header)?;
        self.journal.sync()?;
        self.journal_len = header.len() as u64;
        Ok(())
    }

    /// Sends one message: it is journaled, then runs; its outputs reach the callback with its
    /// sequence number, which this returns. A message that fails (panic, trap, limit) is
    /// rolled back — the box goes on — and its failure is journaled.
    ///
    /// # Errors
    /// The message's own error (the box goes on), or a journal write error (the box then
    /// stops taking messages: reopen it).
    pub fn message<Q>(&mut self, input: &Q) -> Result<u64, Error>
    where
        Q: Serialize + ?Sized,
        In: Borrow<Q>,
    {
        self.deliver()?;
        let before = self.next_seq;
        let result = self.run(input, self.settings.durability == Durability::Sync);
        self.deliver_now();
        if self.next_seq != before {
            self.after_event()?;
        }
        result
    }

    /// Like [`DurableBox::message`], but without waiting for the journal record to be on
    /// disk: the message runs at once and its outputs are held back until
    /// [`DurableBox::deliver`], which delivers them once a flush covers the record — one
    /// [`BoxStore::commit`] for many boxes driven by one thread (group commit), or the box's
    /// own fsync. With [`Durability::Buffered`] boxes this is `message` with delivery later.
    /// Held outputs of a box dropped before `deliver` are not delivered (their messages are
    /// in the journal: sequence numbers tell an application what it missed).
    ///
    /// # Errors
    /// As [`DurableBox::message`].
    pub fn submit<Q>(&mut self, input: &Q) -> Result<u64, Error>
    where
        Q: Serialize + ?Sized,
        In: Borrow<Q>,
    {
        let before = self.next_seq;
        let result = self.run(input, false);
        self.ticket = self.settings.store.group.ticket();
        if self.next_seq != before {
            self.after_event()?;
        }
        result
    }

    /// Delivers the outputs [`DurableBox::submit`] held back, once their journal records are
    /// durable: at once after a [`BoxStore::commit`] that followed the submits, otherwise
    /// after syncing this box's journal.
    ///
    /// # Errors
    /// The flush's error (the outputs stay held, the box stops taking messages).
    pub fn deliver(&mut self) -> Result<(), Error> {
        if self.held.is_empty() {
            return Ok(());
        }
        if self.settings.durability == Durability::Buffered {
            self.deliver_now();
            return Ok(());
        }
        let durable = match self.settings.store.group.covered(self.ticket) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::Io {
                path: self.settings.name.clone().into(),
                source: std::io::Error::other(e),
            }),
            None => {
                let store = &self.settings.store;
                store
                    .group
                    .commit(&*store.backend, Some(&mut *self.journal))
            }
        };
        if let Err(e) = durable {
            self.stopped = Some(format!("a journal flush failed: {e}"));
            return Err(e);
        }
        self.deliver_now();
        Ok(())
    }

    /// Journals the message (on disk first if `sync`) and runs it; a failure that poisons the
    /// box is journaled and undone by a rebuild. Its outputs join `held`, tagged with its
    /// sequence number.
    fn run<Q>(&mut self, input: &Q, sync: bool) -> Result<u64, Error>
    where
        Q: Serialize + ?Sized,
        In: Borrow<Q>,
    {
        self.check_running()?;
        let mut bytes = std::mem::take(&mut self.input);
        crate::relay::encode_into(self.inner.codec(), input, &mut bytes)?;
        let seq = self.next_seq;
        let record = Record::Message { seq, input: bytes };
        self.append(&record, sync)?;
        let Record::Message { input: bytes, .. } = record else {
            unreachable!("built above")
        };
        self.next_seq += 1;
        let result = self.inner.message_encoded(&bytes);
        self.input = bytes;
        if result.is_err() && self.inner.poisoned().is_some() {
            // Undo it: journal the failure, then rebuild the box from its checkpoint and the
            // journal, which now skips this message.
            self.append(&Record::Failed { seq }, sync)?;
            if let Err(e) = self.rebuild_inner() {
                self.stopped = Some(format!("rebuilding after a failed message failed: {e}"));
                return Err(e);
            }
        }
        let outputs =
            std::mem::take(&mut *self.outputs.lock().unwrap_or_else(PoisonError::into_inner));
        self.held.extend(outputs.into_iter().map(|out| (seq, out)));
        result.map(|()| seq)
    }

    /// Replaces the box by one rebuilt from its latest checkpoint and journal.
    fn rebuild_inner(&mut self) -> Result<(), Error> {
        // The rebuild reads the journal: what an object store still batches goes up first.
        self.journal.flush()?;
        let backend = Arc::clone(&self.settings.store.backend);
        let fingerprint = self.inner.module().fingerprint();
        let place = Place {
            backend: &*backend,
            name: &self.settings.name,
            key: self.key.as_ref(),
            fingerprint: &fingerprint,
        };
        let outputs = Arc::clone(&self.outputs);
        let rebuilt = place.rebuild(
            &self.host,
            &self.checkpoints,
            &self.segments,
            u64::MAX,
            || sink(&outputs),
        )?;
        self.inner = rebuilt.inner;
        self.outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// Sets the box's clock (journaled); returns the event's sequence number.
    ///
    /// # Errors
    /// A journal write error.
    pub fn set_time(&mut self, millis: u64) -> Result<u64, Error> {
        self.check_running()?;
        let seq = self.next_seq;
        self.append(
            &Record::SetTime { seq, millis },
            self.settings.durability == Durability::Sync,
        )?;
        self.next_seq += 1;
        self.inner.set_time(millis);
        self.after_event()?;
        Ok(seq)
    }

    /// Moves the box's clock forward (journaled, to the nanosecond up to 584 years).
    ///
    /// # Errors
    /// A journal write error.
    pub fn advance_time(&mut self, by: Duration) -> Result<u64, Error> {
        self.check_running()?;
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let seq = self.next_seq;
        self.append(
            &Record::AdvanceTime { seq, nanos },
            self.settings.durability == Durability::Sync,
        )?;
        self.next_seq += 1;
        self.inner.advance_time(Duration::from_nanos(nanos));
        self.after_event()?;
        Ok(seq)
    }

    /// Writes a checkpoint now (a delta of what changed since the last one, or a full
    /// snapshot when due: see [`FULL_EVERY`]), starts a new journal segment and applies retention.
    ///
    /// # Errors
    /// I/O errors (the box then stops taking messages).
    pub fn checkpoint(&mut self) -> Result<(), Error> {
        self.check_running()?;
        if self.checkpoints.last().map(|c| c.seq) == Some(self.next_seq - 1) {
            return Ok(());
        }
        let since_full = self
            .checkpoints
            .iter()
            .rev()
            .take_while(|c| !c.full)
            .count();
        // A full snapshot once the deltas since the last one hold half the memory, or are
        // many: recovery then reads at most about 1.5 memories and applies few deltas.
        let full = since_full + 1 >= FULL_EVERY
            || self.delta_bytes_since_full >= self.inner.memory_size() / 2;
        let result = self.write_checkpoint(full);
        if let Err(e) = &result {
            self.stopped = Some(format!("a checkpoint failed: {e}"));
        }
        result
    }

    fn write_checkpoint(&mut self, full: bool) -> Result<(), Error> {
        // The journal up to the checkpoint first: a checkpoint past the journal's end is
        // refused on recovery.
        self.journal.flush()?;
        let seq = self.next_seq - 1;
        let mut checkpoint = Checkpoint { seq, full };
        let bytes = if full {
            let snapshot = self.inner.snapshot_state()?;
            self.delta_bytes_since_full = 0;
            crate::file::encode_file_keyed(&snapshot, self.key.as_ref())
        } else {
            let delta = self.inner.snapshot_delta()?;
            if delta.stored_bytes() >= self.inner.memory_size() / 2 {
                // As big as a full snapshot: write that instead (the same state, the same id).
                self.delta_bytes_since_full = 0;
                checkpoint.full = true;
                let snapshot = self.inner.snapshot_state()?;
                crate::file::encode_file_keyed(&snapshot, self.key.as_ref())
            } else {
                let bytes = crate::file::encode_delta_file(&delta, self.key.as_ref());
                self.delta_bytes_since_full += bytes.len() as u64;
                bytes
            }
        };
        let backend = Arc::clone(&self.settings.store.backend);
        backend.write(&self.settings.name, &checkpoint.object(), &bytes)?;
        self.checkpoints.retain(|c| c.seq != seq);
        self.checkpoints.push(checkpoint);
        if !self.segments.contains(&seq) {
            self.journal = backend.append(&self.settings.name, &segment_object(seq), 0)?;
            self.segments.push(seq);
            self.write_segment_header()?;
        }
        self.since_checkpoint = 0;
        self.retain()
    }

    /// Deletes checkpoints older than the `keep` newest (keeping what the oldest kept one
    /// needs: its full snapshot and the deltas after it) and the journal before it.
    fn retain(&mut self) -> Result<(), Error> {
        let n = self.checkpoints.len();
        if n <= self.settings.keep {
            return Ok(());
        }
        let oldest = n - self.settings.keep;
        let base = (0..=oldest)
            .rev()
            .find(|&i| self.checkpoints[i].full)
            .unwrap_or(0);
        let oldest_seq = self.checkpoints[oldest].seq;
        let backend = Arc::clone(&self.settings.store.backend);
        for c in self.checkpoints.drain(..base) {
            backend.remove(&self.settings.name, &c.object())?;
        }
        for s in self.segments.iter().filter(|&&s| s < oldest_seq) {
            backend.remove(&self.settings.name, &segment_object(*s))?;
        }
        self.segments.retain(|&s| s >= oldest_seq);
        Ok(())
    }

    /// Makes every event journaled so far durable now: an object store uploads what its
    /// journal segment still batches in memory; a directory syncs it to disk. Held outputs of
    /// [`DurableBox::submit`] are delivered.
    ///
    /// # Errors
    /// I/O errors, [`DurableError::NotOwner`] (the box then stops taking messages).
    pub fn flush(&mut self) -> Result<(), Error> {
        self.check_running()?;
        // `sync` makes durable, which includes visible (`flush`).
        if let Err(e) = self.journal.sync() {
            self.stopped = Some(format!("a journal flush failed: {e}"));
            return Err(e);
        }
        self.deliver_now();
        Ok(())
    }

    /// Moves the box out of this host: writes a checkpoint, makes the journal durable and
    /// gives up ownership, so that another host can [`open`](DurableBuilder::open) it at
    /// once (without waiting for a lease to expire).
    ///
    /// # Errors
    /// As [`DurableBox::checkpoint`] and [`DurableBox::flush`]; the box is closed either way
    /// (an owner that could not give its lease up leaves it to expire).
    pub fn release(mut self) -> Result<(), Error> {
        self.checkpoint()?;
        self.flush()
    }

    /// The box's whole state now (it does not count as a checkpoint).
    ///
    /// # Errors
    /// As [`WasmBoxHost::snapshot_state`].
    pub fn snapshot_state(&mut self) -> Result<Snapshot, Error> {
        self.inner.capture_state()
    }

    /// The box's state as it was right after event `seq`, for any `seq` from the oldest kept
    /// checkpoint on: rebuilt from that checkpoint and the journal, in a separate box.
    ///
    /// # Errors
    /// [`DurableError::NotCovered`] for a `seq` outside what is kept; I/O errors.
    pub fn snapshot_at(&mut self, seq: u64) -> Result<Snapshot, Error> {
        let oldest =
            self.checkpoints[self.checkpoints.len().saturating_sub(self.settings.keep)].seq;
        let newest = self.next_seq - 1;
        if seq < oldest || seq > newest {
            return Err(Error::Durable(DurableError::NotCovered {
                seq,
                oldest,
                newest,
            }));
        }
        self.journal.flush()?;
        let backend = Arc::clone(&self.settings.store.backend);
        let fingerprint = self.inner.module().fingerprint();
        let place = Place {
            backend: &*backend,
            name: &self.settings.name,
            key: self.key.as_ref(),
            fingerprint: &fingerprint,
        };
        let mut past = place.rebuild(&self.host, &self.checkpoints, &self.segments, seq, || {
            Box::new(|_| {})
        })?;
        past.inner.capture_state()
    }

    /// What opening the box found and did.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The sequence number of the last journaled event (0 for a new box).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The box's name in its store.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Why the box stopped taking messages, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    fn check_running(&self) -> Result<(), Error> {
        match &self.stopped {
            Some(cause) => Err(Error::Durable(DurableError::Stopped {
                cause: cause.clone(),
            })),
            None => Ok(()),
        }
    }

    fn append(&mut self, record: &Record, sync: bool) -> Result<(), Error> {
        journal::frame(record, &mut self.frame);
        let store = &self.settings.store;
        let journal = &mut self.journal;
        let result = journal.append(&self.frame).and_then(|()| {
            if sync {
                // Group commit with the store's other boxes.
                store.group.commit(&*store.backend, Some(&mut **journal))
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.journal_len += self.frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.stopped = Some(format!("a journal write failed: {e}"));
                Err(e)
            }
        }
    }

    /// Hands every held output to the callback.
    fn deliver_now(&mut self) {
        for (seq, out) in std::mem::take(&mut self.held) {
            (self.callback)(seq, out);
        }
    }

    fn after_event(&mut self) -> Result<(), Error> {
        self.since_checkpoint += 1;
        let by_count = self.settings.every > 0 && self.since_checkpoint >= self.settings.every;
        if by_count || self.journal_len >= self.settings.bytes {
            self.checkpoint()?;
        }
        Ok(())
    }
}

/// Lists a box's checkpoints and journal segments, sorted by sequence number.
fn list(backend: &dyn Backend, name: &str) -> Result<(Vec<Checkpoint>, Vec<u64>), Error> {
    let mut checkpoints = Vec::new();
    let mut segments = Vec::new();
    for object in backend.objects(name)? {
        let seq_of = |rest: &str| rest.parse::<u64>().ok();
        if let Some(seq) = object
            .strip_prefix("checkpoint-")
            .and_then(|r| r.strip_suffix(".snap"))
            .and_then(seq_of)
        {
            checkpoints.push(Checkpoint { seq, full: true });
        } else if let Some(seq) = object
            .strip_prefix("checkpoint-")
            .and_then(|r| r.strip_suffix(".delta"))
            .and_then(seq_of)
        {
            checkpoints.push(Checkpoint { seq, full: false });
        } else if let Some(seq) = object
            .strip_prefix("journal-")
            .and_then(|r| r.strip_suffix(".wbj"))
            .and_then(seq_of)
        {
            segments.push(seq);
        }
    }
    checkpoints.sort_by_key(|c| (c.seq, !c.full));
    segments.sort_unstable();
    Ok((checkpoints, segments))
}

fn corrupt(file: &str, offset: u64, what: &str) -> Error {
    Error::Durable(DurableError::Corrupt {
        file: file.to_string(),
        offset,
        what: what.to_string(),
    })
}

/// A box's stored state, for reading.
struct Place<'a> {
    backend: &'a dyn Backend,
    name: &'a str,
    key: Option<&'a SnapshotKey>,
    fingerprint: &'a [u8; 32],
}

/// A materialised checkpoint: a full snapshot file as read (restored straight from its bytes),
/// or a snapshot rolled forward by deltas.
enum Base {
    File(Vec<u8>),
    Owned(Box<Snapshot>),
}

/// A box rebuilt from a checkpoint and the journal after it.
struct Rebuilt<In, Out> {
    inner: WasmBoxHost<In, Out>,
    /// The checkpoint it started from.
    from: u64,
    replayed: Replayed,
    notes: Vec<String>,
}

/// Why a replay stopped.
enum Stop {
    /// The message `seq` failed again (its failure was not journaled: a crash came first).
    Failed(u64),
    Error(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Error(e)
    }
}

/// A callback that collects outputs into `outputs`.
fn sink<Out: Send + 'static>(outputs: &Arc<Mutex<Vec<Out>>>) -> Box<dyn FnMut(Out) + Send> {
    let outputs = Arc::clone(outputs);
    Box::new(move |out| {
        outputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(out);
    })
}

struct Replayed {
    last_seq: u64,
    events: u64,
    /// The last segment read and the length of its good part.
    last_segment: Option<(u64, u64)>,
    torn: Option<(String, u64, u64)>,
}

impl Place<'_> {
    /// The newest checkpoint at or before `until` that can be rebuilt: from the newest full
    /// snapshot, through the deltas after it, stopping at the first that cannot be read or
    /// applied (and going back to an older full snapshot if the newest is damaged).
    fn materialize(
        &self,
        checkpoints: &[Checkpoint],
        until: u64,
    ) -> Result<(u64, Base, Vec<String>), Error> {
        let usable: Vec<Checkpoint> = checkpoints
            .iter()
            .copied()
            .filter(|c| c.seq <= until)
            .collect();
        let mut notes = Vec::new();
        let mut last_error = None;
        for (i, full) in usable.iter().enumerate().rev().filter(|(_, c)| c.full) {
            let object = full.object();
            // Checked (header, checksum, MAC, decoding) without copying the memory.
            let read = self.backend.read(self.name, &object).and_then(|bytes| {
                let fingerprint = crate::file::decode_view(&bytes, self.key)?.module_fingerprint;
                Ok((bytes, fingerprint))
            });
            let (bytes, fingerprint) = match read {
                Ok(r) => r,
                Err(e) => {
                    notes.push(format!("{object} cannot be used ({e})"));
                    last_error = Some(corrupt(&object, 0, &e.to_string()));
                    continue;
                }
            };
            if fingerprint != *self.fingerprint {
                return Err(Error::Durable(DurableError::WrongModule {
                    file: object,
                    expected: crate::snapshot::hex(self.fingerprint),
                    found: crate::snapshot::hex(&fingerprint),
                }));
            }
            let deltas: Vec<Checkpoint> = usable[i + 1..]
                .iter()
                .copied()
                .filter(|c| !c.full)
                .collect();
            if deltas.is_empty() {
                return Ok((full.seq, Base::File(bytes), notes));
            }
            let mut snapshot = decode_file_keyed(&bytes, self.key)?;
            drop(bytes);
            let mut at = full.seq;
            for delta in &deltas {
                let object = delta.object();
                let applied = self
                    .backend
                    .read(self.name, &object)
                    .and_then(|b| decode_delta_file_keyed(&b, self.key).map_err(Error::from))
                    .and_then(|d| snapshot.apply(&d).map_err(Error::from));
                if let Err(e) = applied {
                    notes.push(format!("{object} cannot be used ({e}): recovering from checkpoint {at} and the journal after it"));
                    break;
                }
                at = delta.seq;
            }
            return Ok((at, Base::Owned(Box::new(snapshot)), notes));
        }
        Err(last_error.unwrap_or_else(|| {
            corrupt(
                "checkpoint",
                0,
                &format!("no checkpoint at or before {until}"),
            )
        }))
    }

    /// A box rebuilt from the newest usable checkpoint at or before `until` and the journal
    /// after it, up to event `until`. A message that fails again in the replay (a crash came
    /// before its failure was journaled) is skipped, as it was undone when it failed.
    fn rebuild<In, Out: DeserializeOwned + Send + 'static>(
        &self,
        host: &WasmBoxBuilder<In, Out>,
        checkpoints: &[Checkpoint],
        segments: &[u64],
        until: u64,
        callback: impl Fn() -> Box<dyn FnMut(Out) + Send>,
    ) -> Result<Rebuilt<In, Out>, Error> {
        let (from, base, mut notes) = self.materialize(checkpoints, until)?;
        let mut skip = std::collections::BTreeSet::new();
        loop {
            let mut inner = match &base {
                Base::File(bytes) => host.clone().restore_from_bytes(bytes, callback())?,
                Base::Owned(snapshot) => host.clone().restore(snapshot, callback())?,
            };
            match self.replay(&mut inner, segments, from, until, &skip) {
                Ok(replayed) => {
                    return Ok(Rebuilt {
                        inner,
                        from,
                        replayed,
                        notes,
                    });
                }
                Err(Stop::Failed(seq)) => {
                    notes.push(format!(
                        "message {seq} failed again in the replay (its failure was not journaled): skipped"
                    ));
                    skip.insert(seq);
                }
                Err(Stop::Error(e)) => return Err(e),
            }
        }
    }

    /// Replays the journal after checkpoint `from`, up to event `until`, into `inner`,
    /// skipping the messages in `skip`.
    fn replay<In, Out: DeserializeOwned>(
        &self,
        inner: &mut WasmBoxHost<In, Out>,
        segments: &[u64],
        from: u64,
        until: u64,
        skip: &std::collections::BTreeSet<u64>,
    ) -> Result<Replayed, Stop> {
        let mut done = Replayed {
            last_seq: from,
            events: 0,
            last_segment: None,
            torn: None,
        };
        let starts: Vec<u64> = segments.iter().copied().filter(|&s| s >= from).collect();
        inner.replaying = true;
        let result = (|| -> Result<(), Stop> {
            for (i, &start) in starts.iter().enumerate() {
                let object = segment_object(start);
                if start != done.last_seq {
                    return Err(Stop::Error(corrupt(
                        &object,
                        0,
                        &format!(
                            "the segment starts after event {start}, but the journal before it ends at {}",
                            done.last_seq
                        ),
                    )));
                }
                let bytes = self.backend.read(self.name, &object)?;
                let segment = journal::parse(&object, &bytes, self.fingerprint, start)?;
                if let Some((offset, len)) = segment.torn {
                    if i + 1 != starts.len() {
                        return Err(Stop::Error(corrupt(
                            &object,
                            offset,
                            "a record is cut short in the middle of the journal",
                        )));
                    }
                    done.torn = Some((object.clone(), offset, len));
                }
                done.last_segment = Some((start, segment.good_len));
                let records = &segment.records;
                for (k, (_, record)) in records.iter().enumerate() {
                    if record.seq() > until {
                        return Ok(());
                    }
                    match record {
                        Record::Message { seq, input } => {
                            let failed = matches!(records.get(k + 1), Some((_, Record::Failed { seq: s })) if s == seq);
                            if !failed
                                && !skip.contains(seq)
                                && inner.message_encoded(input).is_err()
                                && inner.poisoned().is_some()
                            {
                                return Err(Stop::Failed(*seq));
                            }
                            done.last_seq = *seq;
                        }
                        Record::Failed { .. } => continue,
                        Record::SetTime { seq, millis } => {
                            inner.set_time(*millis);
                            done.last_seq = *seq;
                        }
                        Record::AdvanceTime { seq, nanos } => {
                            inner.advance_time(Duration::from_nanos(*nanos));
                            done.last_seq = *seq;
                        }
                    }
                    done.events += 1;
                }
            }
            Ok(())
        })();
        inner.replaying = false;
        result.map(|()| done)
    }

    /// Replays from the checkpoint before the latest to the latest and compares.
    fn verify<In, Out: DeserializeOwned + Send + 'static>(
        &self,
        host: &WasmBoxBuilder<In, Out>,
        checkpoints: &[Checkpoint],
        segments: &[u64],
    ) -> Result<Option<u64>, Error> {
        let Some(latest) = checkpoints.last() else {
            return Ok(None);
        };
        let (latest_at, expected, _) = self.materialize(checkpoints, latest.seq)?;
        let expected = match expected {
            Base::File(bytes) => decode_file_keyed(&bytes, self.key)?,
            Base::Owned(snapshot) => *snapshot,
        };
        if latest_at == 0 || latest_at != latest.seq {
            return Ok(None);
        }
        let mut past = self.rebuild(
            host,
            &checkpoints[..checkpoints.len() - 1],
            segments,
            latest_at,
            || Box::new(|_| {}),
        )?;
        if past.inner.capture_state()? != expected {
            return Err(Error::Durable(DurableError::Diverged { seq: latest_at }));
        }
        Ok(Some(latest_at))
    }
}
