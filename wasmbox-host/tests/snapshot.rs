//! Snapshots of real guests: differential (snapshot + restore into a fresh host at every point
//! behaves like running straight through), determinism, large memories, globals, bad input.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use anyhow::Result;
use clock::Reading;
use common::{collector, guest, take};
use memory::{Request, Summary};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use wasmbox_host::{Error, Snapshot, SnapshotError, SnapshotKey, WasmBoxHost, WasmBoxModule};

/// How the state moves from the first box to the second.
#[derive(Clone, Copy, Debug)]
enum Transfer {
    /// `snapshot_state` + `restore_snapshot` into a fresh host of a freshly loaded module.
    Value,
    /// `snapshot_to_file` + `restore_snapshot_from_file`, likewise.
    File,
    /// `fork`.
    Fork,
    /// `prepare_template` + `restore_template` into a fresh host.
    Template,
}

/// Runs `script` straight through, and for every k and every way of moving state: k messages,
/// move the state into a second box, the remaining messages there. Outputs and final state
/// must be identical to the straight run.
fn differential<In, Out>(name: &str, script: &[In]) -> Result<()>
where
    In: Serialize + Clone + 'static,
    Out: DeserializeOwned + PartialEq + Debug + Send + 'static,
{
    let module = WasmBoxModule::from_file(guest(name))?;
    let (cb, out) = collector::<Out>();
    let mut straight = WasmBoxHost::<In, Out>::new(&module, cb)?;
    for m in script {
        straight.message(m)?;
    }
    let expected_outputs = take(&out);
    let expected_state = straight.snapshot_state()?;
    let dir = tempfile::tempdir()?;

    for k in 0..=script.len() {
        for transfer in [
            Transfer::Value,
            Transfer::File,
            Transfer::Fork,
            Transfer::Template,
        ] {
            let (cb, out) = collector::<Out>();
            let mut first = WasmBoxHost::<In, Out>::new(&module, cb)?;
            for m in &script[..k] {
                first.message(m)?;
            }
            let (cb2, out2) = collector::<Out>();
            let mut second = match transfer {
                Transfer::Fork => first.fork(cb2)?,
                _ => {
                    // A fresh module, as another process would load it.
                    let fresh_module = WasmBoxModule::from_file(guest(name))?;
                    let mut second = WasmBoxHost::<In, Out>::new(&fresh_module, cb2)?;
                    take(&out2); // whatever its own init said
                    match transfer {
                        Transfer::Value => second.restore_snapshot(&first.snapshot_state()?)?,
                        Transfer::File => {
                            let path = dir.path().join(format!("{name}-{k}.snap"));
                            first.snapshot_to_file(&path)?;
                            second.restore_snapshot_from_file(&path)?;
                        }
                        _ => second.restore_template(
                            &fresh_module.prepare_template(&first.snapshot_state()?)?,
                        )?,
                    }
                    second
                }
            };
            for m in &script[k..] {
                second.message(m)?;
            }
            let mut outputs = take(&out);
            outputs.extend(take(&out2));
            let what = format!("{name}, {transfer:?} after {k} messages");
            assert_eq!(outputs, expected_outputs, "{what}: outputs differ");
            assert_state_eq(&second.snapshot_state()?, &expected_state, &what);
        }
    }
    Ok(())
}

