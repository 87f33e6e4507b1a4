//! `wasmbox-cli inspect`: what a snapshot file holds, read without restoring it, as text or as
//! one JSON object.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use wasmbox_host::snapshot::{decode_file, decode_file_keyed, hex, read_header};
use wasmbox_host::{
    Limits, PAGE_SIZE, PRECOMPILED_MAGIC, Snapshot, SnapshotError, SnapshotKey, Value,
    WasmBoxModule,
};

use crate::module::{self, ModuleKind};

/// Print what a snapshot file holds, without restoring it.
///
/// Shows the format version, the fingerprint of the module it belongs to, the memory, every
/// mutable global, the clock, the random generator's state, the limits recorded and whether
/// the file is sealed with a MAC. The file is checked as a restore would check it: a damaged
/// file is reported with the same error, and exit status 1.
#[derive(Debug, Args)]
#[command(
    after_long_help = "Exit status: 0 when the file decodes (whether or not --module matches or the MAC is \
                       valid: the output says), 1 when it cannot be read or decoded, 2 for a bad command line."
)]
pub struct InspectArgs {
    /// The snapshot file.
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// Also say whether the snapshot belongs to this module: a .wasm file or a guest crate
    /// directory (built first). Precompiled modules are refused: give the .wasm they were made
    /// from.
    #[arg(long, value_name = "M")]
    module: Option<PathBuf>,

    /// Also check the file's MAC with the key in this file: the 32 key bytes, raw, or written
    /// as 64 hex digits (surrounding whitespace, such as a final line break, is ignored).
    #[arg(long, value_name = "K")]
    key_file: Option<PathBuf>,

    /// Print one JSON object on stdout instead of text, for scripts.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    build: crate::BuildArgs,
}

/// Said with the limits a snapshot records.
const LIMITS_NOTE: &str = "recorded when the snapshot was taken, for information: a restoring host applies its own limits, not these";

/// Everything `inspect` prints; `--json` prints exactly this, so the field names are stable.
#[derive(Debug, Serialize)]
struct Report {
    /// The file, as given.
    file: String,
    /// Its size in bytes.
    file_bytes: u64,
    /// Length of the content after the header, in bytes.
    content_bytes: u64,
    /// Format version of the file.
    format_version: u32,
    /// BLAKE3 fingerprint of the module the snapshot belongs to, in hex.
    module_fingerprint: String,
    /// The id of the state (deltas name it as their parent), in hex.
    id: String,
    /// With `--module`: that module and whether it is the snapshot's.
    module: Option<ModuleMatch>,
    memory: MemoryFacts,
    /// Every mutable global, in index order.
    globals: Vec<GlobalFacts>,
    clock: ClockFacts,
    rng: RngFacts,
    limits: LimitFacts,
    mac: MacFacts,
}

#[derive(Debug, Serialize)]
struct ModuleMatch {
    /// The `--module` path, as given.
    path: String,
    /// Its fingerprint, in hex.
    fingerprint: String,
    /// Whether it is the snapshot's module.
    matches: bool,
}

#[derive(Debug, Serialize)]
struct MemoryFacts {
    /// Size in 64 KiB pages.
    pages: u64,
    /// Size in bytes.
    bytes: u64,
    /// Bytes stored in the file (the memory that is not all zeros).
    stored_bytes: u64,
    /// Number of stored runs of memory.
    chunks: usize,
}

