//! `xtask netperf ...`: the load tool of the datapath benchmark, run inside
//! the bench's network namespaces (hidden from the usage text).
//!
//!   netperf serve --addr IP:PORT [--threads N]
//!   netperf crr --target IP:PORT --seconds S [--threads N]   (like TCP_CRR)
//!   netperf rr  --target IP:PORT --seconds S [--threads N]   (like TCP_RR)
//!
//! crr: connect, send one byte, read one byte, wait for the server's close,
//! close — the server closes first, so no TIME_WAIT piles up on the client.
//! Clients print `{"rate": per second, "errors": n}`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1])
}

pub fn run(args: &[&str]) -> Result<()> {
    let threads: usize = flag(args, "--threads").map_or(Ok(2), str::parse)?;
    match args.first() {
        Some(&"serve") => {
            let addr: SocketAddr = flag(args, "--addr").context("--addr")?.parse()?;
            serve(addr, threads.max(2))
        }
        Some(mode @ (&"crr" | &"rr")) => {
            let target: SocketAddr = flag(args, "--target").context("--target")?.parse()?;
            let seconds: f64 = flag(args, "--seconds").map_or(Ok(2.0), str::parse)?;
            let (count, errors) = client(
                *mode == "crr",
                target,
                Duration::from_secs_f64(seconds),
                threads,
            )?;
            println!(
                "{}",
                serde_json::json!({"rate": count as f64 / seconds, "errors": errors})
            );
            Ok(())
        }
        _ => bail!("usage: netperf serve|crr|rr ..."),
    }
}

fn serve(addr: SocketAddr, threads: usize) -> Result<()> {
    let listener = Arc::new(TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?);
    println!("ready");
    std::io::stdout().flush()?;
    let mut handles = Vec::new();
    for _ in 0..threads * 2 {
        let l = listener.clone();
        handles.push(std::thread::spawn(move || {
            loop {
                let Ok((mut s, _)) = l.accept() else { continue };
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                // One byte in, one byte out, until the client stops (rr)
                // or after the first exchange the server closes (crr: the
                // client sends 'c').
                while let Ok(1) = s.read(&mut b) {
                    if s.write_all(&b).is_err() || b[0] == b'c' {
                        break;
                    }
                }
            }
        }));
    }
    // Ends when the bench closes standard input.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

fn client(crr: bool, target: SocketAddr, length: Duration, threads: usize) -> Result<(u64, u64)> {
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (count, errors, stop) = (count.clone(), errors.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut b = [0u8; 1];
            if crr {
                while !stop.load(Ordering::Relaxed) {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                        s.set_nodelay(true)?;
                        s.write_all(b"c")?;
                        s.read_exact(&mut b)?;
                        // Wait for the server's FIN.
                        let _ = s.read(&mut b)?;
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => count.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            } else {
                let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let _ = s.set_nodelay(true);
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(b"r")
                        .and_then(|()| s.read_exact(&mut b))
                        .is_err()
                    {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    let counted = count.load(Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    Ok((counted, errors.load(Ordering::Relaxed)))
}
