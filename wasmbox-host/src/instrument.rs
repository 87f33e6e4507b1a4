//! Load-time pass: check that a module can be a WasmBox guest and rewrite it so that the host
//! can reach its whole state.
//!
//! wasmtime offers no production API to read or write a global the module does not export
//! (such as `__stack_pointer`), so, as Wizer does, the module is re-encoded with one extra
//! export per defined global (`__wasmbox_global_{index}`) and, if it has none, an export of its
//! memory. Nothing else changes: the functions, data and indices stay as they were.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use wasm_encoder::reencode::{self, Reencode};
use wasmbox::abi;
use wasmparser::{ExternalKind, Parser, Payload, TypeRef, ValType};

/// What the host needs to know about a module, found while instrumenting it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ModuleInfo {
    /// Every mutable global the module defines, with the export name that reaches it.
    pub mutable_globals: Vec<GlobalInfo>,
    /// The name under which the (single) memory is exported.
    pub memory_export: String,
    /// Pages (64 KiB) the memory has at instantiation.
    pub initial_pages: u64,
    /// The memory's declared maximum, in pages, if any.
    pub maximum_pages: Option<u64>,
    /// Byte ranges written by active data segments at instantiation, merged and sorted.
    pub data_ranges: Vec<Range<u64>>,
}

/// One mutable global.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GlobalInfo {
    /// Index in the module's global index space.
    pub index: u32,
    /// Its value type.
    pub ty: ValKind,
    /// The export name added for it.
    pub export: String,
}

/// Checks `wasm` and returns the instrumented module bytes and what was learnt.
pub(crate) fn instrument(wasm: &[u8]) -> Result<(Vec<u8>, ModuleInfo), Error> {
    let invalid = |e: wasmparser::BinaryReaderError| Error::InvalidModule(e.to_string());
    let mut imported_globals = 0u32;
    let mut globals = Vec::new();
    let mut memories = Vec::new();
    let mut exports = Vec::new();
    let mut data_ranges = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } => {
                return Err(Error::NotAGuest(
                    "this is a WebAssembly component; WasmBox runs core modules built for wasm32-wasip1".into(),
                ));
            }
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let import = import.map_err(invalid)?;
                    match import.ty {
                        TypeRef::Global(_) => imported_globals += 1,
                        TypeRef::Memory(_) => {
                            return Err(Error::NotAGuest(format!(
                                "the module imports its memory ({}::{}); a guest must define its own",
                                import.module, import.name
                            )));
                        }
                        TypeRef::Table(_) => {
                            return Err(Error::NotAGuest(format!(
                                "the module imports a table ({}::{}), whose contents a snapshot could not hold",
                                import.module, import.name
                            )));
                        }
                        _ => {}
                    }
                }
            }
            Payload::GlobalSection(section) => {
                for global in section {
                    globals.push(global.map_err(invalid)?.ty);
                }
            }
            Payload::MemorySection(section) => {
                for memory in section {
                    memories.push(memory.map_err(invalid)?);
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export.map_err(invalid)?;
                    exports.push((export.name.to_string(), export.kind, export.index));
                }
            }
            Payload::DataSection(section) => {
                for data in section {
                    let data = data.map_err(invalid)?;
                    if let wasmparser::DataKind::Active { offset_expr, .. } = data.kind {
                        let start = const_offset(&offset_expr).ok_or_else(|| {
                            Error::NotAGuest(
                                "a data segment's offset is not a constant; only constant offsets are supported"
                                    .into(),
                            )
                        })?;
                        data_ranges.push(start..start + data.data.len() as u64);
                    }
                }
            }
            _ => {}
        }
    }
    let memory = match memories.as_slice() {
        [memory] => *memory,
        [] => return Err(Error::NotAGuest("the module defines no memory".into())),
        _ => {
            return Err(Error::NotAGuest(
                "the module defines more than one memory".into(),
            ));
        }
    };
    if memory.memory64 || memory.shared {
        return Err(Error::NotAGuest(
            "the module's memory is 64-bit or shared; WasmBox supports wasm32-wasip1 guests".into(),
        ));
    }
    let taken = |name: &str| exports.iter().any(|(n, _, _)| n == name);
    let mut added = Vec::new();
    let memory_export = match exports
        .iter()
        .find(|(_, kind, index)| *kind == ExternalKind::Memory && *index == 0)
    {
        Some((name, _, _)) => name.clone(),
        None => {
            let name = if taken(abi::EXPORT_MEMORY) {
                "__wasmbox_memory"
            } else {
                abi::EXPORT_MEMORY
            };
            added.push((name.to_string(), wasm_encoder::ExportKind::Memory, 0));
            name.to_string()
        }
    };
    let mut mutable_globals = Vec::new();
    for (i, ty) in globals.iter().enumerate() {
        if !ty.mutable {
            continue;
        }
        let index = imported_globals + i as u32;
        let export = format!("__wasmbox_global_{index}");
        if taken(&export) {
            return Err(Error::NotAGuest(format!(
                "the module already exports a `{export}`"
            )));
        }
        added.push((export.clone(), wasm_encoder::ExportKind::Global, index));
        let ty = match ty.content_type {
            ValType::I32 => ValKind::I32,
            ValType::I64 => ValKind::I64,
            ValType::F32 => ValKind::F32,
            ValType::F64 => ValKind::F64,
            ValType::V128 => ValKind::V128,
            ValType::Ref(_) => {
                return Err(Error::NotAGuest(format!(
                    "global {index} holds a reference, which a snapshot cannot hold"
                )));
            }
        };
        mutable_globals.push(GlobalInfo { index, ty, export });
    }
    data_ranges.sort_by_key(|r| r.start);
    let data_ranges = merge(data_ranges);
    let info = ModuleInfo {
        mutable_globals,
        memory_export,
        initial_pages: memory.initial,
        maximum_pages: memory.maximum,
        data_ranges,
    };
    if added.is_empty() {
        return Ok((wasm.to_vec(), info));
    }
    let mut encoder = AddExports { added, done: false };
    let mut module = wasm_encoder::Module::new();
    encoder
        .parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| Error::InvalidModule(format!("could not re-encode the module: {e}")))?;
    Ok((module.finish(), info))
}

