//! Prometheus metrics of the API server, served at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use skiff_api::Kind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: String,
    verb: String,
    kind: String,
    code: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    watchers: Gauge,
}

/// Counts one open watch for as long as it lives.
pub struct WatcherGuard(Gauge);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("skiff_apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        let watchers = Gauge::default();
        registry.register(
            "requests",
            "API requests by front end, verb, kind and status code",
            requests.clone(),
        );
        registry.register("watchers", "Open watches", watchers.clone());
        Arc::new(Metrics {
            registry,
            requests,
            watchers,
        })
    }

    pub fn request(&self, api: &str, verb: &str, kind: Kind, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                api: api.into(),
                verb: verb.into(),
                kind: kind.name().into(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn watcher(&self) -> WatcherGuard {
        self.watchers.inc();
        WatcherGuard(self.watchers.clone())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
