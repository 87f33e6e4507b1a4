//! The errors of the host library.

use std::path::PathBuf;

/// Everything that can go wrong in a WasmBox host. Nothing a guest or a file does panics the
/// host: it ends up as one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid WebAssembly module.
    #[error("not a valid WebAssembly module: {0}")]
    InvalidModule(String),
    /// The module is valid WebAssembly but not a WasmBox guest (missing or mistyped exports,
    /// unknown imports, unsupported features).
    #[error("not a WasmBox guest: {0}")]
    NotAGuest(String),
    /// The guest was built against another version of the WasmBox ABI.
    #[error(
        "the guest uses WasmBox ABI version {found}, this host speaks version {expected}: rebuild the guest against this version of the `wasmbox` crate"
    )]
    AbiVersion {
        /// The guest's version.
        found: u32,
        /// The host's version.
        expected: u32,
    },
    /// wasmtime could not compile or instantiate the module.
    #[error("wasmtime: {0}")]
    Wasmtime(String),
    /// The guest panicked; `message` is its panic text, with the location.
    #[error("the guest panicked: {message}")]
    GuestPanicked {
        /// The panic message as the guest formatted it, e.g. `panicked at src/lib.rs:3:5: ...`.
        message: String,
    },
    /// The guest trapped (out-of-bounds access, division by zero, stack overflow, ...).
    #[error("the guest trapped: {message}")]
    GuestTrapped {
        /// The kind of trap, when wasmtime names one.
        trap: Option<wasmtime::Trap>,
        /// wasmtime's description, with the guest backtrace when available.
        message: String,
    },
    /// The guest exited through WASI `proc_exit`.
    #[error("the guest exited with status {0}")]
    GuestExited(i32),
    /// A limit set on the box was exceeded.
    #[error("the guest exceeded its {limit} limit")]
    LimitExceeded {
        /// Which limit.
        limit: crate::LimitKind,
    },
    /// The box is unusable since an earlier failure; restore a snapshot to heal it.
    #[error(
        "the box is poisoned by an earlier failure ({cause}); restore a snapshot to use it again"
    )]
    Poisoned {
        /// What poisoned it.
        cause: String,
    },
    /// A store URL or setting that cannot be used.
    #[error("bad store URL `{url}`: {why}")]
    BadUrl {
        /// The URL (or the settings, written as one).
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The input could not be encoded.
    #[error("could not encode the input: {0}")]
    InputEncode(String),
    /// The guest could not decode the input as its `Input` type: host and guest disagree on
    /// the message type, or (with [`Codec::Json`](crate::Codec::Json)) the text is not a valid
    /// `Input`. The guest did not run its handler; the box is not poisoned.
    #[error("the guest could not decode the message as its Input type: {reason}")]
    InputRejected {
        /// The guest's decoder's message, e.g. serde's with the line and column.
        reason: String,
    },
    /// The guest sent bytes that do not decode as the host's `Output` type.
    #[error("the guest sent an output that does not decode as the host's Output type: {0}")]
    OutputDecode(String),
    /// The box was asked to use a codec its guest does not speak.
    #[error(
        "the guest does not speak the {codec:?} codec: build it with the `json` feature of the `wasmbox` crate"
    )]
    CodecUnsupported {
        /// The codec asked for.
        codec: crate::Codec,
    },
    /// A message or output is larger than the box's message size limit.
    #[error("a message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The guest's async `run` function has returned, so it takes no more messages.
    #[error("the guest's run function has returned; it takes no more messages")]
    GuestFinished,
    /// The guest passed the host a pointer and length outside its memory, or misbehaved in
    /// another way the ABI forbids.
    #[error("the guest broke the WasmBox ABI: {0}")]
    GuestAbi(String),
    /// The template was prepared from another [`WasmBoxModule`](crate::WasmBoxModule) value
    /// than the box's (even one loaded from the same bytes): its instances would run on that
    /// module's engine, outside the box's own deadline enforcement.
    #[error(
        "the template was prepared from another WasmBoxModule than this box's; prepare it with this box's module"
    )]
    ForeignTemplate,
    /// The kernel's change tracking was requested
    /// ([`ChangeTracking::Kernel`](crate::ChangeTracking::Kernel)) and is not available here.
    #[error("the kernel cannot track this box's memory writes: {0}")]
    ChangeTracking(String),
    /// A snapshot could not be used; the box is unchanged.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A durable box's store, journal or checkpoints (see [`crate::durable`]).
    #[error(transparent)]
    Durable(#[from] DurableError),
}