fn assert_state_eq(a: &Snapshot, b: &Snapshot, what: &str) {
    assert_eq!(a.memory.pages, b.memory.pages, "{what}: memory size");
    assert!(a.memory == b.memory, "{what}: memory content differs");
    assert_eq!(a.globals, b.globals, "{what}: globals");
    assert_eq!(a.clock, b.clock, "{what}: clock");
    assert!(a.rng == b.rng, "{what}: random generator");
    assert!(a == b, "{what}: snapshot");
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn accept_differential_counter() -> Result<()> {
    differential::<String, String>(
        "counter",
        &strings(&["up", "up", "x", "down", "up", "up", "down"]),
    )
}

#[test]
fn accept_differential_countersync() -> Result<()> {
    differential::<String, String>(
        "countersync",
        &strings(&["up", "up", "x", "down", "up", "up"]),
    )
}

#[test]
fn accept_differential_echo() -> Result<()> {
    differential::<String, String>(
        "echo",
        &strings(&["a", "", "longer message here", "é∂", "z"]),
    )
}

#[test]
fn accept_differential_random() -> Result<()> {
    differential::<u32, Vec<u8>>("random", &[4, 16, 0, 64, 8, 32])
}

#[test]
fn accept_differential_typed() -> Result<()> {
    use typed::{Command, Reply};
    let script = vec![
        Command::Open {
            account: "a".into(),
            cents: 500,
        },
        Command::Open {
            account: "b".into(),
            cents: 0,
        },
        Command::Transfer {
            from: "a".into(),
            to: "b".into(),
            cents: 120,
        },
        Command::Balance {
            account: "b".into(),
        },
        Command::Transfer {
            from: "b".into(),
            to: "a".into(),
            cents: 9999,
        },
        Command::Statement,
    ];
    differential::<Command, Reply>("typed", &script)
}

#[test]
fn accept_differential_clock() -> Result<()> {
    differential::<String, Reading>("clock", &strings(&["t", "sleep 1500", "t", "sleep 5", "t"]))
}

#[test]
fn accept_differential_memory() -> Result<()> {
    let script = [
        Request::Grow { mib: 2, seed: 1 },
        Request::Sum,
        Request::Grow { mib: 1, seed: 9 },
        Request::Clear,
        Request::Grow { mib: 1, seed: 3 },
    ];
    differential::<Request, Summary>("memory", &script)
}

#[test]
fn accept_differential_faults_guest() -> Result<()> {
    differential::<String, String>("faults", &strings(&["up", "up", "up"]))
}

#[test]
fn accept_identical_snapshot_files_from_identical_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    let mut readings = Vec::new();
    for run in 0..2 {
        // Each run loads the module itself, as separate processes would.
        let module = WasmBoxModule::from_file(guest("clock"))?;
        let (cb, out) = collector::<Reading>();
        let mut host = WasmBoxHost::<String, Reading>::new(&module, cb)?;
        for m in ["t", "sleep 250", "t", "sleep 1000", "t"] {
            host.message(m)?;
        }
        let path = dir.path().join(format!("run{run}.snap"));
        host.snapshot_to_file(&path)?;
        files.push(std::fs::read(&path)?);
        readings.push(take(&out));
    }
    assert_eq!(readings[0], readings[1]);
    assert!(files[0] == files[1], "snapshot files differ");
    let r = &readings[0];
    assert_eq!(r[0].wall_millis, wasmbox_host::DEFAULT_START_MILLIS);
    assert_eq!(
        r[1].wall_millis,
        wasmbox_host::DEFAULT_START_MILLIS + 250,
        "sleep advances the box clock"
    );
    assert_eq!(r[3].monotonic_nanos - r[2].monotonic_nanos, 1_000_000_000);
    assert_eq!(
        r[2].monotonic_nanos, r[1].monotonic_nanos,
        "time stands still between messages"
    );
    assert_ne!(r[0].random, r[1].random);
    Ok(())
}

#[test]
fn accept_sleep_advances_clock_without_blocking() -> Result<()> {
    let (cb, out) = collector::<Reading>();
    let mut host =
        WasmBoxHost::<String, Reading>::new(&WasmBoxModule::from_file(guest("clock"))?, cb)?;
    let started = std::time::Instant::now();
    host.message("sleep 3600000")?; // an hour
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the host thread slept"
    );
    assert_eq!(
        take(&out)[0].wall_millis,
        wasmbox_host::DEFAULT_START_MILLIS + 3_600_000
    );
    Ok(())
}

