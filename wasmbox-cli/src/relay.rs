//! The relay: each input line is a message to the guest, or a `!!` command; each output of the
//! guest is one line on stdout. Notices and errors go to stderr, and no bad line ends the
//! session.

use crate::input::{Input, LineSource};
use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use wasmbox_host::durable::{BoxStore, Durability, DurableBox};
use wasmbox_host::{Codec, DurableError, Error, WasmBoxBuilder, WasmBoxHost, WasmBoxModule};

/// A JSON value kept as its text, so outputs are printed exactly as the guest wrote them.
type Json = Box<RawValue>;

/// The special lines, as `!!help` and `run --help` show them.
pub const COMMANDS_HELP: &str = "\
Special lines (everything else is sent to the guest as one message):
  !!snapshot [PATH]   save a snapshot to PATH, or to a new file in the snapshot dir
                      (never overwriting one); the path written is printed on stderr
  !!restore PATH      restore the snapshot in PATH (the box is unchanged if that fails)
  !!clock [MILLIS]    set the box's clock to MILLIS since the Unix epoch, or to the real
                      time without MILLIS
  !!help              list these commands
  !!!TEXT             send the message !!TEXT (a leading `!!!` is how to start a message
                      with `!!`)

stdout carries only the guest's messages, one per line (line breaks inside a message are
written as \\n and \\r), so it can be piped; notices and errors go to stderr.

The clock: unless --freeze-time, before each message (and snapshot) the box's clock moves
forward by the real time elapsed since it was last moved. It starts at the real time (or
--start-time); after `!!clock N` it goes on from N; after `!!restore` (or --restore) it goes
on from the snapshot's time, as time does not pass for a frozen box. With --freeze-time only
`!!clock` moves it.";

/// What one input line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Send this text to the guest.
    Message(&'a str),
    /// `!!snapshot [PATH]`.
    Snapshot(Option<&'a Path>),
    /// `!!restore PATH`.
    Restore(&'a Path),
    /// `!!clock [MILLIS]`: `None` is the real time.
    Clock(Option<u64>),
    /// `!!help`.
    Help,
}

/// Why a line is not a valid command; the session goes on.
#[derive(Debug, PartialEq, Eq)]
pub struct BadLine(String);

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadLine {}

/// Parses one input line (without its line break).
///
/// # Errors
/// For an unknown `!!` command, or a command with a missing or bad argument.
pub fn parse_line(line: &str) -> Result<Line<'_>, BadLine> {
    let Some(rest) = line.strip_prefix("!!") else {
        return Ok(Line::Message(line));
    };
    if rest.starts_with('!') {
        return Ok(Line::Message(&line[1..]));
    }
    let (command, argument) = match rest.split_once(char::is_whitespace) {
        Some((command, argument)) => (command, argument.trim()),
        None => (rest, ""),
    };
    let argument = (!argument.is_empty()).then_some(argument);
    match (command, argument) {
        ("snapshot", path) => Ok(Line::Snapshot(path.map(Path::new))),
        ("restore", Some(path)) => Ok(Line::Restore(Path::new(path))),
        ("restore", None) => Err(BadLine(
            "`!!restore` needs the path of a snapshot file".into(),
        )),
        ("clock", None) => Ok(Line::Clock(None)),
        ("clock", Some(millis)) => millis.parse().map(|m| Line::Clock(Some(m))).map_err(|_| {
            BadLine(format!(
                "`!!clock` takes a time in milliseconds since the Unix epoch, not `{millis}`"
            ))
        }),
        ("help", None) => Ok(Line::Help),
        ("help", Some(_)) => Err(BadLine("`!!help` takes no argument".into())),
        _ => Err(BadLine(format!(
            "unknown command `!!{command}`: `!!help` lists the commands (to send a message that starts \
             with `!!`, start it with `!!!`)"
        ))),
    }
}

/// How a session starts.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The clock moves only on `!!clock`.
    pub freeze_time: bool,
    /// Seed of the box's random generator (fresh boxes only).
    pub seed: Option<u64>,
    /// Clock value a fresh box starts at; default: the real time.
    pub start_time: Option<u64>,
    /// Where `!!snapshot` without a path writes.
    pub snapshot_dir: PathBuf,
    /// Start from this snapshot file instead of running the guest's init.
    pub restore: Option<PathBuf>,
    /// Each line is one JSON value and each output is printed as compact JSON (the guest must
    /// be built with the `json` feature of `wasmbox`); otherwise lines and outputs are strings.
    pub json: bool,
    /// Run a durable box (created if missing): every line is journaled before it runs, so a
    /// later run resumes where this one stopped.
    pub store: Option<StoreOptions>,
    /// With `store`: a checkpoint every this many journaled events.
    pub checkpoint_every: u64,
}