/// What can go wrong with a durable box's stored state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// Another owner has the box open (another process, or another `DurableBox` here).
    #[error("the box `{name}` is open elsewhere: a box has one writer at a time")]
    Locked {
        /// The box.
        name: String,
    },
    /// Another host took the box over (this one's lease expired): nothing this box writes
    /// from now on becomes part of the box's history, and it takes no more messages.
    #[error("the box `{name}` is now owned by `{holder}`: this host lost its lease")]
    NotOwner {
        /// The box.
        name: String,
        /// Who holds it now.
        holder: String,
    },
    /// A box name that cannot be stored.
    #[error(
        "`{name}` is not a valid box name: 1 to 128 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, not starting with `.`"
    )]
    BadName {
        /// The name given.
        name: String,
    },
    /// A journal segment or checkpoint that cannot be used; nothing was overwritten.
    #[error("{file}, at byte {offset}: {what}")]
    Corrupt {
        /// The object (file) in the box.
        file: String,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A journal segment or checkpoint of another module.
    #[error("{file} belongs to another module (fingerprint {found}, this box runs {expected})")]
    WrongModule {
        /// The object (file) in the box.
        file: String,
        /// This box's module fingerprint.
        expected: String,
        /// The one found.
        found: String,
    },
    /// `snapshot_at` for an event outside what is kept.
    #[error(
        "event {seq} is not covered: the kept checkpoints and journal reach from {oldest} to {newest}"
    )]
    NotCovered {
        /// The event asked for.
        seq: u64,
        /// The oldest event that can be rebuilt.
        oldest: u64,
        /// The newest.
        newest: u64,
    },
    /// Verification: replaying the journal did not reproduce a checkpoint.
    #[error(
        "replaying the journal does not reproduce checkpoint {seq}: the module changed, or the host is not deterministic"
    )]
    Diverged {
        /// The checkpoint's sequence number.
        seq: u64,
    },
    /// The box stopped taking messages after a journal or checkpoint write failed.
    #[error("the box stopped taking messages: {cause}; reopen it")]
    Stopped {
        /// What failed.
        cause: String,
    },
}

/// Why a snapshot was refused. In every case the box it was offered to is left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file does not start with the WasmBox snapshot magic bytes.
    #[error("not a WasmBox snapshot file (wrong magic bytes)")]
    NotASnapshot,
    /// The file is shorter than its header says.
    #[error("the snapshot file is truncated: {found} bytes where {expected} were expected")]
    Truncated {
        /// Bytes present.
        found: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// The file has bytes after the end its header announces.
    #[error("the snapshot file has {extra} unexpected bytes after its end")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// The content does not match its checksum: the file is damaged.
    #[error(
        "the snapshot file is damaged: checksum {found:08x} does not match the recorded {expected:08x}"
    )]
    Checksum {
        /// Recorded in the header.
        expected: u32,
        /// Computed over the content.
        found: u32,
    },
    /// The snapshot's format version is not one this host reads.
    #[error(
        "snapshot format version {found} is not supported (this host reads version {supported})"
    )]
    Version {
        /// The snapshot's version.
        found: u32,
        /// The version this host reads.
        supported: u32,
    },
    /// The snapshot was taken from another module.
    #[error(
        "the snapshot belongs to another module (fingerprint {found}, this box runs {expected})"
    )]
    WrongModule {
        /// Fingerprint of this box's module.
        expected: String,
        /// Fingerprint recorded in the snapshot.
        found: String,
    },
    /// The snapshot's memory is larger than this box may hold.
    #[error(
        "the snapshot needs {pages} pages of memory, more than this box's limit of {max_pages}"
    )]
    TooLarge {
        /// Pages the snapshot needs.
        pages: u64,
        /// Pages the box may have.
        max_pages: u64,
    },
    /// The host has a snapshot key, and the file carries no MAC: it was written by a host
    /// without the key, or its MAC was stripped.
    #[error("the snapshot file has no MAC, and this host accepts only files sealed with its key")]
    MacMissing,
    /// The file's MAC does not match its content under the host's key: the file was changed
    /// after it was written, or written with another key.
    #[error("the snapshot file's MAC does not match: it was altered, or sealed with another key")]
    MacMismatch,
    /// A delta applied to a snapshot other than its parent.
    #[error(
        "the delta continues snapshot {parent}, not this one ({found}): apply a chain in order, starting from the snapshot it was taken after"
    )]
    WrongParent {
        /// The id of the snapshot the delta continues.
        parent: String,
        /// The id of the snapshot it was applied to.
        found: String,
    },
    /// A file of the other kind: a delta file where a snapshot file was expected, or the
    /// reverse.
    #[error("this is a {found} file, not a {expected} file")]
    WrongKind {
        /// What was expected: "snapshot" or "delta".
        expected: &'static str,
        /// What the file is.
        found: &'static str,
    },
    /// The content decodes, but is not consistent (e.g. memory chunks outside the memory,
    /// globals that do not match the module), or does not decode at all.
    #[error("the snapshot is malformed: {0}")]
    Malformed(String),
}
