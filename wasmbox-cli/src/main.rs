//! `wasmbox-cli`: run a WasmBox guest whose messages are `String`s, type lines at it, freeze
//! it to a snapshot file and bring it back. `run` relays stdin to the guest; `compile`
//! precompiles a module for faster start-up.

mod input;
mod module;
mod relay;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmbox_host::WasmBoxModule;

/// Run WasmBox guests: relay lines to them, snapshot them to files, restore them.
///
/// Works with guests whose messages are `String`s in both directions.
#[derive(Debug, Parser)]
#[command(name = "wasmbox-cli", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; their help is on their argument structs.
#[derive(Debug, Subcommand)]
enum Command {
    Run(RunArgs),
    Compile(CompileArgs),
}

/// Run a guest: relay stdin lines to it, one message per line, and print its messages on stdout.
///
/// Each stdin line is sent to the guest as one message; each message the guest sends is
/// printed as one line on stdout.
/// stdout carries only the guest's messages, so it can be piped; notices, errors and the
/// paths written by `!!snapshot` go to stderr. A bad line or a guest failure is reported on
/// stderr and the session goes on; a guest that traps is rolled back to its state before the
/// failing message. End of input ends the session with status 0. When stdin is a terminal
/// there is a prompt, line editing and history.
#[derive(Debug, Args)]
#[command(
    after_help = "Special lines: !!snapshot [PATH], !!restore PATH, !!clock [MILLIS], !!help (details: --help).",
    after_long_help = relay::COMMANDS_HELP
)]
struct RunArgs {
    /// The guest: a .wasm file, a module precompiled by `wasmbox-cli compile`, or a guest
    /// crate directory (built with `cargo build --release --target wasm32-wasip1` first).
    ///
    /// The kind is detected from the file's content. Load a precompiled module only if it was
    /// made by `compile` of this same build of wasmbox-cli and not changed since: its machine
    /// code runs unchecked, so a file from elsewhere can run arbitrary code in this process.
    #[arg(value_name = "MODULE")]
    module: PathBuf,

    /// Freeze the box's clock: it moves only on `!!clock`, instead of following real time.
    #[arg(long)]
    freeze_time: bool,

    /// Seed of the box's random generator, for reproducible runs [default: a fixed seed].
    #[arg(long, value_name = "N", conflicts_with = "restore")]
    seed: Option<u64>,

    /// Clock time the box starts at, in milliseconds since the Unix epoch [default: now].
    #[arg(long, value_name = "MILLIS", conflicts_with = "restore")]
    start_time: Option<u64>,

    /// Directory where `!!snapshot` without a path writes a new file (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    snapshot_dir: PathBuf,

    /// Start from this snapshot file instead of a fresh box (the guest's init does not run;
    /// seed, clock and limits come from the snapshot).
    #[arg(long, value_name = "FILE")]
    restore: Option<PathBuf>,

    #[command(flatten)]
    build: BuildArgs,
}

/// Precompile a guest for faster start-up: `run OUT` then skips compilation.
///
/// The output is machine code for this machine, loadable only by this same build of
/// wasmbox-cli (or of wasmbox-host). Treat it like an executable: run only files you made.
#[derive(Debug, Args)]
struct CompileArgs {
    /// The guest to compile: a .wasm file, or a guest crate directory (built first).
    #[arg(value_name = "IN.wasm")]
    input: PathBuf,

    /// Where to write the precompiled module (replaced atomically if it exists).
    #[arg(value_name = "OUT")]
    output: PathBuf,

    #[command(flatten)]
    build: BuildArgs,
}

/// Options for building a guest crate directory.
#[derive(Debug, Args)]
struct BuildArgs {
    /// Cargo target directory for building a guest crate directory [default: cargo's choice,
    /// which honours CARGO_TARGET_DIR].
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
}

impl BuildArgs {
    fn options(&self) -> module::BuildOptions {
        module::BuildOptions {
            target_dir: self.target_dir.clone(),
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line and runs the command.
fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run_guest(args),
        Command::Compile(args) => compile(&args),
    }
}

/// `wasmbox-cli run`.
fn run_guest(args: RunArgs) -> Result<()> {
    let module = module::load(&args.module, &args.build.options())?;
    let options = relay::SessionOptions {
        freeze_time: args.freeze_time,
        seed: args.seed,
        start_time: args.start_time,
        snapshot_dir: args.snapshot_dir,
        restore: args.restore,
    };
    let mut lines = input::stdin_lines()?;
    if input::interactive() {
        eprintln!(
            "wasmbox-cli: running {}. Each line is a message to the guest; `!!help` lists the commands; Ctrl-D ends.",
            args.module.display()
        );
    }
    let mut session = relay::Relay::start(&module, options)?;
    session.run(lines.as_mut())
}

/// `wasmbox-cli compile`.
fn compile(args: &CompileArgs) -> Result<()> {
    let wasm = module::wasm_bytes(&args.input, &args.build.options())?;
    let compiled = WasmBoxModule::precompile(&wasm)
        .with_context(|| format!("cannot compile {}", args.input.display()))?;
    write_atomically(&args.output, &compiled)?;
    eprintln!(
        "wasmbox-cli: wrote {} ({} bytes); run it with `wasmbox-cli run {}` (this same build only)",
        args.output.display(),
        compiled.len(),
        args.output.display()
    );
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so that `path`
/// holds either its old content or all of the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let context = || format!("cannot write {}", path.display());
    let mut file = tempfile::Builder::new()
        .prefix(".wasmbox-compile")
        .tempfile_in(dir)
        .with_context(context)?;
    file.write_all(bytes).with_context(context)?;
    file.as_file().sync_all().with_context(context)?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(context)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn accept_the_command_line_definition() -> Result<()> {
        Cli::command().debug_assert();
        Ok(())
    }
}
