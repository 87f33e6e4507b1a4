//! Drives the real `wasmbox-cli` binary with piped stdin against the example guests.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use anyhow::{Context, Result, ensure};
use common::{cli, guest, guest_target_dir, root, run_guest};
use predicates::prelude::*;
use std::ffi::OsStr;
use std::path::Path;

/// Runs `up`, BAD, `up` against the counter and checks that BAD was reported on stderr with
/// `message` and that the session went on with its state intact.
fn bad_line_keeps_session(bad: &str, message: &str) -> Result<()> {
    let run = run_guest(&guest("counter")?, &[], &format!("up\n{bad}\nup\n"))?.success()?;
    assert_eq!(
        run.lines(),
        ["value=1", "value=2"],
        "stderr:\n{}",
        run.stderr
    );
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    ensure!(
        errors.len() == 1,
        "expected one error line for {bad:?}, stderr:\n{}",
        run.stderr
    );
    ensure!(
        errors[0].contains(message),
        "{bad:?}: expected {message:?} in {:?}",
        errors[0]
    );
    Ok(())
}

/// A snapshot of the counter at `value=1`, in `dir`.
fn counter_snapshot(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("one.snap");
    let line = format!("up\n!!snapshot {}\n", path.display());
    run_guest(&guest("counter")?, &[], &line)?.success()?;
    Ok(path)
}

#[test]
fn accept_counter_session_with_snapshot_and_restore() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("x.snap");
    let p = snap.display();
    let stdin = format!("up\nup\n!!snapshot {p}\nup\nup\n!!restore {p}\nup\n");
    let run = run_guest(&guest("counter")?, &[], &stdin)?.success()?;
    assert_eq!(run.stdout, "value=1\nvalue=2\nvalue=3\nvalue=4\nvalue=3\n");
    assert_eq!(run.snapshot_paths(), std::slice::from_ref(&snap));
    ensure!(
        run.stderr.contains(&format!("restored {p}")),
        "stderr:\n{}",
        run.stderr
    );
    ensure!(!run.stderr.contains("error"), "stderr:\n{}", run.stderr);
    Ok(())
}

#[test]
fn accept_restore_in_a_second_process() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("two.snap");
    let first = format!("up\nup\n!!snapshot {}\nup\n", snap.display());
    let counter = guest("counter")?;
    assert_eq!(
        run_guest(&counter, &[], &first)?.success()?.lines(),
        ["value=1", "value=2", "value=3"]
    );
    let snap_arg = snap.to_str().context("temp path is not UTF-8")?;
    let second = run_guest(&counter, &["--restore", snap_arg], "up\nup\n")?.success()?;
    assert_eq!(second.lines(), ["value=3", "value=4"]);
    Ok(())
}

#[test]
fn reject_unknown_command() -> Result<()> {
    bad_line_keeps_session("!!frobnicate", "unknown command `!!frobnicate`")
}

#[test]
fn reject_missing_argument() -> Result<()> {
    bad_line_keeps_session("!!restore", "`!!restore` needs the path of a snapshot file")
}

#[test]
fn reject_bad_number() -> Result<()> {
    bad_line_keeps_session(
        "!!clock soon",
        "`!!clock` takes a time in milliseconds since the Unix epoch, not `soon`",
    )
}

#[test]
fn reject_missing_snapshot_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nothing.snap");
    bad_line_keeps_session(
        &format!("!!restore {}", missing.display()),
        "nothing.snap: No such file or directory",
    )
}

#[test]
fn reject_corrupt_snapshot_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = counter_snapshot(dir.path())?;
    let mut bytes = std::fs::read(&snap)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&snap, &bytes)?;
    bad_line_keeps_session(
        &format!("!!restore {}", snap.display()),
        "the snapshot file is damaged",
    )?;
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&snap, &bytes)?;
    bad_line_keeps_session(
        &format!("!!restore {}", snap.display()),
        "the snapshot file is truncated",
    )?;
    std::fs::write(&snap, b"this is not a snapshot")?;
    bad_line_keeps_session(
        &format!("!!restore {}", snap.display()),
        "not a WasmBox snapshot file",
    )
}

#[test]
fn reject_foreign_snapshot_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("faults.snap");
    run_guest(
        &guest("faults")?,
        &[],
        &format!("up\n!!snapshot {}\n", snap.display()),
    )?
    .success()?;
    bad_line_keeps_session(
        &format!("!!restore {}", snap.display()),
        "the snapshot belongs to another module",
    )
}

