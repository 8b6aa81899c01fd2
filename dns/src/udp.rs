//! The UDP front of `skiff dns`. Answers for cluster names are the same
//! bytes every time until the view changes, so each encoded answer is kept,
//! keyed by the question (case-folded) and the request's flags and EDNS
//! size; a repeated question costs one hash probe and a copy with the id
//! and the question's case patched in. Everything else — first questions,
//! forwarded names, EDNS options, anything odd — goes through the hickory
//! request handler, as TCP always does. Any view change empties the cache
//! (a generation counter), so an answer is never staler than the view.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use tokio::net::UdpSocket;

use crate::handler::Handler;
use crate::offline::Capture;

const MAX_ENTRIES: usize = 200_000;

/// FNV-1a: keys are short, made of the client's bytes only for names of
/// our own zone, and hashed once per query — SipHash's DoS resistance buys
/// nothing a capped, regenerated cache needs.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

pub struct AnswerCache {
    generation: AtomicU64,
    entries: RwLock<HashMap<Vec<u8>, Entry, BuildHasherDefault<Fnv>>>,
}

struct Entry {
    generation: u64,
    response: Vec<u8>,
    /// The metric this answer counts in, resolved once.
    counter: prometheus_client::metrics::counter::Counter,
}

impl AnswerCache {
    pub fn new() -> AnswerCache {
        AnswerCache {
            generation: AtomicU64::new(0),
            entries: RwLock::new(HashMap::default()),
        }
    }

    /// The view changed: every kept answer is stale.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

impl Default for AnswerCache {
    fn default() -> Self {
        AnswerCache::new()
    }
}

/// The cache key of a plain query, where its question ends, and its type;
/// `None` for anything but one question with at most an option-less OPT
/// record.
fn key_of(query: &[u8]) -> Option<(Vec<u8>, usize, u16)> {
    if query.len() < 17 || query.len() > 512 {
        return None;
    }
    let flags = u16::from_be_bytes([query[2], query[3]]);
    // QR = 0, opcode QUERY; only RD and CD may be set besides.
    if flags & 0xf800 != 0 || flags & 0x0600 != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([query[i], query[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut key = Vec::with_capacity(query.len());
    key.extend_from_slice(&(flags & 0x0110).to_be_bytes());
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        if len & 0xc0 != 0 {
            return None; // no compression in a question we cache
        }
        key.push(len as u8);
        i += 1;
        if len == 0 {
            break;
        }
        let label = query.get(i..i + len)?;
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        i += len;
    }
    key.extend_from_slice(query.get(i..i + 4)?);
    let question_end = i + 4;
    let rest = &query[question_end..];
    if count(10) == 1 {
        // Root name, type OPT (41), then class = payload size, TTL (ext
        // rcode, version, flags), RDLENGTH 0: no options.
        if rest.len() != 11 || rest[0] != 0 || rest[1..3] != [0, 41] || rest[9..11] != [0, 0] {
            return None;
        }
        key.extend_from_slice(&rest[3..9]);
    } else if !rest.is_empty() {
        return None;
    }
    let qtype = u16::from_be_bytes([query[question_end - 4], query[question_end - 3]]);
    Some((key, question_end, qtype))
}

pub async fn serve(socket: Arc<UdpSocket>, handler: Handler, cache: Arc<AnswerCache>) {
    let handler = Arc::new(handler);
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let query = &buf[..n];
        let started = Instant::now();
        let key = key_of(query);
        if let Some((key, qend, _)) = &key {
            let generation = cache.generation.load(Ordering::Acquire);
            let hit = {
                let entries = cache.entries.read().expect("answer cache");
                entries
                    .get(key)
                    .filter(|e| e.generation == generation)
                    .map(|e| {
                        out.clear();
                        out.extend_from_slice(&e.response);
                        out[..2].copy_from_slice(&query[..2]);
                        out[12..*qend].copy_from_slice(&query[12..*qend]);
                        e.counter.clone()
                    })
            };
            if let Some(counter) = hit {
                let _ = socket.send_to(&out, src).await;
                counter.inc();
                handler
                    .metrics
                    .latency
                    .observe(started.elapsed().as_secs_f64());
                continue;
            }
        }
        let datagram = query.to_vec();
        let (socket, handler, cache) = (socket.clone(), handler.clone(), cache.clone());
        tokio::spawn(async move {
            slow_path(&socket, &handler, &cache, datagram, src, key).await;
        });
    }
}

async fn slow_path(
    socket: &UdpSocket,
    handler: &Handler,
    cache: &AnswerCache,
    datagram: Vec<u8>,
    src: SocketAddr,
    key: Option<(Vec<u8>, usize, u16)>,
) {
    let generation = cache.generation.load(Ordering::Acquire);
    let Ok(request) = Request::from_bytes(datagram, src, Protocol::Udp) else {
        return; // not a DNS message: dropped, as hickory's own loop does
    };
    let capture = Capture::default();
    handler
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    let Some(response) = capture.take() else {
        return;
    };
    let _ = socket.send_to(&response, src).await;
    // Keep authoritative answers (the cluster zone), not forwarded ones.
    let authoritative = response.len() >= 12 && response[2] & 0x04 != 0;
    if let (Some((key, _, qtype)), true) = (key, authoritative) {
        let counter = handler
            .metrics
            .queries
            .get_or_create(&crate::handler::labels(qtype, response[3] & 0x0f))
            .clone();
        let mut entries = cache.entries.write().expect("answer cache");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                generation,
                response,
                counter,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, edns: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns as u8];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn keys_fold_case_and_keep_what_changes_the_answer() {
        let (a, end, qtype) = key_of(&query("Web.NS.svc", false)).unwrap();
        assert_eq!((end, qtype), (12 + 12 + 4, 1));
        assert_eq!(
            key_of(&query("web.ns.svc", false)).unwrap().0,
            a,
            "case-insensitive"
        );
        assert_ne!(
            key_of(&query("web.ns.svc", true)).unwrap().0,
            a,
            "EDNS changes the answer's size limit"
        );
        let mut no_rd = query("web.ns.svc", false);
        no_rd[2] = 0;
        assert_ne!(key_of(&no_rd).unwrap().0, a, "RD is echoed");
        let mut response = query("web.ns.svc", false);
        response[2] |= 0x80;
        assert!(key_of(&response).is_none());
        let mut two = query("web.ns.svc", false);
        two[5] = 2;
        assert!(key_of(&two).is_none());
        assert!(key_of(&[0u8; 5]).is_none());
        let mut cookie = query("web.ns.svc", true);
        let last = cookie.len() - 1;
        cookie[last] = 4; // an OPT with options
        assert!(key_of(&cookie).is_none());
    }
}
