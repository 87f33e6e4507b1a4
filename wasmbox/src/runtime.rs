//! The guest side of a box: its state, the async context and the sync trait.

use crate::abi::{self, Status};
use __private::Guest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The handle an async guest receives: it yields incoming messages and sends outputs.
///
/// `In` is the type of the messages the host sends, `Out` the type of what the guest sends
/// back; both may be any serde type.
pub struct WasmBoxContext<In, Out> {
    inbox: Rc<RefCell<Option<In>>>,
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
            inbox: Rc::clone(&self.inbox),
            _out: PhantomData,
        }
    }
}

impl<In, Out: Serialize> WasmBoxContext<In, Out> {
    /// Waits for the next message from the host.
    pub fn next(&self) -> impl Future<Output = In> + '_ {
        std::future::poll_fn(move |_| match self.inbox.borrow_mut().take() {
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

/// Encodes and sends one output.
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
        match abi::encode_into(output, buf) {
            Ok(()) => crate::sys::send(buf),
            Err(e) => panic!("wasmbox: could not encode an output: {e}"),
        }
    })
}

struct SyncGuest<T>(T);

impl<T: WasmBox> Guest for SyncGuest<T> {
    fn on_message(&mut self, bytes: &[u8]) -> Status {
        match abi::decode::<T::Input>(bytes) {
            Ok(input) => {
                self.0.message(input);
                Status::Ok
            }
            Err(_) => Status::InputDecode,
        }
    }
}

struct AsyncGuest<In> {
    inbox: Rc<RefCell<Option<In>>>,
    /// `None` once `run` has returned.
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

impl<In> AsyncGuest<In> {
    fn poll(&mut self) {
        if let Some(future) = self.future.as_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            if future.as_mut().poll(&mut cx).is_ready() {
                self.future = None;
            }
        }
    }
}

impl<In: DeserializeOwned> Guest for AsyncGuest<In> {
    fn on_message(&mut self, bytes: &[u8]) -> Status {
        if self.future.is_none() {
            return Status::Finished;
        }
        match abi::decode::<In>(bytes) {
            Ok(input) => {
                *self.inbox.borrow_mut() = Some(input);
                self.poll();
                Status::Ok
            }
            Err(_) => Status::InputDecode,
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

    /// Builds an async guest from its `run` function and polls it to its first `.await`.
    pub fn async_guest<In, Out, Fut>(run: fn(WasmBoxContext<In, Out>) -> Fut) -> Box<dyn Guest>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let inbox = Rc::new(RefCell::new(None));
        let ctx = WasmBoxContext {
            inbox: Rc::clone(&inbox),
            _out: PhantomData,
        };
        let mut guest = AsyncGuest {
            inbox,
            future: Some(Box::pin(run(ctx))),
        };
        guest.poll();
        Box::new(guest)
    }

    /// The `init` export.
    pub fn init(build: impl FnOnce() -> Box<dyn Guest>) {
        std::panic::set_hook(Box::new(|info| {
            crate::sys::panic_message(&info.to_string())
        }));
        let guest = build();
        GUEST.with(|g| *g.borrow_mut() = Some(guest));
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
    pub fn message(len: u32) -> u32 {
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
