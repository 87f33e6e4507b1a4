//! Benchmark 1: a message round trip (`host.message(&input)` to the echo guest, which sends the
//! message back; the reply is decoded and handed to the callback) with a 16 B and a 64 KiB
//! `String`.
//!
//! Floors, measured in the same run:
//! * `floor/bare_call`: a typed call of a no-op export of a tiny WAT module through the
//!   `wasmtime` crate directly, with wasmtime's default configuration;
//! * `floor/bare_call_fuel_epoch`: the same call on an engine configured as WasmBox's (fuel
//!   and epoch interruption on), setting fuel and deadline before each call as the host does;
//! * `floor/round_trip_<size>`: copy the message bytes into a touched buffer, the bare call,
//!   copy them back out — the least any round trip of those bytes costs.
//!
//! Run: `cargo bench -p wasmbox-host --bench message`.

mod common;

use common::{bench, fmt_ns, report_abs, report_info, say, timed};
use criterion::Criterion;
use std::hint::black_box;
use std::time::Duration;
use wasmbox_host::{Error, Limits, WasmBoxHost, WasmBoxModule};
use wasmtime::{Config, Engine, Instance, Module, Store, TypedFunc};

const SAMPLES: usize = 20;

/// A store and a typed no-op export on an engine with `config`.
fn bare_call(config: &Config) -> (Store<()>, TypedFunc<u32, u32>) {
    let engine = Engine::new(config).expect("engine");
    let module = Module::new(
        &engine,
        r#"(module (func (export "noop") (param i32) (result i32) local.get 0))"#,
    )
    .expect("WAT module");
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).expect("instantiate");
    let noop = instance
        .get_typed_func::<u32, u32>(&mut store, "noop")
        .expect("noop export");
    (store, noop)
}

/// The least fuel — about the number of wasm instructions — with which the guest handles
/// `text`, found by bisection. Each try restores a snapshot of a warmed box into a box whose
/// host gives it only that much fuel (a box runs under its host's limits, never a snapshot's),
/// so it counts the first message after a restore, which also runs the guest's
/// `input_buffer` export once.
fn guest_fuel(module: &WasmBoxModule, text: &str) -> u64 {
    let mut warm = WasmBoxHost::<String, String>::new(module, |_: String| {}).expect("box");
    warm.message(text).expect("message");
    let base = warm.snapshot_state().expect("snapshot");
    let enough = |fuel: u64| {
        let mut b = WasmBoxHost::<String, String>::builder(module)
            .limits(Limits {
                fuel_per_message: Some(fuel),
                ..Limits::default()
            })
            .restore(&base, |_: String| {})
            .expect("restore");
        match b.message(text) {
            Ok(()) => true,
            Err(Error::LimitExceeded { .. }) => false,
            Err(e) => panic!("the message failed otherwise: {e}"),
        }
    };
    let (mut lo, mut hi) = (0u64, 1u64 << 10);
    while !enough(hi) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if enough(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

fn round_trip(c: &mut Criterion) {
    let module = WasmBoxModule::from_file(common::guest("echo")).expect("echo module");

    let mut group = c.benchmark_group("message");
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // Floor: a bare typed call, wasmtime's default configuration.
    let (mut store, noop) = bare_call(&Config::new());
    let bare = bench(&mut group, "floor/bare_call", SAMPLES, |iters| {
        timed(iters, || {
            black_box(noop.call(&mut store, black_box(16)).expect("call"));
        })
    });

    // The same with WasmBox's engine configuration and per-call setup.
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    let (mut fstore, fnoop) = bare_call(&config);
    let bare_fuel = bench(&mut group, "floor/bare_call_fuel_epoch", SAMPLES, |iters| {
        timed(iters, || {
            fstore.set_fuel(u64::MAX).expect("fuel");
            fstore.set_epoch_deadline(2001);
            black_box(fnoop.call(&mut fstore, black_box(16)).expect("call"));
        })
    });
    report_info(
        "message/bare_call_fuel_epoch",
        bare_fuel,
        bare,
        "bare call, default config",
    );

    for (label, len, goal_ns) in [("16B", 16usize, 250.0), ("64KiB", 64 << 10, 10_000.0)] {
        let text = "x".repeat(len);

        // Floor: the message bytes in, the bare call, the bytes out.
        let src = text.as_bytes().to_vec();
        let mut guest_side = vec![1u8; len];
        let mut host_side = vec![1u8; len];
        let floor = bench(
            &mut group,
            &format!("floor/round_trip_{label}"),
            SAMPLES,
            |iters| {
                timed(iters, || {
                    guest_side.copy_from_slice(black_box(&src));
                    black_box(noop.call(&mut store, black_box(len as u32)).expect("call"));
                    host_side.copy_from_slice(black_box(&guest_side));
                    black_box(&mut host_side);
                })
            },
        );

        // The round trip: every reply is checked for length in the callback.
        let mut host = WasmBoxHost::<String, String>::new(&module, move |out: String| {
            assert_eq!(out.len(), len);
            black_box(out);
        })
        .expect("echo box");
        host.message(text.as_str()).expect("first message");
        let op = bench(
            &mut group,
            &format!("round_trip_{label}"),
            SAMPLES,
            |iters| {
                timed(iters, || {
                    host.message(black_box(text.as_str())).expect("message")
                })
            },
        );
        report_abs(
            &format!("message/round_trip_{label}"),
            op,
            floor,
            "memcpy in + bare call + memcpy out",
            goal_ns,
        );
        if let (Some(op), Some(bare)) = (op, bare) {
            say(format!(
                "        round_trip_{label}: {} above the bare call ({:.1}x it); the guest runs {} fuel units (~wasm instructions) per message",
                fmt_ns(op - bare),
                op / bare,
                guest_fuel(&module, &text),
            ));
        }
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    round_trip(&mut c);
    c.final_summary();
    common::print_summary("message");
}
