//! `pods/{name}/exec` over WebSocket, the way kubectl (1.30 and later)
//! runs `kubectl exec`: the `v5.channel.k8s.io` subprotocol (or
//! `v4.channel.k8s.io`), binary messages whose first byte names the
//! stream — 0 stdin, 1 stdout, 2 stderr, 3 the final Status, 4 terminal
//! size, and in v5 255 to close a stream (the caller's end of stdin).
//! The command runs on the pod's node, through the same `Pods.Exec` relay
//! `skiff exec` uses. SPDY (kubectl 1.20's only transport) is not served:
//! such a request gets a clear 400.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Uri};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use skiff_api::v1::{ExecInput, ExecStart, Pod, TerminalSize};
use tokio::sync::mpsc;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::registry::Registry;

/// The subprotocols served, most preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// No message from the caller may be larger (kubectl sends stdin in
/// 32 KiB pieces): memory stays bounded whatever it sends.
const MAX_MESSAGE: usize = 1 << 20;
/// Messages queued toward the node before reading the caller waits.
const INPUT_QUEUE: usize = 16;

/// What the query asks to run, as kube-apiserver's PodExecOptions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecQuery {
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Parses `?command=sh&command=-c&command=...&container=c&stdin=true...`
/// (the command repeats, so the query is not a map).
pub fn parse_query(query: &str) -> ApiResult<ExecQuery> {
    let mut q = ExecQuery::default();
    let flag = |k: &str, v: &str| -> ApiResult<bool> {
        match v {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(ApiError::bad_request(format!(
                "{k}: Invalid value: \"{v}\": must be true or false"
            ))),
        }
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "command" => q.command.push(v.into_owned()),
            "container" => q.container = v.into_owned(),
            "stdin" | "input" => q.stdin = flag(&k, &v)?,
            "stdout" | "output" => q.stdout = flag(&k, &v)?,
            "stderr" | "error" => q.stderr = flag(&k, &v)?,
            "tty" => q.tty = flag(&k, &v)?,
            _ => {}
        }
    }
    if q.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    if !(q.stdin || q.stdout || q.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    if q.tty && q.stderr {
        return Err(ApiError::bad_request(
            "stderr cannot be requested with a tty: the terminal carries both outputs",
        ));
    }
    Ok(q)
}

/// One message from the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Stdin(Bytes),
    CloseStdin,
    Resize {
        width: u32,
        height: u32,
    },
    /// A stream this side does not read (closing stdout, say).
    Other,
}

/// Decodes a binary message of the caller's.
pub fn decode(msg: &Bytes, v5: bool) -> Result<Frame, String> {
    let Some((&id, rest)) = msg.split_first() else {
        return Ok(Frame::Other);
    };
    match id {
        STDIN => Ok(Frame::Stdin(msg.slice(1..))),
        RESIZE => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u32,
                height: u32,
            }
            let s: Size = serde_json::from_slice(rest).map_err(|e| {
                format!("a terminal size must be {{\"Width\":W,\"Height\":H}}: {e}")
            })?;
            Ok(Frame::Resize {
                width: s.width,
                height: s.height,
            })
        }
        CLOSE if v5 => match rest.first() {
            Some(&STDIN) => Ok(Frame::CloseStdin),
            Some(_) => Ok(Frame::Other),
            None => Err("a close message names its stream".into()),
        },
        other => Err(format!("stream {other} is not one a caller writes")),
    }
}

/// The Status that ends a run: Success, or the exit code the way
/// client-go turns it into its own exit code.
pub fn exit_status(code: i32, command: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "type": "ExitCode", "message": code.to_string()}]},
    })
}

/// The Status of a run that could not go on.
pub fn failure_status(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
}