#[test]
fn accept_start_time_sets_the_wall_clock_and_monotonic_starts_at_zero() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("clock"))?;
    let (cb, _out) = collector::<Reading>();
    let host = WasmBoxHost::<String, Reading>::builder(&module)
        .start_time(1_700_000_000_123)
        .build(cb)?;
    assert_eq!(
        host.clock(),
        wasmbox_host::Clock {
            wall_nanos: 1_700_000_000_123_000_000,
            monotonic_nanos: 0
        }
    );
    Ok(())
}

#[test]
fn accept_set_time_and_monotonic_never_goes_back() -> Result<()> {
    let (cb, out) = collector::<Reading>();
    let mut host =
        WasmBoxHost::<String, Reading>::new(&WasmBoxModule::from_file(guest("clock"))?, cb)?;
    host.set_time(1_700_000_000_000);
    host.message("t")?;
    host.set_time(1_600_000_000_000); // earlier
    host.message("t")?;
    host.set_time(1_600_000_000_500);
    host.message("t")?;
    let r = take(&out);
    assert_eq!(
        r.iter().map(|r| r.wall_millis).collect::<Vec<_>>(),
        [1_700_000_000_000, 1_600_000_000_000, 1_600_000_000_500]
    );
    assert!(r[1].monotonic_nanos >= r[0].monotonic_nanos);
    assert_eq!(r[2].monotonic_nanos - r[1].monotonic_nanos, 500_000_000);
    Ok(())
}

#[test]
fn accept_hashmap_order_follows_seed() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("clock"))?;
    let order = |seed| -> Result<Vec<u32>> {
        let (cb, out) = collector::<Reading>();
        let mut host = WasmBoxHost::<String, Reading>::builder(&module)
            .seed(seed)
            .build(cb)?;
        host.message("t")?;
        Ok(take(&out).remove(0).hash_order)
    };
    assert_eq!(order(1)?, order(1)?);
    assert!(
        (2..6).any(|s| order(s).unwrap() != order(1).unwrap()),
        "HashMap seeds come from the box's generator"
    );
    Ok(())
}

#[test]
fn accept_64_mib_memory_into_fresh_host_and_shrink_back() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("memory"))?;
    let (cb, out) = collector::<Summary>();
    let mut host = WasmBoxHost::<Request, Summary>::new(&module, cb)?;
    host.message(&Request::Sum)?;
    let small = host.snapshot_state()?;
    host.message(&Request::Grow { mib: 64, seed: 42 })?;
    let big_summary = take(&out).pop().unwrap();
    assert_eq!(big_summary.len, 64 << 20);
    assert!(host.memory_size() >= 64 << 20);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.snap");
    host.snapshot_to_file(&path)?;
    assert!(std::fs::metadata(&path)?.len() >= 64 << 20);

    let (cb2, out2) = collector::<Summary>();
    let mut fresh =
        WasmBoxHost::<Request, Summary>::new(&WasmBoxModule::from_file(guest("memory"))?, cb2)?;
    fresh.restore_snapshot_from_file(&path)?;
    fresh.message(&Request::Sum)?;
    assert_eq!(take(&out2), std::slice::from_ref(&big_summary));
    assert_eq!(fresh.memory_size(), host.memory_size());

    // Restoring the small snapshot into the big box leaves exactly the small memory.
    fresh.restore_snapshot(&small)?;
    assert_eq!(
        fresh.memory_size(),
        small.memory.pages * wasmbox_host::PAGE_SIZE
    );
    assert!(fresh.snapshot_state()?.memory == small.memory);
    fresh.message(&Request::Sum)?;
    assert_eq!(take(&out2)[0].len, 0);
    Ok(())
}

