//! `run --http ADDR`: the line's state for people and tools — `/metrics` (Prometheus text
//! exposition), `/healthz`, `/` (a status page, no external assets), `/status.json` (what the
//! page polls) and `/ng/<seq>.png` (the overlay of a recent NG part, drawn on request).
//!
//! Each connection is served on a thread of its own, at most [`MAX_CONNECTIONS`] at once (more
//! are closed at once), with one deadline for the whole request head and a size limit: a slow
//! or idle client costs one sleeping thread for at most [`REQUEST_DEADLINE`], never another
//! client's answer. The server never touches the inspection path (it reads [`Monitor`]
//! snapshots). Only GET and HEAD; anything else is a 4xx.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::judge::anomaly::to_image_size;
use crate::line::monitor::{Monitor, Snapshot, percentile};
use crate::offline::report::overlay;

mod prometheus;
pub use prometheus::prometheus;

const STATUS_PAGE: &str = include_str!("http/status.html");
/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// Longest a client may take to send its whole request head, and to take the response.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; the next ones are closed without an answer until one ends.
pub const MAX_CONNECTIONS: usize = 512;
/// Stack of a connection thread: the handlers need little (the PNG of `/ng/` is on the heap).
const THREAD_STACK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--http): {source}")]
pub struct BindError {
    pub addr: String,
    pub source: std::io::Error,
}

/// Binds `addr` now (so a taken port is a setup error) and serves on a thread of its own.
pub fn serve(
    addr: &str,
    monitor: Arc<Monitor>,
    stall_limit: Duration,
) -> Result<SocketAddr, BindError> {
    let err = |source: std::io::Error| BindError {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    if !local.ip().is_loopback() {
        crate::log_line!(
            "efficientad: warning: --http {local} is reachable from the network: the status page shows recent NG part images and has no authentication; firewall it or listen on 127.0.0.1"
        );
    }
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                        // Over the bound: closed unanswered (dropped), at no cost to others.
                        continue;
                    }
                    open.fetch_add(1, Ordering::SeqCst);
                    let (monitor, counter) = (monitor.clone(), open.clone());
                    let spawned = std::thread::Builder::new()
                        .name("http".into())
                        .stack_size(THREAD_STACK)
                        .spawn(move || {
                            let _ = handle(stream, &monitor, stall_limit);
                            counter.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    Ok(local)
}

/// Reads a request head (up to the blank line) within `deadline`; `None` when the client
/// sent too much, too slowly or closed early.
fn read_head(stream: &TcpStream, deadline: Instant) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_blank_line(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// Where the head ends: after the first empty line (CRLF CRLF, or LF LF).
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

fn handle(stream: TcpStream, monitor: &Monitor, stall_limit: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let head = read_head(&stream, deadline)?;
    // Headers are read (and bounded) but none is needed.
    let text = head.as_deref().map(std::str::from_utf8);
    let request_line = match &text {
        Some(Ok(t)) => t.lines().next().unwrap_or(""),
        _ => "",
    };
    let mut parts = request_line.split_whitespace();
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let response = match (method, target, version) {
        _ if head.is_none() => Response::text(
            "400 Bad Request",
            "incomplete, oversized or too slow request\n",
        ),
        _ if matches!(text, Some(Err(_))) => {
            Response::text("400 Bad Request", "the request is not valid UTF-8\n")
        }
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") && t.starts_with('/') => {
            if m == "GET" || m == "HEAD" {
                route(t, monitor, stall_limit)
            } else {
                Response::text("405 Method Not Allowed", "only GET and HEAD\n")
            }
        }
        _ => Response::text("400 Bad Request", "not an HTTP/1.x request line\n"),
    };
    let mut out = &stream;
    let allow = if response.status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    write!(
        out,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    )?;
    if method != Some("HEAD") {
        out.write_all(&response.body)?;
    }
    out.flush()?;
    // Closing with unread request bytes (an oversized head) would reset the connection and
    // could discard the response before the client reads it: end our side, then drain a
    // bounded amount briefly.
    stream.shutdown(Shutdown::Write)?;
    // Bounded in bytes and in time: a client trickling bytes cannot hold the thread.
    let drain_until = Instant::now() + Duration::from_millis(200);
    let mut left: usize = 64 * 1024;
    let mut scratch = [0u8; 4096];
    while left > 0 {
        let wait = drain_until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(wait))?;
        match (&stream).read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

fn route(target: &str, monitor: &Monitor, stall_limit: Duration) -> Response {
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/" => Response {
            status: "200 OK",
            content_type: "text/html; charset=utf-8",
            body: STATUS_PAGE.as_bytes().to_vec(),
        },
        "/metrics" => Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: prometheus(monitor, &monitor.snapshot()).into_bytes(),
        },
        "/healthz" => match monitor.unhealthy(stall_limit) {
            None => Response::text("200 OK", "ok\n"),
            Some(why) => Response::text("503 Service Unavailable", format!("{why}\n")),
        },
        "/frame.png" => match monitor.live.png() {
            Some(png) => Response {
                status: "200 OK",
                content_type: "image/png",
                body: png,
            },
            // The first request asks for frames; one arrives with the next frame taken.
            None => Response::text(
                "503 Service Unavailable",
                "no frame yet: frames are kept while someone looks; ask again in a moment\n",
            ),
        },
        "/status.json" => Response {
            status: "200 OK",
            content_type: "application/json",
            body: status_json(monitor, &monitor.snapshot(), stall_limit).into_bytes(),
        },
        _ => match path
            .strip_prefix("/ng/")
            .and_then(|p| p.strip_suffix(".png"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(seq) => match ng_png(&monitor.snapshot(), seq) {
                Some(png) => Response {
                    status: "200 OK",
                    content_type: "image/png",
                    body: png,
                },
                None => Response::text("404 Not Found", "no such recent NG part\n"),
            },
            None => Response::text("404 Not Found", "not found\n"),
        },
    }
}

/// One kept NG part on the status page.
#[derive(serde::Serialize)]
struct NgJson<'a> {
    seq: u64,
    /// The id exactly as the answer line echoed it: its JSON text, never re-parsed into a
    /// float (a 20-digit id would be rounded, 1e400 would become null).
    id: Box<serde_json::value::RawValue>,
    score: f32,
    time: &'a Option<String>,
    heatmap: String,
}

