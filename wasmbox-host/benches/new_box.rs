//! Benchmark 2: a new box from a shared, already compiled module, including the guest's init
//! (`WasmBoxHost::new(&module, callback)`), with the default (on-demand) allocator and with
//! the pooling allocator. Only the creation is timed; the box is dropped outside the timing.
//! The guest is `counter`.
//!
//! Floors, measured in the same run with the same allocation strategy:
//! * `floor/wat_<alloc>`: `Store::new` + `InstancePre::instantiate` of a WAT module with no
//!   imports, one no-op export and a memory as large as the guest's initial memory. (The
//!   guest itself imports WASI, so it cannot be the floor of a bare instantiation.)
//! * `floor/guest_wasm_<alloc>`: for information, `Store::new` + `InstancePre::instantiate`
//!   of the guest's own `.wasm` with every import defined as a trapping stub: the same
//!   memory, tables and data segments as a box, but no WASI context and no init.
//!
//! Run: `cargo bench -p wasmbox-host --bench new_box`.

mod common;

use common::{bench, report_abs, report_info, say, timed_with_setup};
use criterion::Criterion;
use std::hint::black_box;
use std::time::Duration;
use wasmbox_host::{ModuleOptions, WasmBoxHost, WasmBoxModule};
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store,
};

const SAMPLES: usize = 20;
/// Slots of the pooling allocator: the benchmark holds one box at a time.
const POOL: u32 = 16;

/// An engine like WasmBox's for the floors: fuel and epochs on, optionally pooling.
fn engine(pooling: bool) -> Engine {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(POOL)
            .total_memories(POOL)
            .total_tables(POOL);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).expect("engine")
}

/// Initial memory of the guest module, in pages.
fn initial_pages(engine: &Engine, wasm: &[u8]) -> u64 {
    let module = Module::new(engine, wasm).expect("guest module");
    module
        .exports()
        .find_map(|e| match e.ty() {
            ExternType::Memory(m) => Some(m.minimum()),
            _ => None,
        })
        .expect("the guest exports its memory")
}

fn new_box(c: &mut Criterion) {
    let wasm = common::guest_bytes("counter");
    let mut group = c.benchmark_group("new_box");
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    for (alloc, pooling, goal_ns) in [("default", false, 25_000.0), ("pooling", true, 10_000.0)] {
        // Floor: bare instantiation of a no-import WAT module with the guest's memory size.
        let engine = engine(pooling);
        let pages = initial_pages(&engine, &wasm);
        let wat = format!(r#"(module (memory (export "memory") {pages}) (func (export "noop")))"#);
        let floor_module = Module::new(&engine, &wat).expect("WAT module");
        let floor_pre: InstancePre<()> = Linker::new(&engine)
            .instantiate_pre(&floor_module)
            .expect("instantiate_pre");
        let floor = bench(
            &mut group,
            &format!("floor/wat_{alloc}"),
            SAMPLES,
            |iters| {
                timed_with_setup(
                    iters,
                    || (),
                    |()| {
                        let mut store = Store::new(&engine, ());
                        let instance = floor_pre.instantiate(&mut store).expect("instantiate");
                        (store, instance)
                    },
                )
            },
        );

        // For information: the guest's own .wasm, imports stubbed, no init.
        let guest_module = Module::new(&engine, &wasm).expect("guest module");
        let mut linker = Linker::new(&engine);
        linker
            .define_unknown_imports_as_traps(&guest_module)
            .expect("stub imports");
        let guest_pre: InstancePre<()> = linker.instantiate_pre(&guest_module).expect("pre");
        let guest_floor = bench(
            &mut group,
            &format!("floor/guest_wasm_{alloc}"),
            SAMPLES,
            |iters| {
                timed_with_setup(
                    iters,
                    || (),
                    |()| {
                        let mut store = Store::new(&engine, ());
                        let instance = guest_pre.instantiate(&mut store).expect("instantiate");
                        (store, instance)
                    },
                )
            },
        );

        // The box.
        let options = if pooling {
            ModuleOptions::default().pooling(POOL)
        } else {
            ModuleOptions::default()
        };
        let module = WasmBoxModule::from_bytes_with(&wasm, &options).expect("counter module");
        let op = bench(&mut group, &format!("new_box_{alloc}"), SAMPLES, |iters| {
            timed_with_setup(
                iters,
                || (),
                |()| WasmBoxHost::<String, String>::new(&module, |_: String| {}).expect("box"),
            )
        });
        report_abs(
            &format!("new_box/{alloc}"),
            op,
            floor,
            &format!("bare instantiate of a no-import WAT module, {pages} pages"),
            goal_ns,
        );
        report_info(
            &format!("new_box/{alloc} vs guest .wasm"),
            op,
            guest_floor,
            "bare instantiate of the guest .wasm, imports stubbed, no init",
        );

        // For information: dropping a box (not part of the goal).
        let drop_ns = bench(&mut group, &format!("drop_box_{alloc}"), SAMPLES, |iters| {
            timed_with_setup(
                iters,
                || WasmBoxHost::<String, String>::new(&module, |_: String| {}).expect("box"),
                |b| {
                    drop(black_box(b));
                },
            )
        });
        if let Some(d) = drop_ns {
            say(format!(
                "        drop_box_{alloc}: median {} (not part of the goal)",
                common::fmt_ns(d)
            ));
        }
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    new_box(&mut c);
    c.final_summary();
    common::print_summary("new_box");
}