#[test]
fn reject_snapshot_to_a_missing_directory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir
        .path()
        .join("no")
        .join("such")
        .join("dir")
        .join("x.snap");
    bad_line_keeps_session(
        &format!("!!snapshot {}", path.display()),
        "cannot write a snapshot to",
    )
}

#[test]
fn reject_line_that_is_not_utf8() -> Result<()> {
    let output = assert_cmd::Command::new(env!("CARGO_BIN_EXE_wasmbox-cli"))
        .arg("run")
        .arg(guest("counter")?)
        .write_stdin(&b"up\n\xff\xfe\nup\n"[..])
        .output()?;
    ensure!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout)?, "value=1\nvalue=2\n");
    ensure!(String::from_utf8(output.stderr)?.contains("not valid UTF-8"));
    Ok(())
}

#[test]
fn reject_restore_at_start_of_a_bad_snapshot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.snap");
    std::fs::write(&bad, b"garbage")?;
    assert_cmd::Command::new(env!("CARGO_BIN_EXE_wasmbox-cli"))
        .arg("run")
        .arg(guest("counter")?)
        .arg("--restore")
        .arg(&bad)
        .write_stdin("up\n")
        .assert()
        .failure()
        .stdout("")
        .stderr(
            predicate::str::starts_with("Error: cannot start from the snapshot")
                .and(predicate::str::contains("not a WasmBox snapshot file")),
        );
    Ok(())
}

#[test]
fn accept_guest_trap_rolls_back_and_goes_on() -> Result<()> {
    let run = run_guest(&guest("faults")?, &[], "up\npanic\nup\ndivide\nup\n")?.success()?;
    assert_eq!(run.lines(), ["value=1", "value=2", "value=3"]);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    ensure!(errors.len() == 2, "stderr:\n{}", run.stderr);
    ensure!(
        errors[0].contains("the guest panicked") && errors[0].contains("asked to panic at count 1")
    );
    ensure!(errors[0].contains("rolled back"), "{}", errors[0]);
    ensure!(errors[1].contains("divide by zero"), "{}", errors[1]);
    Ok(())
}

#[test]
fn accept_guest_printing_kept_off_stdout() -> Result<()> {
    let run = run_guest(&guest("faults")?, &[], "print\nup\n")?.success()?;
    assert_eq!(run.lines(), ["printed", "value=1"]);
    ensure!(
        run.stderr.contains("printed by the guest on its stdout"),
        "stderr:\n{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn accept_two_unnamed_snapshots_as_distinct_new_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let existing = dir.path().join("snapshot-1.snap");
    std::fs::write(&existing, "keep me")?;
    let snap_dir = dir.path().to_str().context("temp path is not UTF-8")?;
    let counter = guest("counter")?;
    let run = run_guest(
        &counter,
        &["--snapshot-dir", snap_dir],
        "up\n!!snapshot\nup\n!!snapshot\n",
    )?
    .success()?;
    assert_eq!(run.lines(), ["value=1", "value=2"]);
    let paths = run.snapshot_paths();
    ensure!(
        paths.len() == 2 && paths[0] != paths[1],
        "stderr:\n{}",
        run.stderr
    );
    ensure!(
        !paths.contains(&existing),
        "an existing file was chosen: {paths:?}"
    );
    assert_eq!(std::fs::read_to_string(&existing)?, "keep me");
    for (path, next) in paths.iter().zip(["value=2", "value=3"]) {
        ensure!(
            path.parent() == Some(dir.path()),
            "{} is not in the snapshot dir",
            path.display()
        );
        let path = path.to_str().context("temp path is not UTF-8")?;
        assert_eq!(
            run_guest(&counter, &["--restore", path], "up\n")?
                .success()?
                .lines(),
            [next]
        );
    }
    Ok(())
}

#[test]
fn accept_compile_then_run_precompiled() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let compiled = dir.path().join("counter.cwasm");
    let counter = guest("counter")?;
    let run = cli(
        &[
            OsStr::new("compile"),
            counter.as_os_str(),
            compiled.as_os_str(),
        ],
        "",
    )?
    .success()?;
    assert_eq!(run.stdout, "");
    ensure!(std::fs::read(&compiled)?.starts_with(&wasmbox_host::PRECOMPILED_MAGIC));
    let run = run_guest(&compiled, &["--allow-precompiled"], "up\nup\ndown\n")?.success()?;
    assert_eq!(run.lines(), ["value=1", "value=2", "value=1"]);
    Ok(())
}

