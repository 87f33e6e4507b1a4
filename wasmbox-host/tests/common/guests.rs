//! Builds the example guests for wasm32-wasip1, once per process, and finds them. Shared by
//! the host's tests and benchmarks and the CLI's tests (included with `#[path]`), as wasmtime's
//! test programs are built by one step and loaded by path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

// The CLI's unit tests include this file too, next to its own `toolchain` module.
#[path = "../../../wasmbox-cli/src/toolchain.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod toolchain;

/// The target dir the example guests are built in. It is not the workspace's own target dir:
/// a nested cargo build there would wait forever for the lock the outer cargo holds.
pub fn guest_target_dir() -> PathBuf {
    workspace().join("target").join("guests")
}

/// The workspace root (every crate that includes this file sits one level below it).
pub fn workspace() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The example guests built with the `json` feature of `wasmbox`; the others are built without.
pub const JSON_GUESTS: [&str; 2] = ["typed", "random"];

/// Path of the built example guest `name` (e.g. `counter`), building all of them first if
/// this process has not yet.
pub fn try_guest(name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // On a fresh machine the stable toolchain may lack the wasm32-wasip1 target: install
        // it with rustup, as the CLI does for a guest crate.
        toolchain::ensure_target(&workspace().join("examples"))?;
        let target_dir = guest_target_dir();
        // Two builds: cargo unifies the features of the packages built together, so the
        // guests with the `json` feature are built apart, and the others stay without it.
        let mut others = vec!["--workspace".to_string()];
        let mut json = Vec::new();
        for name in JSON_GUESTS {
            others.extend(["--exclude".to_string(), name.to_string()]);
            json.extend(["-p".to_string(), name.to_string()]);
        }
        for packages in [others, json] {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip1",
                    "--manifest-path",
                ])
                .arg(workspace().join("examples").join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir)
                .args(&packages)
                .status()
                .map_err(|e| format!("cannot run cargo to build the example guests: {e}"))?;
            if !status.success() {
                return Err(format!("building the example guests failed ({status})"));
            }
        }
        Ok(target_dir.join("wasm32-wasip1").join("release"))
    });
    let path = dir.as_ref()?.join(format!("{name}.wasm"));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("no guest at {}", path.display()))
    }
}