#[test]
fn accept_templates_restore_many_times_and_fork_is_independent() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("memory"))?;
    let (cb, out) = collector::<Summary>();
    let mut host = WasmBoxHost::<Request, Summary>::new(&module, cb)?;
    host.message(&Request::Grow { mib: 3, seed: 5 })?;
    let warm = take(&out).pop().unwrap();
    let template = module.prepare_template(&host.snapshot_state()?)?;
    for _ in 0..3 {
        let (cb, out) = collector::<Summary>();
        let mut b =
            WasmBoxHost::<Request, Summary>::builder(&module).from_template(&template, cb)?;
        b.message(&Request::Sum)?;
        b.message(&Request::Grow { mib: 1, seed: 1 })?; // writes stay private to this box
        assert_eq!(take(&out)[0], warm);
    }
    // The fork changes without touching its parent.
    let mut fork = host.fork(|_| {})?;
    fork.message(&Request::Clear)?;
    host.message(&Request::Sum)?;
    assert_eq!(take(&out), [warm]);
    // A template of another module is refused and the box is untouched.
    let (cb, _o) = collector::<String>();
    let mut counter = WasmBoxHost::<String, String>::from_wasm_file(guest("counter"), cb)?;
    let err = counter.restore_template(&template).unwrap_err();
    assert!(matches!(err, Error::ForeignTemplate), "{err}");
    counter.message("up")?;
    Ok(())
}

#[test]
fn accept_snapshot_into_reuses_any_previous_snapshot() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("memory"))?;
    let (cb, _out) = collector::<Summary>();
    let mut host = WasmBoxHost::<Request, Summary>::new(&module, cb)?;
    let mut reused = host.snapshot_state()?;
    for request in [
        Request::Grow { mib: 3, seed: 1 },
        Request::Grow { mib: 1, seed: 2 },
        Request::Clear,
        Request::Reserve { mib: 4 },
        Request::Grow { mib: 2, seed: 3 },
    ] {
        host.message(&request)?;
        host.snapshot_into(&mut reused)?;
        assert!(reused == host.snapshot_state()?, "after {request:?}");
    }
    // A snapshot of another box's larger state is overwritten completely too.
    let (cb, _o) = collector::<Summary>();
    let mut small = WasmBoxHost::<Request, Summary>::new(&module, cb)?;
    small.snapshot_into(&mut reused)?;
    assert!(reused == small.snapshot_state()?);
    Ok(())
}

#[test]
fn accept_sparse_memory_snapshots_by_content() -> Result<()> {
    let (cb, _out) = collector::<Summary>();
    let mut host =
        WasmBoxHost::<Request, Summary>::new(&WasmBoxModule::from_file(guest("memory"))?, cb)?;
    host.message(&Request::Grow { mib: 64, seed: 1 })?;
    host.message(&Request::Clear)?;
    host.message(&Request::Grow { mib: 1, seed: 2 })?;
    let snapshot = host.snapshot_state()?;
    assert!(host.memory_size() >= 64 << 20);
    // Freed pages keep their old bytes (the allocator does not zero them), so this is about
    // live data plus whatever the allocator left behind; but untouched pages are not stored.
    let touched = snapshot.memory.stored_bytes();
    assert!(
        touched < host.memory_size(),
        "{touched} bytes stored for {} of memory",
        host.memory_size()
    );
    Ok(())
}

