//! One writer per box, with real processes against a real S3 server (SeaweedFS, started by
//! `scripts/test`, which names it in `WASMBOX_S3_URL`): `wasmbox-cli run --store s3://…` in
//! child processes that acknowledge each message (the counter guest prints `value=N` once the
//! message's journal record is stored).
//!
//! 1. Two processes open the same box at once: exactly one wins.
//! 2. The owner is frozen with SIGSTOP, its lease expires, a second process takes the box over
//!    and goes on; after SIGCONT the first one's writes are refused, and the box's final state
//!    equals one serial history of the acknowledged messages.
//! 3. The server is killed (SIGKILL) in the middle of a run: messages fail with errors, nothing
//!    acknowledged is lost, and after the server restarts the box recovers.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

#[path = "../../wasmbox-host/tests/common/stores.rs"]
mod stores;

use anyhow::{Context, Result, ensure};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use wasmbox_host::durable::BoxStore;

const SEED: u64 = 7;
const START: u64 = 1_000;

struct ChildBox {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

fn start(module: &Path, url: &str, extra: &[&str]) -> Result<ChildBox> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmbox-cli"))
        .arg("run")
        .arg(module)
        .args(["--freeze-time", "--checkpoint-every", "4"])
        .args(["--seed", &SEED.to_string()])
        .args(["--start-time", &START.to_string()])
        .args(["--store", url])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start wasmbox-cli")?;
    let stdin = child.stdin.take().context("stdin")?;
    let stdout = BufReader::new(child.stdout.take().context("stdout")?);
    Ok(ChildBox {
        child,
        stdin: Some(stdin),
        stdout,
    })
}

impl ChildBox {
    /// Sends "up"; then the acknowledgement (the counter's new value), or `None` if the
    /// process printed nothing more (it stopped).
    fn up(&mut self) -> Result<Option<u64>> {
        if let Some(stdin) = &mut self.stdin {
            // A process that already exited makes this fail: its answer is then `None`.
            let _ = stdin.write_all(b"up\n").and_then(|()| stdin.flush());
        }
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        line.trim()
            .strip_prefix("value=")
            .and_then(|v| v.parse().ok())
            .map(Some)
            .with_context(|| format!("not an acknowledgement: {line:?}"))
    }

    /// Sends "up" without waiting for an answer.
    fn send(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(b"up\n")?;
        Ok(stdin.flush()?)
    }

    /// Closes stdin and waits: (exit code, the rest of stdout, stderr).
    fn finish(mut self) -> Result<(Option<i32>, String, String)> {
        drop(self.stdin.take());
        let mut out = String::new();
        self.stdout.read_to_string(&mut out)?;
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        let status = self.child.wait()?;
        Ok((status.code(), out, err))
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?;
        ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }
}

fn counter() -> Result<PathBuf> {
    common::guest("counter")
}

/// A store URL in the test server's bucket under a fresh prefix, with `query` appended.
fn fresh_url(query: &str) -> Result<String> {
    let (endpoint, bucket) = stores::split_url(&stores::s3_url()?)?;
    Ok(format!(
        "s3://{bucket}/{}?endpoint={endpoint}{query}",
        stores::unique_prefix()
    ))
}

/// The box's full state equals, byte for byte, a box that received exactly `ups` messages.
fn check_state(module: &Path, url: &str, ups: u64) -> Result<()> {
    common::check_counter_state(module, &BoxStore::open_url(url)?, SEED, START, ups)
}

#[test]
fn accept_exactly_one_of_two_processes_opening_a_box_at_once() -> Result<()> {
    let module = counter()?;
    for round in 0..3 {
        let url = fresh_url("")?;
        let mut a = start(&module, &url, &[])?;
        let mut b = start(&module, &url, &[])?;
        // Both answer or stop before either closes: the winner holds the box meanwhile.
        let (got_a, got_b) = (a.up()?, b.up()?);
        let (a, b) = (a.finish()?, b.finish()?);
        let winners = [got_a, got_b].iter().filter(|g| g.is_some()).count();
        ensure!(
            winners == 1,
            "round {round}: {winners} winners ({got_a:?}, {got_b:?}); stderr: {} / {}",
            a.2,
            b.2
        );
        let (winner, loser) = if got_a.is_some() { (a, b) } else { (b, a) };
        ensure!(
            [got_a, got_b].contains(&Some(1)),
            "the winner counts from 1"
        );
        ensure!(
            winner.0 == Some(0),
            "the winner exits cleanly: {}",
            winner.2
        );
        ensure!(
            loser.0 != Some(0) && loser.2.contains("open elsewhere"),
            "the loser says why: {:?} {}",
            loser.0,
            loser.2
        );
    }
    Ok(())
}

