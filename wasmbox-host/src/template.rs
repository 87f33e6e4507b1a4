//! Templates: a snapshot compiled into a module of its own, so that restoring it maps its
//! memory copy-on-write instead of copying it.
//!
//! The template module is the instrumented guest with three sections rewritten: the memory's
//! minimum size becomes the snapshot's size, each mutable global starts at its snapshot value,
//! and the active data segments are replaced by the snapshot's non-zero memory chunks. wasmtime
//! turns such a module's data into a memory image that new instances map copy-on-write, so a
//! restore costs an instantiation, whatever the memory size.

use crate::error::Error;
use crate::limits::Limits;
use crate::module::WasmBoxModule;
use crate::sandbox::{BoxState, Clock};
use crate::snapshot::{Snapshot, Value};
use rand_chacha::ChaCha20Rng;
use std::collections::HashMap;
use std::sync::Arc;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{ConstExpr, DataSection, GlobalSection, MemorySection, RawSection};
use wasmparser::{Parser, Payload};
use wasmtime::{InstancePre, Module};

/// A snapshot prepared for fast, repeated restores: see [`WasmBoxModule::prepare_template`].
/// Cloning is cheap.
#[derive(Clone)]
pub struct Template {
    pub(crate) inner: Arc<TemplateInner>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("module", &self.inner.base)
            .finish_non_exhaustive()
    }
}

pub(crate) struct TemplateInner {
    /// The guest module the snapshot belongs to; boxes made from the template run it.
    pub base: WasmBoxModule,
    pub pre: InstancePre<BoxState>,
    pub clock: Clock,
    pub rng: ChaCha20Rng,
    pub limits: Limits,
}

impl WasmBoxModule {
    /// Compiles `snapshot` into a template: every box restored from it
    /// ([`WasmBoxBuilder::from_template`](crate::WasmBoxBuilder::from_template),
    /// [`WasmBoxHost::restore_template`](crate::WasmBoxHost::restore_template)) maps the
    /// snapshot's memory copy-on-write, so a restore takes the same time at 1 MiB and at
    /// 256 MiB. Preparing costs a compilation of the module.
    ///
    /// # Errors
    /// [`Error::Snapshot`] if the snapshot does not belong to this module or is inconsistent;
    /// [`Error::InvalidModule`] for a module loaded precompiled (its original bytes are gone).
    pub fn prepare_template(&self, snapshot: &Snapshot) -> Result<Template, Error> {
        crate::check_snapshot(self, &Limits::unlimited(), &snapshot.view())?;
        let wasm = self.inner.instrumented.as_deref().ok_or_else(|| {
            Error::InvalidModule(
                "templates need the module's bytes; load it from .wasm, not precompiled".into(),
            )
        })?;
        let bytes = rewrite(wasm, snapshot)?;
        let module = Module::new(&self.inner.engine, &bytes)
            .map_err(|e| Error::Wasmtime(format!("{e:#}")))?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Wasmtime(format!("{e:#}")))?;
        Ok(Template {
            inner: Arc::new(TemplateInner {
                base: self.clone(),
                pre,
                clock: snapshot.clock,
                rng: snapshot.rng.clone(),
                limits: snapshot.limits,
            }),
        })
    }
}

