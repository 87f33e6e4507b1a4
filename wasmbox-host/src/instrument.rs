//! Load-time pass: check that a module can be a WasmBox guest, learn the facts about it that
//! capture, restore and templates need ([`ModuleInfo`]), and rewrite it so that the host can
//! reach its whole state.
//!
//! wasmtime offers no production API to read or write a global the module does not export
//! (such as `__stack_pointer`), so, as Wizer does, the module is re-encoded with one extra
//! export per defined mutable global (`__wasmbox_global_{index}`) and, if it has none, an
//! export of its memory.
//!
//! A snapshot must hold everything a restore needs to give back exactly the state the box had.
//! What a snapshot cannot hold is either moved out of the way or refused here, as Wizer does:
//! - a **start function** would run again at every instantiation, also when a restore
//!   instantiates, and could write memory, globals or outputs the snapshot does not expect.
//!   The start section is removed and the function exported as [`START_EXPORT`]; the host calls
//!   it once, when a new box is created, exactly where instantiation would have run it;
//! - **table changes** (`table.set`, `table.grow`, `table.fill`, `table.copy`, `table.init`,
//!   `elem.drop`) and **`data.drop`** change state wasmtime gives no way to read back; a
//!   module whose code contains any of them is refused (with the instruction and function). Its
//!   tables then always hold what its element segments put there, and its passive data
//!   segments stay available to `memory.init`, in every instance alike;
//! - imported memories and tables, several memories, 64-bit or shared memories, and mutable
//!   globals of reference type are refused too.

use crate::error::Error;
use crate::snapshot::{ValKind, unsupported_global};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use wasm_encoder::reencode::{self, RoundtripReencoder};
use wasm_encoder::{ExportSection, RawSection, SectionId};
use wasmbox::abi;
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

/// Name of the export that reaches a module's start function once its start section is gone.
pub(crate) const START_EXPORT: &str = "__wasmbox_start";

/// What the host needs to know about a module, found while instrumenting it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ModuleInfo {
    /// Every mutable global the module defines, with the export name that reaches it.
    pub mutable_globals: Vec<GlobalInfo>,
    /// Number of imported globals: the global index space starts with them.
    pub imported_globals: u32,
    /// The name under which the (single) memory is exported.
    pub memory_export: String,
    /// Pages (64 KiB) the memory has at instantiation.
    pub initial_pages: u64,
    /// The memory's declared maximum, in pages, if any.
    pub maximum_pages: Option<u64>,
    /// Every data segment, in index order.
    pub data_segments: Vec<DataSegment>,
    /// Byte ranges written by active data segments at instantiation, merged and sorted.
    pub data_ranges: Vec<Range<u64>>,
    /// The export that reaches the start function, if the module had a start section.
    pub start_export: Option<String>,
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

/// One data segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DataSegment {
    /// Written to memory at instantiation (at a constant offset), then dropped.
    Active {
        /// Where it is written.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// Available to `memory.init` (never dropped: `data.drop` is refused).
    Passive,
}

