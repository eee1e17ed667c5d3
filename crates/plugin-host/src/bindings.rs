//! The one `bindgen!` over `wit/`: the Rust face of the `mailgate:plugin/filter` world.
//! DNS, auth and kv imports are async on the host (they wait for the resolver or a backend);
//! every export is called asynchronously so a slow import never blocks the runtime.

wasmtime::component::bindgen!({
    world: "filter",
    path: "../../wit",
    imports: {
        "mailgate:plugin/dns": async,
        "mailgate:plugin/auth": async,
        "mailgate:plugin/kv": async,
        default: trappable,
    },
    exports: { default: async },
    with: { "mailgate:plugin/message.message": crate::host::MessageHandle },
});

pub use mailgate::plugin::types;
