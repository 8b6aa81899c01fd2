//! Any datagram through the real request handler: parse, look up, build,
//! encode. It must never panic, and whatever it answers must parse back.
#![no_main]

use std::sync::{Arc, OnceLock, RwLock};

use libfuzzer_sys::fuzz_target;
use skiff_dns::View;

fn view() -> Arc<RwLock<View>> {
    static VIEW: OnceLock<Arc<RwLock<View>>> = OnceLock::new();
    VIEW.get_or_init(|| {
        let mut v = View::new("cluster.local");
        let svc = |j: &str| serde_json::from_str::<skiff_api::Service>(j).unwrap();
        v.upsert_service(svc(r#"{"metadata":{"name":"web","namespace":"ns"},"spec":{"clusterIP":"10.96.0.5","ports":[{"name":"http","port":80}]}}"#));
        v.upsert_service(svc(r#"{"metadata":{"name":"db","namespace":"ns"},"spec":{"clusterIP":"None","ports":[{"name":"pg","port":5432}]}}"#));
        v.upsert_service(svc(r#"{"metadata":{"name":"ext","namespace":"ns"},"spec":{"type":"ExternalName","externalName":"example.org"}}"#));
        let slice: skiff_api::EndpointSlice = serde_json::from_str(r#"{"metadata":{"name":"db-a","namespace":"ns","labels":{"kubernetes.io/service-name":"db"}},"addressType":"IPv4","endpoints":[{"addresses":["10.244.0.5"],"hostname":"db-0"},{"addresses":["10.244.0.6"]}]}"#).unwrap();
        v.upsert_slice(slice);
        Arc::new(RwLock::new(v))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    if let Some(reply) = rt.block_on(skiff_dns::offline::answer_datagram(view(), data)) {
        assert!(reply.len() >= 12, "a reply has at least a header");
    }
});
