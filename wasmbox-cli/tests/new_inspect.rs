//! `wasmbox-cli new` (a guest crate that builds and runs at once) and `wasmbox-cli inspect`
//! (what a snapshot file holds), through the real binary.

mod common;

use anyhow::{Context, Result, ensure};
use common::{Run, cli, guest, guest_target_dir, root, run_guest};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use wasmbox_host::{SnapshotKey, WasmBoxHost, WasmBoxModule};

/// Fails unless the run failed with status 1 and exactly one `Error: ` line on stderr that
/// contains `needle`, and printed nothing on stdout.
fn one_error_line(run: &Run, needle: &str) -> Result<()> {
    let lines: Vec<&str> = run.stderr.lines().collect();
    ensure!(run.code == Some(1), "expected status 1: {run:?}");
    ensure!(run.stdout.is_empty(), "something on stdout: {run:?}");
    ensure!(
        lines.len() == 1 && lines[0].starts_with("Error: ") && lines[0].contains(needle),
        "expected one error line containing {needle:?}, stderr:\n{}",
        run.stderr
    );
    Ok(())
}

/// `wasmbox-cli new PATH EXTRA...`.
fn new(path: &Path, extra: &[&str]) -> Result<Run> {
    let mut args = vec![OsStr::new("new"), path.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    cli(&args, "")
}

/// `wasmbox-cli inspect FILE EXTRA...`.
fn inspect(file: &Path, extra: &[&OsStr]) -> Result<Run> {
    let mut args = vec![OsStr::new("inspect"), file.as_os_str()];
    args.extend_from_slice(extra);
    cli(&args, "")
}

/// `inspect --json`, parsed.
fn inspect_json(file: &Path, extra: &[&OsStr]) -> Result<serde_json::Value> {
    let mut args = vec![OsStr::new("--json")];
    args.extend_from_slice(extra);
    let run = inspect(file, &args)?.success()?;
    serde_json::from_str(&run.stdout).with_context(|| format!("not JSON:\n{}", run.stdout))
}

/// Creates a guest with `new` (depending on this checkout) and runs it on `up up down`.
fn new_guest_runs_at_once(name: &str, extra: &[&str]) -> Result<()> {
    // Build the example guests first, so that the new guest's dependencies are already
    // compiled in the shared target dir.
    guest("counter")?;
    let dir = tempfile::tempdir()?;
    let crate_dir = dir.path().join(name);
    let checkout = root();
    let checkout = checkout.to_str().context("workspace path is not UTF-8")?;
    let mut args = vec!["--wasmbox-path", checkout];
    args.extend_from_slice(extra);
    let created = new(&crate_dir, &args)?.success()?;
    assert_eq!(created.stdout, "");
    ensure!(
        created.stderr.contains("created") && created.stderr.contains("wasmbox-cli run "),
        "stderr:\n{}",
        created.stderr
    );
    for file in ["Cargo.toml", "src/lib.rs", ".gitignore", "README.md"] {
        ensure!(crate_dir.join(file).is_file(), "{file} was not written");
    }
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml"))?;
    let wasmbox_crate = std::fs::canonicalize(root().join("wasmbox"))?;
    ensure!(
        manifest.contains(&format!("name = \"{name}\""))
            && manifest.contains(&format!("path = \"{}\"", wasmbox_crate.display())),
        "Cargo.toml:\n{manifest}"
    );
    // The target dir of the prebuilt guests: nothing is rebuilt but the new crate. Its name is
    // unique to this test, so its .wasm does not replace another guest's there.
    let target_dir = guest_target_dir();
    let target_dir = target_dir.to_str().context("target path is not UTF-8")?;
    let run = run_guest(&crate_dir, &["--target-dir", target_dir], "up\nup\ndown\n")?.success()?;
    assert_eq!(run.stdout, "value=1\nvalue=2\nvalue=1\n");
    Ok(())
}

#[test]
fn accept_new_async_guest_that_runs_at_once() -> Result<()> {
    new_guest_runs_at_once("new-async-guest", &[])
}

#[test]
fn accept_new_sync_guest_that_runs_at_once() -> Result<()> {
    new_guest_runs_at_once("new-sync-guest", &["--sync"])?;
    Ok(())
}

#[test]
fn accept_new_guest_on_the_published_crate_by_default() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let crate_dir = dir.path().join("nested").join("published");
    new(&crate_dir, &[])?.success()?;
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml"))?;
    ensure!(
        manifest.contains("wasmbox = \"0.1\"") && manifest.contains("[workspace]"),
        "Cargo.toml:\n{manifest}"
    );
    let lib = std::fs::read_to_string(crate_dir.join("src/lib.rs"))?;
    ensure!(
        lib.contains("#[wasmbox]\nasync fn run"),
        "src/lib.rs:\n{lib}"
    );
    assert_eq!(
        std::fs::read_to_string(crate_dir.join(".gitignore"))?,
        "/target\n"
    );
    Ok(())
}

