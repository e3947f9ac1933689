//! Routes a component's exported hooks through a forwarding core instance, which makes each
//! hook call about 900 instructions cheaper in wasmtime 48.
//!
//! On every call of a component export, wasmtime looks up the core function the export lifts
//! (`Func::lifted_core_func`). When that function is *defined* by the core instance it is
//! taken from, wasmtime rebuilds its `VMFuncRef` each time, finding the compiled code through
//! the store's module registry: ~900 instructions, more than the router's whole `on-request`.
//! When it is an *imported* function of that instance, the reference is read straight from the
//! instance's import table. So the hooks are lifted from a tiny module that imports them from
//! the filter's main module and exports them unchanged:
//!
//! ```text
//! (core module $forward
//!   (import "main" "spindle:filter/filter@0.3.0#on-request" (func $f (param i32) (result i32)))
//!   (export "spindle:filter/filter@0.3.0#on-request" (func $f)) ...)
//! (core instance $forward (instantiate $forward (with "main" (instance $main))))
//! (alias core export $forward "spindle:filter/filter@0.3.0#on-request" (core func)) ;; was $main
//! ```
//!
//! The call itself is unchanged: the imported reference points at the main module's code and
//! instance, so no extra frame runs. The rewrite relies on the layout `wit-component` gives a
//! component (the hooks aliased from the main instance after every core module and instance is
//! defined); on any other layout it refuses, and the caller keeps the component as it was.

use anyhow::{Context, Result, bail};
use wasm_encoder::reencode::{Reencode, ReencodeComponent, RoundtripReencoder};
use wasmparser::{BinaryReader, ComponentAlias, ExternalKind, Payload, TypeRef};

/// The prefix of the core exports that implement the `filter` interface's functions
/// (`cabi_post_...` helpers do not have it).
const HOOK_PREFIX: &str = "spindle:filter/filter@0.3.0#";
/// The forwarding module's import module name.
const MAIN: &str = "main";

// Section ids of the component binary format.
const CORE_MODULE: u8 = 1;
const CORE_INSTANCE: u8 = 2;
const ALIAS: u8 = 6;
const IMPORT: u8 = 10;

