//! Services with their EndpointSlices, by service: what the node's
//! datapath and the DNS addon both build their view from. One event costs
//! O(that service), whatever the number of services.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use skiff_api::{EndpointSlice, Resource, Service};

use crate::store::Event;

pub use skiff_api::SERVICE_NAME_LABEL;

/// `(namespace, name)` of a Service.
pub type ServiceKey = (String, String);

fn service_of(s: &EndpointSlice) -> Option<ServiceKey> {
    let meta = s.metadata.as_ref()?;
    let svc = meta.labels.get(SERVICE_NAME_LABEL)?;
    Some((meta.namespace.clone(), svc.clone()))
}

#[derive(Default)]
pub struct ServiceIndex {
    services: HashMap<ServiceKey, Arc<Service>>,
    /// service → slice name → slice
    slices: HashMap<ServiceKey, BTreeMap<String, Arc<EndpointSlice>>>,
    /// (namespace, slice name) → the service it was filed under.
    filed: HashMap<(String, String), ServiceKey>,
}

impl ServiceIndex {
    pub fn new() -> ServiceIndex {
        ServiceIndex::default()
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, &Arc<Service>)> {
        self.services.iter()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The slices of one service (whether or not the Service exists).
    pub fn slices(&self, key: &ServiceKey) -> impl Iterator<Item = &Arc<EndpointSlice>> {
        self.slices.get(key).into_iter().flat_map(|m| m.values())
    }

    /// Returns the service whose view changed.
    pub fn upsert_service(&mut self, svc: Arc<Service>) -> ServiceKey {
        let key = (svc.namespace().to_string(), svc.name().to_string());
        self.services.insert(key.clone(), svc);
        key
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) -> ServiceKey {
        let key = (namespace.to_string(), name.to_string());
        self.services.remove(&key);
        key
    }

    /// Files a slice under its service; returns the services whose view
    /// changed (two when its service label changed). A slice without the
    /// label belongs to no service.
    pub fn upsert_slice(&mut self, slice: Arc<EndpointSlice>) -> Vec<ServiceKey> {
        let name = (slice.namespace().to_string(), slice.name().to_string());
        let mut changed = self
            .delete_slice(&name.0, &name.1)
            .into_iter()
            .collect::<Vec<_>>();
        if let Some(svc) = service_of(&slice) {
            self.slices
                .entry(svc.clone())
                .or_default()
                .insert(name.1.clone(), slice);
            self.filed.insert(name, svc.clone());
            if !changed.contains(&svc) {
                changed.push(svc);
            }
        }
        changed
    }

    /// Returns the service the slice was filed under.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> Option<ServiceKey> {
        let svc = self
            .filed
            .remove(&(namespace.to_string(), name.to_string()))?;
        if let Some(m) = self.slices.get_mut(&svc) {
            m.remove(name);
            if m.is_empty() {
                self.slices.remove(&svc);
            }
        }
        Some(svc)
    }

    /// A Service event; returns the service whose view changed.
    pub fn on_service(&mut self, ev: Event<Service>) -> Option<ServiceKey> {
        match ev {
            Event::Added(s) | Event::Updated { new: s, .. } => Some(self.upsert_service(s)),
            Event::Deleted(s) => Some(self.delete_service(s.namespace(), s.name())),
            Event::Synced => None,
        }
    }

    /// An EndpointSlice event; returns the services whose view changed.
    pub fn on_slice(&mut self, ev: Event<EndpointSlice>) -> Vec<ServiceKey> {
        match ev {
            Event::Added(s) | Event::Updated { new: s, .. } => self.upsert_slice(s),
            Event::Deleted(s) => self
                .delete_slice(s.namespace(), s.name())
                .into_iter()
                .collect(),
            Event::Synced => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, svc: Option<&str>) -> Arc<EndpointSlice> {
        let mut labels = std::collections::BTreeMap::new();
        if let Some(s) = svc {
            labels.insert(SERVICE_NAME_LABEL.to_string(), s.to_string());
        }
        Arc::new(EndpointSlice {
            metadata: Some(skiff_api::ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                labels: labels.into_iter().collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn key(s: &str) -> ServiceKey {
        ("ns".into(), s.into())
    }

    #[test]
    fn slices_are_filed_by_service_and_move_when_relabelled() {
        let mut idx = ServiceIndex::new();
        assert_eq!(idx.upsert_slice(slice("a-1", Some("a"))), [key("a")]);
        assert_eq!(idx.upsert_slice(slice("a-2", Some("a"))), [key("a")]);
        assert_eq!(idx.slices(&key("a")).count(), 2);
        // Relabelled: both services' views change.
        assert_eq!(
            idx.upsert_slice(slice("a-2", Some("b"))),
            [key("a"), key("b")]
        );
        assert_eq!(idx.slices(&key("a")).count(), 1);
        assert_eq!(idx.slices(&key("b")).count(), 1);
        // Unlabelled: filed nowhere.
        assert_eq!(idx.upsert_slice(slice("a-1", None)), [key("a")]);
        assert_eq!(idx.slices(&key("a")).count(), 0);
        assert_eq!(idx.delete_slice("ns", "a-2"), Some(key("b")));
        assert_eq!(idx.delete_slice("ns", "a-1"), None);
        assert!(idx.slices.is_empty() && idx.filed.is_empty());
    }
}
