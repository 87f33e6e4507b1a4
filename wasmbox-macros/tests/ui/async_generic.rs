use wasmbox::prelude::*;

#[wasmbox]
async fn run<T>(ctx: WasmBoxContext<T, T>) {
    let _ = ctx;
}

fn main() {}