/// Where a durable box is kept.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// A directory, `file://DIR` or `s3://bucket/prefix?…`.
    pub url: String,
    /// Outputs only once the journal record is stored (`Durability::Sync`).
    pub sync: bool,
    /// The box's name in the store.
    pub name: String,
    /// How long to wait for another owner's lease.
    pub wait: std::time::Duration,
}

/// The box, with `String` messages or JSON values, in memory or durable.
pub enum GuestBox {
    /// A guest whose messages are `String`s in both directions.
    Text(WasmBoxHost<String, String>),
    /// Any guest built with the `json` feature, its messages relayed as JSON text.
    Json(WasmBoxHost<Json, Json>),
    /// `Text`, kept in a durable store.
    DurableText(DurableBox<String, String>),
    /// `Json`, kept in a durable store.
    DurableJson(DurableBox<Json, Json>),
}

/// Runs `$body` with `$host` bound to the box, whichever kind it is (in memory).
macro_rules! each {
    ($guest:expr, $host:ident => $body:expr, $durable:ident => $dbody:expr) => {
        match $guest {
            GuestBox::Text($host) => $body,
            GuestBox::Json($host) => $body,
            GuestBox::DurableText($durable) => $dbody,
            GuestBox::DurableJson($durable) => $dbody,
        }
    };
}

impl fmt::Debug for GuestBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        each!(self, host => host.fmt(f), d => d.fmt(f))
    }
}

impl GuestBox {
    /// Sends one line: the text itself, or the JSON value it holds.
    ///
    /// # Errors
    /// A line that is not JSON (in JSON mode), or what the host says.
    fn message(&mut self, line: &str) -> Result<(), anyhow::Error> {
        match self {
            GuestBox::Text(host) => Ok(host.message(line)?),
            GuestBox::Json(host) => Ok(host.message(&json_line(line)?)?),
            GuestBox::DurableText(d) => d.message(line).map(drop).map_err(Into::into),
            GuestBox::DurableJson(d) => Ok(d.message(&json_line(line)?).map(drop)?),
        }
    }

    fn poisoned(&self) -> Option<&str> {
        each!(self, host => host.poisoned(), d => d.stopped())
    }

    #[cfg(test)]
    fn clock(&self) -> wasmbox_host::Clock {
        match self {
            GuestBox::Text(host) => host.clock(),
            GuestBox::Json(host) => host.clock(),
            _ => unreachable!("the relay's unit tests use boxes in memory"),
        }
    }

    fn set_time(&mut self, millis: u64) {
        each!(self, host => host.set_time(millis), d => report(d.set_time(millis)))
    }

    fn advance_time(&mut self, by: Duration) {
        each!(self, host => host.advance_time(by), d => report(d.advance_time(by)))
    }

    fn snapshot_to_file(&mut self, path: &Path) -> Result<()> {
        each!(
            self,
            host => Ok(host.snapshot_to_file(path)?),
            d => {
                let snapshot = d.snapshot_state()?;
                std::fs::write(path, wasmbox_host::snapshot::encode_file(&snapshot))?;
                Ok(())
            }
        )
    }

    fn restore_snapshot_from_file(&mut self, path: &Path) -> Result<()> {
        each!(
            self,
            host => Ok(host.restore_snapshot_from_file(path)?),
            _d => bail!("a durable box cannot be restored from a snapshot: its history is its journal")
        )
    }
}

