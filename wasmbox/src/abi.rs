//! The WasmBox ABI: the one place where the names, the version and the byte layout shared by a
//! guest and its host are written down.
//!
//! # How bytes move
//!
//! Values crossing the boundary are encoded with a [`Codec`] the host chooses per call:
//! [`Codec::Bincode`] (version 1, with the [`options`] below: little endian, variable-length
//! integers, trailing bytes rejected), which every guest speaks, or [`Codec::Json`] (UTF-8 JSON
//! text, one value), which a guest speaks only when built with the `json` feature of the
//! `wasmbox` crate. Every pointer and length is a `u32` offset into the guest's linear memory.
//!
//! * **Host → guest (a message).** The host calls the export [`EXPORT_INPUT_BUFFER`]`(len)`.
//!   The guest makes sure its own input buffer (a `Vec<u8>` it owns and never frees) can hold
//!   `len` bytes and returns the buffer's address. The host writes the encoded `Input` there
//!   (after checking that `ptr..ptr + len` lies inside memory) and calls
//!   [`EXPORT_MESSAGE`]`(len, codec)`. The guest decodes the bytes from its buffer with that
//!   codec, then runs its handler. If they do not decode, it hands the reason to the host with
//!   the import [`IMPORT_REJECT`]`(ptr, len)` (UTF-8 text, e.g. serde's message with the
//!   column) and returns [`Status::InputDecode`]. The host may cache the buffer address between
//!   messages while it has not asked for more room; it forgets it whenever the memory is
//!   replaced (restore).
//! * **Guest → host (an output).** The guest encodes an `Output` — with the codec of the call
//!   it is running in — into memory it owns and calls the import [`IMPORT_SEND`]`(ptr, len)`.
//!   The host copies the bytes out during the call; the guest keeps ownership and may reuse the
//!   memory as soon as the call returns. Outputs are decoded and handed to the host's callback,
//!   in the order they were sent, when the guest call that produced them returns.
//! * **Guest panic.** The guest's panic hook formats the panic message and location and calls
//!   the import [`IMPORT_PANIC`]`(ptr, len)` with UTF-8 bytes, then aborts (a trap). The host
//!   copies the text and reports it with the trap.
//!
//! No memory is ever owned across the boundary: each side frees only what it allocated, so
//! there is no allocator export and no alignment to get wrong.
//!
//! # Life cycle
//!
//! 1. The host instantiates the module and checks [`EXPORT_ABI_VERSION`]`() == `[`ABI_VERSION`].
//!    It learns which codecs the guest speaks from [`EXPORT_CODECS`]`()`, a bit set of
//!    `1 << codec`; a host that wants JSON from a guest without it refuses the guest there,
//!    before running any of its code.
//! 2. It calls [`EXPORT_INIT`]`(codec)` once: the guest installs its panic hook and builds its
//!    state (the sync `init`, or the async `run` polled until it waits for a message); outputs
//!    sent meanwhile use `codec`. It returns a [`Status`].
//! 3. Each message is one [`EXPORT_MESSAGE`]`(len, codec)` call, which returns a [`Status`].
//!
//! A restored box skips step 2: its memory already holds the initialised state. The codec is
//! not part of a box's state: any call may use any codec the guest speaks.

/// Version of this ABI. The host refuses guests built against another version. Version 2 added
/// codecs ([`EXPORT_CODECS`], the `codec` parameters) and [`IMPORT_REJECT`].
pub const ABI_VERSION: u32 = 2;

/// Name of the import module holding the host functions a guest calls.
pub const IMPORT_MODULE: &str = "wasmbox";
/// Import `send(ptr: u32, len: u32)`: hand one encoded output to the host.
pub const IMPORT_SEND: &str = "wasmbox_send";
/// Import `panic(ptr: u32, len: u32)`: hand the UTF-8 text of a guest panic to the host.
pub const IMPORT_PANIC: &str = "wasmbox_panic";
/// Import `reject(ptr: u32, len: u32)`: hand the host the UTF-8 reason why the current input
/// does not decode, before returning [`Status::InputDecode`].
pub const IMPORT_REJECT: &str = "wasmbox_reject";

/// Export `abi_version() -> u32`: returns [`ABI_VERSION`].
pub const EXPORT_ABI_VERSION: &str = "wasmbox_abi_version";
/// Export `codecs() -> u32`: the codecs the guest speaks, a bit set of `1 << codec`.
pub const EXPORT_CODECS: &str = "wasmbox_codecs";
/// Export `init(codec: u32) -> u32`: set up the guest, sending any outputs with `codec`;
/// returns a [`Status`]. Called once on a new box, never on a restored one.
pub const EXPORT_INIT: &str = "wasmbox_init";
/// Export `input_buffer(len: u32) -> u32`: address of a guest buffer of at least `len` bytes.
pub const EXPORT_INPUT_BUFFER: &str = "wasmbox_input_buffer";
/// Export `message(len: u32, codec: u32) -> u32`: handle the `len` bytes at the start of the
/// input buffer, encoded with `codec`; returns a [`Status`] code.
pub const EXPORT_MESSAGE: &str = "wasmbox_message";
/// Name of the guest's linear memory export.
pub const EXPORT_MEMORY: &str = "memory";

/// Result of one [`EXPORT_MESSAGE`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// The message was handled.
    Ok = 0,
    /// The bytes did not decode as the guest's `Input` type.
    InputDecode = 1,
    /// The guest's async `run` function has returned; it takes no more messages.
    Finished = 2,
    /// `message` was called before `init`.
    NotInitialised = 3,
    /// The call asked for a codec the guest does not speak.
    CodecUnsupported = 4,
}