#[test]
fn reject_precompiled_module_without_consent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let compiled = dir.path().join("counter.cwasm");
    let counter = guest("counter")?;
    cli(
        &[
            OsStr::new("compile"),
            counter.as_os_str(),
            compiled.as_os_str(),
        ],
        "",
    )?
    .success()?;
    let run = run_guest(&compiled, &[], "up\n")?;
    ensure!(run.code == Some(1), "{run:?}");
    ensure!(run.stdout.is_empty(), "the module ran: {run:?}");
    let errors: Vec<&str> = run.stderr.lines().collect();
    ensure!(
        errors.len() == 1
            && errors[0].contains("is a precompiled module")
            && errors[0].contains("--allow-precompiled"),
        "{errors:?}"
    );
    Ok(())
}

#[test]
fn reject_compile_of_a_precompiled_module() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let once = dir.path().join("once.cwasm");
    let twice = dir.path().join("twice.cwasm");
    let counter = guest("counter")?;
    cli(
        &[OsStr::new("compile"), counter.as_os_str(), once.as_os_str()],
        "",
    )?
    .success()?;
    let run = cli(
        &[OsStr::new("compile"), once.as_os_str(), twice.as_os_str()],
        "",
    )?;
    ensure!(
        run.code == Some(1) && run.stderr.contains("already precompiled"),
        "{run:?}"
    );
    ensure!(!twice.exists());
    Ok(())
}

#[test]
fn accept_run_of_a_guest_crate_directory() -> Result<()> {
    // Share the target dir of the prebuilt guests, so that nothing is rebuilt and nothing is
    // written under examples/.
    guest("counter")?;
    let target_dir = guest_target_dir();
    let target_dir = target_dir.to_str().context("target path is not UTF-8")?;
    let crate_dir = root().join("examples").join("counter");
    let run = run_guest(&crate_dir, &["--target-dir", target_dir], "up\nup\n")?.success()?;
    assert_eq!(run.lines(), ["value=1", "value=2"]);
    ensure!(run.stderr.contains("building"), "stderr:\n{}", run.stderr);
    Ok(())
}

#[test]
fn reject_garbage_module_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not WebAssembly")?;
    assert_cmd::Command::new(env!("CARGO_BIN_EXE_wasmbox-cli"))
        .arg("run")
        .arg(&garbage)
        .write_stdin("up\n")
        .assert()
        .failure()
        .stdout("")
        .stderr(
            predicate::str::starts_with("Error: ")
                .and(predicate::str::contains("is not a WasmBox module")),
        );
    Ok(())
}

#[test]
fn reject_wasm_that_is_not_a_guest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x01\0\0\0")?;
    let run = run_guest(&empty, &[], "up\n")?;
    ensure!(
        run.code == Some(1) && run.stderr.contains("not a WasmBox guest"),
        "{run:?}"
    );
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, b"\0asm\x01\0\0\0\x01\x05")?;
    let run = run_guest(&truncated, &[], "up\n")?;
    ensure!(
        run.code == Some(1) && run.stderr.contains("not a valid WebAssembly module"),
        "{run:?}"
    );
    Ok(())
}

#[test]
fn reject_missing_module_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run = run_guest(&dir.path().join("absent.wasm"), &[], "")?;
    ensure!(
        run.code == Some(1) && run.stderr.contains("cannot open"),
        "{run:?}"
    );
    Ok(())
}

#[test]
fn accept_escaped_message_and_help() -> Result<()> {
    let run = run_guest(&guest("echo")?, &[], "hello\n!!!snapshot\n!!help\n\n")?.success()?;
    assert_eq!(run.stdout, "hello\n!!snapshot\n\n");
    ensure!(
        run.stderr.contains("!!restore PATH"),
        "stderr:\n{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn accept_clock_commands_with_frozen_time() -> Result<()> {
    let run = run_guest(
        &guest("counter")?,
        &["--freeze-time", "--seed", "7"],
        "!!clock 1700000000000\nup\n!!clock\nup\n",
    )?
    .success()?;
    assert_eq!(run.lines(), ["value=1", "value=2"]);
    ensure!(
        run.stderr.contains("clock set to 1700000000000"),
        "stderr:\n{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn accept_help_on_every_command() -> Result<()> {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["compile", "--help"],
        &["help", "run"],
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let run = cli(&args, "")?.success()?;
        ensure!(
            run.stdout.contains("Usage: wasmbox-cli"),
            "{args:?}: {}",
            run.stdout
        );
    }
    let run = cli(&[OsStr::new("run"), OsStr::new("--help")], "")?;
    ensure!(run.stdout.contains("go to stderr") && run.stdout.contains("!!snapshot [PATH]"));
    ensure!(
        run.stdout.contains("this same build"),
        "the precompiled-module warning is missing"
    );
    Ok(())
}
