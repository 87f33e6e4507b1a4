//! Making sure the Rust toolchain can build guests: the `wasm32-wasip1` standard library is
//! installed with rustup when it is missing. Shared, std only, by the CLI (before it builds a
//! guest crate) and by the test harness of the host and the CLI (before it builds the example
//! guests; it includes this file by path), so that both work on a fresh machine where only a
//! stable toolchain is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target guests are built for.
pub const GUEST_TARGET: &str = "wasm32-wasip1";

/// Makes sure the wasm32-wasip1 standard library is installed for the toolchain that builds
/// in `dir` (a `rust-toolchain.toml` there may choose another one), installing it with rustup
/// when rustup is present. Progress goes to stderr.
///
/// # Errors
/// A sentence saying what failed and how to fix it by hand.
pub fn ensure_target(dir: &Path) -> Result<(), String> {
    let listed = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "list", "--installed"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    let output = match listed {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            return Err(format!(
                "`rustup target list --installed` failed ({})",
                output.status
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return check_target_without_rustup(dir);
        }
        Err(e) => return Err(format!("cannot run rustup: {e}")),
    };
    if String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|l| l.trim() == GUEST_TARGET)
    {
        return Ok(());
    }
    eprintln!(
        "wasmbox: the {GUEST_TARGET} target is not installed; installing it with `rustup target add {GUEST_TARGET}`"
    );
    let status = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "add", GUEST_TARGET])
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`rustup target add {GUEST_TARGET}` failed ({status})"
        ));
    }
    Ok(())
}

/// Without rustup: looks for the target's standard library in rustc's sysroot, and says how
/// to install it if it is missing. If rustc itself cannot be asked, lets cargo find out.
fn check_target_without_rustup(dir: &Path) -> Result<(), String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = Command::new(rustc)
        .current_dir(dir)
        .args(["--print", "sysroot"])
        .output()
    else {
        return Ok(());
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success()
        || sysroot
            .join("lib")
            .join("rustlib")
            .join(GUEST_TARGET)
            .is_dir()
    {
        return Ok(());
    }
    Err(format!(
        "the {GUEST_TARGET} target is not installed for the Rust toolchain at {}, and rustup is not \
         available to install it: install rustup and run `rustup target add {GUEST_TARGET}`, or \
         install your distribution's Rust standard library for {GUEST_TARGET}",
        sysroot.display()
    ))
}