/// Returns `component` with the hooks that `module` (the core module it was made from) exports
/// lifted from a forwarding instance.
pub fn forward_hooks(component: &[u8], module: &[u8]) -> Result<Vec<u8>> {
    let hooks = hook_types(module)?;
    if hooks.is_empty() {
        bail!("the module exports no `{HOOK_PREFIX}*` functions");
    }
    let forwarder = forwarding_module(&hooks)?;

    let mut out = wasm_encoder::Component::new();
    let mut reader = BinaryReader::new(component, 0);
    let header = reader.read_bytes(8).context("no component header")?;
    if header != [0, b'a', b's', b'm', 0x0d, 0, 1, 0] {
        bail!("not a component of the binary format this tool reads");
    }
    let mut core_modules = 0u32;
    let mut core_instances = 0u32;
    // The forwarding instance's index, once it is placed.
    let mut forward_instance: Option<u32> = None;
    let mut main_instance: Option<u32> = None;
    let mut redirected = 0usize;
    while !reader.eof() {
        let id = reader.read_u8()?;
        let len = reader.read_var_u32()? as usize;
        let offset = reader.original_position();
        let data = reader.read_bytes(len)?;
        let placed = forward_instance.is_some();
        match id {
            CORE_MODULE if placed => bail!("a core module is defined after the hooks' aliases"),
            CORE_MODULE => core_modules += 1,
            CORE_INSTANCE if placed => {
                bail!("a core instance is defined after the hooks' aliases")
            }
            CORE_INSTANCE => {
                let section =
                    wasmparser::InstanceSectionReader::new(BinaryReader::new(data, offset))?;
                core_instances += section.count();
            }
            IMPORT => {
                let section =
                    wasmparser::ComponentImportSectionReader::new(BinaryReader::new(data, offset))?;
                for import in section {
                    if matches!(import?.ty, wasmparser::ComponentTypeRef::Module(_)) {
                        if placed {
                            bail!("a core module is imported after the hooks' aliases");
                        }
                        core_modules += 1;
                    }
                }
            }
            ALIAS => {
                let section =
                    wasmparser::ComponentAliasSectionReader::new(BinaryReader::new(data, offset))?;
                let aliases = section.into_iter().collect::<Result<Vec<_>, _>>()?;
                let mut rewritten = wasm_encoder::ComponentAliasSection::new();
                for alias in aliases {
                    match alias {
                        ComponentAlias::Outer {
                            kind: wasmparser::ComponentOuterAliasKind::CoreModule,
                            ..
                        } if placed => bail!("a core module is aliased after the hooks' aliases"),
                        ComponentAlias::Outer {
                            kind: wasmparser::ComponentOuterAliasKind::CoreModule,
                            ..
                        } => core_modules += 1,
                        ComponentAlias::CoreInstanceExport {
                            kind: ExternalKind::Func,
                            instance_index,
                            name,
                        } if name.starts_with(HOOK_PREFIX) => {
                            if !hooks.iter().any(|(n, _)| n == name) {
                                bail!("`{name}` is aliased but not exported by the module");
                            }
                            match main_instance {
                                Some(main) if main != instance_index => {
                                    bail!("the hooks are aliased from more than one instance")
                                }
                                Some(_) => {}
                                None => {
                                    // Place the forwarder right before the first hook
                                    // alias, after the aliases before it in its section.
                                    if !rewritten.is_empty() {
                                        out.section(&rewritten);
                                        rewritten = wasm_encoder::ComponentAliasSection::new();
                                    }
                                    out.section(&wasm_encoder::ModuleSection(&forwarder));
                                    let mut instances = wasm_encoder::InstanceSection::new();
                                    instances.instantiate(
                                        core_modules,
                                        [(MAIN, wasm_encoder::ModuleArg::Instance(instance_index))],
                                    );
                                    out.section(&instances);
                                    core_modules += 1;
                                    forward_instance = Some(core_instances);
                                    core_instances += 1;
                                    main_instance = Some(instance_index);
                                }
                            }
                            rewritten.alias(wasm_encoder::Alias::CoreInstanceExport {
                                instance: forward_instance.expect("placed above"),
                                kind: wasm_encoder::ExportKind::Func,
                                name,
                            });
                            redirected += 1;
                            continue;
                        }
                        _ => {}
                    }
                    rewritten.alias(
                        RoundtripReencoder
                            .component_alias(alias)
                            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
                    );
                }
                out.section(&rewritten);
                continue;
            }
            _ => {}
        }
        out.section(&wasm_encoder::RawSection { id, data });
    }
    if redirected == 0 {
        bail!("no hook is aliased from a core instance");
    }
    Ok(out.finish())
}

/// The `filter` functions a core module exports, with their core types, in export order.
fn hook_types(module: &[u8]) -> Result<Vec<(String, wasmparser::FuncType)>> {
    let mut types = Vec::new();
    let mut funcs = Vec::new();
    let mut hooks = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload? {
            Payload::TypeSection(section) => {
                for group in section {
                    for ty in group?.into_types() {
                        types.push(ty.composite_type.inner);
                    }
                }
            }
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    if let TypeRef::Func(ty) = import?.ty {
                        funcs.push(ty);
                    }
                }
            }
            Payload::FunctionSection(section) => {
                for ty in section {
                    funcs.push(ty?);
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export?;
                    if export.kind != ExternalKind::Func || !export.name.starts_with(HOOK_PREFIX) {
                        continue;
                    }
                    let ty = funcs
                        .get(export.index as usize)
                        .and_then(|&t| types.get(t as usize))
                        .context("an export names a function the module does not have")?;
                    let wasmparser::CompositeInnerType::Func(ty) = ty else {
                        bail!("`{}` does not have a function type", export.name);
                    };
                    hooks.push((export.name.to_owned(), ty.clone()));
                }
            }
            _ => {}
        }
    }
    Ok(hooks)
}