/// Checked before any upgrade, so a caller trying another transport after
/// a refusal hears the same reason.
async fn checked_pod(registry: &Registry, ns: &str, name: &str, q: &ExecQuery) -> ApiResult<Pod> {
    let pod: Pod = registry.get(ns, name).await?;
    let spec = pod.spec.clone().unwrap_or_default();
    let names: Vec<&str> = spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .map(|c| c.name.as_str())
        .collect();
    if !q.container.is_empty() && !names.contains(&q.container.as_str()) {
        return Err(ApiError::bad_request(format!(
            "container {} is not valid for pod {name}",
            q.container
        )));
    }
    if q.container.is_empty() && spec.containers.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: {:?}",
            spec.containers.iter().map(|c| &c.name).collect::<Vec<_>>()
        )));
    }
    Ok(pod)
}

/// `GET .../pods/{name}/exec` with a WebSocket upgrade.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match prepare(&state, &ns, &name, &uri, ws).await {
        Ok(resp) => resp,
        Err(e) => crate::rest::error_response(&e),
    }
}

async fn prepare(
    state: &Arc<AppState>,
    ns: &str,
    name: &str,
    uri: &Uri,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let q = parse_query(uri.query().unwrap_or(""))?;
    let pod = checked_pod(&state.registry, ns, name, &q).await?;
    let ws = ws.map_err(|_| {
        ApiError::bad_request(format!(
            "Upgrade request required: pods/exec is served over WebSocket ({}); SPDY is not supported",
            PROTOCOLS.join(", ")
        ))
    })?;
    let ws = ws
        .protocols(PROTOCOLS)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE);
    let Some(protocol) = ws.selected_protocol().cloned() else {
        return Err(ApiError::bad_request(format!(
            "none of the requested subprotocols is served: use one of {}",
            PROTOCOLS.join(", ")
        )));
    };
    let v5 = protocol == HeaderValue::from_static(PROTOCOLS[0]);
    let registry = state.registry.clone();
    let nodes = state.nodes.clone();
    let start = ExecStart {
        namespace: ns.to_string(),
        pod: name.to_string(),
        container: q.container.clone(),
        command: q.command.clone(),
        stdin: q.stdin,
        tty: q.tty,
    };
    Ok(ws.on_upgrade(move |socket| async move {
        run(socket, &registry, &nodes, &pod, start, &q, v5).await;
    }))
}

/// Relays one upgraded connection until the command ends or the caller
/// goes.
async fn run(
    socket: WebSocket,
    registry: &Registry,
    nodes: &crate::pods_proxy::Nodes,
    pod: &Pod,
    start: ExecStart,
    q: &ExecQuery,
    v5: bool,
) {
    let (mut tx, mut rx) = socket.split();
    let (input, queued) = mpsc::channel::<ExecInput>(INPUT_QUEUE);
    let command = start.command.clone();
    let first = ExecInput {
        start: Some(start),
        ..Default::default()
    };
    let _ = input.send(first).await;
    // The caller's messages, toward the node.
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let data = match msg {
                Message::Binary(d) => d,
                Message::Close(_) => break,
                // Pings are answered by the socket itself.
                _ => continue,
            };
            let m = match decode(&data, v5) {
                Ok(Frame::Stdin(b)) => ExecInput {
                    stdin: b.to_vec(),
                    ..Default::default()
                },
                Ok(Frame::CloseStdin) => ExecInput {
                    stdin_eof: true,
                    ..Default::default()
                },
                Ok(Frame::Resize { width, height }) => ExecInput {
                    resize: Some(TerminalSize { width, height }),
                    ..Default::default()
                },
                Ok(Frame::Other) => continue,
                Err(e) => {
                    tracing::debug!("exec: a bad message from the caller: {e}");
                    break;
                }
            };
            if input.send(m).await.is_err() {
                break;
            }
        }
    });
    let end = relay(&mut tx, registry, nodes, pod, queued, q, &command).await;
    reader.abort();
    let status = match end {
        Ok(Some(code)) => exit_status(code, &command),
        Ok(None) => failure_status("the command's stream ended without an exit code"),
        Err(RelayEnd::CallerGone) => return,
        Err(RelayEnd::Failed(m)) => failure_status(&m),
    };
    let mut msg = vec![ERROR];
    msg.extend_from_slice(status.to_string().as_bytes());
    if tx.send(Message::Binary(msg.into())).await.is_ok() {
        let _ = tx
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    }
}

