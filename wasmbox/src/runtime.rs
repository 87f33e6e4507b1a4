//! The guest side of a box: its state, the async context and the sync trait.
//!
//! # How an async guest runs
//!
//! An async guest is its `run` future plus a *mailbox*, a first-in first-out queue of decoded
//! messages, driven by a small single-threaded executor:
//!
//! * Init builds the future and polls it until it stops (see below), normally at its first
//!   pending [`WasmBoxContext::next`].
//! * Each message is decoded, pushed to the back of the mailbox, and the future is polled
//!   until it stops. `next()` pops the front of the mailbox, so messages are taken one at a
//!   time, in the order they arrived; any that arrive while the guest awaits something else
//!   wait in the mailbox and none is lost or reordered.
//! * "Until it stops" means: poll with a real waker; if the future returned `Pending` but woke
//!   itself during that poll (a yield), poll it again at once; stop when it is `Pending`
//!   without having woken itself, or `Ready`. Nothing else ever wakes a guest (there are no
//!   timers or I/O), so a future pending without a wake is polled again only when the next
//!   message arrives. A future that wakes itself forever is a runaway guest, stopped by the
//!   host's deadline and fuel limits.
//! * Once `run` has returned, the box takes no more messages. Messages still in the mailbox
//!   are then dropped; if the message whose poll ended `run` is among them, its call reports
//!   [`Status::Finished`] rather than [`Status::Ok`], so the host is never told that a message
//!   was handled when it was dropped. (A message queued by an earlier call, which reported
//!   `Ok` for being queued, is dropped silently: `run` chose to return without reading it.)
//!
//! None of this changes the bytes exchanged with the host, described in [`crate::abi`].

use crate::abi::Status;
use __private::Guest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// The messages an async guest has received and not yet taken, oldest first.
type Mailbox<In> = Rc<RefCell<VecDeque<In>>>;

/// The handle an async guest receives: it yields incoming messages and sends outputs.
///
/// `In` is the type of the messages the host sends, `Out` the type of what the guest sends
/// back; both may be any serde type.
pub struct WasmBoxContext<In, Out> {
    mailbox: Mailbox<In>,
    _out: PhantomData<fn(Out)>,
}

impl<In, Out> std::fmt::Debug for WasmBoxContext<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBoxContext").finish_non_exhaustive()
    }
}

impl<In, Out> Clone for WasmBoxContext<In, Out> {
    fn clone(&self) -> Self {
        WasmBoxContext {
            mailbox: Rc::clone(&self.mailbox),
            _out: PhantomData,
        }
    }
}

impl<In, Out: Serialize> WasmBoxContext<In, Out> {
    /// Waits for the next message from the host.
    ///
    /// Messages wait in a first-in first-out mailbox until they are taken: each message the
    /// host sends is queued at the back, and `next()` takes the one at the front, so messages
    /// are taken in the order they were sent, and none is lost while the guest awaits
    /// something else (a yield, a join, a future of its own). On an empty mailbox it is
    /// pending, without waking: the guest is polled again when the next message arrives.
    ///
    /// If `run` returns while messages are still in the mailbox, they are dropped. The message
    /// whose arrival let `run` return is then among them, and its call reports that the guest
    /// has finished (the host's `Error::GuestFinished`) rather than success, as every later
    /// call does; messages queued by earlier calls, which reported them delivered, are dropped
    /// without a word.
    pub fn next(&self) -> impl Future<Output = In> + '_ {
        std::future::poll_fn(move |_| match self.mailbox.borrow_mut().pop_front() {
            Some(message) => Poll::Ready(message),
            None => Poll::Pending,
        })
    }

    /// Sends one output to the host. Outputs reach the host in the order they are sent.
    pub fn send(&self, output: Out) {
        send(&output)
    }
}

/// A guest written as a type: `init` builds it, `message` handles each input.
///
/// Mark the type with `#[wasmbox_sync]` to make it the module's guest.
pub trait WasmBox {
    /// The type of the messages the host sends.
    type Input: DeserializeOwned;
    /// The type of what the guest sends back through the callback.
    type Output: Serialize;

    /// Builds the guest. `callback` sends one output to the host; it may be called at any time,
    /// including from `init` itself.
    fn init(callback: Box<dyn Fn(Self::Output) + Send + Sync>) -> Self
    where
        Self: Sized;

    /// Handles one message.
    fn message(&mut self, input: Self::Input);
}