/// A line of JSON.
fn json_line(line: &str) -> Result<Json> {
    serde_json::from_str(line).map_err(|e| anyhow::anyhow!("the line is not valid JSON: {e}"))
}

/// Reports a durable box's journal error (the box then stops; the next message says so).
fn report(result: Result<u64, Error>) {
    if let Err(e) = result {
        eprintln!("error: {e}");
    }
}

/// Opens the durable box `where_` names as `options` say, with outputs printed by `output`.
fn open_durable<In, Out: DeserializeOwned + Send + 'static>(
    module: &WasmBoxModule,
    where_: &StoreOptions,
    options: &SessionOptions,
    codec: Codec,
    output: impl FnMut(Out) + Send + 'static,
) -> Result<DurableBox<In, Out>> {
    let url = &where_.url;
    let store =
        BoxStore::open_url(url).with_context(|| format!("cannot open the durable store {url}"))?;
    let start_time = options.start_time.unwrap_or_else(real_time_millis);
    let seed = options.seed;
    let output = Arc::new(Mutex::new(output));
    let until = std::time::Instant::now() + where_.wait;
    let mut waited = false;
    let durable = loop {
        let output = Arc::clone(&output);
        let opened = DurableBox::<In, Out>::builder(module, &store, &where_.name)
            .checkpoint_every(options.checkpoint_every)
            .durability(if where_.sync {
                Durability::Sync
            } else {
                Durability::Buffered
            })
            .configure(|b| {
                let b = b
                    .codec(codec)
                    .guest_stdout_to_stderr(true)
                    .start_time(start_time);
                match seed {
                    Some(seed) => b.seed(seed),
                    None => b,
                }
            })
            .open(move |_seq, out| (output.lock().unwrap_or_else(PoisonError::into_inner))(out));
        match opened {
            Err(Error::Durable(DurableError::Locked { .. }))
                if std::time::Instant::now() < until =>
            {
                if !waited {
                    eprintln!("the box is held by another owner: waiting for its lease");
                    waited = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => {
                break other.with_context(|| {
                    format!("cannot open the durable box `{}` in {url}", where_.name)
                })?;
            }
        }
    };
    let r = durable.recovery();
    if r.created {
        eprintln!("durable box created in {url}");
    } else {
        eprintln!(
            "durable box resumed from {url}: checkpoint {} + {} journaled events",
            r.checkpoint, r.replayed
        );
    }
    if let Some((file, offset, len)) = &r.torn_tail {
        eprintln!("a torn record at the end of {file} (byte {offset}, {len} bytes) was discarded");
    }
    for note in &r.notes {
        eprintln!("{note}");
    }
    Ok(durable)
}

/// Starts a box from `builder` as `options` say, with outputs printed by `output`.
fn start_box<In, Out: DeserializeOwned>(
    builder: WasmBoxBuilder<In, Out>,
    options: &SessionOptions,
    output: impl FnMut(Out) + Send + 'static,
) -> Result<WasmBoxHost<In, Out>> {
    let builder = builder
        .rollback_on_trap(true)
        // stdout carries only the guest's messages.
        .guest_stdout_to_stderr(true);
    Ok(match &options.restore {
        Some(path) => builder
            .restore_from_file(path, output)
            .with_context(|| format!("cannot start from the snapshot {}", path.display()))?,
        None => {
            let builder = builder.start_time(options.start_time.unwrap_or_else(real_time_millis));
            let builder = match options.seed {
                Some(seed) => builder.seed(seed),
                None => builder,
            };
            builder.build(output).context("the guest failed to start")?
        }
    })
}

/// A running session: the box and the state of the relay around it.
pub struct Relay {
    host: GuestBox,
    clock: ClockRule,
    snapshot_dir: PathBuf,
    /// Number of the last file name tried for an automatic snapshot.
    last_snapshot_number: u64,
    stdout: GuestOutput,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("host", &self.host)
            .field("snapshot_dir", &self.snapshot_dir)
            .finish()
    }
}

impl Relay {
    /// Starts a box of `module`, fresh (running the guest's init, whose outputs are printed)
    /// or from a snapshot file.
    ///
    /// # Errors
    /// If the snapshot cannot be read or used, or the guest fails to start.
    pub fn start(module: &WasmBoxModule, options: SessionOptions) -> Result<Relay> {
        let stdout = GuestOutput::default();
        let host = if let Some(dir) = &options.store {
            if options.json {
                let print = stdout.printer(|value: Json| value.get().to_string());
                GuestBox::DurableJson(open_durable(module, dir, &options, Codec::Json, print)?)
            } else {
                let print = stdout.printer(|text: String| one_line(&text).into_owned());
                GuestBox::DurableText(open_durable(module, dir, &options, Codec::Bincode, print)?)
            }
        } else if options.json {
            let builder = WasmBoxHost::<Json, Json>::builder(module).codec(Codec::Json);
            let print = stdout.printer(|value: Json| value.get().to_string());
            GuestBox::Json(start_box(builder, &options, print)?)
        } else {
            let builder = WasmBoxHost::<String, String>::builder(module);
            let print = stdout.printer(|text: String| one_line(&text).into_owned());
            GuestBox::Text(start_box(builder, &options, print)?)
        };
        let relay = Relay {
            host,
            clock: ClockRule::new(options.freeze_time),
            snapshot_dir: options.snapshot_dir,
            last_snapshot_number: 0,
            stdout,
        };
        relay.stdout.check()?;
        Ok(relay)
    }

    /// Relays every line of `input` until it ends. Bad lines and guest failures are reported
    /// on stderr and the session goes on.
    ///
    /// # Errors
    /// Only if the input cannot be read or the guest's output cannot be written (a closed
    /// stdout pipe just ends the session).
    pub fn run(&mut self, input: &mut dyn LineSource) -> Result<()> {
        loop {
            match input.next_line()? {
                Input::End => return Ok(()),
                Input::NotUtf8 => eprintln!("error: the line is not valid UTF-8; nothing was sent"),
                Input::Line(line) => {
                    if let Err(e) = self.handle(&line) {
                        // One line per error, even when a guest's panic message has several.
                        eprintln!("error: {}", crate::error_chain(&e));
                    }
                }
            }
            match self.stdout.check() {
                Err(e)
                    if e.downcast_ref::<io::Error>()
                        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
                {
                    return Ok(());
                }
                other => other?,
            }
        }
    }

    /// Handles one line.
    ///
    /// # Errors
    /// A bad line, a failed command, or a failed message: the caller reports it.
    pub fn handle(&mut self, line: &str) -> Result<()> {
        match parse_line(line)? {
            Line::Message(text) => self.message(text),
            Line::Snapshot(path) => self.snapshot(path),
            Line::Restore(path) => self.restore(path),
            Line::Clock(millis) => {
                let millis = millis.unwrap_or_else(real_time_millis);
                self.host.set_time(millis);
                self.clock.was_set();
                eprintln!("clock set to {millis} ms since the Unix epoch");
                Ok(())
            }
            Line::Help => {
                eprintln!("{COMMANDS_HELP}");
                Ok(())
            }
        }
    }

    fn message(&mut self, text: &str) -> Result<()> {
        self.clock.advance(&mut self.host, Instant::now());
        let Err(error) = self.host.message(text) else {
            return Ok(());
        };
        if self.host.poisoned().is_some() {
            bail!("{error}; the box is unusable now: `!!restore` a snapshot to go on");
        }
        match error.downcast_ref::<Error>() {
            Some(
                Error::GuestPanicked { .. }
                | Error::GuestTrapped { .. }
                | Error::GuestExited(_)
                | Error::LimitExceeded { .. },
            ) => {
                bail!("{error}; the box was rolled back to its state before this message")
            }
            _ => Err(error),
        }
    }

    fn snapshot(&mut self, path: Option<&Path>) -> Result<()> {
        self.clock.advance(&mut self.host, Instant::now());
        let path = match path {
            Some(path) => {
                self.host
                    .snapshot_to_file(path)
                    .with_context(|| format!("cannot write a snapshot to {}", path.display()))?;
                path.to_path_buf()
            }
            None => {
                let path = self.reserve_snapshot_path()?;
                if let Err(e) = self.host.snapshot_to_file(&path) {
                    // The empty file that reserved the name is ours.
                    let _ = std::fs::remove_file(&path);
                    return Err(e)
                        .with_context(|| format!("cannot write a snapshot to {}", path.display()));
                }
                path
            }
        };
        eprintln!("snapshot written to {}", path.display());
        Ok(())
    }

    /// Claims a new file name `snapshot-N.snap` in the snapshot dir by creating it (never
    /// opening an existing file), so that no snapshot is ever overwritten.
    fn reserve_snapshot_path(&mut self) -> Result<PathBuf> {
        let dir = &self.snapshot_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the snapshot dir {}", dir.display()))?;
        loop {
            self.last_snapshot_number += 1;
            let path = dir.join(format!("snapshot-{}.snap", self.last_snapshot_number));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return Ok(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
    }

    fn restore(&mut self, path: &Path) -> Result<()> {
        self.host
            .restore_snapshot_from_file(path)
            .with_context(|| format!("cannot restore {}", path.display()))?;
        self.clock.was_set();
        eprintln!("restored {}", path.display());
        Ok(())
    }
}

/// The real time in milliseconds since the Unix epoch (0 before it).
pub fn real_time_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How the box's clock follows real time: see the clock paragraph of [`COMMANDS_HELP`].
#[derive(Debug)]
struct ClockRule {
    frozen: bool,
    /// When the box's clock was last moved or set; real time since then is still owed to it.
    last_moved: Instant,
}

impl ClockRule {
    fn new(frozen: bool) -> Self {
        ClockRule {
            frozen,
            last_moved: Instant::now(),
        }
    }

    /// The box's clock was just set (`!!clock`, restore): it goes on from there.
    fn was_set(&mut self) {
        self.last_moved = Instant::now();
    }

    /// Moves the box's clock forward by the real time elapsed between when it was last moved
    /// and `now`, to the nanosecond, unless time is frozen. The box's own sub-millisecond time
    /// (left by guest sleeps) is kept: the clock moves by the elapsed time, it is not set.
    fn advance(&mut self, host: &mut GuestBox, now: Instant) {
        if self.frozen {
            return;
        }
        let elapsed: Duration = now.saturating_duration_since(self.last_moved);
        self.last_moved = self.last_moved.max(now);
        host.advance_time(elapsed);
    }
}

/// Writes the guest's outputs to stdout, one line each, and remembers the first write error
/// (the callback cannot return one).
#[derive(Clone, Default)]
struct GuestOutput {
    error: Arc<Mutex<Option<io::Error>>>,
}

impl GuestOutput {
    /// A callback that prints each output as the one line `line` makes of it.
    fn printer<T>(
        &self,
        line: impl Fn(T) -> String + Send + 'static,
    ) -> impl FnMut(T) + Send + 'static {
        let error = Arc::clone(&self.error);
        move |output: T| {
            let mut error = error.lock().unwrap_or_else(PoisonError::into_inner);
            if error.is_none() {
                let mut out = io::stdout().lock();
                if let Err(e) = writeln!(out, "{}", line(output)).and_then(|()| out.flush()) {
                    *error = Some(e);
                }
            }
        }
    }

    /// The write error, if one happened.
    fn check(&self) -> Result<()> {
        match self
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e).context("cannot write the guest's output to stdout"),
            None => Ok(()),
        }
    }
}

