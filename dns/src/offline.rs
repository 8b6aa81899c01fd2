//! The request path without sockets: a datagram in, the datagram the
//! server would send out. The fuzz target drives the real handler through
//! it; so can tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

use crate::forward::Forwarder;
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::view::View;

/// A response handler that keeps the encoded response instead of sending
/// it.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

impl Capture {
    pub(crate) fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().expect("capture").take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = response.edns().map_or(512, |e| e.max_payload());
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| NetError::from(e.to_string()))?;
        *self.0.lock().expect("capture") = Some(bytes);
        Ok(info)
    }
}

/// Answers one UDP datagram from `view` (nothing is forwarded: names
/// outside the zone are REFUSED). `None` when the datagram is not a DNS
/// message at all (the server drops those).
pub async fn answer_datagram(view: Arc<RwLock<View>>, datagram: &[u8]) -> Option<Vec<u8>> {
    let request = Request::from_bytes(
        datagram.to_vec(),
        SocketAddr::from(([127, 0, 0, 1], 5353)),
        Protocol::Udp,
    )
    .ok()?;
    let handler = Handler {
        view,
        forwarder: Arc::new(Forwarder::new(Vec::new(), 1)),
        metrics: Arc::new(Metrics::new()),
        ttl: 5,
        recursion: Arc::new(crate::recursion::Recursion::anyone()),
    };
    let capture = Capture::default();
    handler
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    capture.0.lock().expect("capture").take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    fn view() -> Arc<RwLock<View>> {
        let mut v = View::new("cluster.local");
        v.upsert_service(
            serde_json::from_str(
                r#"{"metadata":{"name":"web","namespace":"ns"},"spec":{"clusterIP":"10.96.0.5","ports":[{"port":80}]}}"#,
            )
            .unwrap(),
        );
        Arc::new(RwLock::new(v))
    }

    #[tokio::test]
    async fn the_request_path_answers_refuses_and_drops() {
        let reply = answer_datagram(view(), &query("web.ns.svc.cluster.local", 1))
            .await
            .unwrap();
        assert_eq!(&reply[..2], &[0xab, 0xcd], "same id");
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[reply.len() - 4..], &[10, 96, 0, 5]);
        let nx = answer_datagram(view(), &query("nope.ns.svc.cluster.local", 1))
            .await
            .unwrap();
        assert_eq!(nx[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(
            u16::from_be_bytes([nx[8], nx[9]]),
            1,
            "the SOA in authority"
        );
        let refused = answer_datagram(view(), &query("example.com", 1))
            .await
            .unwrap();
        assert_eq!(refused[3] & 0x0f, 5, "REFUSED without an upstream");
        assert!(
            answer_datagram(view(), &[1, 2, 3]).await.is_none(),
            "not a DNS message"
        );
    }
}
