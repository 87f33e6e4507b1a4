//! The relay: how a message reaches the guest and its outputs reach the callback — guest calls
//! under the box's limits, failures turned into errors (poisoning the box or rolling it back),
//! and outputs decoded in order.

use crate::WasmBoxHost;
use crate::error::Error;
use crate::limits::Limits;
use crate::live::Live;
use crate::restore::Source;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmbox::abi::{self, Codec, Status};

impl<In, Out: DeserializeOwned> WasmBoxHost<In, Out> {
    /// Sends the encoded input in `self.scratch` to the guest and delivers its outputs.
    pub(crate) fn relay_message(&mut self) -> Result<(), Error> {
        let len = self.scratch.len() as u64;
        let max = self.options.limits.max_message_bytes;
        if len > max || len > u64::from(u32::MAX) {
            return Err(Error::MessageTooLarge { len, max });
        }
        self.live.arm_tracking()?;
        if self.options.rollback_on_trap {
            self.undo.before(&mut self.live, &self.module)?;
        }
        let scratch = std::mem::take(&mut self.scratch);
        // The message is part of the state's history whatever it does (a failure that is
        // rolled back puts the id back too).
        let kind: &[u8] = match self.options.codec {
            Codec::Bincode => b"message bincode",
            Codec::Json => b"message json",
        };
        self.live.id = self.live.id.next(kind, &scratch);
        let status = self.guest_call(|live| live.send_input(&scratch));
        self.scratch = scratch;
        match Status::from_code(status?) {
            Some(Status::Ok) => self.deliver_outputs(),
            Some(Status::InputDecode) => Err(Error::InputRejected {
                reason: self
                    .live
                    .store
                    .data_mut()
                    .reject_reason
                    .take()
                    .unwrap_or_default(),
            }),
            Some(Status::CodecUnsupported) => Err(Error::CodecUnsupported {
                codec: self.options.codec,
            }),
            Some(Status::Finished) => {
                // What the guest sent before its `run` returned still reaches the callback.
                self.deliver_outputs()?;
                Err(Error::GuestFinished)
            }
            Some(Status::NotInitialised) => Err(Error::GuestAbi(
                "the guest says it was never initialised".into(),
            )),
            None => Err(Error::GuestAbi(
                "the message export returned an unknown status code".into(),
            )),
        }
    }

    /// Runs a guest call under the box's limits and turns a failure into an error, poisoning
    /// the box, or rolling it back to the state kept before the message.
    pub(crate) fn guest_call<R>(
        &mut self,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        let limits = self.options.limits;
        let live = &mut self.live;
        // Fuel is always on in the engine; "no limit" is all the fuel there is.
        let _ = live
            .store
            .set_fuel(limits.fuel_per_message.unwrap_or(u64::MAX));
        // A replay (`durable`) gets ten times the deadline: a message that once succeeded must
        // not fail on a slower moment, while one that loops still ends.
        let deadline = if self.replaying {
            Limits {
                deadline_per_message: limits.deadline_per_message.map(|d| d.saturating_mul(10)),
                ..limits
            }
            .deadline_ticks()
        } else {
            limits.deadline_ticks()
        };
        live.store.set_epoch_deadline(deadline);
        let state = live.store.data_mut();
        state.outbox.clear();
        state.panic_message = None;
        state.reject_reason = None;
        state.abi_violation = None;
        state.limiter.hit = false;
        state.max_output = limits.max_message_bytes;
        match f(live) {
            Ok(r) => {
                if self.undo.in_message()
                    && let Err(e) = self.undo.succeeded(&mut self.live)
                {
                    self.poisoned = Some(format!("keeping the rollback copy failed: {e}"));
                    return Err(e);
                }
                Ok(r)
            }
            Err(e) => {
                let error = live.store.data_mut().classify(e);
                live.forget_input_buffer();
                live.store.data_mut().outbox.clear();
                if self.undo.in_message() {
                    if let Err(restore_error) = self.roll_back() {
                        self.poisoned =
                            Some(format!("{error}; rolling back failed: {restore_error}"));
                    }
                } else {
                    self.poisoned = Some(error.to_string());
                }
                Err(error)
            }
        }
    }

    /// Undoes the failed message (see `rollback.rs`): in place, or by restoring the state
    /// before it into a fresh instance when it grew the memory. Either way the box keeps the
    /// baseline of its next delta and the record of what changed since.
    fn roll_back(&mut self) -> Result<(), Error> {
        let mut undo = std::mem::take(&mut self.undo);
        let result = match undo.failed(&mut self.live, &self.module, &self.options.limits) {
            Ok(None) => Ok(()),
            Ok(Some(view)) => {
                let changed = std::mem::take(&mut self.live.changed);
                let baseline = self.live.baseline;
                let replaced = self.replace_live(Source::Snapshot(&view));
                self.live.changed = changed;
                self.live.baseline = baseline;
                replaced
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            undo.invalidate();
        }
        self.undo = undo;
        result
    }

    /// Decodes the outputs of the last guest call and hands them to the callback in order.
    pub(crate) fn deliver_outputs(&mut self) -> Result<(), Error> {
        let mut outbox = std::mem::take(&mut self.live.store.data_mut().outbox);
        let mut result = Ok(());
        for bytes in outbox.iter() {
            match decode::<Out>(self.options.codec, bytes) {
                Ok(output) => (self.callback)(output),
                Err(e) => {
                    result = Err(Error::OutputDecode(e));
                    break;
                }
            }
        }
        // Give the allocation back for the next call.
        outbox.clear();
        self.live.store.data_mut().outbox = outbox;
        result
    }
}

/// Encodes an input with `codec` into `buf` (cleared first).
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), Error> {
    match codec {
        Codec::Bincode => {
            abi::encode_into(value, buf).map_err(|e| Error::InputEncode(e.to_string()))
        }
        Codec::Json => {
            buf.clear();
            serde_json::to_writer(buf, value).map_err(|e| Error::InputEncode(e.to_string()))
        }
    }
}

/// Decodes an output with `codec`; never allocates more than `bytes` can justify.
fn decode<T: DeserializeOwned>(codec: Codec, bytes: &[u8]) -> Result<T, String> {
    match codec {
        Codec::Bincode => abi::decode(bytes).map_err(|e| e.to_string()),
        Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}
