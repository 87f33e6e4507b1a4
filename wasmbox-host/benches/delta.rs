//! Incremental snapshots (issue "incremental snapshots"), each figure beside its floor:
//!
//! 1. `snapshot_delta` of a 256 MiB box after a message that wrote 16 scattered 4 KiB blocks,
//!    with the kernel's tracking (goal ≤ 300 µs) and with hashes (goal ≤ 1.2× hashing 256 MiB
//!    with xxh3, measured here).
//! 2. `snapshot_delta` after a message that wrote nothing but its own input (goal ≤ 150 µs).
//! 3. The encoded size of the delta of 16 blocks (goal ≤ 64 KiB × 1.1 + the small state).
//! 4. The overhead of `rollback_on_trap` per successful 16-byte message on a 64 MiB box (goal
//!    ≤ 50 µs): the same message timed with and without rollback.
//! 5. A trapped message that wrote 64 KiB of a 64 MiB box, rolled back (goal ≤ 100 µs).
//! 6. Materialising base + 100 deltas (16 blocks each) of a 64 MiB box and restoring it into a
//!    fresh box, against restoring the equivalent full snapshot (goal ≤ 1.5×).
//!
//! The guest is a 30-line WAT module whose messages are lists of memory fills, so that a
//! message writes exactly the blocks a figure needs.
//!
//! Run: `cargo bench -p wasmbox-host --bench delta`.

mod common;

use common::{
    bench, fmt_bytes, op, report_abs, report_info, report_ratio, say, timed, timed_with_setup,
};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use std::hint::black_box;
use std::time::{Duration, Instant};
use wasmbox_host::{ChangeTracking, Snapshot, WasmBoxHost, WasmBoxModule};

const SAMPLES: usize = 10;
const MIB: u32 = 1 << 20;
const BLOCK: u32 = 4096;

type Poke = WasmBoxHost<Vec<u8>, u8>;

/// A box of `mib` MiB, every byte of it written (non-zero).
fn poke_box(module: &WasmBoxModule, mib: u32, method: ChangeTracking, rollback: bool) -> Poke {
    let mut b = Poke::builder(module)
        .change_tracking(method)
        .rollback_on_trap(rollback)
        .build(|_| {})
        .expect("poke box");
    let pages = mib * 16;
    let mut m = op(1, 0, 0, 0).to_vec();
    // memory.grow takes at most 255 pages per op here.
    let mut grown = 2;
    m.clear();
    while grown < pages {
        let n = (pages - grown).min(255);
        m.extend_from_slice(&op(1, n as u8, 0, 0));
        grown += n;
    }
    m.extend_from_slice(&op(0, 0x5a, 65536, mib * MIB - 65536));
    b.message(&m).expect("fill");
    b
}

/// A message writing one byte into each of 16 blocks spread over `mib` MiB (a new value each
/// time, from `round`).
fn scattered(mib: u32, round: u32) -> Vec<u8> {
    let stride = (mib * MIB - 65536) / 16 / BLOCK * BLOCK;
    (0..16)
        .flat_map(|i| {
            op(
                0,
                (round % 250) as u8 + 1,
                65536 + i * stride + 8,
                BLOCK - 8,
            )
        })
        .collect()
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(SAMPLES)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Times `snapshot_delta` only, after `message` (not timed) each time.
fn delta_after(iters: u64, b: &mut Poke, mut message: impl FnMut(&mut Poke)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        message(b);
        let start = Instant::now();
        let d = b.snapshot_delta().expect("delta");
        total += start.elapsed();
        drop(black_box(d));
    }
    total
}

/// Figures 1–3.
fn delta_256(c: &mut Criterion, module: &WasmBoxModule) {
    let mut group = c.benchmark_group("delta_256MiB");
    configure(&mut group);
    let memory = vec![0x5au8; 256 * MIB as usize];
    let hash_floor = bench(&mut group, "floor_xxh3_256MiB", SAMPLES, |iters| {
        timed(iters, || {
            for block in memory.chunks_exact(BLOCK as usize) {
                black_box(xxhash_rust::xxh3::xxh3_64(block));
            }
        })
    });
    drop(memory);
    for method in [ChangeTracking::Kernel, ChangeTracking::Hash] {
        let mut b = poke_box(module, 256, method, false);
        b.snapshot_delta().expect("first delta");
        let mut round = 0;
        let sixteen = bench(
            &mut group,
            &format!("{method:?}/16_blocks"),
            SAMPLES,
            |iters| {
                delta_after(iters, &mut b, |b| {
                    round += 1;
                    b.message(&scattered(256, round)).expect("message");
                })
            },
        );
        let size = {
            b.message(&scattered(256, 0)).expect("message");
            let d = b.snapshot_delta().expect("delta");
            wasmbox_host::snapshot::encode_delta_file(&d, None).len()
        };
        let nothing = bench(
            &mut group,
            &format!("{method:?}/nothing"),
            SAMPLES,
            |iters| delta_after(iters, &mut b, |b| b.message(&Vec::new()).expect("message")),
        );
        let d = {
            b.message(&scattered(256, 999)).expect("message");
            b.snapshot_delta().expect("delta")
        };
        say(format!(
            "        {method:?}: a 16-block message's delta holds {} blocks, {} as a file",
            d.changed_blocks(),
            fmt_bytes(size as u64)
        ));
        match method {
            ChangeTracking::Kernel => {
                report_abs(
                    "snapshot_delta/256MiB/16 blocks/kernel",
                    sixteen,
                    hash_floor,
                    "xxh3 of 256 MiB",
                    300_000.0,
                );
                report_abs(
                    "snapshot_delta/256MiB/nothing written/kernel",
                    nothing,
                    hash_floor,
                    "xxh3 of 256 MiB",
                    150_000.0,
                );
                let goal = 64.0 * 1024.0 * 1.1 + 1024.0;
                say(format!(
                    "SUMMARY delta size/16 blocks: {} | goal <= 64 KiB x 1.1 + small state ({}): {}",
                    fmt_bytes(size as u64),
                    fmt_bytes(goal as u64),
                    if (size as f64) <= goal {
                        "MET"
                    } else {
                        "MISSED"
                    }
                ));
            }
            _ => {
                report_ratio(
                    "snapshot_delta/256MiB/16 blocks/hash",
                    sixteen,
                    hash_floor,
                    "xxh3 of 256 MiB",
                    1.2,
                );
                report_info(
                    "snapshot_delta/256MiB/nothing written/hash",
                    nothing,
                    hash_floor,
                    "xxh3 of 256 MiB",
                );
            }
        }
    }
    group.finish();
}

