//! `/metrics`: the monitor's counters in Prometheus' text exposition format.

use std::fmt::Write as _;

use crate::line::monitor::{BUCKETS_MS, Monitor, STAGES, Snapshot};

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
        "# HELP efficientad_errors_total ERROR answers by kind (the answers' error_kind).\n# TYPE efficientad_errors_total counter"
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
        "# HELP efficientad_heatmaps_written_total Heatmap overlays written.\n# TYPE efficientad_heatmaps_written_total counter\nefficientad_heatmaps_written_total {}",
        s.heatmaps_written
    );
    let _ = writeln!(
        o,
        "# HELP efficientad_heatmaps_removed_total Oldest heatmaps removed to stay within --heatmaps-max-files / --heatmaps-max-mb.\n# TYPE efficientad_heatmaps_removed_total counter\nefficientad_heatmaps_removed_total {}",
        s.heatmaps_removed
    );
    let _ = writeln!(
        o,
        "# HELP efficientad_heatmap_bytes Bytes of heatmaps in the --heatmaps folder.\n# TYPE efficientad_heatmap_bytes gauge\nefficientad_heatmap_bytes {}",
        s.heatmap_bytes
    );
    let _ = writeln!(
        o,
        "# HELP efficientad_log_lines_dropped_total Log lines that could not be written to stderr (dropped, never fatal).\n# TYPE efficientad_log_lines_dropped_total counter\nefficientad_log_lines_dropped_total {}",
        crate::log::dropped()
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
    if !s.per_model.is_empty() {
        let _ = writeln!(
            o,
            "# HELP efficientad_model_answers_total Answers per model and verdict (a run with several models).\n# TYPE efficientad_model_answers_total counter"
        );
        for (model, counts) in &s.per_model {
            for (verdict, n) in ["OK", "NG", "ERROR"].iter().zip(counts) {
                let _ = writeln!(
                    o,
                    "efficientad_model_answers_total{{model=\"{}\",verdict=\"{verdict}\"}} {n}",
                    label(model)
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "# HELP efficientad_live_frames_total Frames copied for /frame.png (only while someone looks).\n# TYPE efficientad_live_frames_total counter\nefficientad_live_frames_total {}",
        monitor
            .live
            .copies
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    o
}
