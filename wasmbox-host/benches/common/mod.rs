//! Shared by the benchmarks: builds the example guests once (as the integration tests do),
//! records the samples criterion takes so that every benchmark can print its median next to
//! its physical floor and its goal, and reads the process's memory figures.
#![allow(dead_code)]

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "../../tests/common/guests.rs"]
mod guests;

/// The workspace root.
pub fn root() -> PathBuf {
    guests::workspace()
}

/// The cargo target directory the benchmarks run from.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Path of the built example guest `name` (e.g. `counter`), built once per benchmark binary
/// as the tests build them.
pub fn guest(name: &str) -> PathBuf {
    guests::try_guest(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Bytes of the built example guest `name`.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("read guest")
}

/// True when the binary runs as a benchmark (`cargo bench`), false in criterion's test mode
/// (`cargo test --benches`, `cargo bench -- --test`), where every routine runs once and no
/// figure means anything.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// Runs one criterion benchmark whose routine times itself: `routine(iters)` does `iters`
/// iterations and returns the time they took (setup and teardown left out). Returns the
/// median time of one iteration over criterion's measured samples — the same statistic as
/// criterion's own "median" estimate — or `None` when the benchmark did not run (filtered
/// out).
pub fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    samples: usize,
    mut routine: impl FnMut(u64) -> Duration,
) -> Option<f64> {
    let recorded = RefCell::new(Vec::new());
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let took = routine(iters);
            recorded
                .borrow_mut()
                .push(took.as_nanos() as f64 / iters as f64);
            took
        })
    });
    let recorded = recorded.into_inner();
    // Criterion calls the routine for its warm-up first, then once per sample.
    let measured = &recorded[recorded.len().saturating_sub(samples)..];
    median(measured)
}

/// Times `iters` runs of `f`, which does its own work only.
pub fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

/// Times `iters` runs of `op` on a value made by `setup`; neither `setup` nor dropping what
/// `op` returns is timed.
pub fn timed_with_setup<S, R>(
    iters: u64,
    mut setup: impl FnMut() -> S,
    mut op: impl FnMut(S) -> R,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = setup();
        let start = Instant::now();
        let out = op(input);
        total += start.elapsed();
        drop(std::hint::black_box(out));
    }
    total
}

/// Median of `values`.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A duration in nanoseconds, in a readable unit.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

/// A byte count in a readable unit.
pub fn fmt_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.2} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

static SUMMARY: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Prints a summary line now and keeps it for [`print_summary`].
pub fn say(line: String) {
    let line = if measuring() {
        line
    } else {
        format!("{line}   [test mode: one run, not a measurement]")
    };
    println!("{line}");
    SUMMARY.lock().expect("summary lock").push(line);
}

/// Prints every summary line again, together, at the end of the benchmark binary.
pub fn print_summary(title: &str) {
    let lines = SUMMARY.lock().expect("summary lock");
    println!("\n===== {title}: summary (medians; floors measured in the same run) =====");
    for line in lines.iter() {
        println!("{line}");
    }
    println!("=====");
}

/// One operation against its floor and an absolute goal (`goal_ns`, an upper bound).
pub fn report_abs(name: &str, op: Option<f64>, floor: Option<f64>, floor_what: &str, goal_ns: f64) {
    let (Some(op), Some(floor)) = (op, floor) else {
        return;
    };
    say(format!(
        "SUMMARY {name}: median {} | floor ({floor_what}) {} | {:.1}x floor | goal <= {}: {}",
        fmt_ns(op),
        fmt_ns(floor),
        op / floor,
        fmt_ns(goal_ns),
        verdict(op, goal_ns, fmt_ns),
    ));
}

/// One operation against its floor and a goal expressed as a ratio to that floor.
pub fn report_ratio(
    name: &str,
    op: Option<f64>,
    floor: Option<f64>,
    floor_what: &str,
    goal_ratio: f64,
) {
    let (Some(op), Some(floor)) = (op, floor) else {
        return;
    };
    let ratio = op / floor;
    let met = ratio <= goal_ratio;
    say(format!(
        "SUMMARY {name}: median {} | floor ({floor_what}) {} | {ratio:.2}x floor | goal <= {goal_ratio}x floor (= {}): {}",
        fmt_ns(op),
        fmt_ns(floor),
        fmt_ns(floor * goal_ratio),
        if met {
            "MET".to_string()
        } else {
            format!(
                "MISSED by {} ({:.2}x the goal)",
                fmt_ns(op - floor * goal_ratio),
                ratio / goal_ratio
            )
        }
    ));
}

/// One operation against its floor, no goal.
pub fn report_info(name: &str, op: Option<f64>, floor: Option<f64>, floor_what: &str) {
    let (Some(op), Some(floor)) = (op, floor) else {
        return;
    };
    say(format!(
        "SUMMARY {name}: median {} | floor ({floor_what}) {} | {:.2}x floor | no goal",
        fmt_ns(op),
        fmt_ns(floor),
        op / floor,
    ));
}

/// "MET" or "MISSED by how much".
pub fn verdict(value: f64, goal: f64, fmt: impl Fn(f64) -> String) -> String {
    if value <= goal {
        "MET".to_string()
    } else {
        format!(
            "MISSED by {} ({:.2}x the goal)",
            fmt(value - goal),
            value / goal
        )
    }
}

/// A field of /proc/self/status in bytes (`VmHWM`, `VmRSS`, `VmSize`…), if present.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// A buffer of `len` pseudo-random bytes (every page written, so resident).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = vec![0u8; len];
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    v
}

/// The memcpy floor: copying `len` bytes into a buffer whose pages are already touched.
/// Returns the source and destination; time `dst.copy_from_slice(&src)`.
pub fn memcpy_buffers(len: usize) -> (Vec<u8>, Vec<u8>) {
    let src = random_bytes(len, 0x9e37_79b9_7f4a_7c15);
    let mut dst = vec![0u8; len];
    // Touch every page so the copy pays for no page fault.
    dst.fill(1);
    (src, dst)
}

#[path = "../../tests/common/poke.rs"]
mod poke;
#[allow(unused_imports)] // Not every benchmark pokes.
pub use poke::{POKE, op};

/// A durable box of the POKE guest with 64 MiB of memory, all written, checkpointed (no
/// automatic checkpoints after that).
pub fn poke_box(
    module: &wasmbox_host::WasmBoxModule,
    store: &wasmbox_host::durable::BoxStore,
    name: &str,
) -> wasmbox_host::durable::DurableBox<Vec<u8>, u8> {
    let mut b = wasmbox_host::durable::DurableBox::<Vec<u8>, u8>::builder(module, store, name)
        .checkpoint_every(0)
        .checkpoint_bytes(u64::MAX)
        .open(|_, _| {})
        .expect("open");
    let mut m = Vec::new();
    let mut grown = 2u32;
    while grown < 64 * 16 {
        let n = (64 * 16 - grown).min(255);
        m.extend_from_slice(&op(1, n as u8, 0, 0));
        grown += n;
    }
    m.extend_from_slice(&op(0, 0x5a, 65536, (64 << 20) - 65536));
    b.message(&m).expect("fill");
    b.checkpoint().expect("checkpoint");
    b
}
