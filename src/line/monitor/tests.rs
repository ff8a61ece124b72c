use super::*;
use crate::line::protocol::{AnswerError, ErrorKind, Latency, TriggerId};

fn answer(verdict: Verdict, error: Option<(ErrorKind, &str)>, total: f64) -> Answer {
    Answer {
        id: TriggerId::None,
        seq: 1,
        verdict,
        score: None,
        threshold: 0.0,
        trigger_time: None,
        frame_time: None,
        frame: None,
        latency_ms: Latency {
            total,
            ..Latency::default()
        },
        heatmap: None,
        error: error.map(|(kind, reason)| AnswerError::new(kind, reason)),
        model: None,
    }
}

#[test]
fn answers_are_counted_by_verdict_kind_and_bucket() {
    let m = Monitor::new("m", "abc", "def", 0.1, "dir:x");
    m.record(&answer(Verdict::Ok, None, 3.0));
    m.record(&answer(Verdict::Ng, None, 250.0));
    m.record(&answer(
        Verdict::Error,
        Some((ErrorKind::BadFrame, "bad frame: frame dropped")),
        0.0,
    ));
    m.record(&answer(
        Verdict::Error,
        Some((ErrorKind::BadFrame, "bad frame: other detail")),
        0.0,
    ));
    let s = m.snapshot();
    assert_eq!((s.ok, s.ng, s.errors), (1, 1, 2));
    assert_eq!(s.error_kinds.get("bad_frame"), Some(&2));
    let total = &s.latency[4];
    assert_eq!(total.count, 2);
    assert_eq!(total.buckets[2], 1, "3 ms falls in le=5");
    assert_eq!(total.buckets[8], 1, "250 ms falls in le=300");
    assert!((total.sum_ms - 253.0).abs() < 1e-9);
    // An answer that could not be delivered is taken back.
    m.retract(&answer(
        Verdict::Error,
        Some((ErrorKind::BadFrame, "bad frame: x")),
        0.0,
    ));
    let s = m.snapshot();
    assert_eq!((s.errors, s.error_kinds.get("bad_frame")), (1, Some(&1)));
}

#[test]
fn health_follows_the_camera_and_stalls() {
    let m = Monitor::new("m", "abc", "def", 0.1, "dir:x");
    assert!(m.unhealthy(Duration::from_secs(1)).is_none());
    m.camera_lost();
    assert!(m.unhealthy(Duration::from_secs(1)).is_some());
    m.camera_back();
    assert!(m.unhealthy(Duration::from_secs(1)).is_none());
    m.record(&answer(
        Verdict::Error,
        Some((ErrorKind::Inference, "inference failed: x")),
        0.0,
    ));
    assert!(m.unhealthy(Duration::from_secs(1)).is_some());
    m.record(&answer(Verdict::Ok, None, 1.0));
    assert!(m.unhealthy(Duration::from_secs(1)).is_none());
    // Frames that cannot be decoded: unhealthy until a part is judged again; a malformed
    // trigger or an overload in between changes nothing.
    m.record(&answer(
        Verdict::Error,
        Some((ErrorKind::BadFrame, "bad frame: not a JPEG")),
        0.0,
    ));
    let why = m.unhealthy(Duration::from_secs(1)).expect("unhealthy");
    assert!(why.contains("bad frame"), "{why}");
    m.record(&answer(
        Verdict::Error,
        Some((ErrorKind::Trigger, "trigger line is not valid JSON: x")),
        0.0,
    ));
    assert!(m.unhealthy(Duration::from_secs(1)).is_some());
    m.record(&answer(Verdict::Ok, None, 1.0));
    m.record(&answer(
        Verdict::Error,
        Some((ErrorKind::Overloaded, "overloaded: trigger waited 900 ms")),
        0.0,
    ));
    assert!(m.unhealthy(Duration::from_secs(1)).is_none());
    let busy = m.busy(Stage::Capture);
    std::thread::sleep(Duration::from_millis(30));
    assert!(m.stalled(Duration::from_millis(10)));
    drop(busy);
    assert!(!m.stalled(Duration::from_millis(10)));
}
