//! Hostile guests: every fault becomes a typed error, the host keeps running, the box is
//! poisoned until restored (or rolled back automatically), and limits hold.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use anyhow::Result;
use common::{collector, guest, take};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmbox_host::{Error, LimitKind, Limits, WasmBoxHost, WasmBoxModule};

type Out = Arc<Mutex<Vec<String>>>;

fn faults_box(limits: Limits, rollback: bool) -> Result<(WasmBoxHost, Out)> {
    let module = WasmBoxModule::from_file(guest("faults"))?;
    let (cb, out) = collector::<String>();
    let host = WasmBoxHost::<String, String>::builder(&module)
        .limits(limits)
        .rollback_on_trap(rollback)
        .build(cb)?;
    Ok((host, out))
}

/// Sends `up` once, returns the box's snapshot at value=1.
fn at_one(host: &mut WasmBoxHost, out: &Out) -> Result<wasmbox_host::Snapshot> {
    host.message("up")?;
    assert_eq!(take(out), ["value=1"]);
    Ok(host.snapshot_state()?)
}

/// The box is poisoned; restoring `good` heals it and it carries on from value=1.
fn poisoned_then_healed(
    host: &mut WasmBoxHost,
    out: &Out,
    good: &wasmbox_host::Snapshot,
) -> Result<()> {
    assert!(matches!(host.message("up"), Err(Error::Poisoned { .. })));
    assert!(matches!(host.snapshot_state(), Err(Error::Poisoned { .. })));
    assert!(host.poisoned().is_some());
    host.restore_snapshot(good)?;
    assert!(host.poisoned().is_none());
    host.message("up")?;
    assert_eq!(take(out), ["value=2"]);
    // Healed completely: the state equals a box that never failed.
    let (mut clean, clean_out) = faults_box(host.limits(), false)?;
    clean.message("up")?;
    clean.message("up")?;
    take(&clean_out);
    assert!(
        host.snapshot_state()? == clean.snapshot_state()?,
        "restored state differs from a clean run"
    );
    Ok(())
}

#[test]
fn reject_guest_panic_with_its_message_and_location() -> Result<()> {
    let (mut host, out) = faults_box(Limits::default(), false)?;
    let good = at_one(&mut host, &out)?;
    let err = host.message("panic").unwrap_err();
    let Error::GuestPanicked { message } = &err else {
        panic!("expected a panic error, got {err}")
    };
    assert!(message.contains("asked to panic at count 1"), "{message}");
    assert!(
        message.contains("src/lib.rs"),
        "the location is included: {message}"
    );
    poisoned_then_healed(&mut host, &out, &good)
}

#[test]
fn reject_runaway_loop_by_deadline() -> Result<()> {
    let limits = Limits {
        deadline_per_message: Some(Duration::from_millis(200)),
        ..Limits::default()
    };
    let (mut host, out) = faults_box(limits, false)?;
    let good = at_one(&mut host, &out)?;
    let started = Instant::now();
    let err = host.message("loop").unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                limit: LimitKind::Deadline
            }
        ),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(200),
        "stopped before the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the deadline was not enforced: {took:?}"
    );
    poisoned_then_healed(&mut host, &out, &good)
}

#[test]
fn reject_runaway_loop_by_fuel_deterministically() -> Result<()> {
    let limits = Limits {
        fuel_per_message: Some(5_000_000),
        deadline_per_message: None,
        ..Limits::default()
    };
    let (mut host, out) = faults_box(limits, false)?;
    let good = at_one(&mut host, &out)?;
    let err = host.message("loop").unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                limit: LimitKind::Fuel
            }
        ),
        "{err}"
    );
    poisoned_then_healed(&mut host, &out, &good)
}

#[test]
fn reject_memory_bomb() -> Result<()> {
    let limits = Limits {
        max_memory_bytes: 64 << 20,
        ..Limits::default()
    };
    let (mut host, out) = faults_box(limits, false)?;
    let good = at_one(&mut host, &out)?;
    let err = host.message("bomb").unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                limit: LimitKind::Memory
            }
        ),
        "{err}"
    );
    assert!(host.memory_size() <= 64 << 20);
    poisoned_then_healed(&mut host, &out, &good)
}

#[test]
fn reject_stack_overflow() -> Result<()> {
    let (mut host, out) = faults_box(Limits::default(), false)?;
    let good = at_one(&mut host, &out)?;
    let err = host.message("overflow").unwrap_err();
    assert!(matches!(err, Error::GuestTrapped { .. }), "{err}");
    poisoned_then_healed(&mut host, &out, &good)
}

#[test]
fn reject_rust_division_by_zero_as_a_panic() -> Result<()> {
    let (mut host, out) = faults_box(Limits::default(), false)?;
    let good = at_one(&mut host, &out)?;
    // Rust checks divisions, so this is a panic with Rust's message.
    let err = host.message("divide").unwrap_err();
    assert!(
        matches!(&err, Error::GuestPanicked { message } if message.contains("divide by zero")),
        "{err}"
    );
    poisoned_then_healed(&mut host, &out, &good)
}

