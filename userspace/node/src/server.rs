//! The node's endpoint for the API server: container logs (current or
//! previous instance, tail, follow) and exec (stdin, stdout, stderr, a
//! terminal and its size) over gRPC: mutual TLS on a TLS cluster, the
//! cluster token on a plain development one.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use skiff_api::v1::pods_server::{Pods, PodsServer};
use skiff_api::v1::{ExecInput, ExecOutput, LogChunk, LogsRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::logs::read;
use crate::pods::{Ctx, labels};
use crate::runtime::{ExecIo, TaskState};

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct Service {
    ctx: Arc<Ctx>,
}

/// The group whose certificates may call the node: the API server's
/// `kube-apiserver-kubelet-client` (and cluster admins).
const MASTERS: &str = "system:masters";

/// Serves until the task is dropped: over mutual TLS with `certs` (callers
/// need a `system:masters` certificate from the client CA), else plain
/// behind the cluster token.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Ctx>,
    certs: Option<crate::bootstrap::Certs>,
) {
    let token = ctx.cfg.token.clone();
    let tls = certs.is_some();
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        if tls {
            let allowed = req
                .peer_certs()
                .and_then(|chain| chain.first().map(|c| c.as_ref().to_vec()))
                .is_some_and(|der| has_group(&der, MASTERS));
            return if allowed {
                Ok(req)
            } else {
                Err(Status::permission_denied(
                    "only the API server may call the node (a system:masters client certificate)",
                ))
            };
        }
        let Some(want) = &token else {
            return Err(Status::unauthenticated(
                "this node has no cluster token: it accepts no calls",
            ));
        };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if got.is_some_and(|g| constant_time_eq(g.as_bytes(), want.as_bytes())) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "only the API server may call the node (bad or missing cluster token)",
            ))
        }
    };
    let svc = PodsServer::with_interceptor(Service { ctx }, check);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(c) = &certs {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&c.serving_cert, &c.serving_key))
            .client_ca_root(Certificate::from_pem(&c.client_ca));
        builder = match builder.tls_config(config) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("the node endpoint's TLS settings: {e}");
                return;
            }
        };
    }
    if let Err(e) = builder.add_service(svc).serve_with_incoming(incoming).await {
        tracing::error!("the node endpoint stopped: {e}");
    }
}