#[test]
fn accept_a_takeover_of_a_frozen_owner_whose_late_writes_are_refused() -> Result<()> {
    let module = counter()?;
    let url = fresh_url("&lease_ttl_ms=1500")?;
    let mut a = start(&module, &url, &[])?;
    for n in 1..=3 {
        ensure!(a.up()? == Some(n), "A acknowledges {n}");
    }
    a.signal("STOP")?;
    let frozen = Instant::now();
    let mut b = start(&module, &url, &["--wait", "60"])?;
    ensure!(b.up()? == Some(4), "B took over after A's 3");
    ensure!(
        frozen.elapsed() >= Duration::from_millis(1500),
        "B must not take the box before A's lease expired ({:?})",
        frozen.elapsed()
    );
    ensure!(b.up()? == Some(5));
    a.signal("CONT")?;
    // A, thawed, still believes it owns the box: its next message must be refused.
    a.send()?;
    let (_, a_out, a_err) = a.finish()?;
    ensure!(
        !a_out.contains("value="),
        "A acknowledged a message after losing the box: {a_out}"
    );
    ensure!(
        a_err.contains("lost its lease"),
        "A reports that it lost the box: {a_err}"
    );
    ensure!(b.up()? == Some(6), "B is unaffected by A's attempt");
    let (code, _, err) = b.finish()?;
    ensure!(code == Some(0), "{err}");
    // One serial history: A's 3, then B's 3; A's late message is not part of it.
    check_state(&module, &url, 6)
}

/// A SeaweedFS server of the test's own, that it can kill and restart.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    pid: Option<String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-server")
}

impl Server {
    fn start() -> Result<Server> {
        let port = Command::new(script()).arg("port").output()?;
        ensure!(port.status.success(), "no free port");
        let port: u16 = String::from_utf8(port.stdout)?.trim().parse()?;
        let mut server = Server {
            dir: tempfile::tempdir()?,
            port,
            pid: None,
        };
        server.restart()?;
        Ok(server)
    }

    fn restart(&mut self) -> Result<()> {
        let out = Command::new(script())
            .arg("start")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .stderr(Stdio::inherit())
            .output()?;
        ensure!(
            out.status.success(),
            "the test's own SeaweedFS did not start (see above)"
        );
        self.pid = Some(String::from_utf8(out.stdout)?.trim().to_string());
        Ok(())
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(pid) = self.pid.take() {
            Command::new("kill").args(["-KILL", &pid]).status()?;
            // Until it is gone (its ports free again).
            while Command::new("kill")
                .args(["-0", &pid])
                .stderr(Stdio::null())
                .status()?
                .success()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

#[test]
fn accept_a_server_killed_mid_run_loses_nothing_acknowledged() -> Result<()> {
    let module = counter()?;
    stores::s3_url()?; // fail, saying why, without a test server at all
    let mut server = Server::start()?;
    let url = format!(
        "s3://wasmbox-test/killed?endpoint=http://127.0.0.1:{}&lease_ttl_ms=2000",
        server.port
    );
    let mut a = start(&module, &url, &[])?;
    let mut acked = 0;
    for n in 1..=5 {
        ensure!(a.up()? == Some(n));
        acked = n;
    }
    server.kill()?;
    // Messages now fail with errors; none is acknowledged.
    a.send()?;
    a.send()?;
    let (_, out, err) = a.finish()?;
    ensure!(
        !out.contains("value="),
        "acknowledged without a server: {out}"
    );
    ensure!(err.contains("error"), "the failure is reported: {err}");
    server.restart()?;
    // A server just restarted after SIGKILL may fail requests for a moment while it loads its
    // volumes, longer than a 2 s lease's retry budget: B, which then exits with the store's
    // error, is started again until it answers (at most 30 s). What it answers is the test.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (b, value) = loop {
        let mut b = start(&module, &url, &["--wait", "60"])?;
        if let Some(value) = b.up()? {
            break (b, value);
        }
        let (_, _, err) = b.finish()?;
        ensure!(Instant::now() < deadline, "B never answered: {err}");
        eprintln!("B exited without answering, starting it again: {err}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Nothing acknowledged is lost; the failed ones were not applied (their parts never
    // reached the server, so no head names them).
    ensure!(
        value == acked + 1,
        "after {acked} acknowledged, B says {value}"
    );
    let (code, _, err) = b.finish()?;
    ensure!(code == Some(0), "{err}");
    check_state(&module, &url, acked + 1)
}
