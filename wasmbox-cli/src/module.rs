//! Finding out what a MODULE argument is and turning it into a [`WasmBoxModule`]: a `.wasm`
//! file, a module precompiled by `wasmbox-cli compile`, or a guest crate directory that is
//! built with cargo first.

use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use wasmbox_host::{PRECOMPILED_MAGIC, WasmBoxModule};

use crate::toolchain::GUEST_TARGET;

/// The first bytes of every WebAssembly binary module.
const WASM_MAGIC: [u8; 4] = *b"\0asm";

/// What a MODULE argument turned out to be, found by looking at it (never by its name or
/// position on the command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// A WebAssembly binary (starts with `\0asm`).
    Wasm(PathBuf),
    /// A module precompiled by `wasmbox-cli compile` (starts with [`PRECOMPILED_MAGIC`]).
    Precompiled(PathBuf),
    /// A cargo package to build for wasm32-wasip1; the path is its directory.
    CrateDir(PathBuf),
}

/// How a guest crate directory is built.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Passed to cargo as `--target-dir`; without it cargo's own rules apply (including the
    /// `CARGO_TARGET_DIR` environment variable).
    pub target_dir: Option<PathBuf>,
}

/// Looks at `path` and says what kind of module it is.
///
/// # Errors
/// If `path` does not exist, cannot be read, or is none of the three kinds.
pub fn detect(path: &Path) -> Result<ModuleKind> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if meta.is_dir() {
        if !path.join("Cargo.toml").is_file() {
            bail!(
                "{} is a directory but not a cargo package: it has no Cargo.toml",
                path.display()
            );
        }
        return Ok(ModuleKind::CrateDir(path.to_path_buf()));
    }
    if path.file_name().is_some_and(|name| name == "Cargo.toml") {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        return Ok(ModuleKind::CrateDir(dir));
    }
    let mut head = Vec::with_capacity(PRECOMPILED_MAGIC.len());
    File::open(path)
        .and_then(|f| {
            f.take(PRECOMPILED_MAGIC.len() as u64)
                .read_to_end(&mut head)
        })
        .with_context(|| format!("cannot read {}", path.display()))?;
    if head.starts_with(&WASM_MAGIC) {
        Ok(ModuleKind::Wasm(path.to_path_buf()))
    } else if head == PRECOMPILED_MAGIC {
        Ok(ModuleKind::Precompiled(path.to_path_buf()))
    } else {
        bail!(
            "{} is not a WasmBox module: it is neither a WebAssembly binary (.wasm), nor a module \
             precompiled by `wasmbox-cli compile`, nor a guest crate directory",
            path.display()
        )
    }
}

/// Loads the module at `path`, whatever its kind, building a crate directory first. A
/// precompiled module is loaded only with `allow_precompiled`.
///
/// # Errors
/// If detection, the build or loading fails, or `path` is precompiled and not allowed.
pub fn load(path: &Path, build: &BuildOptions, allow_precompiled: bool) -> Result<WasmBoxModule> {
    match detect(path)? {
        ModuleKind::Wasm(file) => WasmBoxModule::from_file(&file)
            .with_context(|| format!("cannot load {}", file.display())),
        ModuleKind::Precompiled(file) if !allow_precompiled => bail!(
            "{} is a precompiled module: native code that would run unchecked. Run it only if \
             you made it with `wasmbox-cli compile` of this build, by adding --allow-precompiled",
            file.display()
        ),
        ModuleKind::Precompiled(file) => {
            // SAFETY: `from_compiled_file` runs the file's machine code unchecked. The user
            // passed --allow-precompiled, whose documented contract (`run --help`, the README)
            // is that the file was made by `compile` of this same build and not altered since:
            // by passing it the user vouches for that. wasmtime still refuses other versions
            // and configurations.
            unsafe { WasmBoxModule::from_compiled_file(&file) }
                .with_context(|| format!("cannot load the precompiled module {}", file.display()))
        }
        ModuleKind::CrateDir(dir) => {
            let wasm = build_crate(&dir, build)?;
            WasmBoxModule::from_file(&wasm)
                .with_context(|| format!("cannot load {}", wasm.display()))
        }
    }
}

/// Reads the `.wasm` bytes of `path`, which must be a `.wasm` file or a guest crate
/// directory (built first); for `compile`.
///
/// # Errors
/// If `path` is a precompiled module or anything else, or the build fails.
pub fn wasm_bytes(path: &Path, build: &BuildOptions) -> Result<Vec<u8>> {
    let file = match detect(path)? {
        ModuleKind::Wasm(file) => file,
        ModuleKind::CrateDir(dir) => build_crate(&dir, build)?,
        ModuleKind::Precompiled(file) => {
            bail!(
                "{} is already precompiled: give `compile` the .wasm file it was made from",
                file.display()
            )
        }
    };
    std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))
}