#[test]
fn reject_guest_exit() -> Result<()> {
    let (mut host, out) = faults_box(Limits::default(), false)?;
    let good = at_one(&mut host, &out)?;
    let err = host.message("exit").unwrap_err();
    assert!(matches!(err, Error::GuestExited(3)), "{err}");
    poisoned_then_healed(&mut host, &out, &good)
}

#[test]
fn reject_oversized_output_and_input() -> Result<()> {
    let limits = Limits {
        max_message_bytes: 64 << 10,
        ..Limits::default()
    };
    let (mut host, out) = faults_box(limits, false)?;
    let good = at_one(&mut host, &out)?;
    // Too large an input is refused before the guest sees it: nothing is poisoned.
    let err = host.message(&"x".repeat(100_000)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MessageTooLarge {
                len: 100_005,
                max: 65536
            }
        ),
        "{err}"
    );
    host.message("up")?;
    assert_eq!(take(&out), ["value=2"]);
    host.restore_snapshot(&good)?;
    // Too large an output traps the guest mid-call.
    let err = host.message("flood").unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { max: 65536, .. }),
        "{err}"
    );
    poisoned_then_healed(&mut host, &out, &good)
}

#[test]
fn accept_rollback_on_trap_keeps_last_good_state() -> Result<()> {
    let limits = Limits {
        max_memory_bytes: 64 << 20,
        deadline_per_message: Some(Duration::from_millis(100)),
        ..Limits::default()
    };
    let (mut host, out) = faults_box(limits, true)?;
    host.message("up")?;
    for bad in ["panic", "loop", "bomb", "overflow", "divide", "exit"] {
        assert!(host.message(bad).is_err(), "{bad} should fail");
        assert!(
            host.poisoned().is_none(),
            "{bad}: rolled back, not poisoned"
        );
    }
    host.message("up")?;
    assert_eq!(take(&out), ["value=1", "value=2"]);
    Ok(())
}

/// Runs `f` on another thread and fails if it does not finish within `limit`: a box whose
/// limits were lifted would otherwise hang the test.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .map_err(|_| anyhow::anyhow!("still running after {limit:?}: the host's limit was lifted"))
}

/// The host's limits hold after every kind of restore, whatever limits the snapshot records:
/// a runaway loop stops at the host's 300 ms deadline and a memory bomb at its 64 MiB cap.
#[test]
fn reject_snapshot_limits_that_would_lift_the_hosts() -> Result<()> {
    let strict = Limits {
        deadline_per_message: Some(Duration::from_millis(300)),
        max_memory_bytes: 64 << 20,
        ..Limits::default()
    };
    let module = WasmBoxModule::from_file(guest("faults"))?;
    // A snapshot of a box that ran without limits...
    let (cb, _o) = collector::<String>();
    let mut free = WasmBoxHost::<String, String>::builder(&module)
        .limits(Limits::unlimited())
        .build(cb)?;
    free.message("up")?;
    let unlimited = free.snapshot_state()?;
    assert_eq!(unlimited.limits, Limits::unlimited());
    // ...and a forged file: a strict box's snapshot with its limits rewritten and a valid CRC.
    let (mut strict_box, _o) = faults_box(strict, false)?;
    strict_box.message("up")?;
    let mut forged = strict_box.snapshot_state()?;
    forged.limits = Limits::unlimited();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("forged.snap");
    std::fs::write(&file, wasmbox_host::snapshot::encode_file(&forged))?;
    let template = module.prepare_template(&unlimited)?;

    type Make<'a> = Box<dyn Fn() -> Result<WasmBoxHost> + 'a>;
    let builder = || WasmBoxHost::<String, String>::builder(&module).limits(strict);
    let ways: Vec<(&str, Make<'_>)> = vec![
        (
            "restore_snapshot",
            Box::new(|| {
                let mut host = builder().build(|_| {})?;
                host.restore_snapshot(&unlimited)?;
                Ok(host)
            }),
        ),
        (
            "restore_snapshot_from_file",
            Box::new(|| {
                let mut host = builder().build(|_| {})?;
                host.restore_snapshot_from_file(&file)?;
                Ok(host)
            }),
        ),
        (
            "builder restore",
            Box::new(|| Ok(builder().restore(&unlimited, |_| {})?)),
        ),
        (
            "builder restore_from_file",
            Box::new(|| Ok(builder().restore_from_file(&file, |_| {})?)),
        ),
        (
            "builder from_template",
            Box::new(|| Ok(builder().from_template(&template, |_| {})?)),
        ),
        (
            "restore_template",
            Box::new(|| {
                let mut host = builder().build(|_| {})?;
                host.restore_template(&template)?;
                Ok(host)
            }),
        ),
        (
            "fork",
            Box::new(|| {
                let mut host = builder().build(|_| {})?;
                host.restore_snapshot(&unlimited)?;
                Ok(host.fork(|_| {})?)
            }),
        ),
        (
            "rollback",
            Box::new(|| {
                let mut host = builder().rollback_on_trap(true).build(|_| {})?;
                host.restore_snapshot(&unlimited)?;
                // A failing message rolls back to the state kept before it.
                assert!(host.message("panic").is_err());
                Ok(host)
            }),
        ),
    ];
    for (how, make) in &ways {
        let host = make()?;
        assert_eq!(host.limits(), strict, "{how}");
        let (err, elapsed) = within(Duration::from_secs(20), move || {
            let mut host = host;
            let started = Instant::now();
            (host.message("loop").unwrap_err(), started.elapsed())
        })?;
        assert!(
            matches!(
                err,
                Error::LimitExceeded {
                    limit: LimitKind::Deadline
                }
            ),
            "{how}: {err}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "{how}: stopped after {elapsed:?}"
        );
        let mut host = make()?;
        let err = host.message("bomb").unwrap_err();
        assert!(
            matches!(
                err,
                Error::LimitExceeded {
                    limit: LimitKind::Memory
                }
            ),
            "{how}: {err}"
        );
        assert!(
            host.memory_size() <= 64 << 20,
            "{how}: grew to {}",
            host.memory_size()
        );
    }
    Ok(())
}

