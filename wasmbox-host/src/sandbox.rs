//! The deterministic sandbox: the state a store carries, the box's own clock and random
//! generator, and the host functions a guest may import.
//!
//! A box sees WASI preview 1 with stdout and stderr passed through and nothing else: no files,
//! no environment, no arguments, no network, stdin closed. The four WASI calls through which
//! time and entropy would leak in (`clock_time_get`, `clock_res_get`, `random_get`,
//! `poll_oneoff`) are replaced by versions that read the box's own [`Clock`] and ChaCha
//! generator, which are part of every snapshot. A sleep advances the box's clock instead of
//! blocking the host thread.

use crate::error::Error;
use crate::limits::LimitKind;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng as _, SeedableRng};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use wasmbox::abi;
use wasmtime::{Caller, Linker, Memory, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;

/// The wall clock a new box starts at: 2020-01-01T00:00:00Z, in milliseconds since the epoch.
pub const DEFAULT_START_MILLIS: u64 = 1_577_836_800_000;
/// The random seed a box gets unless another is chosen.
pub const DEFAULT_SEED: u64 = 0x5741_534d_424f_5821;

const WASI: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const CLOCK_PROCESS_CPUTIME: u32 = 2;
const CLOCK_THREAD_CPUTIME: u32 = 3;
/// `poll_oneoff` subscriptions a guest may pass in one call.
const MAX_SUBSCRIPTIONS: u32 = 4096;

/// A box's clock. Only the host moves it (`set_time`) and guest sleeps advance it; it never
/// reads the real time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// Wall clock (`SystemTime::now()` in the guest), nanoseconds since the Unix epoch.
    pub wall_nanos: u64,
    /// Monotonic clock (`Instant::now()` in the guest), nanoseconds since the box was created.
    /// It never goes backwards.
    pub monotonic_nanos: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            wall_nanos: DEFAULT_START_MILLIS * 1_000_000,
            monotonic_nanos: 0,
        }
    }
}

impl Clock {
    /// A new box's clock: the wall clock at `millis` since the epoch, the monotonic clock at 0.
    pub fn starting_at(millis: u64) -> Clock {
        Clock {
            wall_nanos: millis.saturating_mul(1_000_000),
            monotonic_nanos: 0,
        }
    }

    /// Sets the wall clock to `millis` since the epoch. The monotonic clock moves forward by
    /// the same amount when that is forward, and stays where it is otherwise.
    pub fn set_millis(&mut self, millis: u64) {
        let wall = millis.saturating_mul(1_000_000);
        self.monotonic_nanos = self
            .monotonic_nanos
            .saturating_add(wall.saturating_sub(self.wall_nanos));
        self.wall_nanos = wall;
    }

    /// The wall clock in milliseconds since the epoch.
    pub fn millis(&self) -> u64 {
        self.wall_nanos / 1_000_000
    }

    /// Moves both clocks forward, as a sleep does.
    pub fn advance(&mut self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.wall_nanos = self.wall_nanos.saturating_add(nanos);
        self.monotonic_nanos = self.monotonic_nanos.saturating_add(nanos);
    }

    fn read(&self, id: u32) -> Option<u64> {
        match id {
            CLOCK_REALTIME => Some(self.wall_nanos),
            CLOCK_MONOTONIC | CLOCK_PROCESS_CPUTIME | CLOCK_THREAD_CPUTIME => {
                Some(self.monotonic_nanos)
            }
            _ => None,
        }
    }
}

/// What a store carries: the WASI context and everything the box's state adds to its memory.
pub(crate) struct BoxState {
    pub wasi: WasiP1Ctx,
    pub clock: Clock,
    pub rng: ChaCha20Rng,
    pub limiter: crate::limits::Limiter,
    /// The guest's memory, once the instance exists.
    pub memory: Option<Memory>,
    /// Encoded outputs sent during the current call, in order.
    pub outbox: Outbox,
    /// Largest output the guest may send, in bytes.
    pub max_output: u64,
    /// Set by the guest's panic hook before it traps.
    pub panic_message: Option<String>,
    /// Why the guest could not decode the current input, as it said.
    pub reject_reason: Option<String>,
    /// Set when a host function refuses what the guest asked and traps it.
    pub abi_violation: Option<Error>,
}