/// Whether a DER certificate's subject has `group` as an O.
fn has_group(der: &[u8], group: &str) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return false;
    };
    cert.subject()
        .iter_organization()
        .any(|o| o.as_str().is_ok_and(|o| o == group))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl Pods for Service {
    type LogsStream = Out<LogChunk>;
    type ExecStream = Out<ExecOutput>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let pod_dir =
            read::pod_dir(&self.ctx.cfg.log_dir, &r.namespace, &r.pod).ok_or_else(|| {
                Status::not_found(format!(
                    "pod {}/{} has no logs on this node",
                    r.namespace, r.pod
                ))
            })?;
        let cdir = read::container_dir(&pod_dir, &r.pod, &r.container)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let name = cdir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let (restart, file) = read::instance_file(&cdir, r.previous, &name)
            .map_err(|e| Status::not_found(format!("{e:#}")))?;
        let tail = usize::try_from(r.tail_lines).ok();
        let since = r.since_seconds.map(|s| {
            crate::logs::cri::time_of(
                time::OffsetDateTime::now_utc() - time::Duration::seconds(s.max(0)),
            )
        });
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(stream_log(
            file,
            cdir,
            restart,
            LogOptions {
                follow: r.follow && !r.previous,
                timestamps: r.timestamps,
                tail,
                since,
            },
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn exec(
        &self,
        req: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = req.into_inner();
        let first = input
            .message()
            .await?
            .and_then(|m| m.start)
            .ok_or_else(|| {
                Status::invalid_argument("the first exec message must say what to run")
            })?;
        if first.command.is_empty() {
            return Err(Status::invalid_argument("no command to run"));
        }
        let ctx = self.ctx.clone();
        let (cid, env) =
            find_container(&ctx, &first.namespace, &first.pod, &first.container).await?;
        let exec_id = format!("exec-{:x}", rand_u64());
        let dir = ctx.cfg.run_dir.join("exec").join(&exec_id);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let fifo = |n: &str| -> Result<PathBuf, Status> {
            let p = dir.join(n);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(internal)?;
            Ok(p)
        };
        let stdout = fifo("stdout")?;
        let stderr = if first.tty {
            None
        } else {
            Some(fifo("stderr")?)
        };
        let stdin = if first.stdin {
            Some(fifo("stdin")?)
        } else {
            None
        };
        // Opened read-write so opening never waits for the other end.
        let open_rx = |p: &PathBuf| {
            tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(p)
                .map_err(internal)
        };
        let out_rx = open_rx(&stdout)?;
        let err_rx = stderr.as_ref().map(open_rx).transpose()?;
        let in_tx = match &stdin {
            Some(p) => Some(
                tokio::net::unix::pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(internal)?,
            ),
            None => None,
        };
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.to_string_lossy().to_string())
                .unwrap_or_default()
        };
        let io = ExecIo {
            stdin: path(&stdin),
            stdout: stdout.to_string_lossy().to_string(),
            stderr: path(&stderr),
            terminal: first.tty,
        };
        let process = crate::spec::exec_process(&first.command, env, first.tty);
        if let Err(e) = ctx.ctd.exec(&cid, &exec_id, &process, &io).await {
            let _ = ctx.ctd.delete_exec(&cid, &exec_id).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Status::failed_precondition(format!("{e:#}")));
        }
        let (tx, rx) = mpsc::channel::<Result<ExecOutput, Status>>(64);
        // stdin and terminal size, from the caller.
        // Shared with the exit path, which closes it: the shim copies stdin
        // until every writer is gone, and only then lets the exec go.
        let stdin_w = std::sync::Arc::new(tokio::sync::Mutex::new(in_tx));
        {
            let (ctx, cid, exec_id) = (ctx.clone(), cid.clone(), exec_id.clone());
            let stdin_w = stdin_w.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = input.message().await {
                    if let Some(size) = m.resize {
                        let _ = ctx
                            .ctd
                            .resize_pty(&cid, &exec_id, size.width, size.height)
                            .await;
                    }
                    let mut w = stdin_w.lock().await;
                    if !m.stdin.is_empty()
                        && let Some(pipe) = w.as_mut()
                        && pipe.write_all(&m.stdin).await.is_err()
                    {
                        *w = None;
                    }
                    if m.stdin_eof {
                        *w = None;
                        let _ = ctx.ctd.close_stdin(&cid, &exec_id).await;
                    }
                }
            });
        }
        // The pumps read until told the process is done, then take what is
        // left in their pipe and end.
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let out_task = tokio::spawn(pump(out_rx, tx.clone(), false, done_rx.clone()));
        let err_task = err_rx.map(|r| tokio::spawn(pump(r, tx.clone(), true, done_rx)));
        let guard = ctx.execs.begin(&cid);
        tokio::spawn(async move {
            let status = ctx.ctd.wait(&cid, &exec_id).await;
            drop(guard);
            // Deleting the exec waits for the shim to have copied all the
            // process wrote; stdin is closed first, or the copy never ends.
            *stdin_w.lock().await = None;
            let _ = ctx.ctd.close_stdin(&cid, &exec_id).await;
            let _ = ctx.ctd.delete_exec(&cid, &exec_id).await;
            let _ = done_tx.send(true);
            let _ = out_task.await;
            if let Some(t) = err_task {
                let _ = t.await;
            }
            let msg = match status {
                Ok(s) => Ok(ExecOutput {
                    exit_code: Some(s.code as i32),
                    ..Default::default()
                }),
                Err(e) => Err(internal(format!("{e:#}"))),
            };
            let _ = tx.send(msg).await;
            let _ = std::fs::remove_dir_all(&dir);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Copies one output pipe of an exec to the caller until `done`, then
/// what is left in the pipe. The pipe is open read-write here, so it never
/// reads as ended by itself.
async fn pump(
    r: tokio::net::unix::pipe::Receiver,
    tx: mpsc::Sender<Result<ExecOutput, Status>>,
    is_err: bool,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let last = tokio::select! {
            ready = r.readable() => {
                if ready.is_err() {
                    return;
                }
                *done.borrow()
            }
            _ = done.changed() => true,
        };
        loop {
            match r.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    let out = if is_err {
                        ExecOutput {
                            stderr: data,
                            ..Default::default()
                        }
                    } else {
                        ExecOutput {
                            stdout: data,
                            ..Default::default()
                        }
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        if last {
            return;
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The running container of a pod (the only one, or the named one) and
/// its environment.
async fn find_container(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<(String, Vec<String>), Status> {
    let tasks: std::collections::HashMap<String, TaskState> = ctx
        .ctd
        .tasks()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|t| (t.container_id, t.state))
        .collect();
    let mut found: Vec<(String, String, i32)> = Vec::new();
    for (id, l) in ctx.ctd.containers().await.map_err(internal)? {
        if l.get(labels::POD_NAMESPACE).map(String::as_str) != Some(ns)
            || l.get(labels::POD_NAME).map(String::as_str) != Some(pod)
        {
            continue;
        }
        if tasks.get(&id) != Some(&TaskState::Running) {
            continue;
        }
        let name = l.get(labels::CONTAINER).cloned().unwrap_or_default();
        let restart = l
            .get(labels::RESTART)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        found.push((id, name, restart));
    }
    let mut names: Vec<String> = found.iter().map(|f| f.1.clone()).collect();
    names.sort();
    names.dedup();
    let want = if container.is_empty() {
        match names.as_slice() {
            [only] => only.clone(),
            [] => {
                return Err(Status::failed_precondition(format!(
                    "pod {ns}/{pod} has no running container on this node"
                )));
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "a container name must be specified for pod {pod}, choose one of: [{}]",
                    names.join(" ")
                )));
            }
        }
    } else {
        container.to_string()
    };
    let (id, _, _) = found
        .into_iter()
        .filter(|f| f.1 == want)
        .max_by_key(|f| f.2)
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "container {want} is not running in pod {ns}/{pod}"
            ))
        })?;
    let spec = ctx.ctd.container_spec(&id).await.map_err(internal)?;
    let env = spec["process"]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((id, env))
}

