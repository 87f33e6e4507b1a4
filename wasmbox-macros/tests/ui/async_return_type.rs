use wasmbox::prelude::*;

#[wasmbox]
async fn run(ctx: WasmBoxContext<String, String>) -> u32 {
    let _ = ctx;
    0
}

fn main() {}