/// The encoded outputs of a call, in order, in one buffer: once it has grown, a call's
/// outputs cost no allocation.
#[derive(Default)]
pub(crate) struct Outbox {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Outbox {
    pub fn push(&mut self, output: &[u8]) {
        self.bytes.extend_from_slice(output);
        self.ends.push(self.bytes.len());
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// The outputs, in the order they were sent.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.bytes[s..e])
    }
}

impl BoxState {
    pub fn new(seed: u64, limits: &crate::Limits, stdout_to_stderr: bool) -> BoxState {
        BoxState {
            wasi: no_ambient_wasi(stdout_to_stderr),
            clock: Clock::default(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            limiter: crate::limits::Limiter {
                max_memory_bytes: limits.max_memory_bytes,
                hit: false,
            },
            memory: None,
            outbox: Outbox::default(),
            max_output: limits.max_message_bytes,
            panic_message: None,
            reject_reason: None,
            abi_violation: None,
        }
    }
    /// Turns a failed guest call into the most specific error, from what the call left here.
    pub fn classify(&mut self, e: wasmtime::Error) -> Error {
        if let Some(error) = self.abi_violation.take() {
            return error;
        }
        if self.limiter.hit {
            return Error::LimitExceeded {
                limit: LimitKind::Memory,
            };
        }
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Error::GuestExited(exit.0);
        }
        let trap = e.downcast_ref::<Trap>().copied();
        match trap {
            Some(Trap::OutOfFuel) => {
                return Error::LimitExceeded {
                    limit: LimitKind::Fuel,
                };
            }
            Some(Trap::Interrupt) => {
                return Error::LimitExceeded {
                    limit: LimitKind::Deadline,
                };
            }
            _ => {}
        }
        if let Some(message) = self.panic_message.take() {
            return Error::GuestPanicked { message };
        }
        let message = match trap {
            Some(Trap::StackOverflow) => "stack overflow".to_string(),
            Some(t) => format!("{t}"),
            None => format!("{e:#}"),
        };
        Error::GuestTrapped { trap, message }
    }
}

/// A WASI context with stdout (or, if asked, stdout sent to the host's stderr) and stderr
/// and nothing else. Its own clocks and generator are
/// frozen and seeded, though the calls that use them are replaced (see [`add_to_linker`]), so
/// that nothing real leaks in by any other path either.
fn no_ambient_wasi(stdout_to_stderr: bool) -> WasiP1Ctx {
    let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
    if stdout_to_stderr {
        builder.stdout(wasmtime_wasi::cli::stderr());
    } else {
        builder.inherit_stdout();
    }
    builder
        .inherit_stderr()
        .wall_clock(Frozen)
        .monotonic_clock(Frozen)
        .secure_random(ChaCha20Rng::seed_from_u64(DEFAULT_SEED))
        .insecure_random(ChaCha20Rng::seed_from_u64(DEFAULT_SEED))
        .insecure_random_seed(u128::from(DEFAULT_SEED))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build_p1()
}

/// A clock that always reads the default start time.
struct Frozen;

impl wasmtime_wasi::HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(DEFAULT_START_MILLIS)
    }
}

