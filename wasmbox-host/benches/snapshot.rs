//! Benchmarks 3–6: snapshots of the `memory` guest.
//!
//! 3. `snapshot_state` and `restore_snapshot` into a fresh box, with 1, 16, 64 and 256 MiB of
//!    dense memory (`Request::Grow`: every byte pseudo-random). Floor: a memcpy of the
//!    snapshot's stored bytes into an already-touched buffer.
//! 4. The same with a sparse box: 256 MiB of linear memory of which 1 MiB is in use
//!    (`Request::Reserve { mib: 255 }` then `Request::Grow { mib: 1 }`): time and snapshot size.
//! 5. `snapshot_to_file` and `restore_snapshot_from_file` (into a fresh box) with 64 MiB dense.
//!    Floors: `std::fs::write` (and write + fsync, as `snapshot_to_file` syncs) and
//!    `std::fs::read` of as many bytes, in the same directory.
//! 6. Restore from a prepared template (`prepare_template` + `restore_template`), 1 and 256 MiB.
//!
//! "Into a fresh box": each timed restore goes into a box created just before, outside the
//! timing; the box (and the snapshot that `snapshot_state` returns) is dropped outside the
//! timing too.
//!
//! Run: `cargo bench -p wasmbox-host --bench snapshot`.

mod common;

use common::{
    bench, fmt_bytes, fmt_ns, memcpy_buffers, report_abs, report_info, report_ratio, say, timed,
    timed_with_setup, verdict,
};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use memory::{Request, Summary};
use std::hint::black_box;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmbox_host::{Snapshot, WasmBoxHost, WasmBoxModule};

const SAMPLES: usize = 10;
const MIB: u64 = 1 << 20;

type MemoryBox = WasmBoxHost<Request, Summary>;

/// A box of the memory guest whose replies land in the returned slot.
fn memory_box(module: &WasmBoxModule) -> (MemoryBox, Arc<Mutex<Option<Summary>>>) {
    let last = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&last);
    let host = MemoryBox::new(module, move |s: Summary| {
        *slot.lock().expect("reply slot") = Some(s);
    })
    .expect("memory box");
    (host, last)
}

/// Sends `request` and returns the guest's reply.
fn ask(host: &mut MemoryBox, last: &Mutex<Option<Summary>>, request: &Request) -> Summary {
    host.message(request).expect("message");
    last.lock().expect("reply slot").take().expect("a reply")
}

/// A fresh box that was never sent anything (the destination of a restore).
fn fresh(module: &WasmBoxModule) -> MemoryBox {
    MemoryBox::new(module, |_: Summary| {}).expect("fresh box")
}

/// Checks that `snapshot` restored into a fresh box answers `Sum` like the original did.
fn check_restore(module: &WasmBoxModule, snapshot: &Snapshot, expected: &Summary) {
    let (mut b, last) = memory_box(module);
    b.restore_snapshot(snapshot).expect("restore");
    assert_eq!(
        &ask(&mut b, &last, &Request::Sum),
        expected,
        "restored box differs"
    );
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, big: bool) {
    group
        .sample_size(SAMPLES)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(if big { 1000 } else { 500 }))
        .measurement_time(Duration::from_secs(if big { 4 } else { 2 }));
}

