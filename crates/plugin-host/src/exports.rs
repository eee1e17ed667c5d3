//! A plugin instance's hooks as typed functions, and how they are called: on the caller's own
//! stack when the plugin imports no asynchronous host function, on a wasmtime fiber when it
//! does. A fiber is what lets a plugin wait for DNS or kv without blocking the runtime; for a
//! plugin that never waits it is only cost — a stack to set up and two stack switches per
//! call, and the fiber's stack pages in the caches beside the session's own. Both ways run the
//! same code under the same CPU budget (epoch deadline) and memory limit.
//!
//! The export indices are looked up once per plugin at load ([`ExportIndices::of`]), after
//! `bindgen!`'s `FilterPre` has type-checked every export against the world; each instance
//! then gets its typed functions by index, type-checked again by wasmtime.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, Instance, Lift, Lower, Resource, TypedFunc,
};
use wasmtime::{Engine, Store};

use crate::bindings::types::{AuthRequest, DataResult, DeliveryResult, EnvelopeRef, RouteResult, Verdict};
use crate::host::{HostState, MessageHandle};

/// The interfaces whose host functions `bindings.rs` makes async (they wait for the resolver,
/// the authentication results or a kv backend). A plugin that imports none of them is called
/// without a fiber.
const ASYNC_INTERFACES: [&str; 3] = ["mailgate:plugin/dns", "mailgate:plugin/auth", "mailgate:plugin/kv"];

/// Where each hook is among a component's exports.
#[derive(Clone)]
pub(crate) struct ExportIndices {
    /// No import of the component is an async host function: its calls need no fiber.
    sync: bool,
    init: ComponentExportIndex,
    on_connect: ComponentExportIndex,
    on_helo: ComponentExportIndex,
    on_auth: ComponentExportIndex,
    on_mail_from: ComponentExportIndex,
    on_rcpt: ComponentExportIndex,
    on_data: ComponentExportIndex,
    on_route: ComponentExportIndex,
    on_delivery_result: ComponentExportIndex,
    /// `end-session` (world `reusable-filter`), when the plugin has it.
    end_session: Option<ComponentExportIndex>,
}

impl ExportIndices {
    /// The indices of a component whose exports `FilterPre::new` has checked against the
    /// world; `end_session` is the already checked `end-session` export, if any.
    pub fn of(
        engine: &Engine,
        component: &Component,
        end_session: Option<ComponentExportIndex>,
    ) -> wasmtime::Result<ExportIndices> {
        let index = |name: &str| {
            component.get_export_index(None, name).ok_or_else(|| wasmtime::format_err!("no export {name}"))
        };
        let sync = !component.component_type().imports(engine).any(|(name, item)| {
            let interface = name.split('@').next().unwrap_or(name);
            matches!(item.ty, ComponentItem::ComponentInstance(_)) && ASYNC_INTERFACES.contains(&interface)
        });
        Ok(ExportIndices {
            sync,
            init: index("init")?,
            on_connect: index("on-connect")?,
            on_helo: index("on-helo")?,
            on_auth: index("on-auth")?,
            on_mail_from: index("on-mail-from")?,
            on_rcpt: index("on-rcpt")?,
            on_data: index("on-data")?,
            on_route: index("on-route")?,
            on_delivery_result: index("on-delivery-result")?,
            end_session,
        })
    }

    /// Whether the plugin's calls are made without a fiber.
    pub fn sync(&self) -> bool {
        self.sync
    }
}

/// The typed hooks of one instance.
pub(crate) struct Exports {
    /// Called on the caller's stack ([`ExportIndices::sync`]).
    sync: bool,
    init: TypedFunc<(), (Result<(), String>,)>,
    on_connect: TypedFunc<(u64,), (Verdict,)>,
    on_helo: TypedFunc<(u64, String), (Verdict,)>,
    on_auth: TypedFunc<(u64, AuthRequest), (Verdict,)>,
    on_mail_from: TypedFunc<(u64, EnvelopeRef), (Verdict,)>,
    on_rcpt: TypedFunc<(u64, EnvelopeRef, String), (Verdict,)>,
    on_data: TypedFunc<(u64, EnvelopeRef, Resource<MessageHandle>), (DataResult,)>,
    on_route: TypedFunc<(EnvelopeRef, String), (RouteResult,)>,
    on_delivery_result: TypedFunc<(DeliveryResult,), ()>,
    end_session: Option<TypedFunc<(), (bool,)>>,
}

