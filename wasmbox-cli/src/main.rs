//! `wasmbox-cli`: run a WasmBox guest whose messages are `String`s (or, with `--json`, any
//! guest built with the `json` feature), type lines at it, freeze it to a snapshot file and
//! bring it back. `run` relays stdin to the guest; `compile` precompiles a module for faster
//! start-up; `new` creates a guest crate; `inspect` shows what a snapshot file holds.

mod input;
mod inspect;
mod module;
mod new;
mod relay;
mod toolchain;

/// The example guests, built for the unit tests as for the integration tests.
#[cfg(test)]
#[path = "../../wasmbox-host/tests/common/guests.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod guests;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wasmbox_host::WasmBoxModule;

/// Run WasmBox guests: relay lines to them, snapshot them to files, restore them.
///
/// Works with guests whose messages are `String`s in both directions, and with `run --json`
/// with any guest built with the `json` feature of the `wasmbox` crate.
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
    New(new::NewArgs),
    Inspect(inspect::InspectArgs),
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
    /// The kind is detected from the file's content. A precompiled module is native machine
    /// code that runs unchecked, so it is refused unless --allow-precompiled is given.
    #[arg(value_name = "MODULE")]
    module: PathBuf,

    /// Allow MODULE to be a precompiled module. Only pass this for a file you made with
    /// `compile` of this same build of wasmbox-cli and that nobody could change since: its
    /// machine code runs unchecked, so a file from elsewhere can run arbitrary code in this
    /// process (wasmtime's own CLI asks for the same consent).
    #[arg(long)]
    allow_precompiled: bool,

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

    /// Speak JSON: each stdin line is one JSON value, sent to the guest as its Input, and each
    /// output is printed as one line of compact JSON. Works with any guest built with the
    /// `json` feature of the `wasmbox` crate, whatever its message types.
    #[arg(long)]
    json: bool,

    /// Start from this snapshot file instead of a fresh box (the guest's init does not run;
    /// seed and clock come from the snapshot; the CLI's limits apply, whatever it records).
    #[arg(long, value_name = "FILE")]
    restore: Option<PathBuf>,

    /// Run the durable box kept in DIR (created if missing): every line is journaled before it
    /// runs and its outputs are printed, so a run after Ctrl-C, `kill -9` or a power cut
    /// resumes where this one stopped. --seed and --start-time apply when the box is created.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["restore", "store"])]
    durable: Option<PathBuf>,

    /// Run the durable box kept in this store (created if missing, resumed if it exists):
    /// `s3://bucket/prefix?endpoint=http://127.0.0.1:8333` for S3-compatible object storage
    /// (credentials and region from the AWS_* variables; one host owns a box at a time, by a
    /// lease), or `file://DIR`. Each line is acknowledged — its outputs printed — once its
    /// journal record is stored.
    #[arg(long, value_name = "URL", conflicts_with = "restore")]
    store: Option<String>,

    /// With --durable or --store: the box's name in the store.
    #[arg(long = "box", value_name = "NAME", default_value = "box")]
    box_name: String,

    /// With --store: if another host holds the box, wait up to SECS for its lease to expire
    /// (or for it to release the box), then take the box over.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    wait: f64,

    /// With --durable or --store: write a checkpoint every N journaled events (each line,
    /// each clock step), so that a restart replays at most N.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    checkpoint_every: u64,

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
            eprintln!("Error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already ends with (library errors often display their source too).
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\r', '\n'], " ")
}

/// Parses the command line and runs the command.
fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run_guest(args),
        Command::Compile(args) => compile(&args),
        Command::New(args) => new::run(&args),
        Command::Inspect(args) => inspect::run(&args),
    }
}

/// `wasmbox-cli run`.
fn run_guest(args: RunArgs) -> Result<()> {
    let module = module::load(&args.module, &args.build.options(), args.allow_precompiled)?;
    let options = relay::SessionOptions {
        freeze_time: args.freeze_time,
        seed: args.seed,
        start_time: args.start_time,
        snapshot_dir: args.snapshot_dir,
        restore: args.restore,
        json: args.json,
        store: match (args.durable, args.store) {
            (Some(dir), _) => Some(relay::StoreOptions {
                url: dir.to_string_lossy().into_owned(),
                sync: false,
                name: args.box_name,
                wait: std::time::Duration::ZERO,
            }),
            (None, Some(url)) => Some(relay::StoreOptions {
                url,
                sync: true,
                name: args.box_name,
                wait: std::time::Duration::try_from_secs_f64(args.wait)
                    .map_err(|e| anyhow::anyhow!("--wait {}: {e}", args.wait))?,
            }),
            (None, None) => None,
        },
        checkpoint_every: args.checkpoint_every,
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
    let len = WasmBoxModule::precompile_to_file(&wasm, &args.output).with_context(|| {
        format!(
            "cannot compile {} into {}",
            args.input.display(),
            args.output.display()
        )
    })?;
    eprintln!(
        "wasmbox-cli: wrote {} ({len} bytes); run it with `wasmbox-cli run --allow-precompiled {}` (this same build only)",
        args.output.display(),
        args.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn accept_error_chain_without_repeats() -> Result<()> {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let error = anyhow::Error::new(wasmbox_host::Error::Io {
            path: "x.snap".into(),
            source: io,
        })
        .context("cannot restore x.snap");
        assert_eq!(error_chain(&error), "cannot restore x.snap: x.snap: gone");
        Ok(())
    }

    #[test]
    fn accept_the_command_line_definition() -> Result<()> {
        Cli::command().debug_assert();
        Ok(())
    }
}