/// What the status page shows.
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    model: &'a str,
    source: &'a str,
    threshold: f64,
    ok: u64,
    ng: u64,
    errors: u64,
    error_kinds: &'a std::collections::BTreeMap<&'static str, u64>,
    ng_rate: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    camera_up: bool,
    reconnects: u64,
    dropped_frames: u64,
    healthy: bool,
    uptime_s: f64,
    last_ng: Vec<NgJson<'a>>,
}

fn status_json(monitor: &Monitor, s: &Snapshot, stall_limit: Duration) -> String {
    let recent: Vec<f64> = s.recent_ms.iter().copied().collect();
    let judged = s.ok + s.ng;
    let raw = |text: &str| {
        serde_json::value::RawValue::from_string(text.to_owned())
            .or_else(|_| serde_json::value::RawValue::from_string("null".to_owned()))
    };
    let last_ng = s
        .last_ng
        .iter()
        .rev()
        .filter_map(|p| {
            Some(NgJson {
                seq: p.seq,
                id: raw(&p.id).ok()?,
                score: p.score,
                time: &p.time,
                heatmap: format!("/ng/{}.png", p.seq),
            })
        })
        .collect();
    let status = StatusJson {
        model: &monitor.model_name,
        source: &monitor.source,
        threshold: monitor.calibration_threshold,
        ok: s.ok,
        ng: s.ng,
        errors: s.errors,
        error_kinds: &s.error_kinds,
        ng_rate: if judged > 0 {
            s.ng as f64 / judged as f64
        } else {
            0.0
        },
        p50_ms: percentile(&recent, 0.5),
        p99_ms: percentile(&recent, 0.99),
        camera_up: s.camera_up,
        reconnects: s.reconnects,
        dropped_frames: s.dropped_frames,
        healthy: monitor.unhealthy(stall_limit).is_none(),
        uptime_s: monitor.started.elapsed().as_secs_f64(),
        last_ng,
    };
    serde_json::to_string(&status).unwrap_or_default()
}

/// The overlay of a kept NG part at the network's input size, as PNG.
fn ng_png(s: &Snapshot, seq: u64) -> Option<Vec<u8>> {
    let part = s.last_ng.iter().find(|p| p.seq == seq)?;
    let size = part.input_size as u32;
    let image = image::RgbImage::from_raw(size, size, part.input.clone())?;
    let full = to_image_size(&part.map, part.map_size, part.input_size, part.input_size);
    let mut png = Vec::new();
    overlay(&image, &full, part.threshold)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .ok()?;
    Some(png)
}
