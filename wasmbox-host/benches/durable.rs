//! Durable boxes (issue "durable boxes"), each beside its floor, stores in a directory under the
//! target directory (the same file system as the floors):
//!
//! 1. `Buffered` overhead per 16 B message (echo guest) over a plain box — goal ≤ 1.5 µs.
//! 2. `Sync`, one box, per message — goal ≤ 1.2× one fsync of a small write (an append of 32
//!    bytes + `fdatasync`, measured here).
//! 3. `Sync`, 100 boxes of one store: messages per second — goal ≥ 50,000 (group commit). Two
//!    ways: one thread drives all 100 (`submit` to each, one `BoxStore::commit`, `deliver`),
//!    and one thread per box calling `message` (the flush is shared by whoever waits).
//! 4. `checkpoint()` of a 64 MiB box after a message that wrote 64 KiB — goal ≤ 1 ms + the
//!    write (writing a 64 KiB file atomically, with fsync, measured here).
//! 5. Recovery of a 64 MiB box: its checkpoint + 10,000 journaled 16 B messages — goal ≤ 150 ms.
//! 6. Waking a hibernated box (`counter`, ~1 MiB of memory, empty journal tail) — goal ≤ 1 ms.
//!
//! Run: `cargo bench -p wasmbox-host --bench durable`.

mod common;

use common::{bench, fmt_ns, op, report_abs, report_ratio, say, timed, timed_with_setup};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use wasmbox_host::durable::{BoxStore, Durability, DurableBox};
use wasmbox_host::{WasmBoxHost, WasmBoxModule};

const SAMPLES: usize = 10;

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(SAMPLES)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// A fresh, empty directory for stores under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = common::target_dir().join("bench-durable").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

type Text = DurableBox<String, String>;

fn open_text(module: &WasmBoxModule, store: &BoxStore, name: &str, d: Durability) -> Text {
    DurableBox::<String, String>::builder(module, store, name)
        .durability(d)
        .checkpoint_every(100_000)
        .open(|_, _| {})
        .expect("open")
}

/// Figures 1–3.
fn messages(c: &mut Criterion, echo: &WasmBoxModule) {
    let mut group = c.benchmark_group("durable_messages");
    configure(&mut group);
    let text = "0123456789abcdef".to_string(); // 16 B
    let mut plain = WasmBoxHost::<String, String>::new(echo, |_| {}).expect("plain");
    let plain_ns = bench(&mut group, "plain_message", SAMPLES, |iters| {
        timed(iters, || plain.message(&text).expect("message"))
    });
    let dir = scratch("buffered");
    let store = BoxStore::open_dir(&dir).expect("store");
    let mut buffered = open_text(echo, &store, "b", Durability::Buffered);
    let buffered_ns = bench(&mut group, "buffered_message", SAMPLES, |iters| {
        timed(iters, || {
            buffered.message(&text).expect("message");
        })
    });
    drop(buffered);

    // The fsync floor: an append of a record-sized write and fdatasync, in the same place.
    let floor_path = dir.join("floor");
    let mut floor_file = std::fs::File::create(&floor_path).expect("floor file");
    let fsync_ns = bench(&mut group, "floor_append_fdatasync", SAMPLES, |iters| {
        timed(iters, || {
            floor_file.write_all(&[7u8; 32]).expect("write");
            floor_file.sync_data().expect("fdatasync");
        })
    });
    let store_sync = BoxStore::open_dir(scratch("sync")).expect("store");
    let mut sync = open_text(echo, &store_sync, "s", Durability::Sync);
    let sync_ns = bench(&mut group, "sync_message", SAMPLES, |iters| {
        timed(iters, || {
            sync.message(&text).expect("message");
        })
    });
    drop(sync);

    // 100 boxes of one store, one thread each.
    let store_many = BoxStore::open_dir(scratch("many")).expect("store");
    let mut boxes: Vec<Text> = (0..100)
        .map(|i| open_text(echo, &store_many, &format!("box-{i}"), Durability::Sync))
        .collect();
    let many_ns = bench(&mut group, "sync_100_boxes_per_message", SAMPLES, |iters| {
        let per_box = iters.div_ceil(100).max(1);
        let start = Arc::new(Barrier::new(101));
        let took = std::thread::scope(|s| {
            for b in boxes.iter_mut() {
                let (start, text) = (Arc::clone(&start), &text);
                s.spawn(move || {
                    start.wait();
                    for _ in 0..per_box {
                        b.message(text).expect("message");
                    }
                });
            }
            start.wait();
            Instant::now()
        });
        // Every thread has ended when the scope returns.
        let total = took.elapsed();
        Duration::from_secs_f64(total.as_secs_f64() * iters as f64 / (per_box * 100) as f64)
    });
    let one_thread_ns = bench(&mut group, "sync_100_boxes_one_thread", SAMPLES, |iters| {
        let rounds = iters.div_ceil(100).max(1);
        let start = Instant::now();
        for _ in 0..rounds {
            for b in boxes.iter_mut() {
                b.submit(&text).expect("submit");
            }
            store_many.commit().expect("commit");
            for b in boxes.iter_mut() {
                b.deliver().expect("deliver");
            }
        }
        Duration::from_secs_f64(
            start.elapsed().as_secs_f64() * iters as f64 / (rounds * 100) as f64,
        )
    });
    group.finish();
    if let (Some(b), Some(p)) = (buffered_ns, plain_ns) {
        report_abs(
            "durable/Buffered overhead per 16 B message",
            Some(b - p),
            Some(p),
            "the plain box's message",
            1_500.0,
        );
    }
    report_ratio(
        "durable/Sync, one box, per 16 B message",
        sync_ns,
        fsync_ns,
        "append 32 B + fdatasync",
        1.2,
    );
    for (what, ns) in [
        ("one thread, submit + commit + deliver", one_thread_ns),
        ("a thread per box, message", many_ns),
    ] {
        let Some(ns) = ns else { continue };
        let rate = 1e9 / ns;
        say(format!(
            "SUMMARY durable/Sync, 100 boxes of one store, {what}: {rate:.0} messages/s ({} per message) | floor (one fdatasync) {} | goal >= 50000 messages/s: {}",
            fmt_ns(ns),
            fsync_ns.map_or("-".into(), fmt_ns),
            if rate >= 50_000.0 { "MET" } else { "MISSED" }
        ));
    }
}

