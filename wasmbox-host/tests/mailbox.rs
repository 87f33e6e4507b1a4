//! The async guest's mailbox, through the `mailbox` example guest: messages that arrive while
//! the guest awaits futures of its own wait in order and none is lost, a message `run` never
//! takes is not reported as handled, and a snapshot taken with messages queued restores.

#![allow(clippy::unwrap_used)] // Tests (and `common`): a failed unwrap is a failed test.

mod common;

use anyhow::Result;
use common::{collector, guest, take};
use std::sync::{Arc, Mutex};
use wasmbox_host::{Error, WasmBoxHost, WasmBoxModule};

/// The guest's `STOP` message: it parks until the next message, sends `STOP` back as a
/// goodbye, then returns without taking that message.
const STOP: u32 = u32::MAX;

/// Where a box's outputs are collected.
type Outputs = Arc<Mutex<Vec<u32>>>;

/// A new box of the `mailbox` guest, and where its outputs are collected.
fn new_box() -> Result<(WasmBoxHost<u32, u32>, Outputs)> {
    let (cb, out) = collector::<u32>();
    let module = WasmBoxModule::from_file(guest("mailbox"))?;
    Ok((WasmBoxHost::<u32, u32>::new(&module, cb)?, out))
}

/// Sends each message and returns the outputs each one produced.
fn outputs_per_message(
    host: &mut WasmBoxHost<u32, u32>,
    out: &Outputs,
    messages: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let mut outputs = Vec::new();
    for m in messages {
        host.message(m)?;
        outputs.push(take(out));
    }
    Ok(outputs)
}

#[test]
fn accept_async_guest_queues_messages_while_it_awaits() -> Result<()> {
    let (mut host, out) = new_box()?;
    for m in 1..=9u32 {
        host.message(&m)?;
    }
    assert_eq!(take(&out), (1..=9).collect::<Vec<u32>>());
    Ok(())
}

#[test]
fn accept_async_guest_takes_queued_messages_in_order() -> Result<()> {
    let (mut host, out) = new_box()?;
    // 0 parks the guest, without a wake, until two more messages have arrived: 2 and 3 wait
    // in the mailbox, then all three are answered, in order, by the call that delivered 3.
    let outputs = outputs_per_message(&mut host, &out, &[1, 0, 2, 3, 4])?;
    assert_eq!(outputs, [vec![1], vec![], vec![], vec![0, 2, 3], vec![4]]);
    Ok(())
}

#[test]
fn reject_message_that_run_returns_without_taking() -> Result<()> {
    let (mut host, out) = new_box()?;
    host.message(&5)?;
    host.message(&STOP)?;
    assert_eq!(take(&out), [5]);
    // `run` returns when 6 arrives, without taking it: 6 was dropped, not handled. What the
    // guest sent before returning (its goodbye) still reaches the host.
    assert!(matches!(host.message(&6), Err(Error::GuestFinished)));
    assert_eq!(take(&out), [STOP]);
    assert!(matches!(host.message(&7), Err(Error::GuestFinished)));
    assert_eq!(take(&out), Vec::<u32>::new());
    Ok(())
}

#[test]
fn accept_restore_with_messages_queued_continues_identically() -> Result<()> {
    // Parked twice, so that some snapshots are taken with messages waiting in the mailbox.
    let script = [1, 0, 2, 3, 4, 0, 5, 6, 7, 8];
    let module = WasmBoxModule::from_file(guest("mailbox"))?;
    let (cb, out) = collector::<u32>();
    let mut straight = WasmBoxHost::<u32, u32>::new(&module, cb)?;
    let expected = outputs_per_message(&mut straight, &out, &script)?;
    assert_eq!(expected.concat(), [1, 0, 2, 3, 4, 0, 5, 6, 7, 8]);
    let expected_state = straight.snapshot_state()?;

    for k in 0..=script.len() {
        let (cb, out) = collector::<u32>();
        let mut first = WasmBoxHost::<u32, u32>::new(&module, cb)?;
        let mut outputs = outputs_per_message(&mut first, &out, &script[..k])?;
        let snap = first.snapshot_state()?;

        let (cb, out) = collector::<u32>();
        let mut second = WasmBoxHost::<u32, u32>::new(&module, cb)?;
        second.restore_snapshot(&snap)?;
        outputs.extend(outputs_per_message(&mut second, &out, &script[k..])?);

        assert_eq!(
            outputs, expected,
            "restored after {k} messages: outputs differ"
        );
        assert!(
            second.snapshot_state()? == expected_state,
            "restored after {k} messages: final state differs"
        );
    }
    Ok(())
}