/// The value type of a global a snapshot can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ValKind {
    I32,
    I64,
    F32,
    F64,
    V128,
}

/// The value of a constant `i32.const N` / `i64.const N` offset expression.
fn const_offset(expr: &wasmparser::ConstExpr<'_>) -> Option<u64> {
    let mut reader = expr.get_operators_reader();
    let value = match reader.read().ok()? {
        wasmparser::Operator::I32Const { value } => value as u32 as u64,
        wasmparser::Operator::I64Const { value } => value as u64,
        _ => return None,
    };
    matches!(reader.read().ok()?, wasmparser::Operator::End).then_some(value)
}

fn merge(ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Re-encoder that appends exports, creating the export section when the module has none.
struct AddExports {
    added: Vec<(String, wasm_encoder::ExportKind, u32)>,
    done: bool,
}

impl AddExports {
    fn append(&mut self, exports: &mut wasm_encoder::ExportSection) {
        for (name, kind, index) in self.added.drain(..) {
            exports.export(&name, kind, index);
        }
        self.done = true;
    }
}

impl Reencode for AddExports {
    type Error = std::convert::Infallible;

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.append(exports);
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        use wasm_encoder::SectionId as S;
        // The export section goes before the start, element, data-count, code and data
        // sections: emit ours just before the first of those if the module had none.
        let after_exports = matches!(
            before,
            None | Some(S::Start | S::Element | S::DataCount | S::Code | S::Data)
        );
        if !self.done && after_exports {
            let mut exports = wasm_encoder::ExportSection::new();
            self.append(&mut exports);
            module.section(&exports);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_globals_of_a_module_without_exports() {
        let wasm = wat::parse_str(
            r#"(module (memory 1) (global (mut i32) (i32.const 5)) (global i64 (i64.const 1))
                       (data (i32.const 70000) "ab") (data (i32.const 65536) "xyz"))"#,
        )
        .unwrap();
        let (out, info) = instrument(&wasm).unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        assert_eq!(info.mutable_globals.len(), 1);
        assert_eq!(info.mutable_globals[0].export, "__wasmbox_global_0");
        assert_eq!(info.memory_export, "memory");
        assert_eq!(info.data_ranges, vec![65536..65539, 70000..70002]);
        let names: Vec<String> = Parser::new(0)
            .parse_all(&out)
            .filter_map(|p| match p.unwrap() {
                Payload::ExportSection(s) => Some(
                    s.into_iter()
                        .map(|e| e.unwrap().name.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, ["memory", "__wasmbox_global_0"]);
    }

    #[test]
    fn rejects_imported_memory() {
        let wasm = wat::parse_str(r#"(module (import "env" "memory" (memory 1)))"#).unwrap();
        assert!(matches!(instrument(&wasm), Err(Error::NotAGuest(_))));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            instrument(b"not wasm at all"),
            Err(Error::InvalidModule(_))
        ));
    }
}
