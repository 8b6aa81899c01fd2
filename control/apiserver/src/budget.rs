//! How much of request bodies the server holds at once. Each body is
//! limited (3 MiB), but decoded a body takes several times its bytes, and
//! many large ones at a time would take the server's memory: a request
//! takes its body's size from one shared budget before it is read, and
//! gives it back when it is answered. Past the budget requests wait a
//! moment, then get 429 Too Many Requests with Retry-After, as
//! kube-apiserver answers past its in-flight limits.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

/// Permits count KiB.
const UNIT: usize = 1024;
/// How long a request waits for room before it is refused.
const WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    /// The largest body: no request asks for more.
    max_body: usize,
    bytes: usize,
}

impl Budget {
    pub(crate) fn new(bytes: usize, max_body: usize) -> Arc<Budget> {
        Arc::new(Budget {
            permits: Arc::new(Semaphore::new(bytes / UNIT)),
            max_body,
            bytes,
        })
    }

    /// Bytes of bodies held now.
    pub(crate) fn in_use(&self) -> usize {
        self.bytes - self.permits.available_permits() * UNIT
    }
}

/// The gRPC calls whose request is one message sent at once (every call
/// of the Resources service); exec streams its input as it comes.
fn unary_grpc(req: &Request) -> bool {
    req.uri().path().starts_with("/skiff.v1.Resources/")
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

pub(crate) async fn limit(State(budget): State<Arc<Budget>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (req, need) = match declared {
        Some(n) => (req, n),
        None if is_grpc(&req) && unary_grpc(&req) => match grpc_length(req).await {
            Ok(r) => r,
            Err(resp) => return resp,
        },
        None if is_grpc(&req) => (req, 0),
        // A body of unknown length, as large as a body may be.
        None if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) => {
            (req, budget.max_body)
        }
        None => (req, 0),
    };
    // Larger than any body may be: the body limit refuses it (413).
    let need = need.min(budget.max_body).div_ceil(UNIT);
    if need == 0 {
        return next.run(req).await;
    }
    let permits = u32::try_from(need).unwrap_or(u32::MAX);
    let acquired = tokio::time::timeout(WAIT, budget.permits.clone().acquire_many_owned(permits));
    let Ok(Ok(_held)) = acquired.await else {
        return too_many(&req, budget.bytes);
    };
    next.run(req).await
}

/// A unary gRPC request's size, from its first message's length prefix
/// (the body is put back together for the service to read).
async fn grpc_length(req: Request) -> Result<(Request, usize), Response> {
    let (parts, mut body) = req.into_parts();
    let mut head: Vec<Bytes> = Vec::new();
    let mut got = 0usize;
    while got < 5 {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    got += data.len();
                    head.push(data);
                }
            }
            Some(Err(e)) => {
                return Err(
                    tonic::Status::invalid_argument(format!("read the request: {e}")).into_http(),
                );
            }
            None => break,
        }
    }
    let prefix: Vec<u8> = head
        .iter()
        .flat_map(|b| b.iter().copied())
        .take(5)
        .collect();
    let need = if prefix.len() == 5 {
        u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize + 5
    } else {
        got
    };
    let rest = body.into_data_stream();
    let stream = futures::stream::iter(head.into_iter().map(Ok)).chain(rest);
    Ok((Request::from_parts(parts, Body::from_stream(stream)), need))
}

fn too_many(req: &Request, budget: usize) -> Response {
    let message = format!(
        "too many requests: the server holds {} MiB of request bodies at once; retry shortly",
        budget >> 20
    );
    let mut resp = if is_grpc(req) {
        tonic::Status::resource_exhausted(message).into_http()
    } else {
        let status = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "TooManyRequests",
            "details": {"retryAfterSeconds": 1},
            "code": 429,
        });
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "application/json")],
            status.to_string(),
        )
            .into_response()
    };
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}
