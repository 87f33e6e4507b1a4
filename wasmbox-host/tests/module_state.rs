//! State a snapshot must not miss, in hand-written modules (Rust guests never use these, but
//! the host loads any module with the ABI): a start function, tables, passive data segments,
//! and templates bound to the module they were prepared from. Each is either captured and
//! restored exactly, or refused at load with a clear error.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use anyhow::{Context, Result, ensure};
use common::{collector, guest, take};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use wasmbox_host::{Error, LimitKind, Limits, WasmBoxHost, WasmBoxModule};

/// A guest in WAT that takes one `u8` per message (an opcode, at address 16) and answers with
/// one `u8`: `$answer` stores the byte to send at address 32. `extra` adds functions, data and
/// a start section; `ops` is the body of the message handler, which reads `$op`.
fn wat_guest(extra: &str, ops: &str) -> Result<WasmBoxModule> {
    let wat = format!(
        r#"(module
  (import "wasmbox" "wasmbox_send" (func $send (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "wasmbox_abi_version") (result i32) i32.const 2)
  (func (export "wasmbox_codecs") (result i32) i32.const 1)
  (func (export "wasmbox_init") (param i32) (result i32) i32.const 0)
  (func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 16)
  (func $answer (param $byte i32)
    (i32.store8 (i32.const 32) (local.get $byte))
    (call $send (i32.const 32) (i32.const 1)))
  (func (export "wasmbox_message") (param i32 i32) (result i32)
    (local $op i32)
    (local.set $op (i32.load8_u (i32.const 16)))
    {ops}
    (i32.const 0))
  {extra})"#
    );
    Ok(WasmBoxModule::from_bytes(&wat::parse_str(wat)?)?)
}

type Answers = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

fn new_box(module: &WasmBoxModule) -> Result<(WasmBoxHost<u8, u8>, Answers)> {
    let (cb, out) = collector::<u8>();
    Ok((WasmBoxHost::<u8, u8>::new(module, cb)?, out))
}

/// Sends each op and returns the answers.
fn ask(host: &mut WasmBoxHost<u8, u8>, out: &Answers, ops: &[u8]) -> Result<Vec<u8>> {
    for op in ops {
        host.message(op)?;
    }
    Ok(take(out))
}

/// The ways a state gets into a box: restored into a running box, into a new box, from a
/// file, from a template, through a fork. Each box is checked with `check`.
fn every_restore(
    module: &WasmBoxModule,
    from: &mut WasmBoxHost<u8, u8>,
    mut check: impl FnMut(&str, &mut WasmBoxHost<u8, u8>, &Answers) -> Result<()>,
) -> Result<()> {
    let snapshot = from.snapshot_state()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("s.snap");
    from.snapshot_to_file(&file)?;
    let template = module.prepare_template(&snapshot)?;

    let (mut b, out) = new_box(module)?;
    b.restore_snapshot(&snapshot)?;
    ensure!(b.snapshot_state()? == snapshot, "restored state differs");
    check("restore_snapshot", &mut b, &out)?;

    let (mut b, out) = new_box(module)?;
    b.restore_snapshot_from_file(&file)?;
    check("restore_snapshot_from_file", &mut b, &out)?;

    let (cb, out) = collector::<u8>();
    let mut b = WasmBoxHost::<u8, u8>::builder(module).restore(&snapshot, cb)?;
    ensure!(
        b.snapshot_state()? == snapshot,
        "builder-restored state differs"
    );
    check("builder restore", &mut b, &out)?;

    let (cb, out) = collector::<u8>();
    let mut b = WasmBoxHost::<u8, u8>::builder(module).from_template(&template, cb)?;
    ensure!(b.snapshot_state()? == snapshot, "template state differs");
    check("template", &mut b, &out)?;

    let (cb, out) = collector::<u8>();
    let mut b = from.fork(cb)?;
    check("fork", &mut b, &out)
}

#[test]
fn accept_start_function_runs_once_and_never_on_restore() -> Result<()> {
    // The start function writes outside every data segment; op 1 clears that byte, op 2 reads it.
    let module = wat_guest(
        r#"(func $start (i32.store8 (i32.const 5000) (i32.const 7))) (start $start)"#,
        r#"(if (i32.eq (local.get $op) (i32.const 1)) (then (i32.store8 (i32.const 5000) (i32.const 0))))
           (call $answer (i32.load8_u (i32.const 5000)))"#,
    )?;
    let (mut host, out) = new_box(&module)?;
    assert_eq!(ask(&mut host, &out, &[2])?, [7], "the start function ran");
    assert_eq!(ask(&mut host, &out, &[1])?, [0]);
    every_restore(&module, &mut host, |how, b, out| {
        ensure!(
            ask(b, out, &[2])? == [0],
            "{how}: the start function ran again"
        );
        Ok(())
    })
}

#[test]
fn accept_calls_through_the_modules_own_table() -> Result<()> {
    let module = wat_guest(
        r#"(type $t (func (result i32)))
           (table 2 funcref) (elem (i32.const 0) $forty $two)
           (func $forty (result i32) i32.const 40) (func $two (result i32) i32.const 2)"#,
        r#"(call $answer (call_indirect (type $t) (local.get $op)))"#,
    )?;
    let (mut host, out) = new_box(&module)?;
    assert_eq!(ask(&mut host, &out, &[0, 1])?, [40, 2]);
    every_restore(&module, &mut host, |how, b, out| {
        ensure!(ask(b, out, &[0, 1])? == [40, 2], "{how}");
        Ok(())
    })
}

