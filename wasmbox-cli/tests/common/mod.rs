//! Shared by the CLI tests: builds the example guests for wasm32-wasip1 once per test binary
//! and runs the real `wasmbox-cli` binary with piped stdin.
#![allow(dead_code)]

use anyhow::{Context, Result, ensure};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(".."))
}

/// The target dir the example guests are built in. It is not the workspace's own target
/// dir: a nested cargo build there would wait forever for the lock the outer `cargo test`
/// holds.
pub fn guest_target_dir() -> PathBuf {
    root().join("target").join("guests")
}

/// Path of the built example guest `name` (e.g. `counter`).
pub fn guest(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target_dir = guest_target_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(root().join("examples").join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .map_err(|e| format!("cannot run cargo to build the example guests: {e}"))?;
        if !status.success() {
            return Err(format!("building the example guests failed ({status})"));
        }
        Ok(target_dir.join("wasm32-wasip1").join("release"))
    });
    let dir = dir.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = dir.join(format!("{name}.wasm"));
    ensure!(path.exists(), "no guest at {}", path.display());
    Ok(path)
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