#[derive(Debug, Serialize)]
struct GlobalFacts {
    /// Index of the global in the module.
    index: u32,
    /// `i32`, `i64`, `f32`, `f64` or `v128`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The integer for `i32` and `i64`; the IEEE bit pattern, as an integer, for `f32` and
    /// `f64` (as the snapshot keeps them); a `0x…` hex string for `v128`.
    value: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct ClockFacts {
    /// The wall clock as an RFC 3339 date in UTC, with nanoseconds.
    wall: String,
    /// The wall clock in nanoseconds since the Unix epoch.
    wall_nanos: u64,
    /// The monotonic clock in nanoseconds since the box was created.
    monotonic_nanos: u64,
}

#[derive(Debug, Serialize)]
struct RngFacts {
    /// The ChaCha20 seed, in hex.
    seed: String,
    /// The stream number.
    stream: u64,
    /// The position in the stream, in 32-bit words.
    word_pos: u128,
}

#[derive(Debug, Serialize)]
struct LimitFacts {
    fuel_per_message: Option<u64>,
    /// In nanoseconds.
    deadline_per_message_nanos: Option<u64>,
    max_memory_bytes: u64,
    max_message_bytes: u64,
    /// [`LIMITS_NOTE`].
    note: &'static str,
}

#[derive(Debug, Serialize)]
struct MacFacts {
    /// Whether the file carries a MAC.
    present: bool,
    /// With `--key-file`: whether a host with that key accepts the file (false when there is
    /// no MAC); without: null.
    valid: Option<bool>,
}

/// `wasmbox-cli inspect`.
///
/// # Errors
/// If the file, the module or the key cannot be read, or the file is not a valid snapshot.
pub fn run(args: &InspectArgs) -> Result<()> {
    let key = args.key_file.as_deref().map(read_key).transpose()?;
    let mut report = inspect(&args.file, key.as_ref())
        .with_context(|| format!("cannot inspect {}", args.file.display()))?;
    if let Some(m) = &args.module {
        let fingerprint = module_fingerprint(m, &args.build)?;
        report.module = Some(ModuleMatch {
            path: m.display().to_string(),
            matches: hex(&fingerprint) == report.module_fingerprint,
            fingerprint: hex(&fingerprint),
        });
    }
    let text = if args.json {
        serde_json::to_string_pretty(&report).context("cannot encode the report as JSON")? + "\n"
    } else {
        render(&report, args.key_file.as_deref())
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// Reads and decodes the file at `path` and gathers the report (without `module`).
fn inspect(path: &Path, key: Option<&SnapshotKey>) -> Result<Report> {
    if path.is_dir() {
        bail!("it is a directory, not a snapshot file");
    }
    let bytes = std::fs::read(path)?;
    let (snapshot, mac_valid) = decode(&bytes, key).map_err(|e| match what_else(&bytes, &e) {
        Some(kind) => anyhow::anyhow!("it is {kind}, not a WasmBox snapshot file"),
        None => e.into(),
    })?;
    let header = read_header(&bytes)?;
    Ok(Report {
        file: path.display().to_string(),
        file_bytes: bytes.len() as u64,
        content_bytes: header.content_len,
        format_version: header.version,
        module_fingerprint: hex(&snapshot.module_fingerprint),
        id: snapshot.id.to_string(),
        module: None,
        memory: MemoryFacts {
            pages: snapshot.memory.pages,
            bytes: snapshot.memory.pages.saturating_mul(PAGE_SIZE),
            stored_bytes: snapshot.memory.stored_bytes(),
            chunks: snapshot.memory.chunks.len(),
        },
        globals: snapshot.globals.iter().map(global_facts).collect(),
        clock: ClockFacts {
            wall: humantime::format_rfc3339_nanos(
                SystemTime::UNIX_EPOCH + Duration::from_nanos(snapshot.clock.wall_nanos),
            )
            .to_string(),
            wall_nanos: snapshot.clock.wall_nanos,
            monotonic_nanos: snapshot.clock.monotonic_nanos,
        },
        rng: rng_facts(&snapshot.rng),
        limits: limit_facts(&snapshot.limits),
        mac: MacFacts {
            present: header.has_mac,
            valid: mac_valid,
        },
    })
}

/// Decodes the file as a restore would; with a key, also says whether its MAC is valid
/// rather than refusing the file.
fn decode(
    bytes: &[u8],
    key: Option<&SnapshotKey>,
) -> Result<(Snapshot, Option<bool>), SnapshotError> {
    let Some(key) = key else {
        return Ok((decode_file(bytes)?, None));
    };
    match decode_file_keyed(bytes, Some(key)) {
        Ok(snapshot) => Ok((snapshot, Some(true))),
        Err(SnapshotError::MacMissing | SnapshotError::MacMismatch) => {
            Ok((decode_file(bytes)?, Some(false)))
        }
        Err(e) => Err(e),
    }
}

/// What a file that is not a snapshot is instead, when it is something WasmBox knows.
fn what_else(bytes: &[u8], error: &SnapshotError) -> Option<&'static str> {
    if !matches!(error, SnapshotError::NotASnapshot) {
        return None;
    }
    if bytes.starts_with(b"\0asm") {
        Some("a WebAssembly module")
    } else if bytes.starts_with(&PRECOMPILED_MAGIC) {
        Some("a module precompiled by `wasmbox-cli compile`")
    } else {
        None
    }
}

/// The fingerprint of the module at `path` (a .wasm file or a crate directory), from its
/// bytes: nothing is compiled.
fn module_fingerprint(path: &Path, build: &crate::BuildArgs) -> Result<[u8; 32]> {
    if let ModuleKind::Precompiled(file) = module::detect(path)? {
        bail!(
            "--module: {} is a precompiled module: give the .wasm file it was made from",
            file.display()
        );
    }
    let wasm = module::wasm_bytes(path, &build.options())?;
    Ok(WasmBoxModule::fingerprint_of(&wasm))
}

/// Reads a snapshot key: 32 raw bytes, or 64 hex digits.
fn read_key(path: &Path) -> Result<SnapshotKey> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(SnapshotKey::from_bytes(raw));
    }
    let digits = std::str::from_utf8(&bytes)
        .map(str::trim)
        .unwrap_or_default();
    let mut key = [0u8; 32];
    if digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (byte, pair) in key.iter_mut().zip(digits.as_bytes().chunks_exact(2)) {
            // Two ASCII hex digits: always valid UTF-8 and a valid byte.
            let pair = std::str::from_utf8(pair).unwrap_or_default();
            *byte = u8::from_str_radix(pair, 16).unwrap_or_default();
        }
        return Ok(SnapshotKey::from_bytes(key));
    }
    bail!(
        "the key file {} must hold the 32-byte key, raw or as 64 hex digits; it holds {} bytes of something else",
        path.display(),
        bytes.len()
    )
}

