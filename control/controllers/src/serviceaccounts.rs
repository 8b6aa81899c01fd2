//! The `default` ServiceAccount of every namespace (Kubernetes'
//! serviceaccounts-controller): created when a namespace appears, and again
//! if someone deletes it, never in a namespace being deleted.

use skiff_api::v1::ObjectMeta;
use skiff_api::{Namespace, Resource, ServiceAccount};
use skiff_client::{Client, ListParams};
use skiff_runtime::{Event, Inbox, Informers, Queue, Reconcile, Store};

pub const DEFAULT: &str = "default";

/// Whether the namespace should have its `default` account created now.
pub fn wants_default(ns: Option<&Namespace>, existing: Option<&ServiceAccount>) -> bool {
    let Some(ns) = ns else { return false };
    let terminating = ns.meta().deletion_timestamp.is_some()
        || ns.status.as_ref().is_some_and(|s| s.phase == "Terminating");
    !terminating && existing.is_none()
}

pub fn default_account(namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: Some(ObjectMeta {
            name: DEFAULT.into(),
            namespace: namespace.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Controller {
    client: Client,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
}

pub enum Ev {
    Namespace(Event<Namespace>),
    Account(Event<ServiceAccount>),
}

pub fn start(client: Client, inf: &mut Informers) -> tokio::task::JoinHandle<()> {
    let mut inbox = Inbox::new();
    let c = Controller {
        client,
        namespaces: inf.watch_all(&mut inbox, Ev::Namespace),
        accounts: inf.watch(
            &mut inbox,
            "",
            ListParams::default().fields(&format!("metadata.name={DEFAULT}")),
            Ev::Account,
        ),
    };
    tokio::spawn(skiff_runtime::drive("service accounts", c, inbox))
}

impl Reconcile for Controller {
    /// A namespace's name.
    type Key = String;
    type Event = Ev;

    fn on_event(&mut self, ev: Ev, q: &mut Queue<String>) {
        match ev {
            Ev::Namespace(ev) => {
                let (_, new) = ev.split();
                if let Some(ns) = new {
                    q.add(ns.name().to_string());
                }
            }
            Ev::Account(ev) => {
                if let Event::Deleted(sa) = ev {
                    q.add(sa.namespace().to_string());
                }
            }
        }
    }

    async fn sync(&mut self, ns: &String, _q: &mut Queue<String>) -> anyhow::Result<()> {
        let namespace = self.namespaces.get("", ns);
        let existing = self.accounts.get(ns, DEFAULT);
        if !wants_default(namespace.as_deref(), existing.as_deref()) {
            return Ok(());
        }
        match self.client.create(&default_account(ns)).await {
            Ok(sa) => {
                self.accounts.write_through(sa);
                Ok(())
            }
            // Someone made it first, or the namespace started terminating
            // meanwhile (its watch event follows).
            Err(e) if e.is_already_exists() || e.is_forbidden() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::v1::NamespaceStatus;

    #[test]
    fn only_live_namespaces_without_one_get_it() {
        let mut ns = Namespace::default();
        ns.meta_mut().name = "a".into();
        assert!(wants_default(Some(&ns), None));
        assert!(!wants_default(Some(&ns), Some(&default_account("a"))));
        assert!(!wants_default(None, None), "no namespace, no account");
        ns.status = Some(NamespaceStatus {
            phase: "Terminating".into(),
            ..Default::default()
        });
        assert!(!wants_default(Some(&ns), None));
    }
}
