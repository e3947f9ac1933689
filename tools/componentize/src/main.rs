//! `spindle-componentize`: turns a filter's core Wasm module into a Spindle filter component.
//!
//! A filter crate built with `spindle-sdk` for `wasm32-unknown-unknown` is a core module that
//! carries its WIT world in a `component-type` custom section (written by `wit-bindgen`). This
//! tool does what `wasm-tools component new` does, then checks the result:
//!
//! 1. the input is a core module (not already a component) with that metadata;
//! 2. `wit-component` wraps it into a component; its exported hooks are then lifted through a
//!    forwarding core instance (see `forward`: each hook call costs wasmtime ~900 instructions
//!    less), and the result is validated;
//! 3. the component exports `spindle:filter/filter@0.3.0` and imports nothing but
//!    `spindle:filter/host@0.3.0` (and the type-only `spindle:filter/types@0.3.0` it uses),
//!    because that is all the host links: no WASI, no stray `env` imports.
//!
//! ```text
//! spindle-componentize target/wasm32-unknown-unknown/wasm/hello_filter.wasm -o target/filters/hello.wasm
//! spindle-componentize IN.wasm -o OUT.wasm --print-world
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use wit_component::{ComponentEncoder, DecodedWasm, WitPrinter};

mod forward;

/// The interface every filter exports.
const FILTER_EXPORT: &str = "spindle:filter/filter@0.3.0";
/// The interfaces a filter may import: the host API, and the types it shares with the exports.
const ALLOWED_IMPORTS: &[&str] = &["spindle:filter/host@0.3.0", "spindle:filter/types@0.3.0"];

/// Turn a filter's core Wasm module (built with spindle-sdk for wasm32-unknown-unknown) into a
/// validated Spindle filter component.
#[derive(Debug, Parser)]
#[command(name = "spindle-componentize", version)]
struct Args {
    /// The core module, e.g. target/wasm32-unknown-unknown/wasm/my_filter.wasm.
    input: PathBuf,
    /// Where to write the component (parent folders are created).
    #[arg(short, long)]
    output: PathBuf,
    /// Also print the component's WIT world to stdout.
    #[arg(long)]
    print_world: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spindle-componentize: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let module =
        fs::read(&args.input).with_context(|| format!("cannot read `{}`", args.input.display()))?;
    let component = componentize(&module).with_context(|| format!("`{}`", args.input.display()))?;
    let world = check_world(&component).with_context(|| format!("`{}`", args.input.display()))?;
    write(&args.output, &component)?;
    if args.print_world {
        print!("{world}");
    }
    eprintln!(
        "spindle-componentize: wrote {} ({} bytes)",
        args.output.display(),
        component.len()
    );
    Ok(())
}

/// Wraps a core module with `component-type` metadata into a validated component.
fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    if !module.starts_with(b"\0asm") {
        bail!("not a WebAssembly file (no `\\0asm` header)");
    }
    if wasmparser::Parser::is_component(module) {
        bail!("already a component: pass the core module that cargo built");
    }
    if !has_component_type_section(module)? {
        bail!(
            "no `component-type` custom section: this module was not built with spindle-sdk. \
             Put `#[spindle_sdk::filter]` on your `impl Filter for ...` block, build with \
             `cargo build --profile wasm --target wasm32-unknown-unknown -p CRATE`, and pass \
             target/wasm32-unknown-unknown/wasm/CRATE.wasm (a cdylib)"
        );
    }
    let component = ComponentEncoder::default()
        .validate(true)
        .module(module)
        .context("cannot read the module's WIT metadata")?
        .encode()
        .context(
            "cannot make a component (a Spindle filter may import only the Spindle host API: \
             no WASI, no wasm-bindgen, no `extern` functions)",
        )?;
    let component = match forward::forward_hooks(&component, module) {
        Ok(forwarded) => forwarded,
        Err(e) => {
            // The component works as it is; its hook calls just cost more.
            eprintln!("spindle-componentize: warning: hooks not forwarded ({e:#})");
            component
        }
    };
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator
        .validate_all(&component)
        .context("the component does not validate")?;
    Ok(component)
}

fn has_component_type_section(module: &[u8]) -> Result<bool> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::CustomSection(section) =
            payload.context("the module does not parse")?
            && section.name().starts_with("component-type")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks the component's imports and exports and returns its world as WIT text.
fn check_world(component: &[u8]) -> Result<String> {
    let DecodedWasm::Component(resolve, world_id) =
        wit_component::decode(component).context("cannot decode the component")?
    else {
        bail!("not a component");
    };
    let world = &resolve.worlds[world_id];
    let name = |key| resolve.name_world_key(key);
    let exports: Vec<String> = world.exports.keys().map(name).collect();
    if !exports.iter().any(|e| e == FILTER_EXPORT) {
        bail!(
            "the component does not export `{FILTER_EXPORT}` (it exports: {}). \
             Did you forget `#[spindle_sdk::filter]`?",
            list(&exports)
        );
    }
    let stray: Vec<String> = world
        .imports
        .keys()
        .map(name)
        .filter(|i| !ALLOWED_IMPORTS.contains(&i.as_str()))
        .collect();
    if !stray.is_empty() {
        bail!(
            "the component imports {}, which Spindle does not provide: a filter may import only \
             `{}`. Build for wasm32-unknown-unknown (not wasip1/wasip2) and avoid crates that \
             need WASI or JavaScript",
            list(&stray),
            ALLOWED_IMPORTS[0]
        );
    }
    let mut printer = WitPrinter::default();
    printer
        .print(
            &resolve,
            world.package.context("the world has no package")?,
            &[],
        )
        .context("cannot print the world")?;
    Ok(printer.output.to_string())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "nothing".to_owned();
    }
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    // Write next to the target and rename over it, so that a host watching the file never
    // loads a half-written component.
    let tmp = path.with_extension("wasm.tmp");
    fs::write(&tmp, bytes).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_a_core_module_with_metadata() {
        let err = componentize(b"hello").unwrap_err();
        assert!(err.to_string().contains("not a WebAssembly file"), "{err}");
        // An empty core module: valid Wasm, no metadata.
        let empty = b"\0asm\x01\0\0\0";
        let err = componentize(empty).unwrap_err();
        assert!(err.to_string().contains("component-type"), "{err}");
        // An empty component.
        let component = b"\0asm\x0d\0\x01\0";
        let err = componentize(component).unwrap_err();
        assert!(err.to_string().contains("already a component"), "{err}");
    }

    #[test]
    fn lists_read_well() {
        assert_eq!(list(&[]), "nothing");
        assert_eq!(list(&["a".into(), "b".into()]), "`a`, `b`");
    }
}