fn global_facts(global: &wasmbox_host::GlobalValue) -> GlobalFacts {
    let (kind, value) = match global.value {
        Value::I32(v) => ("i32", v.into()),
        Value::I64(v) => ("i64", v.into()),
        Value::F32(bits) => ("f32", bits.into()),
        Value::F64(bits) => ("f64", bits.into()),
        Value::V128(v) => ("v128", format!("{v:#034x}").into()),
    };
    GlobalFacts {
        index: global.index,
        kind,
        value,
    }
}

fn rng_facts(rng: &rand_chacha::ChaCha20Rng) -> RngFacts {
    RngFacts {
        seed: hex(&rng.get_seed()),
        stream: rng.get_stream(),
        word_pos: rng.get_word_pos(),
    }
}

fn limit_facts(limits: &Limits) -> LimitFacts {
    LimitFacts {
        fuel_per_message: limits.fuel_per_message,
        deadline_per_message_nanos: limits
            .deadline_per_message
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        max_memory_bytes: limits.max_memory_bytes,
        max_message_bytes: limits.max_message_bytes,
        note: LIMITS_NOTE,
    }
}

/// The report as text, one fact per line.
fn render(report: &Report, key_file: Option<&Path>) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    lines.push((
        "file",
        format!(
            "{}: a WasmBox snapshot file, format version {}, {} bytes ({} of content)",
            report.file, report.format_version, report.file_bytes, report.content_bytes
        ),
    ));
    lines.push((
        "module",
        format!("fingerprint {}", report.module_fingerprint),
    ));
    if let Some(m) = &report.module {
        let verdict = if m.matches {
            format!("matches {}", m.path)
        } else {
            format!(
                "does NOT match {} (its fingerprint is {})",
                m.path, m.fingerprint
            )
        };
        lines.push(("", verdict));
    }
    lines.push(("state", format!("id {}", report.id)));
    let memory = &report.memory;
    lines.push((
        "memory",
        format!(
            "{} pages ({} bytes), {} bytes stored in {} chunk{}",
            memory.pages,
            memory.bytes,
            memory.stored_bytes,
            memory.chunks,
            plural(memory.chunks)
        ),
    ));
    if report.globals.is_empty() {
        lines.push(("globals", "none".to_owned()));
    }
    for (i, global) in report.globals.iter().enumerate() {
        let value = match (global.kind, global.value.as_u64()) {
            ("f32", Some(bits)) => format!(
                "{} (bits {bits:#010x})",
                f32::from_bits(u32::try_from(bits).unwrap_or_default())
            ),
            ("f64", Some(bits)) => format!("{} (bits {bits:#018x})", f64::from_bits(bits)),
            _ => global.value.to_string().trim_matches('"').to_owned(),
        };
        let label = if i == 0 { "globals" } else { "" };
        lines.push((
            label,
            format!("global {}: {} {value}", global.index, global.kind),
        ));
    }
    let clock = &report.clock;
    lines.push((
        "clock",
        format!(
            "wall {} ({} ns since the Unix epoch)",
            clock.wall, clock.wall_nanos
        ),
    ));
    lines.push(("", format!("monotonic {} ns", clock.monotonic_nanos)));
    let rng = &report.rng;
    lines.push((
        "random",
        format!(
            "ChaCha20 seed {}, stream {}, word position {}",
            rng.seed, rng.stream, rng.word_pos
        ),
    ));
    let limits = &report.limits;
    let fuel = limits
        .fuel_per_message
        .map_or_else(|| "none".to_owned(), |f| f.to_string());
    let deadline = limits.deadline_per_message_nanos.map_or_else(
        || "none".to_owned(),
        |n| humantime::format_duration(Duration::from_nanos(n)).to_string(),
    );
    lines.push((
        "limits",
        format!(
            "fuel per message {fuel}, deadline per message {deadline}, memory {} bytes, message {} bytes",
            limits.max_memory_bytes, limits.max_message_bytes
        ),
    ));
    lines.push(("", format!("({})", limits.note)));
    let key = key_file
        .map(|k| k.display().to_string())
        .unwrap_or_default();
    let mac = match (report.mac.present, report.mac.valid) {
        (false, None) => "no MAC: the file was written without a snapshot key".to_owned(),
        (false, Some(_)) => format!("no MAC: a host with the key in {key} refuses this file"),
        (true, None) => "present, not checked (give --key-file to check it)".to_owned(),
        (true, Some(true)) => format!("present and valid for the key in {key}"),
        (true, Some(false)) => format!(
            "present and INVALID for the key in {key}: the file was altered, or sealed with another key"
        ),
    };
    lines.push(("MAC", mac));

    let mut text = String::new();
    for (label, value) in lines {
        let label = if label.is_empty() {
            String::new()
        } else {
            format!("{label}:")
        };
        let _ = writeln!(text, "{label:<9}{value}");
    }
    text
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_raw_and_hex_keys() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [0xab; 32])?;
        let hexed = dir.path().join("hex.key");
        std::fs::write(&hexed, format!("{}\n", "ab".repeat(32)))?;
        let expected = SnapshotKey::from_bytes([0xab; 32]);
        assert_eq!(read_key(&raw)?, expected);
        assert_eq!(read_key(&hexed)?, expected);
        Ok(())
    }

    #[test]
    fn reject_keys_of_another_form() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.key");
        for content in [&b"short"[..], "zz".repeat(32).as_bytes(), &[1; 33]] {
            std::fs::write(&path, content)?;
            let message = format!("{:#}", read_key(&path).err().context("accepted")?);
            anyhow::ensure!(message.contains("32-byte key"), "{message}");
        }
        Ok(())
    }
}