/// Checks `wasm` and returns the instrumented module bytes and what was learnt.
pub(crate) fn instrument(wasm: &[u8]) -> Result<(Vec<u8>, ModuleInfo), Error> {
    let invalid = |e: wasmparser::BinaryReaderError| Error::InvalidModule(e.to_string());
    let mut imported_globals = 0u32;
    let mut imported_functions = 0u32;
    let mut globals = Vec::new();
    let mut memories = Vec::new();
    let mut exports = Vec::new();
    let mut data_segments = Vec::new();
    let mut start = None;
    let mut defined_function = 0u32;
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
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => imported_functions += 1,
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
                        TypeRef::Tag(_) => {}
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
            Payload::StartSection { func, .. } => start = Some(func),
            Payload::CodeSectionEntry(body) => {
                let index = imported_functions + defined_function;
                defined_function += 1;
                check_code(&body, index)?;
            }
            Payload::DataSection(section) => {
                for data in section {
                    let data = data.map_err(invalid)?;
                    let len = data.data.len() as u64;
                    data_segments.push(match data.kind {
                        wasmparser::DataKind::Active { offset_expr, .. } => {
                            let offset = const_offset(&offset_expr).ok_or_else(|| {
                                Error::NotAGuest(
                                    "a data segment's offset is not a constant; only constant offsets are supported"
                                        .into(),
                                )
                            })?;
                            DataSegment::Active { offset, len }
                        }
                        wasmparser::DataKind::Passive => DataSegment::Passive,
                    });
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
    let mut add = |name: String, kind, index| {
        if taken(&name) {
            return Err(Error::NotAGuest(format!(
                "the module already exports a `{name}`, a name WasmBox reserves"
            )));
        }
        added.push((name, kind, index));
        Ok(())
    };
    let mut mutable_globals = Vec::new();
    for (i, ty) in globals.iter().enumerate() {
        if !ty.mutable {
            continue;
        }
        let index = imported_globals + i as u32;
        let ty = match ty.content_type {
            ValType::I32 => ValKind::I32,
            ValType::I64 => ValKind::I64,
            ValType::F32 => ValKind::F32,
            ValType::F64 => ValKind::F64,
            ValType::V128 => ValKind::V128,
            ValType::Ref(_) => return Err(unsupported_global(index)),
        };
        let export = format!("__wasmbox_global_{index}");
        add(export.clone(), wasm_encoder::ExportKind::Global, index)?;
        mutable_globals.push(GlobalInfo { index, ty, export });
    }
    let start_export = match start {
        Some(func) => {
            add(
                START_EXPORT.to_string(),
                wasm_encoder::ExportKind::Func,
                func,
            )?;
            Some(START_EXPORT.to_string())
        }
        None => None,
    };
    let mut data_ranges: Vec<Range<u64>> = data_segments
        .iter()
        .filter_map(|s| match *s {
            DataSegment::Active { offset, len } => Some(offset..offset + len),
            DataSegment::Passive => None,
        })
        .collect();
    data_ranges.sort_by_key(|r| r.start);
    let info = ModuleInfo {
        mutable_globals,
        imported_globals,
        memory_export,
        initial_pages: memory.initial,
        maximum_pages: memory.maximum,
        data_segments,
        data_ranges: merge(data_ranges),
        start_export,
    };
    if added.is_empty() && start.is_none() {
        return Ok((wasm.to_vec(), info));
    }
    Ok((add_exports(wasm, added)?, info))
}

/// Refuses code that changes state a snapshot cannot hold (see the module docs).
fn check_code(body: &wasmparser::FunctionBody<'_>, function: u32) -> Result<(), Error> {
    let mut reader = body
        .get_operators_reader()
        .map_err(|e| Error::InvalidModule(e.to_string()))?;
    while !reader.eof() {
        let op = reader
            .read()
            .map_err(|e| Error::InvalidModule(e.to_string()))?;
        let name = match op {
            Operator::TableSet { .. } => "table.set",
            Operator::TableGrow { .. } => "table.grow",
            Operator::TableFill { .. } => "table.fill",
            Operator::TableCopy { .. } => "table.copy",
            Operator::TableInit { .. } => "table.init",
            Operator::ElemDrop { .. } => "elem.drop",
            Operator::DataDrop { .. } => "data.drop",
            _ => continue,
        };
        return Err(Error::NotAGuest(format!(
            "function {function} uses `{name}`, which changes state a snapshot cannot hold \
             (tables and dropped data segments are not captured)"
        )));
    }
    Ok(())
}

/// Re-encodes `wasm` section by section with `added` appended to its exports (creating the
/// export section if it has none) and without its start section. Everything else is copied
/// byte for byte, so every index stays as it was.
fn add_exports(
    wasm: &[u8],
    added: Vec<(String, wasm_encoder::ExportKind, u32)>,
) -> Result<Vec<u8>, Error> {
    let invalid = |e: &dyn std::fmt::Display| {
        Error::InvalidModule(format!("could not re-encode the module: {e}"))
    };
    let new_exports = |existing: Option<wasmparser::ExportSectionReader<'_>>| {
        let mut exports = ExportSection::new();
        if let Some(section) = existing {
            reencode::utils::parse_export_section(&mut RoundtripReencoder, &mut exports, section)
                .map_err(|e| invalid(&e))?;
        }
        for (name, kind, index) in &added {
            exports.export(name, *kind, *index);
        }
        Ok::<_, Error>(exports)
    };
    let mut out = wasm_encoder::Module::new();
    let mut exported = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| invalid(&e))?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        // The export section precedes the start, element, data-count, code and data sections:
        // emit a new one just before the first of those if the module has none.
        let after_exports = [
            SectionId::Start,
            SectionId::Element,
            SectionId::DataCount,
            SectionId::Code,
            SectionId::Data,
        ]
        .iter()
        .any(|s| *s as u8 == id);
        if !exported && after_exports {
            out.section(&new_exports(None)?);
            exported = true;
        }
        match payload {
            Payload::ExportSection(section) => {
                out.section(&new_exports(Some(section))?);
                exported = true;
            }
            Payload::StartSection { .. } => {}
            _ => {
                out.section(&RawSection {
                    id,
                    data: &wasm[range],
                });
            }
        }
    }
    if !exported {
        out.section(&new_exports(None)?);
    }
    Ok(out.finish())
}

