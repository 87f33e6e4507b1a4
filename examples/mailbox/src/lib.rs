//! Echoes every number, but only after awaiting futures of its own, so that messages arrive
//! while it is busy and wait in its mailbox:
//!
//! * any number `n`: yields twice (a future that wakes itself), then sends `n` back;
//! * `0`: first parks until two more messages have arrived (a future that is pending without
//!   waking, as a join or a channel is while it waits on something else), then sends `0` back
//!   and handles the two queued messages in order;
//! * [`STOP`]: parks until one more message has arrived, then sends [`STOP`] back as a
//!   goodbye and returns from `run` without reading that message.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use wasmbox::prelude::*;

/// The message that makes the guest return once the next message has arrived.
pub const STOP: u32 = u32::MAX;

#[wasmbox]
async fn run(ctx: WasmBoxContext<u32, u32>) {
    loop {
        let n = ctx.next().await;
        match n {
            0 => Parked(2).await,
            STOP => {
                Parked(1).await;
                ctx.send(STOP);
                return;
            }
            _ => {}
        }
        YieldN(2).await;
        ctx.send(n);
    }
}

/// Pending `n` times, waking itself each time (a yield), then ready.
struct YieldN(u32);

impl Future for YieldN {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Pending `n` times without waking, then ready. Its first poll is in the call that awaits it,
/// and a guest that has not woken itself is polled again only when a message arrives, so it is
/// ready once `n` more messages have arrived.
struct Parked(u32);

impl Future for Parked {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        Poll::Pending
    }
}
