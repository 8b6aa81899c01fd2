//! The reflector: lists, then watches, one kind (in a namespace, with
//! selectors), keeps the store equal to what the server has, and hands
//! every change to its subscribers. A broken watch resumes from the last
//! resourceVersion seen; when the server says that history is gone (410)
//! it relists and reports only the differences, so subscribers see a
//! consistent story.

use std::time::Duration;

use futures::StreamExt;
use skiff_api::Resource;
use skiff_client::{Client, ListParams, WatchEvent, WatchOptions};
use tokio::sync::mpsc;

use crate::store::{Event, Store, Writer};

/// Where a reflector's events go.
pub(crate) trait Sink<R>: Send {
    /// Delivers the event; false once the receiving end is gone.
    fn send(&self, ev: &Event<R>) -> bool;
    fn closed(&self) -> bool;
}

impl<R: Send + Sync> Sink<R> for mpsc::UnboundedSender<Event<R>> {
    fn send(&self, ev: &Event<R>) -> bool {
        mpsc::UnboundedSender::send(self, ev.clone()).is_ok()
    }
    fn closed(&self) -> bool {
        self.is_closed()
    }
}

pub(crate) struct Reflector<R> {
    pub(crate) client: Client,
    pub(crate) namespace: String,
    pub(crate) params: ListParams,
    pub(crate) writer: Writer<R>,
    pub(crate) sinks: Vec<Box<dyn Sink<R>>>,
}

/// Deliveries to every sink; false when none is listening any more.
/// A reflector with no sinks only fills its store: it is never abandoned.
fn deliver<R>(sinks: &[Box<dyn Sink<R>>], events: &[Event<R>]) -> bool {
    let mut open = sinks.is_empty();
    for s in sinks {
        let mut ok = true;
        for ev in events {
            ok &= s.send(ev);
        }
        open |= ok;
    }
    open
}

impl<R: Resource> Reflector<R> {
    fn abandoned(&self) -> bool {
        !self.sinks.is_empty() && self.sinks.iter().all(|s| s.closed())
    }

    pub(crate) async fn run(self) {
        let kind = R::KIND;
        let mut backoff = Duration::from_millis(100);
        'relist: loop {
            let list = match self.client.list::<R>(&self.namespace, &self.params).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%kind, "list: {e}");
                    if self.abandoned() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let listed = list.resource_version.parse().unwrap_or(0);
            let mut events = self.writer.write().replace(list.items, listed);
            self.writer.synced.send_replace(true);
            events.push(Event::Synced);
            if !deliver(&self.sinks, &events) {
                return;
            }
            let mut rv = list.resource_version;
            loop {
                // Bookmarks keep `rv` recent, so that resuming after the
                // server ends the watch (every 30 to 60 minutes) stays
                // inside the server's window even when nothing changed.
                let options = WatchOptions {
                    bookmarks: true,
                    timeout_seconds: 0,
                };
                let mut stream = match self
                    .client
                    .watch_with::<R>(&self.namespace, &self.params, Some(&rv), options)
                    .await
                {
                    Ok(s) => s,
                    // History gone, or a revision the server has not
                    // reached (another store behind the same address):
                    // start over from a fresh list, as client-go does.
                    Err(e) if e.is_gone() || e.code() == 504 => continue 'relist,
                    Err(e) => {
                        tracing::warn!(%kind, "watch: {e}");
                        if self.abandoned() {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(ev) => {
                            rv = ev.resource_version().to_string();
                            let out = match ev {
                                WatchEvent::Bookmark(_) => continue,
                                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                    self.writer.write().observe(o, false)
                                }
                                WatchEvent::Deleted(o) => self.writer.write().observe(o, true),
                            };
                            if let Some(out) = out
                                && !deliver(&self.sinks, std::slice::from_ref(&out))
                            {
                                return;
                            }
                        }
                        Err(e) if e.is_gone() => continue 'relist,
                        Err(e) => {
                            tracing::warn!(%kind, "watch ended: {e}");
                            break;
                        }
                    }
                }
                if self.abandoned() {
                    return;
                }
                // The stream ended (server restart, network): resume.
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// One watch with one consumer (a loop that shares it with nobody): the
/// store, its events, and the task (it ends when the receiver is dropped
/// and the next event finds nobody, or when aborted).
pub fn reflect<R: Resource>(
    client: Client,
    namespace: &str,
    params: ListParams,
) -> (
    Store<R>,
    mpsc::UnboundedReceiver<Event<R>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = Writer::new();
    let store = writer.store();
    let r = Reflector {
        client,
        namespace: namespace.to_string(),
        params,
        writer,
        sinks: vec![Box::new(tx)],
    };
    (store, rx, tokio::spawn(r.run()))
}