/// The instrumented module with memory size, global initialisers and data replaced.
fn rewrite(wasm: &[u8], snapshot: &Snapshot) -> Result<Vec<u8>, Error> {
    let invalid =
        |e: &dyn std::fmt::Display| Error::InvalidModule(format!("cannot build the template: {e}"));
    let values: HashMap<u32, Value> = snapshot
        .globals
        .iter()
        .map(|g| (g.index, g.value))
        .collect();
    let mut rt = RoundtripReencoder;
    let mut out = wasm_encoder::Module::new();
    let mut wrote_data = false;
    let chunk_count = snapshot.memory.chunks.len() as u32;
    let mut passive_count = 0u32;
    // Count passive segments first: the data-count section precedes the data section.
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::DataSection(section) = payload.map_err(|e| invalid(&e))? {
            for data in section {
                if matches!(
                    data.map_err(|e| invalid(&e))?.kind,
                    wasmparser::DataKind::Passive
                ) {
                    passive_count += 1;
                }
            }
        }
    }
    // Index of the next global defined by the global section: after the imported ones.
    let mut global_index = 0u32;
    let mut imported = 0u32;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| invalid(&e))?;
        match &payload {
            Payload::ImportSection(section) => {
                for import in section.clone().into_imports() {
                    if matches!(
                        import.map_err(|e| invalid(&e))?.ty,
                        wasmparser::TypeRef::Global(_)
                    ) {
                        imported += 1;
                    }
                }
                global_index = imported;
            }
            Payload::MemorySection(section) => {
                let mut memories = MemorySection::new();
                for memory in section.clone() {
                    let mut ty = rt
                        .memory_type(memory.map_err(|e| invalid(&e))?)
                        .map_err(|e| invalid(&e))?;
                    ty.minimum = snapshot.memory.pages;
                    memories.memory(ty);
                }
                out.section(&memories);
                continue;
            }
            Payload::GlobalSection(section) => {
                let mut globals = GlobalSection::new();
                for global in section.clone() {
                    let global = global.map_err(|e| invalid(&e))?;
                    let ty = rt.global_type(global.ty).map_err(|e| invalid(&e))?;
                    let init = match values.get(&global_index).filter(|_| global.ty.mutable) {
                        Some(Value::I32(v)) => ConstExpr::i32_const(*v),
                        Some(Value::I64(v)) => ConstExpr::i64_const(*v),
                        Some(Value::F32(v)) => ConstExpr::f32_const(wasm_encoder::Ieee32::new(*v)),
                        Some(Value::F64(v)) => ConstExpr::f64_const(wasm_encoder::Ieee64::new(*v)),
                        Some(Value::V128(v)) => ConstExpr::v128_const(*v as i128),
                        None => rt.const_expr(global.init_expr).map_err(|e| invalid(&e))?,
                    };
                    globals.global(ty, &init);
                    global_index += 1;
                }
                out.section(&globals);
                continue;
            }
            Payload::DataCountSection { .. } => {
                out.section(&wasm_encoder::DataCountSection {
                    count: passive_count + chunk_count,
                });
                continue;
            }
            Payload::DataSection(section) => {
                out.section(
                    &data_section(section.clone(), snapshot, &mut rt).map_err(|e| invalid(&e))?,
                );
                wrote_data = true;
                continue;
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            out.section(&RawSection {
                id,
                data: &wasm[range],
            });
        }
    }
    if !wrote_data && chunk_count > 0 {
        let empty = wasmparser::DataSectionReader::new(wasmparser::BinaryReader::new(&[0], 0))
            .map_err(|e| invalid(&e))?;
        out.section(&data_section(empty, snapshot, &mut rt).map_err(|e| invalid(&e))?);
    }
    Ok(out.finish())
}

/// Passive segments as they were (in their order, so `memory.init` indices hold), then the
/// snapshot's chunks as active segments. Active segments are appended after passive ones, so
/// passive segment indices are unchanged only if the module had no active segments before
/// them; Rust guests have no passive segments at all.
fn data_section(
    section: wasmparser::DataSectionReader<'_>,
    snapshot: &Snapshot,
    rt: &mut RoundtripReencoder,
) -> Result<DataSection, wasm_encoder::reencode::Error> {
    let mut data = DataSection::new();
    for segment in section {
        let segment = segment?;
        if matches!(segment.kind, wasmparser::DataKind::Passive) {
            rt.parse_data(&mut data, segment)?;
        }
    }
    for chunk in &snapshot.memory.chunks {
        data.active(
            0,
            &ConstExpr::i32_const(chunk.offset as u32 as i32),
            chunk.bytes.iter().copied(),
        );
    }
    Ok(data)
}