/// Encodes (with the codec of the current call) and sends one output.
fn send<Out: Serialize>(output: &Out) {
    thread_local! {
        static OUT_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    OUT_BUF.with(|buf| {
        // A re-entrant send (an output whose Serialize sends) gets a buffer of its own.
        let mut fresh = Vec::new();
        let mut borrowed = buf.try_borrow_mut();
        let buf = match borrowed.as_deref_mut() {
            Ok(buf) => buf,
            Err(_) => &mut fresh,
        };
        match codec::encode_into(output, buf) {
            Ok(()) => crate::sys::send(buf),
            Err(e) => panic!("wasmbox: could not encode an output: {e}"),
        }
    })
}

/// Decodes one input with the codec of the current call; if it does not decode, hands the
/// reason to the host (which reports it with the refusal) and returns `None`.
fn decode_input<In: DeserializeOwned>(bytes: &[u8]) -> Option<In> {
    match codec::decode(bytes) {
        Ok(input) => Some(input),
        Err(reason) => {
            crate::sys::reject(&reason);
            None
        }
    }
}

/// The codec of the guest call being run (see [`abi::Codec`]): set by the `init` and `message`
/// exports for the duration of the call and put back afterwards, so it leaves no trace in the
/// box's state.
mod codec {
    use crate::abi::{self, Codec};
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use std::cell::Cell;

    thread_local! {
        static CURRENT: Cell<Codec> = const { Cell::new(Codec::Bincode) };
    }

    /// The codecs this build of the guest speaks.
    pub fn supported() -> u32 {
        let json = if cfg!(feature = "json") {
            Codec::Json.bit()
        } else {
            0
        };
        Codec::Bincode.bit() | json
    }

    /// The codec for `code`, if this guest speaks it.
    pub fn accept(code: u32) -> Option<Codec> {
        Codec::from_code(code).filter(|c| supported() & c.bit() != 0)
    }

    /// Runs `f` with `codec` as the current codec.
    pub fn with<R>(codec: Codec, f: impl FnOnce() -> R) -> R {
        let previous = CURRENT.replace(codec);
        let result = f();
        CURRENT.set(previous);
        result
    }

    pub fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), String> {
        match CURRENT.get() {
            Codec::Bincode => abi::encode_into(value, buf).map_err(|e| e.to_string()),
            Codec::Json => json::encode_into(value, buf),
        }
    }

    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        match CURRENT.get() {
            Codec::Bincode => abi::decode(bytes).map_err(|e| e.to_string()),
            Codec::Json => json::decode(bytes),
        }
    }

    #[cfg(feature = "json")]
    mod json {
        pub fn encode_into<T: serde::Serialize>(
            value: &T,
            buf: &mut Vec<u8>,
        ) -> Result<(), String> {
            buf.clear();
            serde_json::to_writer(buf, value).map_err(|e| e.to_string())
        }

        pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
            serde_json::from_slice(bytes).map_err(|e| e.to_string())
        }
    }

    /// Without the `json` feature the exports refuse [`Codec::Json`] before any value is
    /// encoded or decoded, so these are never reached.
    #[cfg(not(feature = "json"))]
    mod json {
        pub fn encode_into<T>(_value: &T, _buf: &mut Vec<u8>) -> Result<(), String> {
            Err("this guest was built without the `json` feature of `wasmbox`".into())
        }

        pub fn decode<T>(_bytes: &[u8]) -> Result<T, String> {
            Err("this guest was built without the `json` feature of `wasmbox`".into())
        }
    }
}

struct SyncGuest<T>(T);

impl<T: WasmBox> Guest for SyncGuest<T> {
    fn on_message(&mut self, bytes: &[u8]) -> Status {
        match decode_input::<T::Input>(bytes) {
            Some(input) => {
                self.0.message(input);
                Status::Ok
            }
            None => Status::InputDecode,
        }
    }
}

// An async guest: its `run` future, the mailbox it reads through its `WasmBoxContext`, and the
// waker it is polled with.
//
// Invariants:
// - `future` is `None` exactly when `run` has returned; from the end of the call in which it
//   returned, the mailbox is empty and stays empty (`on_message` no longer queues).
// - Only `on_message` pushes to the mailbox (at the back) and only `next()` pops (at the
//   front). So after a message is pushed, the mailbox is non-empty exactly when that message
//   has not been taken yet: whatever is left includes the newest message.
// - `woken` says whether `waker` was woken since the future was last polled: `waker` sets it
//   and `poll` clears it after every poll of the future, re-polling at once if it was set.
struct AsyncGuest<In> {
    mailbox: Mailbox<In>,
    /// `None` once `run` has returned.
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// Set by `waker`.
    woken: Arc<WakeFlag>,
    /// The waker every poll of `future` gets: it sets `woken`.
    waker: Waker,
}