/// Figures 4–5.
fn rollback_64(c: &mut Criterion, module: &WasmBoxModule) {
    let mut group = c.benchmark_group("rollback_64MiB");
    configure(&mut group);
    let small = op(0, 3, 65536 + 100, 5).to_vec(); // 11 bytes encoded, as a 16 B message
    let mut plain = poke_box(module, 64, ChangeTracking::Auto, false);
    let without = bench(&mut group, "message_without_rollback", SAMPLES, |iters| {
        timed(iters, || plain.message(&small).expect("message"))
    });
    drop(plain);
    let mut guarded = poke_box(module, 64, ChangeTracking::Auto, true);
    guarded
        .message(&small)
        .expect("first message fills the rollback copy");
    let with = bench(&mut group, "message_with_rollback", SAMPLES, |iters| {
        timed(iters, || guarded.message(&small).expect("message"))
    });
    let mut bad = op(0, 9, 65536 * 4, 65536).to_vec();
    bad.extend_from_slice(&op(2, 0, 0, 0));
    let trapped = bench(&mut group, "trapped_64KiB_rolled_back", SAMPLES, |iters| {
        timed(iters, || {
            guarded.message(&bad).expect_err("traps");
        })
    });
    assert!(guarded.poisoned().is_none());
    group.finish();
    if let (Some(w), Some(wo)) = (with, without) {
        report_abs(
            "rollback_on_trap overhead/16 B message/64MiB",
            Some(w - wo),
            without,
            "the same message without rollback",
            50_000.0,
        );
    }
    report_abs(
        "rollback of a trapped message that wrote 64 KiB/64MiB",
        trapped,
        without,
        "a 16 B message without rollback",
        100_000.0,
    );
}

/// Figure 6.
fn chain_64(c: &mut Criterion, module: &WasmBoxModule) {
    let mut group = c.benchmark_group("chain_64MiB");
    configure(&mut group);
    let mut b = poke_box(module, 64, ChangeTracking::Auto, false);
    let base = b.snapshot_state().expect("base");
    let deltas: Vec<_> = (0..100)
        .map(|round| {
            b.message(&scattered(64, round)).expect("message");
            b.snapshot_delta().expect("delta")
        })
        .collect();
    let full = b.snapshot_state().expect("full");
    let fresh = || Poke::new(module, |_| {}).expect("fresh box");
    let chained = bench(
        &mut group,
        "apply_100_deltas_and_restore",
        SAMPLES,
        |iters| {
            timed_with_setup(
                iters,
                || (base.clone(), fresh()),
                |(mut s, mut dst): (Snapshot, Poke)| {
                    for d in &deltas {
                        s.apply(d).expect("apply");
                    }
                    dst.restore_snapshot(&s).expect("restore");
                    (s, dst)
                },
            )
        },
    );
    let direct = bench(&mut group, "restore_full", SAMPLES, |iters| {
        timed_with_setup(iters, fresh, |mut dst| {
            dst.restore_snapshot(&full).expect("restore");
            dst
        })
    });
    let mut check = base.clone();
    for d in &deltas {
        check.apply(d).expect("apply");
    }
    assert!(check == full, "the chain materialises to the full snapshot");
    group.finish();
    report_ratio(
        "materialise base + 100 deltas and restore/64MiB",
        chained,
        direct,
        "restoring the equivalent full snapshot",
        1.5,
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let wasm = wat::parse_str(common::POKE).expect("poke guest");
    let module = WasmBoxModule::from_bytes(&wasm).expect("poke module");
    delta_256(&mut c, &module);
    rollback_64(&mut c, &module);
    chain_64(&mut c, &module);
    c.final_summary();
    common::print_summary("delta");
}
