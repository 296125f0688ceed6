//! Request metrics: counts and latency histograms per component and status, recorded
//! where invocations end (the gateway) and exposed in Prometheus text at `/metrics` on
//! the admin listener (see `control::metrics` for the scrape, which adds per-component
//! state such as instances, queue and cold starts).

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ids::ComponentId;

/// Labels of one request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// App name.
    pub app: Arc<str>,
    /// Component name.
    pub component: Arc<str>,
    /// What started the invocation (`http`, `mesh`, `message`, ...).
    pub trigger: &'static str,
    /// HTTP status answered (for other triggers, the status their outcome maps to).
    pub status: u16,
    /// The app version that served it (two during a rollout).
    pub version: Arc<str>,
}

/// Triggers a component's series can hold (raise it when adding more).
pub const MAX_TRIGGERS: usize = 8;

/// A trigger as metrics know it: its label value and its slot in [`ComponentSeries`].
/// Each trigger defines its own (see `trigger::Labelled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerLabel {
    /// Index in a component's series (below [`MAX_TRIGGERS`]).
    pub slot: usize,
    /// The `trigger` label.
    pub name: &'static str,
}

/// One component's series of status 200 for each trigger, looked up once and then
/// kept: most requests are recorded without hashing their labels or taking the
/// families' locks. (Counters and histograms are shared handles: a kept one is the
/// series in the family.)
#[derive(Default)]
pub struct ComponentSeries {
    ok: [OnceLock<(Counter, Histogram)>; MAX_TRIGGERS],
}

/// Request counters and latency histograms. Series are never removed from the
/// families: a [`ComponentSeries`] keeps handles to them.
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    refused: Family<RefusedLabels, Counter>,
}

/// Labels of a request the gateway refused before admission.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// App name (empty for the host-wide limit, which runs before routing).
    pub app: Arc<str>,
    /// Component name (likewise).
    pub component: Arc<str>,
    /// 401, 403 or 429.
    pub status: u16,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            // 100 µs .. ~13 s, doubling.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            refused: Family::default(),
        }
    }
}

impl RequestMetrics {
    /// Records one finished request.
    pub fn record(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.latency.get_or_create(labels).observe(seconds);
    }

    /// Records one finished request of component `id` through `trigger`, keeping
    /// the status-200 series in `series`.
    pub fn record_for(
        &self,
        series: &ComponentSeries,
        id: &ComponentId,
        trigger: TriggerLabel,
        status: u16,
        seconds: f64,
    ) {
        let labels = || RequestLabels {
            app: id.app.clone(),
            component: id.component.clone(),
            trigger: trigger.name,
            status,
            version: id.version.clone(),
        };
        let Some(slot) = series.ok.get(trigger.slot).filter(|_| status == 200) else {
            return self.record(&labels(), seconds);
        };
        let (count, latency) = slot.get_or_init(|| {
            let labels = labels();
            (
                self.requests.get_or_create(&labels).clone(),
                self.latency.get_or_create(&labels).clone(),
            )
        });
        count.inc();
        latency.observe(seconds);
    }

    /// Records a request refused before admission (`id`: the component it was for,
    /// `None` before routing).
    pub fn record_refused(&self, id: Option<&ComponentId>, status: u16) {
        let (app, component) = match id {
            Some(id) => (id.app.clone(), id.component.clone()),
            None => (Arc::from(""), Arc::from("")),
        };
        self.refused
            .get_or_create(&RefusedLabels {
                app,
                component,
                status,
            })
            .inc();
    }

    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "wasmhive_gateway_refused",
            "Requests refused before admission (401, 403, 429), by component",
            self.refused.clone(),
        );
        registry.register(
            "wasmhive_requests",
            "Requests answered, by component and status",
            self.requests.clone(),
        );
        registry.register(
            "wasmhive_request_duration_seconds",
            "Time from admission to response head, by component and status",
            self.latency.clone(),
        );
    }
}