#[test]
fn reject_new_on_an_existing_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let full = dir.path().join("full");
    std::fs::create_dir(&full)?;
    std::fs::write(full.join("keep.txt"), "keep me")?;
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    let file = dir.path().join("file");
    std::fs::write(&file, "a file")?;
    for path in [&full, &empty, &file] {
        one_error_line(&new(path, &[])?, "already exists")?;
    }
    let kept: Vec<PathBuf> = std::fs::read_dir(&full)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    assert_eq!(kept, [full.join("keep.txt")]);
    assert_eq!(std::fs::read_to_string(full.join("keep.txt"))?, "keep me");
    assert_eq!(std::fs::read_dir(&empty)?.count(), 0);
    assert_eq!(std::fs::read_to_string(&file)?, "a file");
    Ok(())
}

#[test]
fn reject_new_with_an_invalid_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, needle) in [
        ("2fast", "not a valid package name"),
        ("my guest", "not a valid package name"),
        ("fn", "Rust keyword"),
        ("wasmbox", "depends on a crate of that name"),
    ] {
        one_error_line(&new(&dir.path().join(name), &[])?, needle)?;
    }
    assert_eq!(
        std::fs::read_dir(dir.path())?.count(),
        0,
        "something was written"
    );
    Ok(())
}

/// The counter's wall clock in the snapshots below: frozen at this many ms since the epoch.
const START_MILLIS: &str = "1700000000123";
const START_DATE: &str = "2023-11-14T22:13:20.123000000Z";

/// A snapshot of the counter at `value=2`, written by the real CLI, with seed 42 and a frozen
/// clock.
fn counter_snapshot(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("counter.snap");
    let stdin = format!("up\nup\n!!snapshot {}\n", path.display());
    let args = [
        "--seed",
        "42",
        "--freeze-time",
        "--start-time",
        START_MILLIS,
    ];
    run_guest(&guest("counter")?, &args, &stdin)?.success()?;
    Ok(path)
}

fn fingerprint(name: &str) -> Result<String> {
    Ok(WasmBoxModule::from_file(guest(name)?)?.fingerprint_hex())
}

#[test]
fn accept_inspect_as_text() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = counter_snapshot(dir.path())?;
    let run = inspect(&snap, &[])?.success()?;
    let text = &run.stdout;
    for needle in [
        "a WasmBox snapshot file, format version 3".to_owned(),
        format!("fingerprint {}", fingerprint("counter")?),
        "17 pages (1114112 bytes)".to_owned(),
        // The stack pointer, Rust's global 0.
        "global 0: i32 ".to_owned(),
        format!("wall {START_DATE}"),
        "a restoring host applies its own limits".to_owned(),
        "no MAC".to_owned(),
    ] {
        ensure!(text.contains(&needle), "{needle:?} is not in:\n{text}");
    }
    Ok(())
}

#[test]
fn accept_inspect_as_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = counter_snapshot(dir.path())?;
    let counter = guest("counter")?;
    let json = inspect_json(&snap, &[OsStr::new("--module"), counter.as_os_str()])?;
    let counter_fingerprint = fingerprint("counter")?;
    assert_eq!(json["format_version"], 3);
    assert_eq!(json["module_fingerprint"], counter_fingerprint.as_str());
    assert_eq!(json["module"]["matches"], true);
    assert_eq!(json["module"]["fingerprint"], counter_fingerprint.as_str());
    let pages = json["memory"]["pages"].as_u64().context("no pages")?;
    assert_eq!(json["memory"]["bytes"].as_u64(), Some(pages * 65536));
    ensure!(json["memory"]["stored_bytes"].as_u64() > Some(0), "{json}");
    assert_eq!(json["globals"][0]["index"], 0);
    assert_eq!(json["globals"][0]["type"], "i32");
    assert_eq!(json["clock"]["wall"], START_DATE);
    assert_eq!(json["clock"]["wall_nanos"], 1_700_000_000_123_000_000_u64);
    let seed: String = ChaCha20Rng::seed_from_u64(42)
        .get_seed()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(json["rng"]["seed"], seed.as_str());
    assert_eq!(json["rng"]["stream"], 0);
    assert_eq!(json["limits"]["max_memory_bytes"], 1_u64 << 30);
    assert_eq!(json["mac"]["present"], false);
    assert_eq!(json["mac"]["valid"], serde_json::Value::Null);
    assert_eq!(json["file_bytes"], std::fs::metadata(&snap)?.len());

    let echo = guest("echo")?;
    let json = inspect_json(&snap, &[OsStr::new("--module"), echo.as_os_str()])?;
    assert_eq!(json["module"]["matches"], false);
    assert_eq!(json["module"]["fingerprint"], fingerprint("echo")?.as_str());
    Ok(())
}