/// A restore into a healthy box whose memory is not larger than the snapshot's replaces its
/// state in place; the box must then be exactly what a fresh box restored from the same
/// snapshot is: same snapshot bytes, same answers, same state after more messages. Covered:
/// memory the box wrote after the snapshot that the snapshot holds as zeros, growth in place,
/// the clock, and a box whose memory is larger (which takes a fresh instance).
#[test]
fn accept_restore_in_place_equals_a_fresh_restore() -> Result<()> {
    let module = WasmBoxModule::from_file(guest("memory"))?;
    let builder = || WasmBoxHost::<Request, Summary>::builder(&module);
    let (cb, host_out) = collector::<Summary>();
    let mut host = builder().build(cb)?;
    host.message(&Request::Grow { mib: 6, seed: 1 })?;
    host.message(&Request::Clear)?;
    host.message(&Request::Grow { mib: 2, seed: 2 })?;
    let earlier = host.snapshot_state()?;
    // After the snapshot: other bytes everywhere, the clock moved, no growth.
    host.message(&Request::Clear)?;
    host.message(&Request::Grow { mib: 3, seed: 3 })?;
    host.set_time(1_900_000_000_000);
    let pages = host.memory_size();
    host.restore_snapshot(&earlier)?;
    assert_eq!(host.memory_size(), pages, "restored in place: same memory");
    let (cb, fresh_out) = collector::<Summary>();
    let mut fresh = builder().restore(&earlier, cb)?;
    assert_state_eq(&host.snapshot_state()?, &earlier, "in place, right after");
    // A small box grown in place, and the two compared over more messages.
    let (cb, small_out) = collector::<Summary>();
    let mut small = builder().build(cb)?;
    small.restore_snapshot(&earlier)?;
    take(&host_out);
    for request in [
        Request::Sum,
        Request::Grow { mib: 1, seed: 4 },
        Request::Clear,
        Request::Sum,
    ] {
        for b in [&mut host, &mut fresh, &mut small] {
            b.message(&request)?;
        }
        let expected = fresh.snapshot_state()?;
        assert!(host.snapshot_state()? == expected, "{request:?}: in place");
        assert!(
            small.snapshot_state()? == expected,
            "{request:?}: grown in place"
        );
    }
    let answers = take(&fresh_out);
    assert_eq!(answers.len(), 4);
    assert_eq!(take(&host_out), answers);
    assert_eq!(take(&small_out), answers);
    // A box with more memory than the snapshot's gets a fresh instance of the right size.
    let mut big = builder().build(|_| {})?;
    big.message(&Request::Grow { mib: 16, seed: 5 })?;
    big.restore_snapshot(&earlier)?;
    assert_state_eq(&big.snapshot_state()?, &earlier, "bigger box");
    Ok(())
}

/// A hand-written guest whose state lives in a non-exported mutable global: each message adds
/// one to it and sends its value (a bincode u8 is the byte itself).
const GLOBAL_GUEST: &str = r#"
(module
  (import "wasmbox" "wasmbox_send" (func $send (param i32 i32)))
  (memory 1)
  (global $hidden (mut i32) (i32.const 0))
  (global $other (mut i64) (i64.const 7))
  (func (export "wasmbox_abi_version") (result i32) i32.const 2)
  (func (export "wasmbox_codecs") (result i32) i32.const 1)
  (func (export "wasmbox_init") (param i32) (result i32) i32.const 0)
  (func (export "wasmbox_input_buffer") (param i32) (result i32) i32.const 1024)
  (func (export "wasmbox_message") (param i32 i32) (result i32)
    (global.set $hidden (i32.add (global.get $hidden) (i32.const 1)))
    (global.set $other (i64.mul (global.get $other) (i64.const 3)))
    (i32.store8 (i32.const 0) (global.get $hidden))
    (call $send (i32.const 0) (i32.const 1))
    i32.const 0))
"#;

#[test]
fn accept_non_exported_globals_are_captured() -> Result<()> {
    let wasm = wat::parse_str(GLOBAL_GUEST)?;
    let (cb, out) = collector::<u8>();
    let mut host = WasmBoxHost::<(), u8>::new(&WasmBoxModule::from_bytes(&wasm)?, cb)?;
    for _ in 0..3 {
        host.message(&())?;
    }
    let snapshot = host.snapshot_state()?;
    assert_eq!(snapshot.globals.len(), 2);
    assert_eq!(snapshot.globals[0].value, wasmbox_host::Value::I32(3));
    assert_eq!(snapshot.globals[1].value, wasmbox_host::Value::I64(7 * 27));
    host.message(&())?;
    host.message(&())?;
    let (cb2, out2) = collector::<u8>();
    let mut fresh = WasmBoxHost::<(), u8>::new(&WasmBoxModule::from_bytes(&wasm)?, cb2)?;
    fresh.restore_snapshot(&snapshot)?;
    fresh.message(&())?;
    assert_eq!(take(&out), [1, 2, 3, 4, 5]);
    assert_eq!(take(&out2), [4], "the restored global carries on from 3");
    Ok(())
}

// ---- bad input: each refused with its own error, the box untouched and still working ----

