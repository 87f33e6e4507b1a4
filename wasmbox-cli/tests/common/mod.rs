//! Shared by the CLI tests: builds the example guests for wasm32-wasip1 once per test binary
//! and runs the real `wasmbox-cli` binary with piped stdin.
#![allow(dead_code)]

use anyhow::{Context, Result, ensure};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

#[path = "../../../wasmbox-host/tests/common/guests.rs"]
mod guests;
#[allow(unused_imports)] // Not every test binary builds guest crates itself.
pub use guests::guest_target_dir;

/// The workspace root.
pub fn root() -> PathBuf {
    guests::workspace()
}

/// Path of the built example guest `name` (e.g. `counter`).
pub fn guest(name: &str) -> Result<PathBuf> {
    guests::try_guest(name).map_err(|e| anyhow::anyhow!(e))
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Run {
    /// Exit status code.
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Run {
    /// The stdout lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Fails unless the run exited with status 0.
    pub fn success(self) -> Result<Self> {
        ensure!(
            self.code == Some(0),
            "wasmbox-cli exited with {:?}; stderr:\n{}",
            self.code,
            self.stderr
        );
        Ok(self)
    }

    /// The paths `!!snapshot` reported writing, in order.
    pub fn snapshot_paths(&self) -> Vec<PathBuf> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("snapshot written to "))
            .map(PathBuf::from)
            .collect()
    }
}

/// Runs `wasmbox-cli ARGS` with `stdin` piped in, and a time limit.
pub fn cli(args: &[&OsStr], stdin: &str) -> Result<Run> {
    let output = assert_cmd::Command::new(env!("CARGO_BIN_EXE_wasmbox-cli"))
        .args(args)
        .write_stdin(stdin)
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .context("cannot run wasmbox-cli")?;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).context("stdout is not UTF-8")?,
        stderr: String::from_utf8(output.stderr).context("stderr is not UTF-8")?,
    })
}

/// Runs `wasmbox-cli run MODULE EXTRA...` with `stdin`.
pub fn run_guest(module: &Path, extra: &[&str], stdin: &str) -> Result<Run> {
    let mut args = vec![OsStr::new("run"), module.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    cli(&args, stdin)
}

/// The counter box `box` in `store` has, byte for byte, the full state of a box (seed `seed`,
/// start time `start`) that received exactly `ups` "up" messages.
pub fn check_counter_state(
    wasm: &Path,
    store: &wasmbox_host::durable::BoxStore,
    seed: u64,
    start: u64,
    ups: u64,
) -> Result<()> {
    use wasmbox_host::durable::DurableBox;
    use wasmbox_host::{WasmBoxHost, WasmBoxModule};
    let module = WasmBoxModule::from_file(wasm)?;
    let mut durable =
        DurableBox::<String, String>::builder(&module, store, "box").open(|_, _| {})?;
    let mut reference = WasmBoxHost::<String, String>::builder(&module)
        .seed(seed)
        .start_time(start)
        .rollback_on_trap(true)
        .build(|_| {})?;
    for _ in 0..ups {
        reference.message("up")?;
    }
    let (got, expected) = (durable.snapshot_state()?, reference.snapshot_state()?);
    ensure!(
        wasmbox_host::snapshot::encode_file(&got) == wasmbox_host::snapshot::encode_file(&expected),
        "the box differs from one that received exactly {ups} messages"
    );
    Ok(())
}
