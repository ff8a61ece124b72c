//! Answer lines: one JSON object per trigger on stdout, the fields docs/design.md and README's
//! protocol section list, times in RFC 3339 UTC.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

use super::TriggerId;
use crate::judge::inspect::Verdict;

/// Latency of one answer per stage, milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub trigger_to_frame: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub maps: f64,
    pub total: f64,
}

/// Which frame was judged.
#[derive(Clone, Debug, Serialize)]
pub struct FrameInfo {
    pub index: u64,
    pub source: String,
    pub width: u32,
    pub height: u32,
}

/// One stdout line.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    pub id: TriggerId,
    pub seq: u64,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    pub threshold: f64,
    pub trigger_time: Option<String>,
    pub frame_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<FrameInfo>,
    pub latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<String>,
    /// Why there is no verdict: `"error"` (the reason, for people) and `"error_kind"` (a fixed
    /// word, for the bridge and the metrics), both absent on OK and NG.
    #[serde(flatten)]
    pub error: Option<AnswerError>,
    /// The model that judged the part, in a run with several models (`run --model NAME=DIR`
    /// given more than once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelTag>,
}

/// Why an answer is ERROR.
#[derive(Clone, Debug, Serialize)]
pub struct AnswerError {
    #[serde(rename = "error_kind")]
    pub kind: ErrorKind,
    #[serde(rename = "error")]
    pub reason: String,
}

impl AnswerError {
    pub fn new(kind: ErrorKind, reason: impl std::fmt::Display) -> Self {
        Self {
            kind,
            reason: reason.to_string(),
        }
    }
}

/// The kind of an ERROR answer, taken from the error's type (never from its text): the
/// answer's `error_kind` and the `kind` label of `efficientad_errors_total` (docs/design.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The trigger line is malformed (not JSON, too long, a bad id or model field).
    Trigger,
    /// The trigger names a model this run does not have.
    UnknownModel,
    /// The trigger waited longer than `--max-trigger-age-ms` for the camera.
    Overloaded,
    /// The camera is gone or reconnecting.
    CameraUnavailable,
    /// A frame arrived but cannot be used (undecodable, wrong size, a driver error).
    BadFrame,
    /// No frame came within the timeout.
    FrameTimeout,
    /// A `dir:` source played once has no more images.
    SourceExhausted,
    /// The frame could not be resized for the model.
    Preprocess,
    /// ONNX Runtime failed on the frame.
    Inference,
    /// The inspection region covers no map cell of this frame.
    NoRegion,
    /// The maps hold NaN.
    NanMap,
    /// The runtime could not start (model, calibration, camera); answered to pending triggers.
    Startup,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::UnknownModel => "unknown_model",
            Self::Overloaded => "overloaded",
            Self::CameraUnavailable => "camera_unavailable",
            Self::BadFrame => "bad_frame",
            Self::FrameTimeout => "frame_timeout",
            Self::SourceExhausted => "source_exhausted",
            Self::Preprocess => "preprocess",
            Self::Inference => "inference",
            Self::NoRegion => "no_region",
            Self::NanMap => "nan_map",
            Self::Startup => "startup",
        }
    }

    /// Failures of the trigger itself or of the backlog: they say nothing about camera,
    /// frames or engine (the health check leaves its state as it was).
    pub fn is_about_the_trigger(self) -> bool {
        matches!(self, Self::Trigger | Self::UnknownModel | Self::Overloaded)
    }
}

/// Which model judged a part: its name and the first 12 hex digits of its graph's sha256.
#[derive(Clone, Debug, Serialize)]
pub struct ModelTag {
    pub name: String,
    pub sha256: String,
}

/// Writes one JSON value per line and flushes it, so the bridge sees each answer at once.
/// After the first write error (the bridge closed the pipe) later lines are dropped and the
/// error is kept for the end of the run, so the run itself still drains and summarizes.
pub struct JsonLines<W: Write> {
    out: W,
    error: Option<std::io::Error>,
}

impl<W: Write> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self { out, error: None }
    }

    /// Writes one line; false when it could not be delivered (now or at an earlier line).
    pub fn write(&mut self, value: &impl Serialize) -> bool {
        if self.error.is_some() {
            return false;
        }
        let written = serde_json::to_writer(&mut self.out, value)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .and_then(|()| self.out.flush());
        match written {
            Ok(()) => true,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    /// The first write error, if any.
    pub fn finish(self) -> std::io::Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

/// RFC 3339 UTC time with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_960_800_123);
        assert_eq!(rfc3339(t), "2026-11-29T14:00:00.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_lines_keep_the_first_error_and_stop_writing() {
        struct Failing(usize);
        impl Write for Failing {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "closed",
                    ));
                }
                self.0 -= 1;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut ok = JsonLines::new(Vec::new());
        ok.write(&1);
        ok.write(&"a");
        assert!(ok.finish().is_ok());
        let mut buf = Vec::new();
        let mut lines = JsonLines::new(&mut buf);
        lines.write(&[1, 2]);
        lines.write(&"x");
        assert!(lines.finish().is_ok());
        assert_eq!(String::from_utf8(buf).expect("utf8"), "[1,2]\n\"x\"\n");
        let mut failing = JsonLines::new(Failing(2));
        for v in 0..5 {
            failing.write(&v);
        }
        let e = failing.finish().expect_err("the pipe closed");
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
