//! `componentize IN.wasm OUT.wasm`: wraps a core wasm module whose custom sections carry
//! wit-bindgen's component-type metadata into a component, validates it and writes it out.
//!
//! It owns only that conversion: no WASI adapter (plugins target wasm32-unknown-unknown and
//! import nothing but the mailgate world), no knowledge of any particular world.

use std::{env, fs, process::ExitCode};

use anyhow::{Context, Result, bail};
use wit_component::ComponentEncoder;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("componentize: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: componentize IN.wasm OUT.wasm");
    };
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
