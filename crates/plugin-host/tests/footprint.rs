//! What a plugin component takes from the instance pool, counted from its binary: the pool is
//! sized from these counts (sessions × plugins × each), so they must match what wasmtime
//! instantiates. Needs plugins/build.sh.

use std::path::PathBuf;

use mailgate_plugin_host::engine::Footprint;

fn dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist")
}

#[test]
fn every_stock_plugin_is_three_core_instances_with_one_memory() {
    let mut seen = 0;
    for entry in std::fs::read_dir(dist()).expect("plugins/dist: run plugins/build.sh") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "wasm") {
            continue;
        }
        let f = Footprint::of(&std::fs::read(&path).unwrap()).unwrap();
        // The plugin's module, and the shim and fix-up modules wit-component adds.
        assert_eq!(f.core_instances, 3, "{}", path.display());
        assert_eq!(f.memories, 1, "{}", path.display());
        assert!((1..=2).contains(&f.tables), "{}: {f:?}", path.display());
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} plugins in plugins/dist");
}

#[test]
fn a_file_that_is_not_wasm_is_an_error_not_a_count() {
    assert!(Footprint::of(b"not a component").is_err());
    assert!(Footprint::of(b"").is_err());
}
