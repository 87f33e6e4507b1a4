//! A compiled, instrumented guest module that any number of boxes can share.

use crate::error::Error;
use crate::instrument::{self, ModuleInfo};
use crate::limits::EPOCH_TICK;
use crate::sandbox::{self, BoxState};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use wasmbox::abi;
use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, ValType};

/// Magic bytes that start a precompiled module file made by [`WasmBoxModule::precompile`].
pub const PRECOMPILED_MAGIC: [u8; 8] = *b"WBOXCWSM";

/// A guest module compiled and instrumented once, shared by every box made from it.
///
/// Cloning is cheap (a reference count). Boxes are created from it with
/// [`WasmBoxHost::builder`](crate::WasmBoxHost::builder) or [`WasmBoxHost::new`](crate::WasmBoxHost::new).
#[derive(Clone)]
pub struct WasmBoxModule {
    pub(crate) inner: Arc<ModuleInner>,
}

impl std::fmt::Debug for WasmBoxModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBoxModule")
            .field("fingerprint", &self.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

pub(crate) struct ModuleInner {
    pub engine: Engine,
    pub module: Module,
    pub pre: InstancePre<BoxState>,
    pub info: ModuleInfo,
    pub fingerprint: [u8; 32],
    /// The instrumented module bytes (not kept for precompiled modules), for templates.
    pub instrumented: Option<Arc<[u8]>>,
    /// The linker with the sandbox's imports, for templates.
    pub linker: Linker<BoxState>,
    /// Stops the epoch ticker thread when the module is dropped.
    ticker_stop: Arc<AtomicBool>,
    /// The codecs the guest speaks (`EXPORT_CODECS`), learnt from its first instance once its
    /// ABI version was checked: constants of the module, not asked again for every instance.
    pub guest_codecs: OnceLock<u32>,
}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes of each pooled memory slot kept resident between boxes: a typical Rust guest's
/// stack, data and first heap pages.
const POOL_KEEP_RESIDENT: usize = 2 << 20;

/// How modules are compiled and instances allocated.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ModuleOptions {
    /// Use wasmtime's pooling instance allocator with room for this many boxes at once:
    /// creating a box is then several times faster, at the cost of reserving virtual memory
    /// up front. `None` (the default) allocates each instance on demand.
    pub pooling: Option<u32>,
}

impl ModuleOptions {
    /// Use the pooling allocator with room for `boxes` boxes at once.
    pub fn pooling(mut self, boxes: u32) -> Self {
        self.pooling = Some(boxes);
        self
    }
}