/// Figures 4–6.
fn checkpoints_and_recovery(c: &mut Criterion, poke: &WasmBoxModule, counter: &WasmBoxModule) {
    let mut group = c.benchmark_group("durable_state");
    configure(&mut group);
    let dir = scratch("checkpoint");
    let store = BoxStore::open_dir(&dir).expect("store");
    let mut b = common::poke_box(poke, &store, "c");
    let mut round = 0u8;
    let write_64k = op(0, 0, 65536 * 8, 65536);
    let checkpoint_ns = bench(&mut group, "checkpoint_after_64KiB", SAMPLES, |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            round = round.wrapping_add(1);
            let mut m = write_64k;
            m[1] = round | 1;
            b.message(&m.to_vec()).expect("message");
            let start = Instant::now();
            b.checkpoint().expect("checkpoint");
            total += start.elapsed();
        }
        total
    });
    drop(b);
    let floor_path = dir.join("floor");
    let bytes = vec![9u8; 65536 + 2048];
    let write_ns = bench(
        &mut group,
        "floor_write_64KiB_file_fsync",
        SAMPLES,
        |iters| timed(iters, || write_atomically(&floor_path, &bytes)),
    );

    // Recovery: the checkpoint, then 10,000 journaled 16 B messages.
    let rdir = scratch("recovery");
    let rstore = BoxStore::open_dir(&rdir).expect("store");
    let mut r = common::poke_box(poke, &rstore, "r");
    for i in 0..10_000u32 {
        r.message(&op(0, (i % 200) as u8 + 1, 65536 + (i % 1000) * 64, 5).to_vec())
            .expect("message");
    }
    drop(r);
    let recovery_ns = bench(&mut group, "recover_64MiB_plus_10000", SAMPLES, |iters| {
        timed_with_setup(
            iters,
            || (),
            |()| {
                let b = DurableBox::<Vec<u8>, u8>::builder(poke, &rstore, "r")
                    .checkpoint_every(0)
                    .open(|_, _| {})
                    .expect("recover");
                assert_eq!(b.recovery().replayed, 10_000);
                b
            },
        )
    });

    // Hibernation: a counter box checkpointed, dropped, reopened.
    let hstore = BoxStore::open_dir(scratch("hibernate")).expect("store");
    let mut h = open_text(counter, &hstore, "h", Durability::Buffered);
    for _ in 0..3 {
        h.message("up").expect("message");
    }
    h.checkpoint().expect("checkpoint");
    drop(h);
    let wake_ns = bench(&mut group, "wake_hibernated_1MiB", SAMPLES, |iters| {
        timed_with_setup(
            iters,
            || (),
            |()| open_text(counter, &hstore, "h", Durability::Buffered),
        )
    });
    group.finish();
    if let (Some(cp), Some(w)) = (checkpoint_ns, write_ns) {
        report_abs(
            "durable/checkpoint of a 64 MiB box after a 64 KiB message, beyond the write",
            Some(cp - w),
            Some(w),
            "writing a 64 KiB file atomically with fsync",
            1_000_000.0,
        );
    }
    report_abs(
        "durable/recovery: 64 MiB checkpoint + 10,000 journaled messages",
        recovery_ns,
        write_ns,
        "writing a 64 KiB file atomically with fsync",
        150_000_000.0,
    );
    report_abs(
        "durable/wake a hibernated box (1 MiB)",
        wake_ns,
        write_ns,
        "writing a 64 KiB file atomically with fsync",
        1_000_000.0,
    );
}

/// What `Backend::write` does: a temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).expect("create");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("fsync");
    std::fs::rename(&tmp, path).expect("rename");
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .expect("dir fsync");
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let echo = WasmBoxModule::from_file(common::guest("echo")).expect("echo");
    let counter = WasmBoxModule::from_file(common::guest("counter")).expect("counter");
    let poke =
        WasmBoxModule::from_bytes(&wat::parse_str(common::POKE).expect("poke")).expect("poke");
    messages(&mut c, &echo);
    checkpoints_and_recovery(&mut c, &poke, &counter);
    c.final_summary();
    common::print_summary("durable");
}
