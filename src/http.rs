//! `run --http ADDR`: the line's state for people and tools — `/metrics` (Prometheus text
//! exposition), `/healthz`, `/` (a status page, no external assets), `/status.json` (what the
//! page polls) and `/ng/<seq>.png` (the overlay of a recent NG part, drawn on request).
//!
//! One thread, one connection at a time, each with 2-second read and write timeouts and a
//! request size limit: the server's work is bounded and it never touches the inspection path
//! (it reads [`Monitor`] snapshots). Only GET and HEAD; anything else is a 4xx.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::anomaly::to_image_size;
use crate::monitor::{BUCKETS_MS, Monitor, STAGES, Snapshot, percentile};
use crate::report::overlay;

const STATUS_PAGE: &str = include_str!("http/status.html");
/// Longest request head read (request line and headers).
const MAX_HEAD: u64 = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--http): {reason}")]
pub struct BindError {
    pub addr: String,
    pub reason: String,
}

/// Binds `addr` now (so a taken port is a setup error) and serves on a thread of its own.
pub fn serve(
    addr: &str,
    monitor: Arc<Monitor>,
    stall_limit: Duration,
) -> Result<SocketAddr, BindError> {
    let err = |reason: String| BindError {
        addr: addr.to_owned(),
        reason,
    };
    let listener = TcpListener::bind(addr).map_err(|e| err(e.to_string()))?;
    let local = listener.local_addr().map_err(|e| err(e.to_string()))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                // A client that misbehaves costs at most the timeouts, never the server.
                Ok(stream) => {
                    let _ = handle(stream, &monitor, stall_limit);
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    Ok(local)
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
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new((&stream).take(MAX_HEAD));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read (and bound) the headers; none is needed.
    let mut complete = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            break;
        }
        if header == "\r\n" || header == "\n" {
            complete = true;
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let response = match (method, target, version) {
        _ if !complete => Response::text("400 Bad Request", "incomplete or oversized request\n"),
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
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut left: usize = 64 * 1024;
    let mut scratch = [0u8; 4096];
    while left > 0 {
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
            Some(seq) => match ng_png(&monitor.snapshot(), seq, monitor.calibration_threshold) {
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

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition format (version 0.0.4).
pub fn prometheus(monitor: &Monitor, s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP efficientad_info The model, calibration and source of this run.\n# TYPE efficientad_info gauge\nefficientad_info{{model=\"{}\",model_sha256=\"{}\",calibration_sha256=\"{}\",source=\"{}\",version=\"{}\"}} 1",
        label(&monitor.model_name),
        label(&monitor.model_sha256),
        label(&monitor.calibration_sha256),
        label(&monitor.source),
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        o,
        "# HELP efficientad_threshold The calibration's decision threshold.\n# TYPE efficientad_threshold gauge\nefficientad_threshold {}",
        monitor.calibration_threshold
    );
    let _ = writeln!(
        o,
        "# HELP efficientad_answers_total Answers by verdict.\n# TYPE efficientad_answers_total counter"
    );
    for (verdict, n) in [("OK", s.ok), ("NG", s.ng), ("ERROR", s.errors)] {
        let _ = writeln!(o, "efficientad_answers_total{{verdict=\"{verdict}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "# HELP efficientad_errors_total ERROR answers by kind (the reason up to its first colon).\n# TYPE efficientad_errors_total counter"
    );
    for (kind, n) in &s.error_kinds {
        let _ = writeln!(
            o,
            "efficientad_errors_total{{kind=\"{}\"}} {n}",
            label(kind)
        );
    }
    let _ = writeln!(
        o,
        "# HELP efficientad_latency_seconds Latency of judged parts by stage (total: trigger arrival to answer).\n# TYPE efficientad_latency_seconds histogram"
    );
    for (stage, h) in STAGES.iter().zip(&s.latency) {
        let mut cumulative = 0;
        for (le, n) in BUCKETS_MS.iter().zip(&h.buckets) {
            cumulative += n;
            let _ = writeln!(
                o,
                "efficientad_latency_seconds_bucket{{stage=\"{stage}\",le=\"{}\"}} {cumulative}",
                le / 1000.0
            );
        }
        let _ = writeln!(
            o,
            "efficientad_latency_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}\nefficientad_latency_seconds_sum{{stage=\"{stage}\"}} {}\nefficientad_latency_seconds_count{{stage=\"{stage}\"}} {}",
            h.count,
            h.sum_ms / 1000.0,
            h.count
        );
    }
    let _ = writeln!(
        o,
        "# HELP efficientad_dropped_frames_total Frames dropped in free-run mode while inference was busy.\n# TYPE efficientad_dropped_frames_total counter\nefficientad_dropped_frames_total {}",
        s.dropped_frames
    );
    let _ = writeln!(
        o,
        "# HELP efficientad_reconnects_total Camera reconnections.\n# TYPE efficientad_reconnects_total counter\nefficientad_reconnects_total {}",
        s.reconnects
    );
    let _ = writeln!(
        o,
        "# HELP efficientad_camera_up 1 while the camera is connected.\n# TYPE efficientad_camera_up gauge\nefficientad_camera_up {}",
        u8::from(s.camera_up)
    );
    let _ = writeln!(
        o,
        "# HELP efficientad_uptime_seconds Time since the run started.\n# TYPE efficientad_uptime_seconds gauge\nefficientad_uptime_seconds {:.3}",
        monitor.started.elapsed().as_secs_f64()
    );
    o
}

/// What the status page shows.
fn status_json(monitor: &Monitor, s: &Snapshot, stall_limit: Duration) -> String {
    let recent: Vec<f64> = s.recent_ms.iter().copied().collect();
    let judged = s.ok + s.ng;
    let ng: Vec<serde_json::Value> = s
        .last_ng
        .iter()
        .rev()
        .map(|p| {
            serde_json::json!({
                "seq": p.seq, "id": serde_json::from_str::<serde_json::Value>(&p.id).unwrap_or_default(),
                "score": p.score, "time": p.time, "heatmap": format!("/ng/{}.png", p.seq),
            })
        })
        .collect();
    serde_json::json!({
        "model": monitor.model_name, "source": monitor.source, "threshold": monitor.calibration_threshold,
        "ok": s.ok, "ng": s.ng, "errors": s.errors, "error_kinds": s.error_kinds,
        "ng_rate": if judged > 0 { s.ng as f64 / judged as f64 } else { 0.0 },
        "p50_ms": percentile(&recent, 0.5), "p99_ms": percentile(&recent, 0.99),
        "camera_up": s.camera_up, "reconnects": s.reconnects, "dropped_frames": s.dropped_frames,
        "healthy": monitor.unhealthy(stall_limit).is_none(),
        "uptime_s": monitor.started.elapsed().as_secs_f64(),
        "last_ng": ng,
    })
    .to_string()
}

/// The overlay of a kept NG part at the network's input size, as PNG.
fn ng_png(s: &Snapshot, seq: u64, threshold: f64) -> Option<Vec<u8>> {
    let part = s.last_ng.iter().find(|p| p.seq == seq)?;
    let size = part.input_size as u32;
    let image = image::RgbImage::from_raw(size, size, part.input.clone())?;
    let full = to_image_size(&part.map, part.map_size, part.input_size, part.input_size);
    let mut png = Vec::new();
    overlay(&image, &full, threshold)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .ok()?;
    Some(png)
}