/// Calls `f` the way the instance's imports allow.
async fn call<P, R>(sync: bool, f: &TypedFunc<P, R>, store: &mut Store<HostState>, params: P) -> wasmtime::Result<R>
where
    P: ComponentNamedList + Lower + Send + Sync,
    R: ComponentNamedList + Lift + Send + Sync + 'static,
{
    if sync {
        f.call(store, params)
    } else {
        f.call_async(store, params).await
    }
}

impl Exports {
    /// Makes an instance of `pre` in `store`: synchronously when its imports allow, so that
    /// not even instantiation needs a fiber.
    pub async fn instantiate(
        pre: &wasmtime::component::InstancePre<HostState>,
        indices: &ExportIndices,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Exports> {
        let instance =
            if indices.sync { pre.instantiate(&mut *store)? } else { pre.instantiate_async(&mut *store).await? };
        Exports::of(&instance, indices, store)
    }

    fn of(instance: &Instance, ix: &ExportIndices, store: &mut Store<HostState>) -> wasmtime::Result<Exports> {
        Ok(Exports {
            sync: ix.sync,
            init: instance.get_typed_func(&mut *store, ix.init)?,
            on_connect: instance.get_typed_func(&mut *store, ix.on_connect)?,
            on_helo: instance.get_typed_func(&mut *store, ix.on_helo)?,
            on_auth: instance.get_typed_func(&mut *store, ix.on_auth)?,
            on_mail_from: instance.get_typed_func(&mut *store, ix.on_mail_from)?,
            on_rcpt: instance.get_typed_func(&mut *store, ix.on_rcpt)?,
            on_data: instance.get_typed_func(&mut *store, ix.on_data)?,
            on_route: instance.get_typed_func(&mut *store, ix.on_route)?,
            on_delivery_result: instance.get_typed_func(&mut *store, ix.on_delivery_result)?,
            end_session: match &ix.end_session {
                Some(i) => Some(instance.get_typed_func(&mut *store, i)?),
                None => None,
            },
        })
    }

    pub fn has_end_session(&self) -> bool {
        self.end_session.is_some()
    }

    pub async fn init(&self, s: &mut Store<HostState>) -> wasmtime::Result<Result<(), String>> {
        call(self.sync, &self.init, s, ()).await.map(|(r,)| r)
    }

    pub async fn on_connect(&self, s: &mut Store<HostState>, c: u64) -> wasmtime::Result<Verdict> {
        call(self.sync, &self.on_connect, s, (c,)).await.map(|(v,)| v)
    }

    pub async fn on_helo(&self, s: &mut Store<HostState>, c: u64, helo: &str) -> wasmtime::Result<Verdict> {
        call(self.sync, &self.on_helo, s, (c, helo.to_string())).await.map(|(v,)| v)
    }

    pub async fn on_auth(&self, s: &mut Store<HostState>, c: u64, req: &AuthRequest) -> wasmtime::Result<Verdict> {
        call(self.sync, &self.on_auth, s, (c, req.clone())).await.map(|(v,)| v)
    }

    pub async fn on_mail_from(&self, s: &mut Store<HostState>, c: u64, e: EnvelopeRef) -> wasmtime::Result<Verdict> {
        call(self.sync, &self.on_mail_from, s, (c, e)).await.map(|(v,)| v)
    }

    pub async fn on_rcpt(
        &self,
        s: &mut Store<HostState>,
        c: u64,
        e: EnvelopeRef,
        rcpt: &str,
    ) -> wasmtime::Result<Verdict> {
        call(self.sync, &self.on_rcpt, s, (c, e, rcpt.to_string())).await.map(|(v,)| v)
    }

    pub async fn on_data(
        &self,
        s: &mut Store<HostState>,
        c: u64,
        e: EnvelopeRef,
        msg: Resource<MessageHandle>,
    ) -> wasmtime::Result<DataResult> {
        call(self.sync, &self.on_data, s, (c, e, msg)).await.map(|(r,)| r)
    }

    pub async fn on_route(
        &self,
        s: &mut Store<HostState>,
        e: EnvelopeRef,
        rcpt: &str,
    ) -> wasmtime::Result<RouteResult> {
        call(self.sync, &self.on_route, s, (e, rcpt.to_string())).await.map(|(r,)| r)
    }

    pub async fn on_delivery_result(&self, s: &mut Store<HostState>, res: &DeliveryResult) -> wasmtime::Result<()> {
        call(self.sync, &self.on_delivery_result, s, (res.clone(),)).await
    }

    /// `end-session`'s answer; `None` when the plugin has no such export.
    pub async fn end_session(&self, s: &mut Store<HostState>) -> Option<wasmtime::Result<bool>> {
        let f = self.end_session.as_ref()?;
        Some(call(self.sync, f, s, ()).await.map(|(b,)| b))
    }
}
