use wasmbox::prelude::*;

#[wasmbox_sync]
struct Echo<T> {
    callback: Box<dyn Fn(T) + Send + Sync>,
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> WasmBox for Echo<T> {
    type Input = T;
    type Output = T;
    fn init(callback: Box<dyn Fn(Self::Output) + Send + Sync>) -> Self
    where
        Self: Sized,
    {
        Echo { callback }
    }
    fn message(&mut self, input: Self::Input) {
        (self.callback)(input);
    }
}

fn main() {}
