//! Shared informers: one reflector per distinct (kind, namespace,
//! selectors) for all the loops of a process, as client-go's shared
//! informer factory. Each event is decoded once and reaches every
//! subscriber as the same `Arc`; every subscriber reads the same store.
//!
//! A loop subscribes through its [`Inbox`]: the events of all its watches
//! (and its own messages) arrive in one queue, in order per watch, each
//! mapped into the loop's own event type. Queues are unbounded, so a slow
//! loop never holds back a watch (nor, through HTTP/2 flow control, the
//! connection).

use std::any::Any;
use std::collections::HashMap;

use skiff_api::{Kind, Resource};
use skiff_client::{Client, ListParams};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::reflector::{Reflector, Sink};
use crate::store::{Event, Store, Writer};

/// What a loop's inbox receives.
pub enum Msg<E> {
    Event(E),
    /// Watch number `n` of this inbox has its complete state.
    Synced(usize),
}

/// One loop's queue of events. Watches are added with
/// [`Informers::watch`]; [`Inbox::sender`] lets the loop post its own
/// messages (a finished background call, for example).
pub struct Inbox<E> {
    pub(crate) tx: mpsc::UnboundedSender<Msg<E>>,
    pub(crate) rx: mpsc::UnboundedReceiver<Msg<E>>,
    pub(crate) watches: usize,
}

impl<E> Default for Inbox<E> {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Inbox { tx, rx, watches: 0 }
    }
}

impl<E> Inbox<E> {
    pub fn new() -> Inbox<E> {
        Inbox::default()
    }

    /// Posts the loop's own events.
    pub fn sender(&self) -> Sender<E> {
        Sender(self.tx.clone())
    }
}

/// A handle to post into an inbox.
pub struct Sender<E>(mpsc::UnboundedSender<Msg<E>>);

impl<E> Clone for Sender<E> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

impl<E> Sender<E> {
    /// False once the loop is gone.
    pub fn send(&self, e: E) -> bool {
        self.0.send(Msg::Event(e)).is_ok()
    }
}

struct ToInbox<R, E> {
    tx: mpsc::UnboundedSender<Msg<E>>,
    n: usize,
    map: fn(Event<R>) -> E,
}

impl<R: Send + Sync, E: Send> Sink<R> for ToInbox<R, E> {
    fn send(&self, ev: &Event<R>) -> bool {
        let msg = match ev {
            Event::Synced => Msg::Synced(self.n),
            ev => Msg::Event((self.map)(ev.clone())),
        };
        self.tx.send(msg).is_ok()
    }

    fn closed(&self) -> bool {
        self.tx.is_closed()
    }
}

struct Shared<R> {
    namespace: String,
    params: ListParams,
    writer: Writer<R>,
    sinks: Vec<Box<dyn Sink<R>>>,
}

trait Start: Send {
    fn start(self: Box<Self>, client: Client) -> JoinHandle<()>;
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<R: Resource> Start for Shared<R> {
    fn start(self: Box<Self>, client: Client) -> JoinHandle<()> {
        let r = Reflector {
            client,
            namespace: self.namespace,
            params: self.params,
            writer: self.writer,
            sinks: self.sinks,
        };
        tokio::spawn(r.run())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// Subscriptions are taken first, then `start` runs one reflector per
/// distinct (kind, namespace, selectors).
pub struct Informers {
    client: Client,
    shared: HashMap<(Kind, String, String, String), Box<dyn Start>>,
}

impl Informers {
    pub fn new(client: Client) -> Informers {
        Informers {
            client,
            shared: HashMap::new(),
        }
    }

    fn shared<R: Resource>(&mut self, namespace: &str, params: ListParams) -> &mut Shared<R> {
        let key = (
            R::KIND,
            namespace.to_string(),
            params.label_selector.clone(),
            params.field_selector.clone(),
        );
        self.shared
            .entry(key)
            .or_insert_with(|| {
                Box::new(Shared::<R> {
                    namespace: namespace.to_string(),
                    params,
                    writer: Writer::new(),
                    sinks: Vec::new(),
                })
            })
            .as_any()
            .downcast_mut::<Shared<R>>()
            .expect("one kind per key")
    }

    /// Subscribes an inbox to a watch; its events arrive mapped by `map`.
    /// Returns the watch's shared store.
    pub fn watch<R: Resource, E: Send + 'static>(
        &mut self,
        inbox: &mut Inbox<E>,
        namespace: &str,
        params: ListParams,
        map: fn(Event<R>) -> E,
    ) -> Store<R> {
        let n = inbox.watches;
        inbox.watches += 1;
        let tx = inbox.tx.clone();
        let s = self.shared::<R>(namespace, params);
        s.sinks.push(Box::new(ToInbox { tx, n, map }));
        s.writer.store()
    }

    /// Every object of the kind.
    pub fn watch_all<R: Resource, E: Send + 'static>(
        &mut self,
        inbox: &mut Inbox<E>,
        map: fn(Event<R>) -> E,
    ) -> Store<R> {
        self.watch(inbox, "", ListParams::default(), map)
    }

    /// Starts the reflectors; abort the handles to stop them.
    pub fn start(self) -> Vec<JoinHandle<()>> {
        let client = self.client;
        self.shared
            .into_values()
            .map(|s| s.start(client.clone()))
            .collect()
    }
}