/// The memcpy floor for `len` bytes.
fn memcpy_floor(group: &mut BenchmarkGroup<'_, WallTime>, len: usize) -> Option<f64> {
    let (src, mut dst) = memcpy_buffers(len);
    bench(group, "floor_memcpy", SAMPLES, |iters| {
        timed(iters, || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    })
}

/// Benchmark 3: dense memory.
fn dense(c: &mut Criterion, module: &WasmBoxModule) {
    for mib in [1u32, 16, 64, 256] {
        let (mut src, last) = memory_box(module);
        let summary = ask(
            &mut src,
            &last,
            &Request::Grow {
                mib,
                seed: 0xfeed + u64::from(mib),
            },
        );
        assert_eq!(summary.len, u64::from(mib) * MIB);
        let snap = src.snapshot_state().expect("snapshot");
        let stored = snap.memory.stored_bytes();
        check_restore(module, &snap, &summary);
        say(format!(
            "        dense {mib} MiB: linear memory {}, snapshot stores {} in {} chunk(s)",
            fmt_bytes(src.memory_size()),
            fmt_bytes(stored),
            snap.memory.chunks.len()
        ));

        let mut group = c.benchmark_group(format!("snapshot_dense_{mib}MiB"));
        configure(&mut group, mib >= 64);
        let floor = memcpy_floor(&mut group, stored as usize);
        let take = bench(&mut group, "snapshot_state", SAMPLES, |iters| {
            timed_with_setup(iters, || (), |()| src.snapshot_state().expect("snapshot"))
        });
        let mut target = src.snapshot_state().expect("snapshot");
        let into = bench(&mut group, "snapshot_into", SAMPLES, |iters| {
            timed(iters, || {
                src.snapshot_into(&mut target).expect("snapshot_into");
            })
        });
        assert!(target == snap, "snapshot_into differs from snapshot_state");
        let restore = bench(&mut group, "restore_snapshot", SAMPLES, |iters| {
            timed_with_setup(
                iters,
                || fresh(module),
                |mut dst| {
                    dst.restore_snapshot(&snap).expect("restore");
                    dst
                },
            )
        });
        // The same box, state replaced in place: its memory is mapped and resident already.
        let in_place = bench(&mut group, "restore_in_place", SAMPLES, |iters| {
            timed(iters, || {
                src.restore_snapshot(&snap).expect("restore in place");
            })
        });
        assert!(
            src.snapshot_state().expect("snapshot") == snap,
            "restored in place, the box differs from its snapshot"
        );
        let restore_builder = bench(&mut group, "builder_restore", SAMPLES, |iters| {
            timed_with_setup(
                iters,
                || (),
                |()| {
                    MemoryBox::builder(module)
                        .restore(&snap, |_: Summary| {})
                        .expect("restore")
                },
            )
        });
        group.finish();

        let what = format!("memcpy of {} into touched memory", fmt_bytes(stored));
        // The goals are for 64 MiB (and restores also for 256 MiB); other sizes are reported.
        let report = |name: &str, value, goal: Option<f64>| match goal {
            Some(goal) => {
                report_ratio(&format!("{name}/dense_{mib}MiB"), value, floor, &what, goal)
            }
            None => report_info(&format!("{name}/dense_{mib}MiB"), value, floor, &what),
        };
        report("snapshot_state", take, (mib == 64).then_some(1.3));
        report("snapshot_into", into, (mib == 64).then_some(1.3));
        report("restore_snapshot", restore, (mib >= 64).then_some(2.0));
        report(
            "restore_snapshot in place (the same box)",
            in_place,
            (mib >= 64).then_some(1.2),
        );
        report_info(
            &format!("builder().restore/dense_{mib}MiB"),
            restore_builder,
            floor,
            &what,
        );
    }
}

/// Benchmark 4: a sparse box, 256 MiB of memory with 1 MiB in use.
fn sparse(c: &mut Criterion, module: &WasmBoxModule) {
    let (mut src, last) = memory_box(module);
    ask(&mut src, &last, &Request::Reserve { mib: 255 });
    let summary = ask(&mut src, &last, &Request::Grow { mib: 1, seed: 7 });
    assert_eq!(summary.len, MIB);
    // The first snapshot after the growth: with the kernel's tracking it reads only the pages
    // the kernel reports touched (before, it read — and faulted in — all ~255 MiB).
    let start = std::time::Instant::now();
    let snap = src.snapshot_state().expect("snapshot");
    let first = start.elapsed();
    let stored = snap.memory.stored_bytes();
    let encoded = wasmbox_host::snapshot::encode_file(&snap).len() as u64;
    check_restore(module, &snap, &summary);

    let mut group = c.benchmark_group("snapshot_sparse_256MiB");
    configure(&mut group, true);
    let floor = memcpy_floor(&mut group, stored as usize);
    let take = bench(&mut group, "snapshot_state", SAMPLES, |iters| {
        timed_with_setup(iters, || (), |()| src.snapshot_state().expect("snapshot"))
    });
    let mut target = snap.clone();
    let into = bench(&mut group, "snapshot_into", SAMPLES, |iters| {
        timed(iters, || {
            src.snapshot_into(&mut target).expect("snapshot_into");
        })
    });
    let restore = bench(&mut group, "restore_snapshot", SAMPLES, |iters| {
        timed_with_setup(
            iters,
            || fresh(module),
            |mut dst| {
                dst.restore_snapshot(&snap).expect("restore");
                dst
            },
        )
    });
    group.finish();

    let what = format!("memcpy of {}", fmt_bytes(stored));
    report_abs("snapshot_state/sparse_256MiB", take, floor, &what, 2e6);
    report_abs("snapshot_into/sparse_256MiB", into, floor, &what, 2e6);
    say(format!(
        "        snapshot_state/sparse_256MiB, first snapshot of the box (one run): {} | goal <= 2 ms: {}",
        fmt_ns(first.as_nanos() as f64),
        verdict(first.as_nanos() as f64, 2e6, fmt_ns),
    ));
    report_info("restore_snapshot/sparse_256MiB", restore, floor, &what);
    // What the snapshot would hold if zero runs were found per 4 KiB instead of per 64 KiB
    // wasm page.
    let nonzero_4k: u64 = snap
        .memory
        .chunks
        .iter()
        .flat_map(|c| c.bytes.chunks(4096))
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(|b| b.len() as u64)
        .sum();
    say(format!(
        "        sparse 256 MiB: at 4 KiB granularity the same memory would store {}",
        fmt_bytes(nonzero_4k)
    ));
    say(format!(
        "SUMMARY snapshot size/sparse_256MiB: linear memory {}, stored {} in {} chunk(s), file {} | goal <= 1.1 MiB: {}",
        fmt_bytes(src.memory_size()),
        fmt_bytes(stored),
        snap.memory.chunks.len(),
        fmt_bytes(encoded),
        verdict(encoded as f64, 1.1 * MIB as f64, |x| fmt_bytes(x as u64)),
    ));
}

/// Benchmark 5: snapshot files, 64 MiB dense.
fn file(c: &mut Criterion, module: &WasmBoxModule) {
    let (mut src, last) = memory_box(module);
    let summary = ask(&mut src, &last, &Request::Grow { mib: 64, seed: 99 });
    let target = common::target_dir();
    std::fs::create_dir_all(&target).expect("target dir");
    let dir = tempfile::Builder::new()
        .prefix("wasmbox-bench-")
        .tempdir_in(&target)
        .expect("temporary directory");
    let path = dir.path().join("box.snap");
    src.snapshot_to_file(&path).expect("snapshot_to_file");
    let file_len = std::fs::metadata(&path).expect("snapshot file").len();
    {
        let (mut b, last) = memory_box(module);
        b.restore_snapshot_from_file(&path)
            .expect("restore from file");
        assert_eq!(ask(&mut b, &last, &Request::Sum), summary);
    }
    say(format!(
        "        file 64 MiB dense: snapshot file {} in {}",
        fmt_bytes(file_len),
        dir.path().display()
    ));

    let mut group = c.benchmark_group("snapshot_file_64MiB");
    configure(&mut group, true);
    let floor_path = dir.path().join("floor.bin");
    let bytes = common::random_bytes(file_len as usize, 3);
    let floor_write = bench(&mut group, "floor_fs_write", SAMPLES, |iters| {
        timed(iters, || {
            std::fs::write(&floor_path, black_box(&bytes)).expect("write")
        })
    });
    let floor_write_sync = bench(&mut group, "floor_fs_write_fsync", SAMPLES, |iters| {
        timed(iters, || {
            let mut f = std::fs::File::create(&floor_path).expect("create");
            f.write_all(black_box(&bytes)).expect("write");
            f.sync_all().expect("fsync");
        })
    });
    let write = bench(&mut group, "snapshot_to_file", SAMPLES, |iters| {
        timed(iters, || {
            src.snapshot_to_file(&path).expect("snapshot_to_file")
        })
    });
    let floor_read = bench(&mut group, "floor_fs_read", SAMPLES, |iters| {
        timed_with_setup(iters, || (), |()| std::fs::read(&path).expect("read"))
    });
    let read = bench(&mut group, "restore_snapshot_from_file", SAMPLES, |iters| {
        timed_with_setup(
            iters,
            || fresh(module),
            |mut dst| {
                dst.restore_snapshot_from_file(&path).expect("restore");
                dst
            },
        )
    });
    group.finish();

    let size = fmt_bytes(file_len);
    report_abs(
        "snapshot_to_file/64MiB",
        write,
        floor_write,
        &format!("std::fs::write of {size}"),
        100e6,
    );
    report_info(
        "snapshot_to_file/64MiB vs fsync",
        write,
        floor_write_sync,
        &format!("std::fs::write of {size} + fsync"),
    );
    report_abs(
        "restore_snapshot_from_file/64MiB",
        read,
        floor_read,
        &format!("std::fs::read of {size}"),
        100e6,
    );
    report_ratio(
        "restore_snapshot_from_file/64MiB vs read",
        read,
        floor_read,
        &format!("std::fs::read of {size}"),
        1.3,
    );
}

// ============================================================================================
// 6. Restore from a prepared template, 1 MiB and 256 MiB — goal ≤ 50 µs at both sizes.
//    The template is prepared once (outside the timing); each timed restore goes into a fresh
//    box made outside the timing, like benchmark 3. Floor: a bare wasmtime instantiation of a
//    module with no imports and one page of memory, in a new store.
// ============================================================================================
fn template_restore(c: &mut Criterion, module: &WasmBoxModule) {
    let engine = wasmtime::Engine::default();
    let bare = wasmtime::Module::new(&engine, "(module (memory 1))").expect("bare module");
    for mib in [1u32, 256] {
        let (mut src, last) = memory_box(module);
        let summary = ask(
            &mut src,
            &last,
            &Request::Grow {
                mib,
                seed: 0xabc + u64::from(mib),
            },
        );
        let snap = src.snapshot_state().expect("snapshot");
        let template = module.prepare_template(&snap).expect("prepare template");
        // The restored box really holds the state.
        let (mut check, check_last) = memory_box(module);
        check.restore_template(&template).expect("restore template");
        assert_eq!(
            ask(&mut check, &check_last, &Request::Sum),
            summary,
            "template box differs"
        );

        let mut group = c.benchmark_group(format!("template_restore_{mib}MiB"));
        configure(&mut group, false);
        let floor = bench(&mut group, "floor_bare_instantiate", SAMPLES, |iters| {
            timed_with_setup(
                iters,
                || wasmtime::Store::new(&engine, ()),
                |mut store| {
                    let instance =
                        wasmtime::Instance::new(&mut store, &bare, &[]).expect("instantiate");
                    (store, instance)
                },
            )
        });
        let restore = bench(&mut group, "restore_template", SAMPLES, |iters| {
            timed_with_setup(
                iters,
                || fresh(module),
                |mut dst| {
                    dst.restore_template(&template).expect("restore template");
                    dst
                },
            )
        });
        let build = bench(&mut group, "builder_from_template", SAMPLES, |iters| {
            timed_with_setup(
                iters,
                || (),
                |()| {
                    MemoryBox::builder(module)
                        .from_template(&template, |_: Summary| {})
                        .expect("from template")
                },
            )
        });
        group.finish();
        let what = "bare instantiation, no imports";
        report_abs(
            &format!("restore_template/{mib}MiB"),
            restore,
            floor,
            what,
            50e3,
        );
        report_info(
            &format!("builder().from_template/{mib}MiB"),
            build,
            floor,
            what,
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let module = WasmBoxModule::from_file(common::guest("memory")).expect("memory module");
    dense(&mut c, &module);
    sparse(&mut c, &module);
    file(&mut c, &module);
    template_restore(&mut c, &module);
    c.final_summary();
    common::print_summary("snapshot");
}