/// The cargo to run: the one that runs us if any (cargo sets `CARGO`), else `cargo`.
fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Builds the cargo package in `dir` for wasm32-wasip1 in release mode and returns the path
/// of the `.wasm` it produced. Cargo's progress and diagnostics go to stderr.
///
/// # Errors
/// If the target is missing and cannot be installed, cargo fails, or the build produces no
/// `.wasm` (or several).
pub fn build_crate(dir: &Path, build: &BuildOptions) -> Result<PathBuf> {
    crate::toolchain::ensure_target(dir).map_err(anyhow::Error::msg)?;
    let manifest = dir.join("Cargo.toml");
    eprintln!(
        "wasmbox-cli: building {} for {GUEST_TARGET} (release)",
        dir.display()
    );
    let mut command = Command::new(cargo());
    command
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(std::path::absolute(&manifest).unwrap_or(manifest))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(target_dir) = &build.target_dir {
        command
            .arg("--target-dir")
            .arg(std::path::absolute(target_dir).unwrap_or_else(|_| target_dir.clone()));
    }
    let mut child = command
        .spawn()
        .context("cannot run cargo (is it installed and on PATH?)")?;
    let mut wasm = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("cannot read cargo's output")?;
            wasm.extend(wasm_artifacts(&line));
        }
    }
    let status = child.wait().context("cannot wait for cargo")?;
    if !status.success() {
        bail!(
            "cargo could not build {} ({status}); its messages are above",
            dir.display()
        );
    }
    wasm.sort();
    wasm.dedup();
    match <[PathBuf; 1]>::try_from(wasm) {
        Ok([one]) => Ok(one),
        Err(wasm) if wasm.is_empty() => bail!(
            "building {} produced no .wasm: a guest crate needs `crate-type = [\"cdylib\"]` in its [lib] section",
            dir.display()
        ),
        Err(wasm) => {
            let names: Vec<String> = wasm.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "building {} produced several modules ({}): give the directory of one guest crate, or a .wasm file",
                dir.display(),
                names.join(", ")
            )
        }
    }
}

/// The `.wasm` files named by one line of cargo's JSON output (none unless it is a
/// `compiler-artifact` message).
fn wasm_artifacts(line: &str) -> Vec<PathBuf> {
    let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    if message.get("reason").and_then(|r| r.as_str()) != Some("compiler-artifact") {
        return Vec::new();
    }
    let Some(files) = message.get("filenames").and_then(|f| f.as_array()) else {
        return Vec::new();
    };
    files
        .iter()
        .filter_map(|f| f.as_str())
        .filter(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_wasm_artifact_lines() -> Result<()> {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["cdylib"]},"filenames":["/t/wasm32-wasip1/release/counter.wasm"],"fresh":true}"#;
        assert_eq!(
            wasm_artifacts(line),
            [PathBuf::from("/t/wasm32-wasip1/release/counter.wasm")]
        );
        Ok(())
    }

    #[test]
    fn reject_other_cargo_lines() -> Result<()> {
        let rlib = r#"{"reason":"compiler-artifact","filenames":["/t/libserde.rlib","/t/libserde.rmeta"]}"#;
        assert!(wasm_artifacts(rlib).is_empty());
        let finished = r#"{"reason":"build-finished","success":true}"#;
        assert!(wasm_artifacts(finished).is_empty());
        assert!(wasm_artifacts("not json").is_empty());
        Ok(())
    }

    #[test]
    fn reject_unknown_files() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let garbage = dir.path().join("garbage.wasm");
        std::fs::write(&garbage, b"hello world")?;
        let message = format!(
            "{:#}",
            detect(&garbage).err().context("garbage was accepted")?
        );
        assert!(message.contains("is not a WasmBox module"), "{message}");
        assert!(
            detect(dir.path()).is_err(),
            "a directory without Cargo.toml was accepted"
        );
        Ok(())
    }

    #[test]
    fn accept_each_kind_by_content() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let wasm = dir.path().join("no-extension");
        std::fs::write(&wasm, b"\0asm\x01\0\0\0")?;
        assert_eq!(detect(&wasm)?, ModuleKind::Wasm(wasm.clone()));
        let compiled = dir.path().join("m.wasm");
        std::fs::write(&compiled, PRECOMPILED_MAGIC)?;
        assert_eq!(
            detect(&compiled)?,
            ModuleKind::Precompiled(compiled.clone())
        );
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\n")?;
        assert_eq!(
            detect(dir.path())?,
            ModuleKind::CrateDir(dir.path().to_path_buf())
        );
        assert_eq!(
            detect(&dir.path().join("Cargo.toml"))?,
            ModuleKind::CrateDir(dir.path().to_path_buf())
        );
        Ok(())
    }
}
