//! A narrow wrapper over wasmtime: one engine with the pooling allocator, epoch-based CPU
//! budgets, async support, and the linker with every host import. Loading a plugin compiles it
//! once and caches its `InstancePre` (as [`FilterPre`]); instantiating from it is cheap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, Type};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::FilterPre;
use crate::exports::ExportIndices;
use crate::host::{HostState, PluginMeta};
use crate::PluginError;

/// The epoch tick: CPU budgets are counted in these.
pub const TICK: Duration = Duration::from_millis(2);

/// A plugin compiled and linked, ready to instantiate.
pub struct LoadedPlugin {
    pub meta: Arc<PluginMeta>,
    pub pre: FilterPre<HostState>,
    /// Where its hooks are among its exports (`end-session` too, when it has one: its
    /// instances may then serve one session after another), and whether they need a fiber.
    pub(crate) exports: ExportIndices,
}

impl LoadedPlugin {
    /// Whether its calls run on a fiber: it imports a host function that waits (DNS,
    /// authentication results, kv). The others are called on the caller's own stack.
    pub fn on_fiber(&self) -> bool {
        !self.exports.sync()
    }
}

pub struct PluginEngine {
    pub engine: Engine,
    linker: Linker<HostState>,
    /// Stops the epoch ticker thread when the engine goes away.
    stop: Arc<AtomicBool>,
}

/// FNV-1a, to tell plugin builds apart in status output (not a security hash).
fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What one instance of a plugin component takes from the instance pool besides its
/// component instance slot: a component is several core modules (the plugin's own, and the
/// shim and fix-up modules that `wit-component` adds for imports that allocate: three in every
/// plugin here), each instantiated, some with their own memory or table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub core_instances: u32,
    pub memories: u32,
    pub tables: u32,
}

impl Footprint {
    /// The least any plugin takes (one module with a memory and a table); the pool is never
    /// sized below it.
    pub const MIN: Footprint = Footprint { core_instances: 1, memories: 1, tables: 1 };

    /// Counts a component's core module instantiations and the memories and tables its
    /// modules define (imported ones are another module's).
    pub fn of(component: &[u8]) -> Result<Footprint, wasmparser::BinaryReaderError> {
        let mut f = Footprint { core_instances: 0, memories: 0, tables: 0 };
        for payload in wasmparser::Parser::new(0).parse_all(component) {
            match payload? {
                wasmparser::Payload::InstanceSection(r) => {
                    for i in r {
                        if matches!(i?, wasmparser::Instance::Instantiate { .. }) {
                            f.core_instances += 1;
                        }
                    }
                }
                wasmparser::Payload::MemorySection(r) => f.memories += r.count(),
                wasmparser::Payload::TableSection(r) => f.tables += r.count(),
                _ => {}
            }
        }
        Ok(f)
    }

    /// The larger of each count.
    pub fn max(self, o: Footprint) -> Footprint {
        Footprint {
            core_instances: self.core_instances.max(o.core_instances),
            memories: self.memories.max(o.memories),
            tables: self.tables.max(o.tables),
        }
    }
}