impl wasmtime_wasi::HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Adds WASI preview 1 (with the deterministic replacements) and the WasmBox imports.
pub(crate) fn add_to_linker(linker: &mut Linker<BoxState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |s: &mut BoxState| &mut s.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut caller: Caller<'_, BoxState>, id: i32, _precision: i64, out: i32| {
            let Some(now) = caller.data().clock.read(id as u32) else {
                return ERRNO_INVAL;
            };
            errno(write_guest(&mut caller, out as u32, &now.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_res_get",
        |mut caller: Caller<'_, BoxState>, id: i32, out: i32| {
            if caller.data().clock.read(id as u32).is_none() {
                return ERRNO_INVAL;
            }
            errno(write_guest(&mut caller, out as u32, &1u64.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut caller: Caller<'_, BoxState>, ptr: i32, len: i32| {
            let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
            let Some(memory) = caller.data().memory else {
                return ERRNO_FAULT;
            };
            let (data, state) = memory.data_and_store_mut(&mut caller);
            match data.get_mut(ptr..ptr.saturating_add(len)) {
                Some(buf) => {
                    state.rng.fill_bytes(buf);
                    ERRNO_SUCCESS
                }
                None => ERRNO_FAULT,
            }
        },
    )?;
    linker.func_wrap(WASI, "poll_oneoff", poll_oneoff)?;
    linker.allow_shadowing(false);

    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_SEND,
        |mut caller: Caller<'_, BoxState>, ptr: u32, len: u32| {
            let max = caller.data().max_output;
            if u64::from(len) > max {
                return Err(violation(
                    &mut caller,
                    Error::MessageTooLarge {
                        len: len.into(),
                        max,
                    },
                ));
            }
            let Some(memory) = caller.data().memory else {
                return Err(violation(
                    &mut caller,
                    Error::GuestAbi("send before the memory exists".into()),
                ));
            };
            let (data, state) = memory.data_and_store_mut(&mut caller);
            let (start, len) = (ptr as usize, len as usize);
            match data.get(start..start.saturating_add(len)) {
                Some(bytes) => {
                    state.outbox.push(bytes);
                    Ok(())
                }
                None => {
                    let e = Error::GuestAbi(format!(
                        "send({ptr:#x}, {len}) points outside the guest's memory"
                    ));
                    Err(violation(&mut caller, e))
                }
            }
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_PANIC,
        |mut caller: Caller<'_, BoxState>, ptr: u32, len: u32| {
            let text = read_text(&mut caller, ptr, len, "panic text");
            caller.data_mut().panic_message = Some(text);
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_REJECT,
        |mut caller: Caller<'_, BoxState>, ptr: u32, len: u32| {
            let text = read_text(&mut caller, ptr, len, "reason");
            caller.data_mut().reject_reason = Some(text);
        },
    )?;
    Ok(())
}

/// Records why the host refused a guest call; the returned error traps the guest.
fn violation(caller: &mut Caller<'_, BoxState>, error: Error) -> wasmtime::Error {
    let text = error.to_string();
    caller.data_mut().abi_violation = Some(error);
    wasmtime::Error::msg(text)
}

fn errno(ok: bool) -> i32 {
    if ok { ERRNO_SUCCESS } else { ERRNO_FAULT }
}

/// At most 64 KiB of the UTF-8 text (`what`) a guest hands over at `ptr..ptr+len`, lossily
/// decoded; a note in its place if it lies outside the guest's memory.
fn read_text(caller: &mut Caller<'_, BoxState>, ptr: u32, len: u32, what: &str) -> String {
    read_guest(caller, ptr, len.min(64 << 10))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| format!("(the {what} at {ptr:#x}+{len} is outside the guest's memory)"))
}

/// The guest bytes at `ptr..ptr+len`, or `None` if they are not all inside its memory.
fn read_guest<'a>(caller: &'a mut Caller<'_, BoxState>, ptr: u32, len: u32) -> Option<&'a [u8]> {
    let memory = caller.data().memory?;
    let (ptr, len) = (ptr as usize, len as usize);
    memory.data(caller).get(ptr..ptr.checked_add(len)?)
}

/// Writes `bytes` at `ptr` in guest memory; false if they do not fit.
fn write_guest(caller: &mut Caller<'_, BoxState>, ptr: u32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().memory else {
        return false;
    };
    let ptr = ptr as usize;
    match memory
        .data_mut(caller)
        .get_mut(ptr..ptr.saturating_add(bytes.len()))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// WASI `poll_oneoff` against the box's clock: the earliest clock subscription fires at once