enum RelayEnd {
    CallerGone,
    Failed(String),
}

/// The node's output toward the caller; the exit code when it comes.
async fn relay(
    tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    registry: &Registry,
    nodes: &crate::pods_proxy::Nodes,
    pod: &Pod,
    input: mpsc::Receiver<ExecInput>,
    q: &ExecQuery,
    command: &[String],
) -> Result<Option<i32>, RelayEnd> {
    let failed = |s: tonic::Status| RelayEnd::Failed(s.message().to_string());
    let mut node = nodes.dial(registry, pod).await.map_err(failed)?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(input);
    let mut out = node
        .exec(nodes.request(stream))
        .await
        .map_err(failed)?
        .into_inner();
    tracing::debug!(?command, "exec relayed");
    while let Some(o) = out.next().await {
        let o = o.map_err(failed)?;
        for (id, data, wanted) in [(STDOUT, o.stdout, q.stdout), (STDERR, o.stderr, q.stderr)] {
            if data.is_empty() || !wanted {
                continue;
            }
            let mut msg = Vec::with_capacity(data.len() + 1);
            msg.push(id);
            msg.extend_from_slice(&data);
            tx.send(Message::Binary(msg.into()))
                .await
                .map_err(|_| RelayEnd::CallerGone)?;
        }
        if let Some(code) = o.exit_code {
            return Ok(Some(code));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_a_repeated_command_and_its_streams() {
        let q = parse_query(
            "command=sh&command=-c&command=echo%20hi%20%26%26%20exit%203&container=web&stdin=true&stdout=true&stderr=true",
        )
        .unwrap();
        assert_eq!(q.command, ["sh", "-c", "echo hi && exit 3"]);
        assert_eq!(q.container, "web");
        assert!(q.stdin && q.stdout && q.stderr && !q.tty);
        let e = parse_query("stdout=true").unwrap_err();
        assert!(e.message.contains("at least 1 command"), "{}", e.message);
        let e = parse_query("command=ls").unwrap_err();
        assert!(e.message.contains("stdin, stdout, stderr"), "{}", e.message);
        let e = parse_query("command=ls&stdout=true&stderr=true&tty=true").unwrap_err();
        assert!(e.message.contains("tty"), "{}", e.message);
        let e = parse_query("command=ls&stdout=maybe").unwrap_err();
        assert!(e.message.contains("maybe"), "{}", e.message);
    }

    #[test]
    fn caller_messages_decode_by_their_stream_byte() {
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        assert_eq!(decode(&b(b"\x00hi"), true), Ok(Frame::Stdin(b(b"hi"))));
        assert_eq!(decode(&b(&[255, 0]), true), Ok(Frame::CloseStdin));
        assert_eq!(decode(&b(&[255, 1]), true), Ok(Frame::Other));
        assert!(decode(&b(&[255, 0]), false).is_err(), "v4 has no close");
        assert_eq!(
            decode(&b(b"\x04{\"Width\":80,\"Height\":24}"), true),
            Ok(Frame::Resize {
                width: 80,
                height: 24
            })
        );
        assert!(decode(&b(b"\x04{\"cols\":80}"), true).is_err());
        assert!(decode(&b(b"\x01out"), true).is_err());
        assert_eq!(decode(&b(b""), true), Ok(Frame::Other));
    }

    #[test]
    fn exit_codes_travel_as_client_go_reads_them() {
        assert_eq!(exit_status(0, &[])["status"], "Success");
        let s = exit_status(4, &["sh".into()]);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["type"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "4");
    }
}
