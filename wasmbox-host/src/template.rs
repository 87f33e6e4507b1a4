//! Templates: a snapshot compiled into a module of its own, so that restoring it maps its
//! memory copy-on-write instead of copying it.
//!
//! The template module is the instrumented guest with three sections rewritten: the memory's
//! minimum size becomes the snapshot's size, each mutable global starts at its snapshot value,
//! and the data segments become the snapshot's non-zero memory chunks. wasmtime turns such a
//! module's data into a memory image that new instances map copy-on-write, so a restore costs
//! an instantiation, whatever the memory size.
//!
//! Segment indices are kept: each original active segment becomes an empty active segment at
//! the same index (it wrote its bytes at instantiation and was dropped; an empty one does the
//! same with nothing), each passive segment is kept as it was (the load-time pass refuses
//! `data.drop`, so it is still available in every instance), and the chunks are appended.

use crate::check;
use crate::error::Error;
use crate::module::WasmBoxModule;
use crate::sandbox::{BoxState, Clock};
use crate::snapshot::{Snapshot, SnapshotId, Value};
use rand_chacha::ChaCha20Rng;
use std::collections::HashMap;
use std::sync::Arc;
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    ConstExpr, DataCountSection, DataSection, GlobalSection, MemorySection, RawSection,
};
use wasmparser::{Parser, Payload};
use wasmtime::{InstancePre, Module};

/// A snapshot prepared for fast, repeated restores: see [`WasmBoxModule::prepare_template`].
/// Cloning is cheap. A template belongs to the [`WasmBoxModule`] value it was prepared from
/// (and its clones): boxes of another module object, even one loaded from the same bytes,
/// refuse it with [`Error::ForeignTemplate`].
#[derive(Clone)]
pub struct Template {
    pub(crate) inner: Arc<TemplateInner>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("module", &self.inner.base)
            .field("pages", &self.inner.pages)
            .finish_non_exhaustive()
    }
}

pub(crate) struct TemplateInner {
    /// The guest module the snapshot belongs to; only boxes of this module use the template.
    pub base: WasmBoxModule,
    pub pre: InstancePre<BoxState>,
    /// The memory size the template instantiates with, in pages.
    pub pages: u64,
    /// The blocks its memory image covers (the rest of its memory is zero).
    pub nonzero: crate::tracking::Blocks,
    pub clock: Clock,
    pub rng: ChaCha20Rng,
    /// The id of the snapshot it was prepared from, which its boxes start with.
    pub id: SnapshotId,
}

impl WasmBoxModule {
    /// Compiles `snapshot` into a template: every box restored from it
    /// ([`WasmBoxBuilder::from_template`](crate::WasmBoxBuilder::from_template),
    /// [`WasmBoxHost::restore_template`](crate::WasmBoxHost::restore_template)) maps the
    /// snapshot's memory copy-on-write, so a restore takes the same time at 1 MiB and at
    /// 256 MiB. Preparing costs a compilation of the module. Boxes restored from a template
    /// keep their own limits, like every restore.
    ///
    /// # Errors
    /// [`Error::Snapshot`] if the snapshot does not belong to this module or is inconsistent;
    /// [`Error::InvalidModule`] for a module loaded precompiled (its original bytes are gone).
    pub fn prepare_template(&self, snapshot: &Snapshot) -> Result<Template, Error> {
        let view = snapshot.view();
        check::check(self, None, &view)?;
        let wasm = self.inner.instrumented.as_deref().ok_or_else(|| {
            Error::InvalidModule(
                "templates need the module's bytes; load it from .wasm, not precompiled".into(),
            )
        })?;
        let bytes = rewrite(self, wasm, snapshot)?;
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
                pages: snapshot.memory.pages,
                nonzero: crate::tracking::Blocks::covering(
                    snapshot
                        .memory
                        .chunks
                        .iter()
                        .map(|c| c.offset..c.offset + c.bytes.len() as u64),
                ),
                clock: snapshot.clock,
                rng: snapshot.rng.clone(),
                id: snapshot.id,
            }),
        })
    }
}

/// The instrumented module with memory size, global initialisers and data replaced.
fn rewrite(module: &WasmBoxModule, wasm: &[u8], snapshot: &Snapshot) -> Result<Vec<u8>, Error> {
    let invalid =
        |e: &dyn std::fmt::Display| Error::InvalidModule(format!("cannot build the template: {e}"));
    let info = &module.inner.info;
    let values: HashMap<u32, Value> = snapshot
        .globals
        .iter()
        .map(|g| (g.index, g.value))
        .collect();
    let chunk_count = u32::try_from(snapshot.memory.chunks.len())
        .map_err(|_| invalid(&"too many memory chunks"))?;
    let mut rt = RoundtripReencoder;
    let mut out = wasm_encoder::Module::new();
    let mut wrote_data = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| invalid(&e))?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        match payload {
            Payload::MemorySection(section) => {
                let mut memories = MemorySection::new();
                for memory in section {
                    let mut ty = rt
                        .memory_type(memory.map_err(|e| invalid(&e))?)
                        .map_err(|e| invalid(&e))?;
                    ty.minimum = snapshot.memory.pages;
                    memories.memory(ty);
                }
                out.section(&memories);
            }
            Payload::GlobalSection(section) => {
                let mut globals = GlobalSection::new();
                for (global, index) in section.into_iter().zip(info.imported_globals..) {
                    let global = global.map_err(|e| invalid(&e))?;
                    let ty = rt.global_type(global.ty).map_err(|e| invalid(&e))?;
                    let init = match values.get(&index).filter(|_| global.ty.mutable) {
                        Some(Value::I32(v)) => ConstExpr::i32_const(*v),
                        Some(Value::I64(v)) => ConstExpr::i64_const(*v),
                        Some(Value::F32(v)) => ConstExpr::f32_const(wasm_encoder::Ieee32::new(*v)),
                        Some(Value::F64(v)) => ConstExpr::f64_const(wasm_encoder::Ieee64::new(*v)),
                        Some(Value::V128(v)) => ConstExpr::v128_const(*v as i128),
                        None => rt.const_expr(global.init_expr).map_err(|e| invalid(&e))?,
                    };
                    globals.global(ty, &init);
                }
                out.section(&globals);
            }
            Payload::DataCountSection { count, .. } => {
                out.section(&DataCountSection {
                    count: count + chunk_count,
                });
            }
            Payload::DataSection(section) => {
                let mut data = DataSection::new();
                for segment in section {
                    let segment = segment.map_err(|e| invalid(&e))?;
                    match segment.kind {
                        wasmparser::DataKind::Passive => {
                            data.passive(segment.data.iter().copied());
                        }
                        wasmparser::DataKind::Active { .. } => {
                            data.active(0, &ConstExpr::i32_const(0), []);
                        }
                    }
                }
                append_chunks(&mut data, snapshot);
                out.section(&data);
                wrote_data = true;
            }
            _ => {
                out.section(&RawSection {
                    id,
                    data: &wasm[range],
                });
            }
        }
    }
    if !wrote_data && chunk_count > 0 {
        let mut data = DataSection::new();
        append_chunks(&mut data, snapshot);
        out.section(&data);
    }
    Ok(out.finish())
}

fn append_chunks(data: &mut DataSection, snapshot: &Snapshot) {
    for chunk in &snapshot.memory.chunks {
        data.active(
            0,
            &ConstExpr::i32_const(chunk.offset as u32 as i32),
            chunk.bytes.iter().copied(),
        );
    }
}
