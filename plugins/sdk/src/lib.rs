pub mod bindings {
    wit_bindgen::generate!({
        world: "filter",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_filter_world",
        default_bindings_module: "mailgate_plugin_sdk::bindings",
        additional_derives: [PartialEq, Eq],
        debug: true,
    });
}