/// and the clock advances to it. File descriptor subscriptions are answered at once (stdout
/// and stderr are always writable; anything else is a bad descriptor), without advancing time.
fn poll_oneoff(
    mut caller: Caller<'_, BoxState>,
    subs: i32,
    events: i32,
    nsubs: i32,
    nevents: i32,
) -> i32 {
    const SUB_SIZE: usize = 48;
    const EVENT_SIZE: usize = 32;
    let nsubs = nsubs as u32;
    if nsubs == 0 || nsubs > MAX_SUBSCRIPTIONS {
        return ERRNO_INVAL;
    }
    let Some(memory) = caller.data().memory else {
        return ERRNO_FAULT;
    };
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let (subs, events, n) = (subs as u32 as usize, events as u32 as usize, nsubs as usize);
    let Some(sub_bytes) = data.get(subs..subs + n * SUB_SIZE) else {
        return ERRNO_FAULT;
    };
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());

    // (userdata, type, errno) of each event to report.
    let mut fired: Vec<(u64, u8, u16)> = Vec::new();
    let mut clocks: Vec<(u64, u64)> = Vec::new(); // (userdata, nanoseconds from now)
    for sub in sub_bytes.chunks_exact(SUB_SIZE) {
        let userdata = u64_at(sub, 0);
        match sub[8] {
            0 => {
                let (id, timeout, flags) = (
                    u32_at(sub, 16),
                    u64_at(sub, 24),
                    u16::from_le_bytes([sub[40], sub[41]]),
                );
                match state.clock.read(id) {
                    Some(now) if flags & 1 == 1 => {
                        clocks.push((userdata, timeout.saturating_sub(now)))
                    }
                    Some(_) => clocks.push((userdata, timeout)),
                    None => fired.push((userdata, 0, ERRNO_INVAL as u16)),
                }
            }
            kind @ (1 | 2) => {
                let fd = u32_at(sub, 16);
                let ok = kind == 2 && (fd == 1 || fd == 2);
                fired.push((userdata, kind, if ok { 0 } else { ERRNO_BADF as u16 }));
            }
            _ => return ERRNO_INVAL,
        }
    }
    if fired.is_empty()
        && let Some(wait) = clocks.iter().map(|&(_, wait)| wait).min()
    {
        state.clock.advance(Duration::from_nanos(wait));
        fired.extend(
            clocks
                .iter()
                .filter(|&&(_, w)| w <= wait)
                .map(|&(userdata, _)| (userdata, 0, 0)),
        );
    }
    let Some(out) = data.get_mut(events..events + fired.len() * EVENT_SIZE) else {
        return ERRNO_FAULT;
    };
    for (event, &(userdata, kind, err)) in out.chunks_exact_mut(EVENT_SIZE).zip(&fired) {
        event.fill(0);
        event[0..8].copy_from_slice(&userdata.to_le_bytes());
        event[8..10].copy_from_slice(&err.to_le_bytes());
        event[10] = kind;
    }
    let count = (fired.len() as u32).to_le_bytes();
    let nevents = nevents as u32 as usize;
    match data.get_mut(nevents..nevents + 4) {
        Some(dst) => {
            dst.copy_from_slice(&count);
            ERRNO_SUCCESS
        }
        None => ERRNO_FAULT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_never_goes_back() {
        let mut clock = Clock::default();
        clock.set_millis(DEFAULT_START_MILLIS + 1_000);
        assert_eq!(clock.monotonic_nanos, 1_000_000_000);
        clock.set_millis(DEFAULT_START_MILLIS - 50_000);
        assert_eq!(clock.millis(), DEFAULT_START_MILLIS - 50_000);
        assert_eq!(clock.monotonic_nanos, 1_000_000_000);
        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.monotonic_nanos, 1_005_000_000);
        assert_eq!(clock.millis(), DEFAULT_START_MILLIS - 49_995);
    }
}