/// A counter box at value=2, with its collector.
fn counter_at_two() -> Result<(WasmBoxHost, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    let (cb, out) = collector::<String>();
    let mut host = WasmBoxHost::<String, String>::from_wasm_file(guest("counter"), cb)?;
    host.message("up")?;
    host.message("up")?;
    take(&out);
    Ok((host, out))
}

fn still_works(
    host: &mut WasmBoxHost,
    out: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> Result<()> {
    host.message("up")?;
    assert_eq!(take(out), ["value=3"], "the box kept its state");
    Ok(())
}

fn counter_snapshot_file(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let (mut host, _out) = counter_at_two()?;
    host.message("down")?;
    let path = dir.join("good.snap");
    host.snapshot_to_file(&path)?;
    Ok(path)
}

#[test]
fn reject_snapshot_of_another_module() -> Result<()> {
    let (cb, _o) = collector::<String>();
    let mut echo = WasmBoxHost::<String, String>::from_wasm_file(guest("echo"), cb)?;
    let foreign = echo.snapshot_state()?;
    let (mut host, out) = counter_at_two()?;
    let err = host.restore_snapshot(&foreign).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::WrongModule { .. })),
        "{err}"
    );
    still_works(&mut host, &out)
}

#[test]
fn reject_unknown_format_version() -> Result<()> {
    let (mut host, out) = counter_at_two()?;
    let mut snapshot = host.snapshot_state()?;
    snapshot.format_version = 99;
    let err = host.restore_snapshot(&snapshot).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Snapshot(SnapshotError::Version { found: 99, .. })
        ),
        "{err}"
    );
    // In a file, the header's version is checked first.
    let dir = tempfile::tempdir()?;
    let path = counter_snapshot_file(dir.path())?;
    let mut bytes = std::fs::read(&path)?;
    bytes[8] = 4;
    std::fs::write(&path, &bytes)?;
    let err = host.restore_snapshot_from_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Snapshot(SnapshotError::Version { found: 4, .. })
        ),
        "{err}"
    );
    still_works(&mut host, &out)
}

#[test]
fn reject_checksum_mismatch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = counter_snapshot_file(dir.path())?;
    let mut bytes = std::fs::read(&path)?;
    let last = bytes.len() - 10;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes)?;
    let (mut host, out) = counter_at_two()?;
    let err = host.restore_snapshot_from_file(&path).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::Checksum { .. })),
        "{err}"
    );
    still_works(&mut host, &out)
}

#[test]
fn reject_truncated_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = counter_snapshot_file(dir.path())?;
    let bytes = std::fs::read(&path)?;
    let (mut host, out) = counter_at_two()?;
    for cut in [1, 5, 23, 24, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut])?;
        let err = host.restore_snapshot_from_file(&path).unwrap_err();
        assert!(
            matches!(err, Error::Snapshot(SnapshotError::Truncated { .. })),
            "cut at {cut}: {err}"
        );
    }
    still_works(&mut host, &out)
}

#[test]
fn reject_garbage_empty_and_missing_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut host, out) = counter_at_two()?;
    let garbage = dir.path().join("garbage.snap");
    std::fs::write(&garbage, b"this is not a snapshot at all, just some text")?;
    let err = host.restore_snapshot_from_file(&garbage).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::NotASnapshot)),
        "{err}"
    );
    let empty = dir.path().join("empty.snap");
    std::fs::write(&empty, b"")?;
    let err = host.restore_snapshot_from_file(&empty).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::NotASnapshot)),
        "{err}"
    );
    let err = host
        .restore_snapshot_from_file(dir.path().join("missing.snap"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(
        err.to_string().contains("missing.snap"),
        "the error names the file: {err}"
    );
    still_works(&mut host, &out)
}

#[test]
fn accept_file_write_replaces_atomically() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut host, out) = counter_at_two()?;
    let path = dir.path().join("state.snap");
    host.snapshot_to_file(&path)?;
    host.message("up")?;
    host.snapshot_to_file(&path)?; // replaces
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
    assert_eq!(leftovers.len(), 1, "no temporary files are left behind");
    host.message("up")?;
    host.restore_snapshot_from_file(&path)?;
    take(&out);
    host.message("up")?;
    assert_eq!(take(&out), ["value=4"]);
    // Writing into a directory that does not exist fails cleanly, and the box is untouched.
    let err = host
        .snapshot_to_file(dir.path().join("no/such/dir/x.snap"))
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    host.message("up")?;
    assert_eq!(take(&out), ["value=5"]);
    Ok(())
}

