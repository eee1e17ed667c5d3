//! `metrics`: counters and histograms under `mailgate_plugin_*`, labelled with the plugin, with
//! a cap on the series one plugin may create.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::Context;
use crate::bindings::mailgate::plugin::metrics;

/// Distinct metric series (name and label values) one plugin may create; the rest are
/// dropped and counted in `mailgate_plugin_metrics_dropped_total`, so a plugin cannot grow
/// the gateway's memory through metrics.
pub const MAX_SERIES: usize = 200;
/// Label pairs per observation (more are ignored), and the length of each key and value.
const MAX_LABELS: usize = 8;
const MAX_LABEL_LEN: usize = 64;

fn metric_labels(plugin: &str, labels: Vec<(String, String)>) -> Vec<::metrics::Label> {
    let cut = |s: String| s.chars().take(MAX_LABEL_LEN).collect::<String>();
    let mut v: Vec<::metrics::Label> =
        labels.into_iter().take(MAX_LABELS).map(|(k, v)| ::metrics::Label::new(cut(k), cut(v))).collect();
    v.push(::metrics::Label::new("plugin", plugin.to_string()));
    v
}

/// Always granted, within the cap.
pub struct MetricsState {
    plugin: Arc<str>,
    /// The series the plugin has created (hashes), shared by all its instances.
    series: Arc<Mutex<HashSet<u64>>>,
}

impl MetricsState {
    pub(super) fn new(cx: &Context<'_>) -> MetricsState {
        MetricsState { plugin: cx.meta.label.clone(), series: cx.meta.series.clone() }
    }

    /// Whether this series may be recorded: known already, or new and under the cap.
    fn series_allowed(&self, name: &str, labels: &[::metrics::Label]) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        for l in labels {
            l.key().hash(&mut h);
            l.value().hash(&mut h);
        }
        let key = h.finish();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.contains(&key) {
            return true;
        }
        if series.len() < MAX_SERIES {
            series.insert(key);
            return true;
        }
        drop(series);
        ::metrics::counter!("mailgate_plugin_metrics_dropped_total", "plugin" => self.plugin.to_string()).increment(1);
        false
    }
}

fn metric_name(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).take(64).collect();
    format!("mailgate_plugin_{clean}")
}

impl metrics::Host for MetricsState {
    fn counter(&mut self, name: String, value: u64, labels: Vec<(String, String)>) -> wasmtime::Result<()> {
        let (name, labels) = (metric_name(&name), metric_labels(&self.plugin, labels));
        if self.series_allowed(&name, &labels) {
            ::metrics::counter!(name, labels).increment(value);
        }
        Ok(())
    }
    fn histogram(&mut self, name: String, value: f64, labels: Vec<(String, String)>) -> wasmtime::Result<()> {
        let (name, labels) = (metric_name(&name), metric_labels(&self.plugin, labels));
        if self.series_allowed(&name, &labels) {
            ::metrics::histogram!(name, labels).record(value);
        }
        Ok(())
    }
}
