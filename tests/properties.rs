//! Property tests: hostile bytes into everything that parses input from outside — trigger
//! lines, calibration files, model.json and image files. Whatever the bytes, each call returns
//! (no panic, no hang) with a trigger, a value or an error; what a loader accepts satisfies
//! the invariants the verdict depends on.
//!
//! CI runs proptest's default of 256 cases per property; `PROPTEST_CASES=N` runs more
//! (README: Tests).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;

use efficientad::judge::calibration::Calibration;
use efficientad::line::protocol::{MAX_LINE, TriggerId, parse_line, read_triggers};
use efficientad::model::bundle::{BUNDLE_FORMAT_VERSION, ModelInfo};
use efficientad::model::preprocess::{Preprocessor, decode_bytes, to_rgb8};

const SHIPPED_CALIBRATION: &str = include_str!("../calibration/mtd-s.json");
const SHIPPED_MODEL_JSON: &str = include_str!("../onnx/mtd-s/model.json");
/// A 256x256 crop of an MTD tile (the cross-architecture fixture).
const TILE_PNG: &[u8] = include_bytes!("../tests/fixtures/arch/good.png");

/// Longest one case may take: a parser that loops on some input fails the test instead of
/// hanging CI.
const CASE_LIMIT: Duration = Duration::from_secs(10);

/// Runs `f` on its own thread and fails if it does not return within [`CASE_LIMIT`]; a panic
/// inside `f` fails the test as well.
fn returns_in_time<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(CASE_LIMIT) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let panic = worker.join().err();
            panic!("the call panicked: {panic:?}")
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the call did not return within {CASE_LIMIT:?}")
        }
    }
}

/// Lines as a PLC bridge, a broken one or line noise might send them.
fn trigger_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        any::<String>().prop_map(String::into_bytes),
        any::<i64>().prop_map(|n| format!("{{\"id\": {n}}}").into_bytes()),
        any::<String>().prop_map(|s| format!(
            "{{\"id\": {}, \"x\": [1]}}",
            serde_json::to_string(&s).unwrap_or_default()
        )
        .into_bytes()),
        (0usize..3 * MAX_LINE).prop_map(|n| vec![b'7'; n]),
    ]
}

fn check_calibration(text: String) -> Result<(), String> {
    match returns_in_time(move || Calibration::parse(&text, Path::new("prop.json"))) {
        Err(e) => {
            // Every refusal names the file it refused.
            prop_assert_msg(e.to_string().contains("prop.json"), &format!("{e}"))
        }
        Ok(c) => {
            for q in [c.normalization.st, c.normalization.ae] {
                if !(q.q_a.is_finite() && q.q_b.is_finite() && q.q_b > q.q_a) {
                    return Err(format!("accepted quantiles {q:?}"));
                }
            }
            prop_assert_msg(
                c.threshold.is_finite(),
                &format!("accepted threshold {}", c.threshold),
            )
        }
    }
}

fn prop_assert_msg(ok: bool, message: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(message.to_owned()) }
}

/// A hostile value for a numeric field of a JSON file.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
        any::<String>().prop_map(Value::from),
        Just(serde_json::json!([1.0])),
        Just(serde_json::json!({"q_a": 1})),
        Just(Value::Bool(true)),
    ]
}

/// Decodes and, when that succeeds, prepares the network input: either an error or a full
/// input, never a panic.
fn decode_and_prepare(bytes: Vec<u8>) -> Result<(), String> {
    let prepared = returns_in_time(move || {
        decode_bytes(&bytes, Path::new("prop.img")).map(|image| {
            let rgb = to_rgb8(image);
            let mut out = vec![0u8; 256 * 256 * 3];
            Preprocessor::new(256)
                .resize_rgb(rgb.as_raw(), rgb.width(), rgb.height(), &mut out)
                .map(|()| out.len())
        })
    });
    match prepared {
        Ok(Ok(n)) => prop_assert_msg(n == 256 * 256 * 3, "short input"),
        Ok(Err(e)) | Err(e) => prop_assert_msg(!e.to_string().is_empty(), "an empty error"),
    }
}

fn tile_as_jpeg() -> Vec<u8> {
    let tile = image::load_from_memory(TILE_PNG)
        .expect("fixture")
        .to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&tile)
        .expect("encode");
    jpeg
}