impl WasmBoxModule {
    /// Compiles a `.wasm` file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::InvalidModule`] or
    /// [`Error::NotAGuest`] if it is not a WasmBox guest.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::from_bytes(&read(path.as_ref())?)
    }

    /// Compiles the bytes of a `.wasm` module.
    ///
    /// # Errors
    /// As [`WasmBoxModule::from_file`].
    pub fn from_bytes(wasm: &[u8]) -> Result<Self, Error> {
        Self::from_bytes_with(wasm, &ModuleOptions::default())
    }

    /// Compiles the bytes of a `.wasm` module with options.
    ///
    /// # Errors
    /// As [`WasmBoxModule::from_file`].
    pub fn from_bytes_with(wasm: &[u8], options: &ModuleOptions) -> Result<Self, Error> {
        if wasm.starts_with(&PRECOMPILED_MAGIC) {
            return Err(Error::InvalidModule(
                "this is a precompiled module; load it with WasmBoxModule::from_compiled_file"
                    .into(),
            ));
        }
        let fingerprint = Self::fingerprint_of(wasm);
        let (instrumented, info) = instrument::instrument(wasm)?;
        let engine = engine(options)?;
        let module = Module::new(&engine, &instrumented)
            .map_err(|e| Error::InvalidModule(format!("{e:#}")))?;
        Self::finish(engine, module, info, fingerprint, Some(instrumented.into()))
    }

    /// Compiles the module ahead of time into a file that [`WasmBoxModule::from_compiled_file`]
    /// loads in a fraction of the time.
    ///
    /// # Errors
    /// As [`WasmBoxModule::from_file`], or [`Error::Wasmtime`] if serialising fails.
    pub fn precompile(wasm: &[u8]) -> Result<Vec<u8>, Error> {
        let module = Self::from_bytes(wasm)?;
        let compiled = module
            .inner
            .module
            .serialize()
            .map_err(|e| Error::Wasmtime(format!("{e:#}")))?;
        let info =
            wasmbox::abi::encode(&module.inner.info).map_err(|e| Error::Wasmtime(e.to_string()))?;
        let mut out =
            Vec::with_capacity(PRECOMPILED_MAGIC.len() + 36 + info.len() + compiled.len());
        out.extend_from_slice(&PRECOMPILED_MAGIC);
        out.extend_from_slice(&module.inner.fingerprint);
        out.extend_from_slice(&(info.len() as u32).to_le_bytes());
        out.extend_from_slice(&info);
        out.extend_from_slice(&compiled);
        Ok(out)
    }

    /// Precompiles `wasm` (as [`WasmBoxModule::precompile`]) into the file at `path`, written
    /// atomically: afterwards it holds either its old content or the whole new module.
    ///
    /// # Errors
    /// As [`WasmBoxModule::precompile`], or [`Error::Io`] if the file cannot be written.
    pub fn precompile_to_file(wasm: &[u8], path: impl AsRef<Path>) -> Result<u64, Error> {
        let compiled = Self::precompile(wasm)?;
        crate::file::write_atomically(path.as_ref(), |file| {
            std::io::Write::write_all(file, &compiled)
        })?;
        Ok(compiled.len() as u64)
    }

    /// Loads a module precompiled by [`WasmBoxModule::precompile`].
    ///
    /// # Safety
    /// The file's machine code is run without being checked. The caller must guarantee that
    /// the file was written by [`WasmBoxModule::precompile`] (or `wasmbox-cli compile`) of
    /// this same version of `wasmbox-host`, and has not been modified since; a file from
    /// anyone else, or altered, can execute arbitrary code in the host process. wasmtime
    /// refuses files from other wasmtime versions or configurations, but cannot detect a
    /// crafted one.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::InvalidModule`] if it is not a
    /// precompiled WasmBox module or was made by an incompatible build.
    pub unsafe fn from_compiled_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let bytes = read(path.as_ref())?;
        let not_compiled =
            || Error::InvalidModule("not a precompiled WasmBox module (wrong magic bytes)".into());
        let rest = bytes
            .strip_prefix(&PRECOMPILED_MAGIC)
            .ok_or_else(not_compiled)?;
        let (fingerprint, rest) = rest.split_first_chunk::<32>().ok_or_else(not_compiled)?;
        let (info_len, rest) = rest.split_first_chunk::<4>().ok_or_else(not_compiled)?;
        let (info, compiled) = rest
            .split_at_checked(u32::from_le_bytes(*info_len) as usize)
            .ok_or_else(not_compiled)?;
        let info: ModuleInfo = wasmbox::abi::decode(info).map_err(|_| not_compiled())?;
        let engine = engine(&ModuleOptions::default())?;
        // SAFETY: the caller guarantees that `compiled` was produced by `Module::serialize` of
        // this build (see `# Safety` above); wasmtime checks version and configuration.
        let module = unsafe { Module::deserialize(&engine, compiled) }.map_err(|e| {
            Error::InvalidModule(format!("the precompiled module cannot be loaded: {e:#}"))
        })?;
        Self::finish(engine, module, info, *fingerprint, None)
    }

    fn finish(
        engine: Engine,
        module: Module,
        info: ModuleInfo,
        fingerprint: [u8; 32],
        instrumented: Option<Arc<[u8]>>,
    ) -> Result<Self, Error> {
        check_exports(&module)?;
        let mut linker = Linker::new(&engine);
        sandbox::add_to_linker(&mut linker).map_err(|e| Error::Wasmtime(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| Error::NotAGuest(format!("{e:#}")))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        start_ticker(engine.clone(), Arc::clone(&ticker_stop));
        Ok(WasmBoxModule {
            inner: Arc::new(ModuleInner {
                engine,
                module,
                pre,
                info,
                fingerprint,
                instrumented,
                linker,
                ticker_stop,
                guest_codecs: OnceLock::new(),
            }),
        })
    }

    /// The BLAKE3 hash of the original module bytes, which snapshots record.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.inner.fingerprint
    }

    /// The fingerprint a module made from the `.wasm` bytes `wasm` has (their BLAKE3 hash),
    /// without compiling them: what a snapshot of such a module records.
    pub fn fingerprint_of(wasm: &[u8]) -> [u8; 32] {
        *blake3::hash(wasm).as_bytes()
    }

    /// [`WasmBoxModule::fingerprint`] in hex.
    pub fn fingerprint_hex(&self) -> String {
        crate::snapshot::hex(&self.inner.fingerprint)
    }

    /// Whether `self` and `other` are the same module value (clones of one load), not merely
    /// loaded from the same bytes.
    pub(crate) fn is(&self, other: &WasmBoxModule) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    crate::file::read_file(path)
}

fn engine(options: &ModuleOptions) -> Result<Engine, Error> {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    if let Some(count) = options.pooling {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(count)
            .total_memories(count)
            .total_tables(count)
            // Reuse a slot's first pages and table as they are (zeroed with memset) instead
            // of handing them back to the kernel and faulting them in again for the next box.
            .linear_memory_keep_resident(POOL_KEEP_RESIDENT)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|e| Error::Wasmtime(format!("{e:#}")))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until `stop` is set.
fn start_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("wasmbox-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
    // Without the thread deadlines are not enforced, but boxes still work; a process that
    // cannot spawn a thread has bigger problems, which it will report itself.
    drop(spawned);
}

/// Checks that the module has every WasmBox export with the right signature.
fn check_exports(module: &Module) -> Result<(), Error> {
    use ValType::I32;
    let expected: [(&str, &[ValType], &[ValType]); 5] = [
        (abi::EXPORT_ABI_VERSION, &[], &[I32]),
        (abi::EXPORT_CODECS, &[], &[I32]),
        (abi::EXPORT_INIT, &[I32], &[I32]),
        (abi::EXPORT_INPUT_BUFFER, &[I32], &[I32]),
        (abi::EXPORT_MESSAGE, &[I32, I32], &[I32]),
    ];
    for (name, params, results) in expected {
        // Past the version export, a missing or mistyped export is most likely a guest built
        // against another version of the `wasmbox` crate.
        let hint = if name == abi::EXPORT_ABI_VERSION {
            String::new()
        } else {
            format!(
                " (a guest built against another version of the `wasmbox` crate? This host speaks WasmBox ABI version {})",
                abi::ABI_VERSION
            )
        };
        let Some(ExternType::Func(ty)) = module.get_export(name) else {
            return Err(Error::NotAGuest(format!(
                "the module has no function export `{name}`: is it built with the `wasmbox` crate and a #[wasmbox] or #[wasmbox_sync] item?{hint}"
            )));
        };
        let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
            a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
        };
        if !same(&mut ty.params(), params) || !same(&mut ty.results(), results) {
            return Err(Error::NotAGuest(format!(
                "the export `{name}` has the wrong signature: {ty}{hint}"
            )));
        }
    }
    Ok(())
}
