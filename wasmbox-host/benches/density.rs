//! Benchmark 7: density. Creates 10,000 `counter` boxes from one module in one process, sends
//! each one message ("up", checked to answer "value=1"), and prints the total time and the
//! peak resident memory (`VmHWM` of /proc/self/status). Not a criterion benchmark: the figure
//! is one run of the whole thing, which criterion's repetition does not fit.
//!
//! Each allocator runs in a child process of its own (this binary again, with
//! `WASMBOX_DENSITY_MODE` set), so that each peak RSS is that allocator's alone and a failure
//! of one does not hide the other: first the default (on-demand) allocator, then the pooling
//! allocator with 10,000 slots (`ModuleOptions::default().pooling(10_000)`).
//!
//! Run: `cargo bench -p wasmbox-host --bench density`. Under `cargo test --benches` (no
//! `--bench` argument) it makes 100 boxes only. `WASMBOX_DENSITY_BOXES=N` overrides the count.

mod common;

use common::{fmt_bytes, fmt_ns, proc_status_bytes, verdict};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmbox_host::{ModuleOptions, WasmBoxHost, WasmBoxModule};

const GOAL_CREATE: Duration = Duration::from_secs(1);
const GOAL_PEAK_RSS: u64 = 2 << 30;

fn main() {
    match std::env::var("WASMBOX_DENSITY_MODE") {
        Ok(mode) => child(&mode, box_count()),
        Err(_) => parent(),
    }
}

fn box_count() -> usize {
    if let Some(n) = std::env::var("WASMBOX_DENSITY_BOXES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if common::measuring() { 10_000 } else { 100 }
}

fn parent() {
    let n = box_count();
    // Build the guests before the children need them.
    let _ = common::guest("counter");
    println!("density: {n} counter boxes per allocator, each allocator in its own process");
    let exe = std::env::current_exe().expect("own executable");
    for mode in ["default", "pooling"] {
        println!("\n--- density, {mode} allocator ---");
        let status = Command::new(&exe)
            .env("WASMBOX_DENSITY_MODE", mode)
            .env("WASMBOX_DENSITY_BOXES", n.to_string())
            .status()
            .expect("run the density child");
        if !status.success() {
            println!("SUMMARY density/{mode}: the child process failed: {status}");
        }
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".into(), fmt_bytes)
}

fn child(mode: &str, n: usize) {
    let wasm = common::guest_bytes("counter");
    let options = match mode {
        "pooling" => ModuleOptions::default().pooling(u32::try_from(n).expect("count")),
        _ => ModuleOptions::default(),
    };
    let before_module = (proc_status_bytes("VmHWM"), proc_status_bytes("VmSize"));
    let t = Instant::now();
    let module = match WasmBoxModule::from_bytes_with(&wasm, &options) {
        Ok(m) => m,
        Err(e) => {
            println!("SUMMARY density/{mode}: the module cannot be made with {options:?}: {e}");
            return;
        }
    };
    let compile = t.elapsed();
    let hwm_module = proc_status_bytes("VmHWM");
    let vsz_module = proc_status_bytes("VmSize");
    println!(
        "module compiled in {} | VmHWM {} | VmSize {} (before the module: VmHWM {}, VmSize {})",
        fmt_ns(compile.as_nanos() as f64),
        mib(hwm_module),
        mib(vsz_module),
        mib(before_module.0),
        mib(before_module.1),
    );

    let replies = Arc::new(AtomicU64::new(0));
    let mut boxes = Vec::with_capacity(n);
    let mut each = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let r = Arc::clone(&replies);
        let start = Instant::now();
        let made = WasmBoxHost::<String, String>::new(&module, move |out: String| {
            assert_eq!(out, "value=1");
            r.fetch_add(1, Ordering::Relaxed);
        });
        each.push(start.elapsed());
        match made {
            Ok(b) => boxes.push(b),
            Err(e) => {
                println!("SUMMARY density/{mode}: box {i} of {n} could not be created: {e}");
                break;
            }
        }
    }
    let create = t.elapsed();
    let made = boxes.len();
    let hwm_created = proc_status_bytes("VmHWM");

    let t = Instant::now();
    for b in &mut boxes {
        b.message("up").expect("message");
    }
    let message = t.elapsed();
    assert_eq!(
        replies.load(Ordering::Relaxed),
        made as u64,
        "every box answered"
    );
    let hwm = proc_status_bytes("VmHWM");
    let rss = proc_status_bytes("VmRSS");
    let vsz = proc_status_bytes("VmSize");

    let t = Instant::now();
    drop(boxes);
    let dropped = t.elapsed();

    each.sort();
    let pct = |p: f64| {
        each.get(((each.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_nanos() as f64)
    };
    println!(
        "created {made} boxes in {} ({} per box; per box p50 {}, p99 {}, max {})",
        fmt_ns(create.as_nanos() as f64),
        fmt_ns(create.as_nanos() as f64 / made.max(1) as f64),
        fmt_ns(pct(0.5)),
        fmt_ns(pct(0.99)),
        fmt_ns(pct(1.0)),
    );
    println!(
        "sent each a message in {} ({} per box); dropped them all in {}",
        fmt_ns(message.as_nanos() as f64),
        fmt_ns(message.as_nanos() as f64 / made.max(1) as f64),
        fmt_ns(dropped.as_nanos() as f64),
    );
    println!(
        "VmHWM after creating {}, after the messages {} | VmRSS {} | VmSize {}",
        mib(hwm_created),
        mib(hwm),
        mib(rss),
        mib(vsz),
    );
    let per_box = match (hwm, hwm_module) {
        (Some(h), Some(m)) if made > 0 => fmt_bytes(h.saturating_sub(m) / made as u64),
        _ => "?".into(),
    };
    let scale = if made == 10_000 {
        String::new()
    } else {
        format!(" [{made} boxes, not 10,000: the goals are for 10,000]")
    };
    println!(
        "SUMMARY density/{mode}: create {made} boxes {} | goal <= 1 s: {} | create + message {} | peak RSS (VmHWM) {} ({per_box} per box above the module) | goal <= 2 GiB: {}{scale}",
        fmt_ns(create.as_nanos() as f64),
        verdict(
            create.as_secs_f64(),
            GOAL_CREATE.as_secs_f64(),
            |x| format!("{x:.3} s")
        ),
        fmt_ns((create + message).as_nanos() as f64),
        mib(hwm),
        hwm.map_or_else(
            || "?".into(),
            |h| verdict(h as f64, GOAL_PEAK_RSS as f64, |x| fmt_bytes(x as u64))
        ),
    );
}