/// How the values of one call are encoded, in both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Codec {
    /// bincode 1 with [`options`]: compact, every guest speaks it. The default.
    #[default]
    Bincode = 0,
    /// UTF-8 JSON text (`serde_json`), for gateways, scripts and other languages; spoken by
    /// guests built with the `json` feature of the `wasmbox` crate.
    Json = 1,
}

impl Codec {
    /// The codec for a code, or `None` for an unknown code.
    pub fn from_code(code: u32) -> Option<Codec> {
        [Codec::Bincode, Codec::Json]
            .into_iter()
            .find(|c| *c as u32 == code)
    }

    /// This codec's bit in [`EXPORT_CODECS`]'s set.
    pub fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl Status {
    /// The status for a code returned by a guest, or `None` for an unknown code.
    pub fn from_code(code: u32) -> Option<Status> {
        [
            Status::Ok,
            Status::InputDecode,
            Status::Finished,
            Status::NotInitialised,
            Status::CodecUnsupported,
        ]
        .into_iter()
        .find(|s| *s as u32 == code)
    }
}

/// The bincode options used for every message in both directions.
///
/// `limit` is the largest number of bytes a decode may consume (and so allocate); encoders
/// pass `u64::MAX` (or use [`encoder`]).
pub fn options(limit: u64) -> impl bincode::Options + Copy {
    use bincode::Options as _;
    bincode::DefaultOptions::new().with_limit(limit)
}

/// The options of [`options`] without a limit, for encoding messages: the same bytes, without
/// the pass that measures a value before writing it (which only a limit needs).
fn encoder() -> impl bincode::Options + Copy {
    bincode::DefaultOptions::new()
}

/// Encode a value as a WasmBox message.
///
/// # Errors
/// Fails only if the value's `Serialize` implementation fails.
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    use bincode::Options as _;
    encoder().serialize(value)
}

/// Encode a value as a WasmBox message into `buf`, which is cleared first.
///
/// # Errors
/// Fails only if the value's `Serialize` implementation fails.
pub fn encode_into<T: serde::Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), bincode::Error> {
    use bincode::Options as _;
    buf.clear();
    encoder().serialize_into(buf, value)
}

/// Decode a WasmBox message, consuming exactly all of `bytes`.
///
/// # Errors
/// Fails if the bytes are not exactly one encoded `T`.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options as _;
    options(bytes.len() as u64).deserialize(bytes)
}

/// Writes the guest's exports. Used by the `#[wasmbox]` and `#[wasmbox_sync]` macros; `$init` is
/// an expression of type `fn()` that builds the guest's state.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_guest {
    ($init:expr) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            #[unsafe(export_name = "wasmbox_abi_version")]
            extern "C" fn __wasmbox_abi_version() -> u32 {
                $crate::abi::ABI_VERSION
            }
            #[unsafe(export_name = "wasmbox_codecs")]
            extern "C" fn __wasmbox_codecs() -> u32 {
                $crate::__private::codecs()
            }
            #[unsafe(export_name = "wasmbox_init")]
            extern "C" fn __wasmbox_init(codec: u32) -> u32 {
                $crate::__private::init(codec, $init)
            }
            #[unsafe(export_name = "wasmbox_input_buffer")]
            extern "C" fn __wasmbox_input_buffer(len: u32) -> u32 {
                $crate::__private::input_buffer(len)
            }
            #[unsafe(export_name = "wasmbox_message")]
            extern "C" fn __wasmbox_message(len: u32, codec: u32) -> u32 {
                $crate::__private::message(len, codec)
            }
        };
        // Elsewhere (rust-analyzer, `cargo check` on the host) the guest still type-checks.
        #[cfg(not(target_family = "wasm"))]
        const _: fn() = || $crate::__private::check($init);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for s in [
            Status::Ok,
            Status::InputDecode,
            Status::Finished,
            Status::NotInitialised,
            Status::CodecUnsupported,
        ] {
            assert_eq!(Status::from_code(s as u32), Some(s));
        }
        assert_eq!(Status::from_code(99), None);
    }

    #[test]
    fn decode_rejects_trailing_and_short_bytes() {
        let bytes = encode(&(7u32, String::from("hi"))).unwrap();
        assert_eq!(decode::<(u32, String)>(&bytes).unwrap(), (7, "hi".into()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<(u32, String)>(&longer).is_err());
        assert!(decode::<(u32, String)>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn decode_does_not_trust_length_fields() {
        // A Vec claiming 2^60 elements in 10 bytes must fail, not allocate.
        let mut bytes = vec![0xff];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        bytes.push(1);
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }

    #[test]
    fn export_names_match_macro() {
        // The macro above must spell the names with literals (export_name takes no paths);
        // this keeps the two spellings in step.
        let src = include_str!("abi.rs");
        for name in [
            EXPORT_ABI_VERSION,
            EXPORT_CODECS,
            EXPORT_INIT,
            EXPORT_INPUT_BUFFER,
            EXPORT_MESSAGE,
        ] {
            assert!(src.contains(&format!("export_name = \"{name}\"")), "{name}");
        }
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;

    #[test]
    fn codec_codes_round_trip() {
        for c in [Codec::Bincode, Codec::Json] {
            assert_eq!(Codec::from_code(c as u32), Some(c));
        }
        assert_eq!(Codec::from_code(2), None);
        assert_eq!(Codec::Json.bit(), 2);
    }
}
