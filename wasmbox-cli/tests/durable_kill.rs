//! The crash test with real kills: `wasmbox-cli run --durable` in a child process that
//! acknowledges each message (the counter guest prints `value=N`), killed with SIGKILL at random
//! instants — between messages, with a message in flight, during start-up and recovery, during
//! checkpoints (one every 3 events) — and restarted, at least 100 times. No acknowledged
//! message may be lost, an in-flight one is applied wholly or not at all, and at the end the
//! box's full snapshot equals, byte for byte, that of a box that received exactly the messages
//! applied.

mod common;

use anyhow::{Context, Result, ensure};
use common::guest;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;
use wasmbox_host::durable::BoxStore;

const SEED: u64 = 7;
const START: u64 = 1_000;
const KILLS: u32 = 100;

struct ChildBox {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn start(module: &std::path::Path, store: &std::path::Path) -> Result<ChildBox> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmbox-cli"))
        .arg("run")
        .arg(module)
        .args([
            "--allow-precompiled",
            "--freeze-time",
            "--checkpoint-every",
            "3",
        ])
        .args([
            "--seed",
            &SEED.to_string(),
            "--start-time",
            &START.to_string(),
        ])
        .arg("--durable")
        .arg(store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start wasmbox-cli")?;
    let stdin = child.stdin.take().context("stdin")?;
    let stdout = BufReader::new(child.stdout.take().context("stdout")?);
    Ok(ChildBox {
        child,
        stdin,
        stdout,
    })
}

impl ChildBox {
    /// Sends "up" and waits for its acknowledgement: the counter's new value.
    fn up(&mut self) -> Result<u64> {
        self.send()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        line.trim()
            .strip_prefix("value=")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("not an acknowledgement: {line:?}"))
    }

    fn send(&mut self) -> Result<()> {
        self.stdin.write_all(b"up\n")?;
        Ok(self.stdin.flush()?)
    }

    fn kill(mut self) -> Result<()> {
        self.child.kill()?; // SIGKILL
        self.child.wait()?;
        Ok(())
    }
}

/// A small deterministic generator for the kill instants (xorshift).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn accept_no_acknowledged_message_is_lost_across_100_sigkills() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let wasm = guest("counter")?;
    let precompiled = dir.path().join("counter.cwasm");
    common::cli(
        &[
            "compile".as_ref(),
            wasm.as_os_str(),
            precompiled.as_os_str(),
        ],
        "",
    )?
    .success()?;
    let store = dir.path().join("store");
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    // `known`: ups known to be applied; `in_flight`: one was sent and not acknowledged.
    let (mut known, mut in_flight) = (0u64, false);
    let (mut kills, mut with_message_in_flight, mut in_flight_applied) = (0u32, 0u32, 0u32);
    while kills < KILLS {
        let mut child = start(&precompiled, &store)?;
        if dice.below(8) == 0 {
            // Killed while starting up or recovering.
            std::thread::sleep(Duration::from_micros(dice.below(30_000)));
            child.kill()?;
            kills += 1;
            continue;
        }
        for i in 0..=dice.below(6) {
            let value = child.up()?;
            if i == 0 {
                let lost = value <= known;
                let doubled = value > known + 1 + u64::from(in_flight);
                ensure!(
                    !lost && !doubled,
                    "after kill {kills}: value={value}, {known} acknowledged, in flight: {in_flight}"
                );
                if value == known + 2 {
                    in_flight_applied += 1;
                }
                in_flight = false;
            } else {
                ensure!(value == known + 1, "value={value} after {known}");
            }
            known = value;
        }
        if dice.below(2) == 0 {
            child.send()?;
            in_flight = true;
            with_message_in_flight += 1;
            std::thread::sleep(Duration::from_micros(dice.below(3_000)));
        }
        child.kill()?;
        kills += 1;
    }
    // One last run: its first acknowledgement settles the last in-flight message.
    let mut child = start(&precompiled, &store)?;
    let value = child.up()?;
    ensure!(value == known + 1 || (in_flight && value == known + 2));
    drop(child.stdin);
    child.child.wait()?;
    eprintln!(
        "{kills} SIGKILLs survived ({with_message_in_flight} with a message in flight, \
         {in_flight_applied} of those applied); {value} messages applied, 0 lost"
    );

    // The box's full state equals a box that received exactly `value` ups.
    common::check_counter_state(&wasm, &BoxStore::open_dir(&store)?, SEED, START, value)
}
