//! Shared informers: one list + watch per kind (and namespace and
//! selector) for all the loops of a server, its events fanned out to each
//! subscriber — as kube-controller-manager's shared informer factory. Five
//! loops watch pods; the server sends and this process decodes each pod
//! event once, not five times.
//!
//! Each subscriber has its own unbounded queue, so a slow loop never holds
//! back the watch (nor, through HTTP/2 flow control, the connection).

use std::any::Any;
use std::collections::HashMap;

use skiff_api::{Kind, Resource};
use skiff_client::{Client, Informer, InformerEvent, ListParams};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub type Events<R> = mpsc::UnboundedReceiver<InformerEvent<R>>;

struct Fanout<R: Resource> {
    namespace: String,
    params: ListParams,
    subscribers: Vec<mpsc::UnboundedSender<InformerEvent<R>>>,
}

trait Start: Send {
    fn start(self: Box<Self>, client: Client) -> JoinHandle<()>;
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<R: Resource> Start for Fanout<R> {
    fn start(self: Box<Self>, client: Client) -> JoinHandle<()> {
        let (_cache, mut rx, informer) =
            Informer::<R>::new(client, &self.namespace, self.params.clone()).spawn();
        let subscribers = self.subscribers;
        tokio::spawn(async move {
            // Ends (and drops the informer's receiver, which ends it)
            // when aborted with the loops.
            let _informer = crate::AbortOnDrop(informer);
            while let Some(ev) = rx.recv().await {
                for s in &subscribers {
                    let _ = s.send(ev.clone());
                }
            }
        })
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// Takes what else has already arrived (up to a bound), so a burst of
/// events becomes one sync per key instead of one per event.
pub fn drain<R>(rx: &mut Events<R>, mut f: impl FnMut(InformerEvent<R>)) {
    for _ in 0..4096 {
        match rx.try_recv() {
            Ok(ev) => f(ev),
            Err(_) => return,
        }
    }
}

/// Subscriptions are taken first, then `start` runs one informer per
/// distinct (kind, namespace, selectors).
pub struct Informers {
    client: Client,
    fanouts: HashMap<(Kind, String, String, String), Box<dyn Start>>,
}

impl Informers {
    pub fn new(client: Client) -> Informers {
        Informers {
            client,
            fanouts: HashMap::new(),
        }
    }

    /// Every object of the kind.
    pub fn all<R: Resource>(&mut self) -> Events<R> {
        self.subscribe("", ListParams::default())
    }

    pub fn subscribe<R: Resource>(&mut self, namespace: &str, params: ListParams) -> Events<R> {
        let key = (
            R::KIND,
            namespace.to_string(),
            params.label_selector.clone(),
            params.field_selector.clone(),
        );
        let entry = self.fanouts.entry(key).or_insert_with(|| {
            Box::new(Fanout::<R> {
                namespace: namespace.to_string(),
                params,
                subscribers: Vec::new(),
            })
        });
        let fanout = entry
            .as_any()
            .downcast_mut::<Fanout<R>>()
            .expect("one kind per key");
        let (tx, rx) = mpsc::unbounded_channel();
        fanout.subscribers.push(tx);
        rx
    }

    /// Starts the informers; abort the handles to stop them.
    pub fn start(self) -> Vec<JoinHandle<()>> {
        let client = self.client;
        self.fanouts
            .into_values()
            .map(|f| f.start(client.clone()))
            .collect()
    }
}