proptest! {
    #[test]
    fn every_line_is_exactly_one_trigger(lines in prop::collection::vec(trigger_line(), 0..20), last_newline in any::<bool>()) {
        let mut input = Vec::new();
        for line in &lines {
            // A newline inside a generated line splits it, as it would on the wire.
            input.extend_from_slice(line);
            input.push(b'\n');
        }
        if !last_newline && input.last() == Some(&b'\n') {
            input.pop();
        }
        // Expected count, from the bytes alone: newline-terminated lines plus an unterminated tail.
        let newlines = input.iter().filter(|&&b| b == b'\n').count();
        let tail = input.rsplit(|&b| b == b'\n').next().is_some_and(|t| !t.is_empty());
        let expected = newlines + usize::from(tail);
        let triggers = returns_in_time(move || {
            let mut out = Vec::new();
            read_triggers(input.as_slice(), |t| { out.push(t); true });
            out
        });
        prop_assert_eq!(triggers.len(), expected);
        for (i, t) in triggers.iter().enumerate() {
            prop_assert_eq!(t.seq, i as u64 + 1);
            if let Some(reason) = &t.invalid {
                prop_assert!(!reason.is_empty());
                prop_assert!(t.id == TriggerId::None);
            }
            // Every id serializes as one JSON value (the answer line stays one line).
            let json = t.id.to_json();
            prop_assert!(serde_json::from_str::<Value>(&json).is_ok(), "{}", json);
            prop_assert!(!json.contains('\n'));
        }
    }

    #[test]
    fn numeric_and_text_ids_are_echoed_exactly(
        digits in prop::collection::vec(0u8..10, 1..80),
        negative in any::<bool>(),
        fraction in prop::option::of(prop::collection::vec(0u8..10, 1..12)),
        text in any::<String>(),
    ) {
        let mut number: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        if number.len() > 1 && number.starts_with('0') {
            number.insert(0, '1'); // JSON numbers have no leading zeros
        }
        if let Some(f) = fraction {
            number.push('.');
            number.extend(f.iter().map(|d| char::from(b'0' + d)));
        }
        if negative {
            number.insert(0, '-');
        }
        let (id, invalid) = parse_line(format!("{{\"id\": {number}}}").as_bytes(), false);
        prop_assert!(invalid.is_none(), "{:?}", invalid);
        prop_assert_eq!(id.to_json(), number);
        let quoted = serde_json::to_string(&text).unwrap_or_default();
        let (id, invalid) = parse_line(format!("{{\"id\":{quoted}}}").as_bytes(), false);
        prop_assert!(invalid.is_none(), "{:?}", invalid);
        prop_assert_eq!(id, TriggerId::Text(text));
    }

    #[test]
    fn calibration_files_of_any_bytes_load_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        check_calibration(String::from_utf8_lossy(&bytes).into_owned()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn calibration_fields_with_hostile_values_are_refused_or_valid(
        field in prop::sample::select(vec![
            "/threshold", "/normalization/st/q_a", "/normalization/st/q_b",
            "/normalization/ae/q_a", "/normalization/ae/q_b", "/normalization/st",
            "/format_version", "/scores/count", "/region", "/validation",
        ]),
        value in hostile_value(),
    ) {
        let mut doc: Value = serde_json::from_str(SHIPPED_CALIBRATION).expect("shipped calibration");
        if let Some(slot) = doc.pointer_mut(field) {
            *slot = value;
        } else if let Some(obj) = doc.as_object_mut() {
            obj.insert(field.trim_start_matches('/').to_owned(), value);
        }
        check_calibration(doc.to_string()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn model_json_of_any_bytes_or_hostile_fields_loads_or_is_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        field in prop::sample::select(vec!["/input_size", "/map_size", "/format_version", "/model_sha256", "/variant", "/teacher"]),
        value in hostile_value(),
    ) {
        let mut doc: Value = serde_json::from_str(SHIPPED_MODEL_JSON).expect("shipped model.json");
        if let Some(slot) = doc.pointer_mut(field) {
            *slot = value;
        }
        for text in [String::from_utf8_lossy(&bytes).into_owned(), doc.to_string()] {
            match returns_in_time(move || ModelInfo::parse(&text, Path::new("prop/model.json"))) {
                Ok(info) => prop_assert_eq!(info.format_version, BUNDLE_FORMAT_VERSION),
                Err(e) => prop_assert!(e.to_string().contains("prop/model.json"), "{}", e),
            }
        }
    }

    #[test]
    fn image_bytes_of_any_kind_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
        decode_and_prepare(bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn damaged_png_and_jpeg_files_decode_or_are_refused(
        jpeg in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let mut bytes = if jpeg { tile_as_jpeg() } else { TILE_PNG.to_vec() };
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        // Keep at least the signature, cut somewhere after it (or not at all).
        let keep = 8 + cut.index(bytes.len() - 7);
        bytes.truncate(keep);
        decode_and_prepare(bytes).map_err(TestCaseError::fail)?;
    }
}