/// The value of a constant `i32.const N` / `i64.const N` offset expression.
fn const_offset(expr: &wasmparser::ConstExpr<'_>) -> Option<u64> {
    let mut reader = expr.get_operators_reader();
    let value = match reader.read().ok()? {
        Operator::I32Const { value } => value as u32 as u64,
        Operator::I64Const { value } => value as u64,
        _ => return None,
    };
    matches!(reader.read().ok()?, Operator::End).then_some(value)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn export_names(wasm: &[u8]) -> Vec<String> {
        Parser::new(0)
            .parse_all(wasm)
            .filter_map(|p| match p.unwrap() {
                Payload::ExportSection(s) => Some(
                    s.into_iter()
                        .map(|e| e.unwrap().name.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn accept_exports_globals_of_a_module_without_exports() {
        let wasm = wat::parse_str(
            r#"(module (memory 1) (global (mut i32) (i32.const 5)) (global i64 (i64.const 1))
                       (data (i32.const 70000) "ab") (data (i32.const 65536) "xyz") (data "p"))"#,
        )
        .unwrap();
        let (out, info) = instrument(&wasm).unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        assert_eq!(info.mutable_globals.len(), 1);
        assert_eq!(info.mutable_globals[0].export, "__wasmbox_global_0");
        assert_eq!(info.memory_export, "memory");
        assert_eq!(info.data_ranges, vec![65536..65539, 70000..70002]);
        assert_eq!(info.data_segments[2], DataSegment::Passive);
        assert_eq!(export_names(&out), ["memory", "__wasmbox_global_0"]);
    }

    #[test]
    fn accept_start_section_becomes_an_export() {
        let wasm = wat::parse_str(
            r#"(module (import "m" "f" (func)) (memory (export "mem") 1)
                       (func $s) (start $s) (func (export "x")))"#,
        )
        .unwrap();
        let (out, info) = instrument(&wasm).unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        assert_eq!(info.start_export.as_deref(), Some(START_EXPORT));
        assert_eq!(export_names(&out), ["mem", "x", START_EXPORT]);
        let has_start = Parser::new(0)
            .parse_all(&out)
            .any(|p| matches!(p.unwrap(), Payload::StartSection { .. }));
        assert!(!has_start, "the start section is gone");
    }

    #[test]
    fn reject_table_and_segment_changes() {
        for (code, op) in [
            ("(table.set (i32.const 0) (ref.null func))", "table.set"),
            (
                "(drop (table.grow (ref.null func) (i32.const 1)))",
                "table.grow",
            ),
            (
                "(table.fill (i32.const 0) (ref.null func) (i32.const 1))",
                "table.fill",
            ),
            (
                "(table.copy (i32.const 0) (i32.const 0) (i32.const 0))",
                "table.copy",
            ),
            (
                "(table.init $e (i32.const 0) (i32.const 0) (i32.const 0))",
                "table.init",
            ),
            ("(elem.drop $e)", "elem.drop"),
            ("(data.drop $d)", "data.drop"),
        ] {
            let wasm = wat::parse_str(format!(
                r#"(module (memory 1) (table 2 funcref) (func $f)
                           (elem $e func $f) (data $d "x")
                           (func {code}))"#
            ))
            .unwrap();
            let err = instrument(&wasm).unwrap_err();
            assert!(
                matches!(&err, Error::NotAGuest(m) if m.contains(op)),
                "{op}: {err}"
            );
        }
    }

    #[test]
    fn reject_imported_memory() {
        let wasm = wat::parse_str(r#"(module (import "env" "memory" (memory 1)))"#).unwrap();
        assert!(matches!(instrument(&wasm), Err(Error::NotAGuest(_))));
    }

    #[test]
    fn reject_garbage() {
        assert!(matches!(
            instrument(b"not wasm at all"),
            Err(Error::InvalidModule(_))
        ));
    }
}
