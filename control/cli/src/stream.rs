//! `skiff logs` and `skiff exec`: streams through the API server to the
//! pod's node.

use std::io::Write;

use anyhow::{Context, Result, bail};
use skiff_api::v1::{ExecInput, ExecStart, LogsRequest, TerminalSize};
use skiff_client::Client;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::args::{ExecArgs, LogsArgs};

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// kubectl's `--since`: `30s`, `5m`, `2h` (or a plain number of seconds).
fn parse_since(text: &str) -> Result<i64> {
    let bad = || anyhow::anyhow!("--since {text:?}: expected a duration such as 30s, 5m or 2h");
    let (n, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: i64 = n.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    Ok(n * scale)
}

pub async fn logs(client: &Client, namespace: Option<&str>, a: LogsArgs) -> Result<()> {
    let req = LogsRequest {
        namespace: namespace.unwrap_or("default").to_string(),
        pod: a.pod,
        container: a.container.unwrap_or_default(),
        follow: a.follow,
        tail_lines: a.tail.unwrap_or(-1),
        previous: a.previous,
        timestamps: a.timestamps,
        since_seconds: a.since.as_deref().map(parse_since).transpose()?,
    };
    let mut stream = client
        .pods()
        .logs(req)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(())
}

/// Puts the terminal in raw mode while alive.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = rustix::stdio::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

fn terminal_size() -> Option<TerminalSize> {
    let ws = rustix::termios::tcgetwinsize(rustix::stdio::stdout()).ok()?;
    Some(TerminalSize {
        width: u32::from(ws.ws_col),
        height: u32::from(ws.ws_row),
    })
}

pub async fn exec(client: &Client, namespace: Option<&str>, a: ExecArgs) -> Result<()> {
    if a.command.is_empty() {
        bail!("no command: put it after --, as in `skiff exec web -- ls /`");
    }
    let tty = a.tty && rustix::termios::isatty(rustix::stdio::stdin());
    let (tx, rx) = mpsc::channel::<ExecInput>(16);
    tx.send(ExecInput {
        start: Some(ExecStart {
            namespace: namespace.unwrap_or("default").to_string(),
            pod: a.pod.clone(),
            container: a.container.clone().unwrap_or_default(),
            command: a.command.clone(),
            stdin: a.stdin,
            tty,
        }),
        resize: if tty { terminal_size() } else { None },
        ..Default::default()
    })
    .await
    .ok();
    let mut outputs = client
        .pods()
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status_error)?
        .into_inner();
    let _raw = tty.then(RawMode::enter);
    if a.stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx
                            .send(ExecInput {
                                stdin_eof: true,
                                ..Default::default()
                            })
                            .await;
                        return;
                    }
                    Ok(n) => {
                        let msg = ExecInput {
                            stdin: buf[..n].to_vec(),
                            ..Default::default()
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if tx
                    .send(ExecInput {
                        resize: terminal_size(),
                        ..Default::default()
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    let mut code = None;
    while let Some(out) = outputs.message().await.map_err(status_error)? {
        if !out.stdout.is_empty() {
            let mut o = std::io::stdout().lock();
            o.write_all(&out.stdout)?;
            o.flush()?;
        }
        if !out.stderr.is_empty() {
            let mut e = std::io::stderr().lock();
            e.write_all(&out.stderr)?;
            e.flush()?;
        }
        if let Some(c) = out.exit_code {
            code = Some(c);
            break;
        }
    }
    drop(_raw);
    let code = code.context("the exec stream ended without an exit code")?;
    if code != 0 {
        // The command's exit code is ours, as with kubectl exec.
        std::process::exit(code);
    }
    Ok(())
}
