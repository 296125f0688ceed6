//! Request metrics: counts and latency histograms per component and status, recorded
//! where invocations end (the gateway) and exposed in Prometheus text at `/metrics` on
//! the admin listener (see `control::metrics` for the scrape, which adds per-component
//! state such as instances, queue and cold starts).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// App name.
    pub app: String,
    /// Component name.
    pub component: String,
    /// Where the request came from: `http` for the public listener.
    pub trigger: &'static str,
    /// HTTP status answered.
    pub status: u16,
}

/// Request counters and latency histograms.
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            // 100 µs .. ~13 s, doubling.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
        }
    }
}

impl RequestMetrics {
    /// Records one finished request.
    pub fn record(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.latency.get_or_create(labels).observe(seconds);
    }

    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
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