/// `text` on one line: line breaks are written as `\n` and `\r`.
fn one_line(text: &str) -> Cow<'_, str> {
    if text.contains(['\n', '\r']) {
        Cow::Owned(text.replace('\n', "\\n").replace('\r', "\\r"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::guests;

    #[test]
    fn accept_clock_keeps_the_sub_millisecond_time_of_sleeps() -> Result<()> {
        let module =
            WasmBoxModule::from_file(guests::try_guest("counter").map_err(anyhow::Error::msg)?)?;
        let mut host = GuestBox::Text(WasmBoxHost::<String, String>::new(&module, |_| {})?);
        let start = host.clock();
        // What a guest sleep of 0.4 ms leaves: a clock between two milliseconds.
        host.advance_time(Duration::from_micros(400));
        let mut rule = ClockRule::new(false);
        let t0 = rule.last_moved;
        rule.advance(&mut host, t0 + Duration::from_micros(2_300));
        rule.advance(&mut host, t0 + Duration::from_micros(3_000));
        let clock = host.clock();
        assert_eq!(clock.wall_nanos - start.wall_nanos, 3_400_000);
        assert_eq!(clock.monotonic_nanos - start.monotonic_nanos, 3_400_000);
        // Frozen time does not move.
        let mut frozen = ClockRule::new(true);
        frozen.advance(&mut host, Instant::now() + Duration::from_secs(5));
        assert_eq!(host.clock(), clock);
        Ok(())
    }

    fn bad(line: &str) -> Result<String> {
        match parse_line(line) {
            Err(BadLine(message)) => Ok(message),
            Ok(parsed) => bail!("{line:?} was accepted as {parsed:?}"),
        }
    }

    #[test]
    fn accept_plain_messages() -> Result<()> {
        for line in ["up", "", "  !!snapshot", "hello !!restore", "!", "!x"] {
            assert_eq!(parse_line(line), Ok(Line::Message(line)));
        }
        Ok(())
    }

    #[test]
    fn accept_escaped_messages() -> Result<()> {
        assert_eq!(parse_line("!!!snapshot"), Ok(Line::Message("!!snapshot")));
        assert_eq!(parse_line("!!!"), Ok(Line::Message("!!")));
        Ok(())
    }

    #[test]
    fn accept_snapshot_with_and_without_path() -> Result<()> {
        assert_eq!(parse_line("!!snapshot"), Ok(Line::Snapshot(None)));
        assert_eq!(parse_line("!!snapshot   "), Ok(Line::Snapshot(None)));
        assert_eq!(
            parse_line("!!snapshot /tmp/a b.snap "),
            Ok(Line::Snapshot(Some(Path::new("/tmp/a b.snap"))))
        );
        Ok(())
    }

    #[test]
    fn accept_restore_clock_help() -> Result<()> {
        assert_eq!(
            parse_line("!!restore x.snap"),
            Ok(Line::Restore(Path::new("x.snap")))
        );
        assert_eq!(
            parse_line("!!restore\tx.snap"),
            Ok(Line::Restore(Path::new("x.snap")))
        );
        assert_eq!(parse_line("!!clock"), Ok(Line::Clock(None)));
        assert_eq!(
            parse_line("!!clock 1700000000000"),
            Ok(Line::Clock(Some(1_700_000_000_000)))
        );
        assert_eq!(parse_line("!!help"), Ok(Line::Help));
        Ok(())
    }

    #[test]
    fn reject_bad_commands() -> Result<()> {
        assert!(bad("!!restore")?.contains("needs the path"));
        assert!(bad("!!restore   ")?.contains("needs the path"));
        assert!(bad("!!clock soon")?.contains("not `soon`"));
        assert!(bad("!!clock -5")?.contains("not `-5`"));
        assert!(bad("!!clock 1 2")?.contains("not `1 2`"));
        assert!(bad("!!clock 99999999999999999999999")?.contains("milliseconds"));
        assert!(bad("!!help me")?.contains("takes no argument"));
        assert!(bad("!!frobnicate")?.contains("unknown command `!!frobnicate`"));
        assert!(bad("!!")?.contains("unknown command"));
        assert!(bad("!!Snapshot")?.contains("unknown command `!!Snapshot`"));
        Ok(())
    }

    #[test]
    fn accept_outputs_as_single_lines() -> Result<()> {
        assert_eq!(one_line("value=1"), "value=1");
        assert_eq!(one_line("a\nb\r\n"), "a\\nb\\r\\n");
        Ok(())
    }
}