/// Sends the log as the container wrote it; with `follow`, keeps sending
/// what is appended until the container's next instance starts (or the
/// pod's logs go away) or the caller leaves.
/// What of a log a client asked for.
struct LogOptions {
    follow: bool,
    timestamps: bool,
    tail: Option<usize>,
    /// The earliest record time shown, in the records' format.
    since: Option<String>,
}

async fn stream_log(
    file: PathBuf,
    container_dir: PathBuf,
    restart: u32,
    opts: LogOptions,
    tx: mpsc::Sender<Result<LogChunk, Status>>,
) {
    let LogOptions {
        follow,
        timestamps,
        tail,
        since,
    } = opts;
    let data = match tokio::fs::read(&file).await {
        Ok(d) => d,
        Err(e) => {
            let _ = tx
                .send(Err(Status::not_found(format!("{}: {e}", file.display()))))
                .await;
            return;
        }
    };
    // Only whole records: a record being written is sent when complete.
    let whole = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let out = read::render(&data[..whole], timestamps, tail, since.as_deref());
    if !out.is_empty() && tx.send(Ok(LogChunk { data: out })).await.is_err() {
        return;
    }
    if !follow {
        return;
    }
    let mut offset = whole as u64;
    let Ok(mut f) = tokio::fs::File::open(&file).await else {
        return;
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        use tokio::io::AsyncSeekExt;
        if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            return;
        }
        let mut buf = Vec::new();
        let n = f.read_to_end(&mut buf).await.unwrap_or(0);
        offset += n as u64;
        pending.extend_from_slice(&buf);
        if let Some(i) = pending.iter().rposition(|b| *b == b'\n') {
            let rest = pending.split_off(i + 1);
            let out = read::render(&pending, timestamps, None, None);
            pending = rest;
            if !out.is_empty() && tx.send(Ok(LogChunk { data: out })).await.is_err() {
                return;
            }
        }
        if n == 0 {
            let newer = read::restarts(&container_dir)
                .last()
                .is_some_and(|r| *r > restart);
            if newer || !container_dir.exists() || tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
