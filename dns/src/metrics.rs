//! Prometheus metrics of the DNS addon (CoreDNS-like names).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub r#type: String,
    pub rcode: String,
}

pub struct Metrics {
    pub queries: Family<QueryLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub forward_failures: Counter,
    pub latency: Histogram,
    pub registry: Registry,
}

impl Metrics {
    pub fn new() -> Metrics {
        let queries = Family::<QueryLabels, Counter>::default();
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let forward_failures = Counter::default();
        // 10 µs .. ~5 s
        let latency = Histogram::new(exponential_buckets(0.000_01, 2.5, 15));
        let mut registry = Registry::with_prefix("skiff_dns");
        registry.register(
            "requests",
            "DNS queries answered, by type and rcode",
            queries.clone(),
        );
        registry.register(
            "cache_hits",
            "Forwarded names answered from the cache",
            cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Forwarded names asked upstream",
            cache_misses.clone(),
        );
        registry.register(
            "forward_failures",
            "Forwarded queries no upstream answered",
            forward_failures.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a query",
            latency.clone(),
        );
        Metrics {
            queries,
            cache_hits,
            cache_misses,
            forward_failures,
            latency,
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