#[test]
fn reject_snapshot_larger_than_memory_limit() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("memory"))?;
    let (cb, _out) = collector::<memory::Summary>();
    let mut big = WasmBoxHost::<memory::Request, memory::Summary>::new(&module, cb)?;
    big.message(&memory::Request::Reserve { mib: 40 })?;
    let snapshot = big.snapshot_state()?;
    let (cb, out) = collector::<memory::Summary>();
    let limits = Limits {
        max_memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let mut small = WasmBoxHost::<memory::Request, memory::Summary>::builder(&module)
        .limits(limits)
        .build(cb)?;
    let err = small.restore_snapshot(&snapshot).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Snapshot(wasmbox_host::SnapshotError::TooLarge { .. })
        ),
        "{err}"
    );
    small.message(&memory::Request::Sum)?;
    assert_eq!(take(&out).len(), 1, "the small box still answers");
    Ok(())
}

// ---- hand-written hostile guests ----

const PRELUDE: &str = r#"
  (import "wasmbox" "wasmbox_send" (func $send (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "wasmbox_abi_version") (result i32) i32.const 2)
  (func (export "wasmbox_codecs") (result i32) i32.const 1)
  (func (export "wasmbox_init") (param i32) (result i32) i32.const 0)
"#;

fn hostile(body: &str) -> Result<WasmBoxHost<u8, u8>> {
    let wasm = wat::parse_str(format!("(module {PRELUDE} {body})"))?;
    Ok(WasmBoxHost::<u8, u8>::new(
        &WasmBoxModule::from_bytes(&wasm)?,
        |_| {},
    )?)
}

#[test]
fn reject_out_of_bounds_send() -> Result<()> {
    let mut host = hostile(
        r#"(func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 0)
           (func (export "wasmbox_message") (param i32 i32) (result i32)
             (call $send (i32.const 65530) (i32.const 100)) i32.const 0)"#,
    )?;
    let err = host.message(&1).unwrap_err();
    assert!(
        matches!(&err, Error::GuestAbi(m) if m.contains("outside the guest's memory")),
        "{err}"
    );
    Ok(())
}

#[test]
fn reject_out_of_bounds_input_buffer() -> Result<()> {
    let mut host = hostile(
        r#"(func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const -8)
           (func (export "wasmbox_message") (param i32 i32) (result i32) i32.const 0)"#,
    )?;
    let err = host.message(&1).unwrap_err();
    assert!(
        matches!(&err, Error::GuestAbi(m) if m.contains("input_buffer")),
        "{err}"
    );
    Ok(())
}

#[test]
fn reject_unknown_status_and_undecodable_output() -> Result<()> {
    let mut host = hostile(
        r#"(func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 0)
           (func (export "wasmbox_message") (param i32 i32) (result i32) i32.const 77)"#,
    )?;
    assert!(matches!(host.message(&1), Err(Error::GuestAbi(_))));
    // Two bytes where a u8 is expected.
    let mut host = hostile(
        r#"(func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 0)
           (func (export "wasmbox_message") (param i32 i32) (result i32)
             (call $send (i32.const 0) (i32.const 2)) i32.const 0)"#,
    )?;
    assert!(matches!(host.message(&1), Err(Error::OutputDecode(_))));
    Ok(())
}

#[test]
fn reject_raw_division_by_zero_trap() -> Result<()> {
    let mut host = hostile(
        r#"(func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 0)
           (func (export "wasmbox_message") (param i32 i32) (result i32)
             (i32.div_u (i32.const 1) (i32.sub (local.get 0) (local.get 0))))"#,
    )?;
    let err = host.message(&1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::GuestTrapped {
                trap: Some(wasmtime::Trap::IntegerDivisionByZero),
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}