/// A core module that imports each hook from `main` and exports it under the same name.
fn forwarding_module(hooks: &[(String, wasmparser::FuncType)]) -> Result<wasm_encoder::Module> {
    let mut types = wasm_encoder::TypeSection::new();
    let mut imports = wasm_encoder::ImportSection::new();
    let mut exports = wasm_encoder::ExportSection::new();
    for (index, (name, ty)) in hooks.iter().enumerate() {
        let val = |v: &wasmparser::ValType| {
            RoundtripReencoder
                .val_type(*v)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        };
        let params = ty.params().iter().map(val).collect::<Result<Vec<_>>>()?;
        let results = ty.results().iter().map(val).collect::<Result<Vec<_>>>()?;
        types.ty().function(params, results);
        let index = index as u32;
        imports.import(MAIN, name, wasm_encoder::EntityType::Function(index));
        exports.export(name, wasm_encoder::ExportKind::Func, index);
    }
    let mut module = wasm_encoder::Module::new();
    module.section(&types).section(&imports).section(&exports);
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmparser::{Instance, Parser};
    use wit_parser::abi::{AbiVariant, WasmType};

    /// A core module exporting every `filter` function of Spindle's world (bodies that trap),
    /// with the world's `component-type` metadata: what the SDK builds, minus the code.
    fn filter_module() -> Vec<u8> {
        let mut resolve = wit_parser::Resolve::default();
        let (pkg, _) = resolve
            .push_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sdk/wit"))
            .unwrap();
        let world = resolve
            .select_world(&[pkg], Some("spindle-filter"))
            .unwrap();
        let filter = resolve.worlds[world]
            .exports
            .values()
            .find_map(|item| match item {
                wit_parser::WorldItem::Interface { id, .. } => Some(*id),
                _ => None,
            })
            .unwrap();
        let core = |t: &WasmType| match t {
            WasmType::I64 | WasmType::PointerOrI64 => wasm_encoder::ValType::I64,
            WasmType::F32 => wasm_encoder::ValType::F32,
            WasmType::F64 => wasm_encoder::ValType::F64,
            WasmType::I32 | WasmType::Pointer | WasmType::Length => wasm_encoder::ValType::I32,
        };
        let mut types = wasm_encoder::TypeSection::new();
        let mut functions = wasm_encoder::FunctionSection::new();
        let mut exports = wasm_encoder::ExportSection::new();
        let mut code = wasm_encoder::CodeSection::new();
        let mut trap = wasm_encoder::Function::new([]);
        trap.instructions().unreachable().end();
        let mut add = |name: &str, params: Vec<_>, results: Vec<_>| {
            let index = functions.len();
            types.ty().function(params, results);
            functions.function(index);
            exports.export(name, wasm_encoder::ExportKind::Func, index);
            code.function(&trap);
        };
        use wasm_encoder::ValType::I32;
        add("cabi_realloc", vec![I32; 4], vec![I32]);
        for (name, func) in &resolve.interfaces[filter].functions {
            let sig = resolve.wasm_signature(AbiVariant::GuestExport, func);
            add(
                &format!("{HOOK_PREFIX}{name}"),
                sig.params.iter().map(core).collect(),
                sig.results.iter().map(core).collect(),
            );
        }
        let mut memories = wasm_encoder::MemorySection::new();
        memories.memory(wasm_encoder::MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        exports.export("memory", wasm_encoder::ExportKind::Memory, 0);
        let mut module = wasm_encoder::Module::new();
        module
            .section(&types)
            .section(&functions)
            .section(&memories)
            .section(&exports)
            .section(&code);
        let mut bytes = module.finish();
        wit_component::embed_component_metadata(
            &mut bytes,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
            false,
        )
        .unwrap();
        bytes
    }

    /// The top-level core instances (`Some(module)` for an instantiation) and the core
    /// instance each hook is aliased from.
    fn layout(component: &[u8]) -> (Vec<Option<u32>>, Vec<(String, u32)>) {
        let mut instances = Vec::new();
        let mut hooks = Vec::new();
        let mut depth = 0;
        for payload in Parser::new(0).parse_all(component) {
            match payload.unwrap() {
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) if depth > 0 => depth -= 1,
                Payload::InstanceSection(section) if depth == 0 => {
                    for instance in section {
                        instances.push(match instance.unwrap() {
                            Instance::Instantiate { module_index, .. } => Some(module_index),
                            Instance::FromExports(_) => None,
                        });
                    }
                }
                Payload::ComponentAliasSection(section) if depth == 0 => {
                    for alias in section {
                        if let ComponentAlias::CoreInstanceExport {
                            instance_index,
                            name,
                            ..
                        } = alias.unwrap()
                            && name.starts_with(HOOK_PREFIX)
                        {
                            hooks.push((name.to_owned(), instance_index));
                        }
                    }
                }
                _ => {}
            }
        }
        (instances, hooks)
    }

    /// The imports of the `index`th top-level core module.
    fn module_imports(component: &[u8], index: u32) -> Vec<(String, String)> {
        let mut modules = 0;
        let mut parser = Parser::new(0).parse_all(component);
        while let Some(payload) = parser.next() {
            if let Payload::ModuleSection { .. } = payload.unwrap() {
                let this = modules == index;
                modules += 1;
                let mut imports = Vec::new();
                for payload in parser.by_ref() {
                    match payload.unwrap() {
                        Payload::ImportSection(section) if this => {
                            for import in section.into_imports() {
                                let import = import.unwrap();
                                imports.push((import.module.to_owned(), import.name.to_owned()));
                            }
                        }
                        Payload::End(_) => break,
                        _ => {}
                    }
                }
                if this {
                    return imports;
                }
            }
        }
        panic!("no core module {index}");
    }

    #[test]
    fn hooks_are_lifted_through_a_module_that_imports_them() {
        let module = filter_module();
        let plain = wit_component::ComponentEncoder::default()
            .validate(true)
            .module(&module)
            .unwrap()
            .encode()
            .unwrap();
        let (instances, hooks) = layout(&plain);
        assert_eq!(hooks.len(), 7, "{hooks:?}");
        let main = hooks[0].1;

        let forwarded = forward_hooks(&plain, &module).unwrap();
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&forwarded)
            .unwrap();
        let (after, forwarded_hooks) = layout(&forwarded);
        // One core instance more, and every hook now comes from it.
        assert_eq!(after.len(), instances.len() + 1);
        assert_eq!(&after[..instances.len()], &instances[..]);
        let forwarder = instances.len() as u32;
        assert_eq!(forwarded_hooks.len(), hooks.len());
        for ((name, from), (same, to)) in hooks.iter().zip(&forwarded_hooks) {
            assert_eq!(name, same);
            assert_eq!(*from, main);
            assert_eq!(*to, forwarder, "{name}");
        }
        // It instantiates a module that imports each hook from the main instance.
        let module_index = after[forwarder as usize].expect("an instantiation");
        let imports = module_imports(&forwarded, module_index);
        let names: Vec<&str> = hooks.iter().map(|(n, _)| n.as_str()).collect();
        let mut imported: Vec<&str> = imports.iter().map(|(_, n)| n.as_str()).collect();
        assert!(imports.iter().all(|(m, _)| m == MAIN), "{imports:?}");
        imported.sort();
        let mut expected = names.clone();
        expected.sort();
        assert_eq!(imported, expected);
        // The world is unchanged.
        let world = |c: &[u8]| match wit_component::decode(c).unwrap() {
            wit_component::DecodedWasm::Component(resolve, world) => {
                let mut printer = wit_component::WitPrinter::default();
                printer
                    .print(&resolve, resolve.worlds[world].package.unwrap(), &[])
                    .unwrap();
                printer.output.to_string()
            }
            _ => panic!("not a component"),
        };
        assert_eq!(world(&forwarded), world(&plain));
    }

    #[test]
    fn refuses_what_it_cannot_rewrite() {
        let module = filter_module();
        // A module without hooks.
        let err = forward_hooks(b"\0asm\x0d\0\x01\0", b"\0asm\x01\0\0\0").unwrap_err();
        assert!(err.to_string().contains("exports no"), "{err}");
        // A component that aliases no hook.
        let err = forward_hooks(b"\0asm\x0d\0\x01\0", &module).unwrap_err();
        assert!(err.to_string().contains("no hook is aliased"), "{err}");
        // Not a component.
        let err = forward_hooks(&module, &module).unwrap_err();
        assert!(err.to_string().contains("not a component"), "{err}");
    }
}
