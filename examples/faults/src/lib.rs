//! A guest that misbehaves on request, so that hosts can be tested against it. It keeps a
//! counter like the counter example (`up` replies `value=N`), and on the other messages it:
//! `panic` panics, `loop` never returns, `bomb` allocates until memory runs out,
//! `overflow` recurses without end, `divide` divides by zero, `exit` calls `process::exit`,
//! `flood` sends a 1 MiB output, `print` prints a line on its WASI stdout and sends `printed`.
use wasmbox::prelude::*;

#[wasmbox_sync]
struct Faults {
    count: u64,
    callback: Box<dyn Fn(String) + Send + Sync>,
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, sink: &mut [u64; 64]) -> u64 {
    sink[(depth % 64) as usize] = depth;
    recurse(std::hint::black_box(depth + 1), sink) + sink[3]
}

impl WasmBox for Faults {
    type Input = String;
    type Output = String;

    fn init(callback: Box<dyn Fn(String) + Send + Sync>) -> Self {
        Faults { count: 0, callback }
    }

    fn message(&mut self, input: String) {
        match input.as_str() {
            "up" => {
                self.count += 1;
                (self.callback)(format!("value={}", self.count));
            }
            "panic" => panic!("asked to panic at count {}", self.count),
            "loop" => {
                self.count += 1000;
                loop {
                    std::hint::black_box(&mut self.count);
                }
            }
            "bomb" => {
                self.count += 1000;
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "overflow" => {
                let mut sink = [0u64; 64];
                self.count += recurse(0, &mut sink);
            }
            "divide" => {
                let zero = std::hint::black_box(0u64);
                self.count += std::hint::black_box(10u64) / zero;
            }
            "exit" => std::process::exit(3),
            "flood" => (self.callback)("x".repeat(1 << 20)),
            "print" => {
                println!("printed by the guest on its stdout");
                (self.callback)("printed".into());
            }
            _ => {}
        }
    }
}
