use wasmbox::prelude::*;

#[wasmbox]
fn run(ctx: WasmBoxContext<String, String>) {
    let _ = ctx;
}

fn main() {}