#[test]
fn reject_modules_that_change_their_tables() -> Result<()> {
    for (code, op) in [
        ("(table.set (i32.const 0) (ref.func $two))", "table.set"),
        (
            "(drop (table.grow (ref.null func) (i32.const 1)))",
            "table.grow",
        ),
        (
            "(table.fill (i32.const 0) (ref.null func) (i32.const 1))",
            "table.fill",
        ),
        (
            "(table.copy (i32.const 1) (i32.const 0) (i32.const 1))",
            "table.copy",
        ),
        (
            "(table.init $e (i32.const 0) (i32.const 0) (i32.const 1))",
            "table.init",
        ),
        ("(elem.drop $e)", "elem.drop"),
    ] {
        let err = wat_guest(
            r#"(table 2 funcref) (elem $e func $two) (elem declare func $two)
               (func $two (result i32) i32.const 2)"#,
            code,
        )
        .err()
        .context(format!("a module using {op} was accepted"))?;
        let message = err.to_string();
        ensure!(
            matches!(
                err.downcast_ref::<Error>(),
                Some(Error::NotAGuest(m)) if m.contains(op)
            ),
            "{op}: {message}"
        );
    }
    Ok(())
}

#[test]
fn accept_passive_data_segments_in_restores_and_templates() -> Result<()> {
    // Segment 0 is passive, 1 active, 2 passive: `memory.init 2` must still find the third
    // segment in a template, whose data section is rebuilt.
    let module = wat_guest(
        r#"(data $p "\2a") (data (i32.const 100) "\01") (data $q "\2b")"#,
        r#"(if (i32.eq (local.get $op) (i32.const 3))
             (then (memory.init $q (i32.const 6000) (i32.const 0) (i32.const 1))
                   (call $answer (i32.load8_u (i32.const 6000)))))
           (if (i32.eq (local.get $op) (i32.const 4))
             (then (memory.init $p (i32.const 6001) (i32.const 0) (i32.const 1))
                   (call $answer (i32.load8_u (i32.const 6001)))))
           (if (i32.eq (local.get $op) (i32.const 5))
             (then (call $answer (i32.load8_u (i32.const 100)))))"#,
    )?;
    let (mut host, out) = new_box(&module)?;
    assert_eq!(ask(&mut host, &out, &[5])?, [1]);
    every_restore(&module, &mut host, |how, b, out| {
        ensure!(ask(b, out, &[3, 4, 5])? == [0x2b, 0x2a, 1], "{how}");
        Ok(())
    })
}

#[test]
fn reject_modules_that_drop_data_segments() -> Result<()> {
    let err = wat_guest(r#"(data $p "\2a")"#, "(data.drop $p)")
        .err()
        .context("a module using data.drop was accepted")?;
    ensure!(
        matches!(err.downcast_ref::<Error>(), Some(Error::NotAGuest(m)) if m.contains("data.drop")),
        "{err}"
    );
    Ok(())
}

/// Runs `f` on another thread and fails if it does not finish within `limit` (a box whose
/// deadline never fires would otherwise hang the test).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).context(format!(
        "still running after {limit:?}: a limit did not fire"
    ))
}

#[test]
fn reject_template_of_another_module_value() -> Result<()> {
    let bytes = std::fs::read(guest("faults"))?;
    let first = WasmBoxModule::from_bytes(&bytes)?;
    let second = WasmBoxModule::from_bytes(&bytes)?;
    let (cb, _out) = collector::<String>();
    let mut source = WasmBoxHost::<String, String>::new(&first, cb)?;
    source.message("up")?;
    let template = first.prepare_template(&source.snapshot_state()?)?;

    let (cb, _out) = collector::<String>();
    let err = WasmBoxHost::<String, String>::builder(&second)
        .from_template(&template, cb)
        .unwrap_err();
    ensure!(matches!(err, Error::ForeignTemplate), "{err}");

    let (cb, out) = collector::<String>();
    let mut other = WasmBoxHost::<String, String>::new(&second, cb)?;
    let err = other.restore_template(&template).unwrap_err();
    ensure!(matches!(err, Error::ForeignTemplate), "{err}");
    other.message("up")?;
    assert_eq!(take(&out), ["value=1"], "the box is unchanged");
    Ok(())
}

#[test]
fn accept_deadline_fires_in_template_boxes_after_module_and_template_are_dropped() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("faults"))?;
    let (cb, _out) = collector::<String>();
    let mut source = WasmBoxHost::<String, String>::new(&module, cb)?;
    source.message("up")?;
    let template = module.prepare_template(&source.snapshot_state()?)?;
    let limits = Limits {
        deadline_per_message: Some(Duration::from_millis(200)),
        ..Limits::default()
    };
    let (cb, out) = collector::<String>();
    let mut host = WasmBoxHost::<String, String>::builder(&module)
        .limits(limits)
        .from_template(&template, cb)?;
    drop((template, module, source));
    host.message("up")?;
    assert_eq!(take(&out), ["value=2"]);
    let (err, elapsed) = within(Duration::from_secs(10), move || {
        let started = Instant::now();
        (host.message("loop").unwrap_err(), started.elapsed())
    })?;
    ensure!(
        matches!(
            err,
            Error::LimitExceeded {
                limit: LimitKind::Deadline
            }
        ),
        "{err}"
    );
    ensure!(elapsed < Duration::from_secs(3), "fired after {elapsed:?}");
    Ok(())
}
