use wasmbox::prelude::*;

#[wasmbox(foo)]
async fn run(ctx: WasmBoxContext<String, String>) {
    let _ = ctx;
}

fn main() {}