#[test]
fn accept_inspect_of_the_generator_state() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("random.snap");
    let module = WasmBoxModule::from_file(guest("random")?)?;
    let mut host = WasmBoxHost::<u32, Vec<u8>>::builder(&module)
        .seed(7)
        .build(|_: Vec<u8>| {})?;
    host.message(&16)?;
    host.snapshot_to_file(&snap)?;
    let rng = host.snapshot_state()?.rng;
    ensure!(rng.get_word_pos() > 0, "the guest drew no random bytes");
    let json = inspect_json(&snap, &[])?;
    assert_eq!(json["rng"]["stream"], rng.get_stream());
    assert_eq!(
        json["rng"]["word_pos"].as_u64().map(u128::from),
        Some(rng.get_word_pos())
    );
    Ok(())
}

#[test]
fn accept_inspect_of_a_keyed_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("sealed.snap");
    let key = [7u8; 32];
    let module = WasmBoxModule::from_file(guest("counter")?)?;
    let mut host = WasmBoxHost::<String, String>::builder(&module)
        .snapshot_key(SnapshotKey::from_bytes(key))
        .build(|_: String| {})?;
    host.message("up")?;
    host.snapshot_to_file(&snap)?;

    let right = dir.path().join("right.key");
    std::fs::write(&right, key)?;
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, format!("{}\n", "08".repeat(32)))?;

    let right = [OsStr::new("--key-file"), right.as_os_str()];
    let valid = inspect(&snap, &right)?.success()?;
    ensure!(
        valid.stdout.contains("present and valid"),
        "{}",
        valid.stdout
    );
    let json = inspect_json(&snap, &right)?;
    assert_eq!(json["mac"]["present"], true);
    assert_eq!(json["mac"]["valid"], true);

    let wrong = [OsStr::new("--key-file"), wrong.as_os_str()];
    let invalid = inspect(&snap, &wrong)?.success()?;
    ensure!(invalid.stdout.contains("INVALID"), "{}", invalid.stdout);
    let json = inspect_json(&snap, &wrong)?;
    assert_eq!(json["mac"]["valid"], false);

    // Without a key the MAC is reported, not checked.
    let json = inspect_json(&snap, &[])?;
    assert_eq!(json["mac"]["present"], true);
    assert_eq!(json["mac"]["valid"], serde_json::Value::Null);
    Ok(())
}

#[test]
fn reject_inspect_of_a_damaged_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = counter_snapshot(dir.path())?;
    let mut bytes = std::fs::read(&snap)?;
    let near_end = bytes.len() - 3;
    bytes[near_end] ^= 0x40;
    let damaged = dir.path().join("damaged.snap");
    std::fs::write(&damaged, &bytes)?;
    one_error_line(&inspect(&damaged, &[])?, "checksum")?;

    let truncated = dir.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    one_error_line(&inspect(&truncated, &[])?, "truncated")?;

    one_error_line(
        &inspect(&guest("counter")?, &[])?,
        "is a WebAssembly module, not a WasmBox snapshot file",
    )
}

#[test]
fn accept_help_on_new_and_inspect() -> Result<()> {
    for (command, needle) in [("new", "--wasmbox-path"), ("inspect", "--key-file")] {
        let run = cli(&[OsStr::new(command), OsStr::new("--help")], "")?.success()?;
        ensure!(
            run.stdout.contains("Usage: wasmbox-cli") && run.stdout.contains(needle),
            "{command} --help:\n{}",
            run.stdout
        );
    }
    Ok(())
}
