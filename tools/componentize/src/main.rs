//! `componentize IN.wasm OUT.wasm`: wraps a core wasm module whose custom sections carry
//! wit-bindgen's component-type metadata into a component, validates it and writes it out.
//! `componentize --wit FILE.wasm`: prints the WIT world of a component (what it imports and
//! exports), to check a plugin against the contract in `wit/`.
//!
//! It owns only that conversion: no WASI adapter (plugins target wasm32-unknown-unknown and
//! import nothing but the mailgate world), no knowledge of any particular world.

use std::{env, fs, process::ExitCode};

use anyhow::{Context, Result, bail};
use wit_component::{ComponentEncoder, WitPrinter};

const USAGE: &str = "usage: componentize IN.wasm OUT.wasm | componentize --wit COMPONENT.wasm";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, file] if flag == "--wit" => print_wit(file),
        [input, output] if !input.starts_with('-') => componentize(input, output),
        _ => Err(anyhow::anyhow!(USAGE)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("componentize: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn componentize(input: &str, output: &str) -> Result<()> {
    let core = fs::read(input).with_context(|| format!("reading {input}"))?;
    let component = ComponentEncoder::default()
        .module(&core)
        .with_context(|| format!("{input}: no usable component-type metadata"))?
        .validate(true)
        .encode()
        .with_context(|| format!("{input}: encoding the component"))?;
    fs::write(output, &component).with_context(|| format!("writing {output}"))?;
    println!(
        "componentize: {input} ({} bytes) -> {output} ({} bytes)",
        core.len(),
        component.len()
    );
    Ok(())
}

fn print_wit(file: &str) -> Result<()> {
    let bytes = fs::read(file).with_context(|| format!("reading {file}"))?;
    let decoded = wit_component::decode(&bytes).with_context(|| format!("decoding {file}"))?;
    let wit_component::DecodedWasm::Component(resolve, world) = &decoded else {
        bail!("{file} is a WIT package, not a component");
    };
    let main = resolve.worlds[*world]
        .package
        .context("world without package")?;
    let nested: Vec<_> = resolve
        .packages
        .iter()
        .map(|(id, _)| id)
        .filter(|id| *id != main)
        .collect();
    let mut printer = WitPrinter::default();
    printer.emit_docs(false);
    printer.print(resolve, main, &nested)?;
    println!("{}", printer.output);
    Ok(())
}
