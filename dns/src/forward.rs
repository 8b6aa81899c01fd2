//! Names outside the cluster: forwarded to upstream resolvers (in order,
//! each tried once), answers kept in a bounded cache — positive ones for
//! their smallest TTL, negative ones (NXDOMAIN, NODATA) for the SOA's
//! minimum (RFC 2308), both capped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_TTL: u32 = 3600;
const MAX_NEGATIVE_TTL: u32 = 300;

#[derive(Clone)]
pub struct Cached {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

struct Entry {
    value: Cached,
    stored: Instant,
    ttl: u32,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, u16, u16), Entry>>,
    capacity: usize,
}

pub enum Outcome {
    Hit(Cached),
    Miss(Cached),
    /// Every upstream failed.
    Failed,
    /// No upstream is configured.
    Refused,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, capacity: usize) -> Forwarder {
        Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub async fn resolve(&self, query: &Query) -> Outcome {
        if self.upstreams.is_empty() {
            return Outcome::Refused;
        }
        let key = (
            query.name().to_lowercase().to_ascii(),
            u16::from(query.query_type()),
            u16::from(query.query_class()),
        );
        if let Some(hit) = self.lookup(&key) {
            return Outcome::Hit(hit);
        }
        for upstream in &self.upstreams {
            match ask(*upstream, query).await {
                Ok(message) => {
                    let value = Cached {
                        code: message.metadata.response_code,
                        answers: message.answers,
                        authorities: message.authorities,
                    };
                    self.store(key, &value);
                    return Outcome::Miss(value);
                }
                Err(e) => tracing::debug!(%upstream, error = %e, "upstream failed"),
            }
        }
        Outcome::Failed
    }

    fn lookup(&self, key: &(String, u16, u16)) -> Option<Cached> {
        let mut cache = self.cache.lock().expect("cache lock");
        let entry = cache.get(key)?;
        let age = entry.stored.elapsed().as_secs() as u32;
        if age >= entry.ttl {
            cache.remove(key);
            return None;
        }
        let mut value = entry.value.clone();
        for r in value.answers.iter_mut().chain(value.authorities.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(value)
    }

    fn store(&self, key: (String, u16, u16), value: &Cached) {
        let ttl = match value.code {
            ResponseCode::NoError if !value.answers.is_empty() => value
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .min(MAX_TTL),
            ResponseCode::NoError | ResponseCode::NXDomain => value
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                    _ => None,
                })
                .unwrap_or(0)
                .min(MAX_NEGATIVE_TTL),
            _ => 0,
        };
        if ttl == 0 {
            return;
        }
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= self.capacity {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < e.ttl as u64);
            if cache.len() >= self.capacity {
                // Still full of live entries: drop an arbitrary tenth.
                let doomed: Vec<_> = cache.keys().take(self.capacity / 10 + 1).cloned().collect();
                for k in doomed {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            Entry {
                value: value.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// One exchange with an upstream: UDP, then TCP when the answer was
/// truncated.
async fn ask(upstream: SocketAddr, query: &Query) -> anyhow::Result<Message> {
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(query.clone());
    let bytes = message.to_vec()?;
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    let reply = loop {
        let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf)).await??;
        let reply = Message::from_vec(&buf[..n])?;
        // A datagram that is not the answer to this query is ignored.
        if reply.metadata.id == id && reply.metadata.message_type == MessageType::Response {
            break reply;
        }
    };
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    let mut stream =
        tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(upstream)).await??;
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await?;
    stream.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len)).await??;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut body)).await??;
    Ok(Message::from_vec(&body)?)
}