/// What a guest's waker does: record that the future asked to be polled again.
struct WakeFlag(AtomicBool);

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl<In> AsyncGuest<In> {
    fn new(mailbox: Mailbox<In>, future: Pin<Box<dyn Future<Output = ()>>>) -> Self {
        let woken = Arc::new(WakeFlag(AtomicBool::new(false)));
        AsyncGuest {
            mailbox,
            future: Some(future),
            waker: Waker::from(Arc::clone(&woken)),
            woken,
        }
    }

    /// Polls the future until it is pending without having woken itself, or has returned.
    /// Returns whether it has returned (now or earlier).
    fn poll(&mut self) -> bool {
        let Some(future) = self.future.as_mut() else {
            return true;
        };
        let mut cx = Context::from_waker(&self.waker);
        loop {
            let ready = future.as_mut().poll(&mut cx).is_ready();
            let woken = self.woken.0.swap(false, Ordering::Relaxed);
            if ready {
                self.future = None;
                return true;
            }
            if !woken {
                return false;
            }
        }
    }
}

impl<In: DeserializeOwned> Guest for AsyncGuest<In> {
    fn on_message(&mut self, bytes: &[u8]) -> Status {
        if self.future.is_none() {
            return Status::Finished;
        }
        let Some(input) = decode_input::<In>(bytes) else {
            return Status::InputDecode;
        };
        self.mailbox.borrow_mut().push_back(input);
        if !self.poll() {
            return Status::Ok;
        }
        // `run` has returned: drop what it never took (outside the borrow, in case a message's
        // `Drop` looks at the mailbox). If anything is left, this message is.
        let untaken = std::mem::take(&mut *self.mailbox.borrow_mut());
        if untaken.is_empty() {
            Status::Ok
        } else {
            Status::Finished
        }
    }
}

thread_local! {
    static GUEST: RefCell<Option<Box<dyn Guest>>> = const { RefCell::new(None) };
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Items the macros' output refers to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    /// A guest as the exports see it, whichever interface it was written with.
    pub trait Guest {
        /// Decodes and handles one message.
        fn on_message(&mut self, bytes: &[u8]) -> Status;
    }

    /// Builds a sync guest of type `T`.
    pub fn sync_guest<T: WasmBox + 'static>() -> Box<dyn Guest> {
        Box::new(SyncGuest(T::init(Box::new(|output| send(&output)))))
    }

    /// Builds an async guest from its `run` function and polls it as each message will be:
    /// until it is pending without waking itself (normally at its first `next().await`).
    pub fn async_guest<In, Out, Fut>(run: fn(WasmBoxContext<In, Out>) -> Fut) -> Box<dyn Guest>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let mailbox = Mailbox::default();
        let ctx = WasmBoxContext {
            mailbox: Rc::clone(&mailbox),
            _out: PhantomData,
        };
        let mut guest = AsyncGuest::new(mailbox, Box::pin(run(ctx)));
        guest.poll();
        Box::new(guest)
    }

    /// The `codecs` export.
    pub fn codecs() -> u32 {
        codec::supported()
    }

    /// The `init` export.
    pub fn init(codec: u32, build: impl FnOnce() -> Box<dyn Guest>) -> u32 {
        let Some(codec) = codec::accept(codec) else {
            return Status::CodecUnsupported as u32;
        };
        std::panic::set_hook(Box::new(|info| {
            crate::sys::panic_message(&info.to_string())
        }));
        let guest = codec::with(codec, build);
        GUEST.with(|g| *g.borrow_mut() = Some(guest));
        Status::Ok as u32
    }

    /// Type-checks a guest's `init` expression on targets where no exports are made.
    pub fn check(_build: impl FnOnce() -> Box<dyn Guest>) {}

    /// The `input_buffer` export.
    pub fn input_buffer(len: u32) -> u32 {
        INPUT.with(|buf| {
            let mut buf = buf.borrow_mut();
            let len = len as usize;
            if buf.len() < len {
                buf.resize(len, 0);
            }
            buf.as_mut_ptr() as u32
        })
    }

    /// The `message` export.
    pub fn message(len: u32, codec: u32) -> u32 {
        let Some(codec) = codec::accept(codec) else {
            return Status::CodecUnsupported as u32;
        };
        codec::with(codec, || message_with(len))
    }

    fn message_with(len: u32) -> u32 {
        // Take the guest out while it runs so that nothing it does can observe a borrow.
        let Some(mut guest) = GUEST.with(|g| g.borrow_mut().take()) else {
            return Status::NotInitialised as u32;
        };
        let status = INPUT.with(|buf| {
            let buf = std::mem::take(&mut *buf.borrow_mut());
            let bytes = buf.get(..len as usize).unwrap_or(&buf);
            let status = guest.on_message(bytes);
            INPUT.with(|slot| {
                let mut slot = slot.borrow_mut();
                if slot.is_empty() {
                    *slot = buf;
                }
            });
            status
        });
        GUEST.with(|g| *g.borrow_mut() = Some(guest));
        status as u32
    }
}
