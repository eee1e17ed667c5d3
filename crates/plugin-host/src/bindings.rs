//! The one `bindgen!` over `wit/`: the Rust face of the `mailgate:plugin/filter` world.
//! DNS imports are async on the host (lookups await the resolver); every export is called
//! asynchronously so a slow import never blocks the runtime.

wasmtime::component::bindgen!({
    world: "filter",
    path: "../../wit",
    imports: {
        "mailgate:plugin/dns": async,
        "mailgate:plugin/auth": async,
        default: trappable,
    },
    exports: { default: async },
    with: { "mailgate:plugin/message.message": crate::host::MessageHandle },
});

pub use mailgate::plugin::types;