// ---- tamper-evident files: a host with a snapshot key ----

fn key(secret: &[u8]) -> SnapshotKey {
    SnapshotKey::derive("wasmbox-host tests 2026-11 snapshot key", secret)
}

/// A counter box at value=2 with a snapshot key.
fn keyed_counter_at_two(
    key: SnapshotKey,
) -> Result<(WasmBoxHost, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    let module = WasmBoxModule::from_file(guest("counter"))?;
    let (cb, out) = collector::<String>();
    let mut host = WasmBoxHost::<String, String>::builder(&module)
        .snapshot_key(key)
        .build(cb)?;
    host.message("up")?;
    host.message("up")?;
    take(&out);
    Ok((host, out))
}

#[test]
fn accept_sealed_files_between_hosts_that_share_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sealed.snap");
    let (mut writer, _o) = keyed_counter_at_two(key(b"k1"))?;
    writer.message("down")?;
    writer.snapshot_to_file(&path)?;
    let (mut reader, out) = keyed_counter_at_two(key(b"k1"))?;
    reader.message("up")?;
    reader.restore_snapshot_from_file(&path)?;
    take(&out);
    reader.message("up")?;
    assert_eq!(take(&out), ["value=2"], "the sealed state is restored");
    let module = reader.module().clone();
    let (cb, out) = collector::<String>();
    let mut built = WasmBoxHost::<String, String>::builder(&module)
        .snapshot_key(key(b"k1"))
        .restore_from_file(&path, cb)?;
    built.message("up")?;
    built.message("up")?;
    assert_eq!(take(&out), ["value=2", "value=3"]);
    // A host without a key reads sealed files as before.
    let (mut plain, out) = counter_at_two()?;
    plain.restore_snapshot_from_file(&path)?;
    plain.message("up")?;
    assert_eq!(take(&out), ["value=2"]);
    Ok(())
}

#[test]
fn reject_unsealed_forged_or_foreign_files_with_a_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut host, out) = keyed_counter_at_two(key(b"k1"))?;
    // Written without a key.
    let unsealed = counter_snapshot_file(dir.path())?;
    let err = host.restore_snapshot_from_file(&unsealed).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::MacMissing)),
        "{err}"
    );
    // Written with another key.
    let foreign = dir.path().join("foreign.snap");
    let (mut other, _o) = keyed_counter_at_two(key(b"k2"))?;
    other.snapshot_to_file(&foreign)?;
    let err = host.restore_snapshot_from_file(&foreign).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::MacMismatch)),
        "{err}"
    );
    // Sealed with the right key, then changed, with the CRC recomputed so that the damage
    // check passes: only the MAC catches it.
    let sealed = dir.path().join("sealed.snap");
    host.snapshot_to_file(&sealed)?;
    let mut bytes = std::fs::read(&sealed)?;
    let last = bytes.len() - 10;
    bytes[last] ^= 0x40;
    let crc = crc32fast::hash(&bytes[64..]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&sealed, &bytes)?;
    let err = host.restore_snapshot_from_file(&sealed).unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::MacMismatch)),
        "{err}"
    );
    let module = host.module().clone();
    let err = WasmBoxHost::<String, String>::builder(&module)
        .snapshot_key(key(b"k1"))
        .restore_from_file(&unsealed, |_| {})
        .unwrap_err();
    assert!(
        matches!(err, Error::Snapshot(SnapshotError::MacMissing)),
        "{err}"
    );
    still_works(&mut host, &out)
}