impl PluginEngine {
    /// `slots`: instances that may exist at once (sessions × plugins, plus the queue's);
    /// `each`: the most any one plugin instance takes of core instances, memories and tables;
    /// `max_memory`: the largest memory cap of any plugin.
    pub fn new(slots: u32, each: Footprint, max_memory: u64) -> Result<PluginEngine, PluginError> {
        let err = |e: wasmtime::Error| PluginError::Load { plugin: "-".into(), msg: format!("engine: {e:#}") };
        let max_memory = max_memory.next_multiple_of(64 << 10);
        let each = each.max(Footprint::MIN);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(each.core_instances))
            .total_memories(slots.saturating_mul(each.memories))
            .total_tables(slots.saturating_mul(each.tables))
            .total_stacks(slots)
            .max_memory_size(max_memory as usize)
            // Reset a slot's pages by copying rather than unmapping them, so the next instance
            // does not page-fault its stack and data back in (the bulk of the instantiation
            // cost otherwise)…
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(4 << 10)
            // …and only the pages the last instance wrote (Linux ≥ 6.7 says which), instead of
            // a memset of the whole 256 KiB on every slot's return.
            .pagemap_scan(Enabled::Auto);
        let mut cfg = Config::new();
        cfg.epoch_interruption(true)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Reserve only what a plugin may use: bounds are checked explicitly, and
            // thousands of slots fit in the address space.
            .memory_reservation(max_memory)
            .memory_reservation_for_growth(0)
            // No guard pages and no signal-based traps either: with them every slot's heap
            // limit is made PROT_NONE again on reuse and opened by mprotect when the plugin
            // grows, and each mprotect is a TLB shoot-down on every core (a tenth of a new
            // connection's CPU with five plugins). Without them the slot stays open to the
            // largest size it has had and compiled code checks every access itself.
            .memory_guard_size(0)
            .signals_based_traps(false);
        let engine = Engine::new(&cfg).map_err(err)?;
        let mut linker = Linker::new(&engine);
        crate::host::add_to_linker(&mut linker).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match e.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| PluginError::Load { plugin: "-".into(), msg: format!("epoch thread: {e}") })?;
        Ok(PluginEngine { engine, linker, stop })
    }

    /// Compiles and links one plugin; errors say whether it does not satisfy the world.
    pub fn load(
        &self,
        cfg: &mailgate_config::Config,
        p: &mailgate_config::Plugin,
        bytes: &[u8],
    ) -> Result<LoadedPlugin, PluginError> {
        let err = |msg: String| PluginError::Load { plugin: p.name.clone(), msg };
        let mut meta = PluginMeta::from_config(p, TICK, fingerprint(bytes));
        meta.routes = crate::route::RoutePolicy::new(cfg, p);
        let mut tables = std::collections::HashMap::new();
        for (name, path) in &p.data {
            let table = crate::data::DataTable::load(path).map_err(|e| err(format!("data.{name}: {e}")))?;
            tables.insert(name.clone(), Arc::new(table));
        }
        meta.tables = Arc::new(tables);
        let meta = Arc::new(meta);
        let (pre, exports) = self.prepare(bytes).map_err(|e| err(format!("{}: {e:#}", p.path.display())))?;
        Ok(LoadedPlugin { meta, pre, exports })
    }

    /// Compiles a component and checks it against the `filter` world, and its `end-session`
    /// (if any) against `reusable-filter`.
    fn prepare(&self, bytes: &[u8]) -> wasmtime::Result<(FilterPre<HostState>, ExportIndices)> {
        use wasmtime::error::Context as _;
        let component = Component::new(&self.engine, bytes).context("not a valid component")?;
        let end_session = match component.component_type().get_export(&self.engine, "end-session").map(|e| e.ty) {
            None => None,
            Some(ComponentItem::ComponentFunc(f))
                if f.params().len() == 0 && f.results().eq([Type::Bool]) && !f.async_() =>
            {
                component.get_export_index(None, "end-session")
            }
            Some(_) => wasmtime::bail!("export end-session is not `func() -> bool` (world reusable-filter)"),
        };
        // The usual cause is a plugin built against an earlier mailgate:plugin WIT (the hooks'
        // argument types have changed since 0.1.0 was first published): say how to fix it.
        const REBUILD: &str = "built for another version of the mailgate:plugin WIT? rebuild it against this gateway's wit/ (plugins/build.sh for the SDK's plugins)";
        let pre =
            self.linker.instantiate_pre(&component).context(format!("imports do not match the world ({REBUILD})"))?;
        let pre = FilterPre::new(pre).context(format!("exports do not match the world ({REBUILD})"))?;
        let exports = ExportIndices::of(&self.engine, &component, end_session)?;
        Ok((pre, exports))
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
