//! Trigger lines (docs/design.md): stdin carries one trigger per line — an empty line, a bare id,
//! or a JSON object with an `id`. Every line, well-formed or not, is one trigger and gets
//! exactly one answer; a malformed line is answered with ERROR, never skipped.

use std::io::{BufRead, ErrorKind};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest accepted trigger line; the rest of a longer line is read and discarded.
pub const MAX_LINE: usize = 4096;

/// The id a trigger carries, echoed in its answer exactly as sent: a number keeps its own
/// digits (`123456789012345678901234567890` is not rounded through an f64), because the
/// bridge matches answers to parts by comparing the id.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(untagged)]
pub enum TriggerId {
    /// No id (an empty line, `{}` or `"id": null`): answered with `"id": null`.
    #[default]
    None,
    Text(String),
    /// The number's JSON text as it was on the line.
    Number(Box<RawValue>),
}

impl TriggerId {
    /// The id as it appears in an answer line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl PartialEq for TriggerId {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::None, Self::None) => true,
            (Self::Text(a), Self::Text(b)) => a == b,
            (Self::Number(a), Self::Number(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

impl From<String> for TriggerId {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for TriggerId {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

/// One trigger: from the PLC bridge, or made by the runtime for a free-running frame.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// Sequence number, from 1, counting every line.
    pub seq: u64,
    /// The id to echo.
    pub id: TriggerId,
    /// When the trigger arrived (the line was read): the start of its latency, and the
    /// clock its age is measured on.
    pub received: Instant,
    pub received_at: SystemTime,
    /// Why the line is not a valid trigger (answered with ERROR).
    pub invalid: Option<String>,
    /// The model a JSON trigger names (`"model": "NAME"`, a run with several models); None:
    /// the run's default.
    pub model: Option<String>,
}

impl Trigger {
    /// A valid trigger arriving now.
    pub fn new(seq: u64, id: impl Into<TriggerId>) -> Self {
        Self::at(seq, id.into(), Instant::now(), SystemTime::now())
    }

    /// A valid trigger that arrived at a given time (free run: the frame's capture time).
    pub fn at(seq: u64, id: TriggerId, received: Instant, received_at: SystemTime) -> Self {
        Self {
            seq,
            id,
            received,
            received_at,
            invalid: None,
            model: None,
        }
    }

    /// A trigger line read now, valid or not.
    pub fn from_line(seq: u64, line: &[u8], truncated: bool) -> Self {
        let (id, mut invalid) = parse_line(line, truncated);
        let model = match invalid {
            None => parse_model(line).unwrap_or_else(|reason| {
                invalid = Some(reason);
                None
            }),
            Some(_) => None,
        };
        Self {
            invalid,
            model,
            ..Self::new(seq, id)
        }
    }
}

/// The `id` member of a JSON trigger, as its raw JSON text; other members are ignored.
#[derive(Deserialize)]
struct JsonTrigger<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// The `model` member of a JSON trigger line (None without one, or for a bare id); an error
/// when it is not a string. Called on lines [`parse_line`] accepted.
fn parse_model(line: &[u8]) -> Result<Option<String>, String> {
    #[derive(Deserialize)]
    struct ModelMember {
        #[serde(default)]
        model: Option<serde_json::Value>,
    }
    let text = std::str::from_utf8(line).unwrap_or("").trim();
    if !text.starts_with('{') {
        return Ok(None);
    }
    match serde_json::from_str::<ModelMember>(text).map(|m| m.model) {
        Ok(None | Some(serde_json::Value::Null)) | Err(_) => Ok(None),
        Ok(Some(serde_json::Value::String(name))) => Ok(Some(name)),
        Ok(Some(other)) => Err(format!(
            "trigger model must be a string naming a model, got {other}"
        )),
    }
}

/// Parses one line (without its newline) into `(id, invalid reason)`.
pub fn parse_line(line: &[u8], truncated: bool) -> (TriggerId, Option<String>) {
    let invalid = |reason: String| (TriggerId::None, Some(reason));
    if truncated {
        return invalid(format!("trigger line longer than {MAX_LINE} bytes"));
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return invalid("trigger line is not UTF-8 text".into());
    };
    let text = text.trim_end_matches('\r').trim();
    if text.is_empty() {
        return (TriggerId::None, None);
    }
    if text.starts_with('{') {
        let parsed = match serde_json::from_str::<JsonTrigger<'_>>(text) {
            Ok(p) => p,
            Err(e) => return invalid(format!("trigger line is not valid JSON: {e}")),
        };
        let Some(raw) = parsed.id else {
            return (TriggerId::None, None);
        };
        let json = raw.get();
        return match json.as_bytes().first() {
            Some(b'"') => match serde_json::from_str::<String>(json) {
                Ok(text) => (TriggerId::Text(text), None),
                Err(e) => invalid(format!("trigger id is not a valid string: {e}")),
            },
            Some(b'-' | b'0'..=b'9') => (TriggerId::Number(raw.to_owned()), None),
            _ => invalid(format!("trigger id must be a string or number, got {json}")),
        };
    }
    if text.chars().any(|c| c.is_control()) {
        return invalid("trigger line contains control characters".into());
    }
    if text.contains(char::is_whitespace) {
        return invalid(
            "a bare trigger id may not contain spaces; send {\"id\": \"...\"} instead".into(),
        );
    }
    (TriggerId::Text(text.to_string()), None)
}

/// Reads triggers from `input` until EOF, calling `emit` for each; stops early when `emit`
/// returns false. Lines are bounded to [`MAX_LINE`] bytes.
pub fn read_triggers(mut input: impl BufRead, mut emit: impl FnMut(Trigger) -> bool) {
    let mut seq = 0;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let mut truncated = false;
        let mut got_any = false;
        // Read one line by hand so an endless line cannot grow memory.
        loop {
            let buf = match input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if buf.is_empty() {
                if !got_any {
                    return;
                }
                break;
            }
            got_any = true;
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            if chunk.len() > room {
                truncated = true;
            }
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let consumed = done.unwrap_or(buf.len());
            input.consume(consumed);
            if done.is_some() {
                break;
            }
        }
        seq += 1;
        if !emit(Trigger::from_line(seq, &line, truncated)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_trigger_may_name_a_model_as_a_string() {
        let t = all(
            b"{\"id\": 1, \"model\": \"part-b\"}\n{\"id\": 2}\nbare\n{\"id\": 3, \"model\": 7}\n",
        );
        assert_eq!(t[0].model.as_deref(), Some("part-b"));
        assert!(t[0].invalid.is_none());
        assert_eq!((t[1].model.as_deref(), t[2].model.as_deref()), (None, None));
        assert!(t[3].model.is_none());
        let why = t[3].invalid.as_deref().unwrap_or("");
        assert!(why.starts_with("trigger model must be a string"), "{why}");
    }

    fn all(input: &[u8]) -> Vec<Trigger> {
        let mut out = Vec::new();
        read_triggers(input, |t| {
            out.push(t);
            true
        });
        out
    }

    #[test]
    fn every_line_is_a_trigger() {
        let t = all(b"\npart-7\n{\"id\": 42}\n{\"id\":\"a b\",\"x\":1}\n{bad\n\xff\xfe\n");
        assert_eq!(t.len(), 6);
        assert_eq!(t[0].id.to_json(), "null");
        assert!(t[0].invalid.is_none());
        assert_eq!(t[1].id.to_json(), r#""part-7""#);
        assert_eq!(t[2].id.to_json(), "42");
        assert_eq!(t[3].id.to_json(), r#""a b""#);
        assert!(
            t[4].invalid
                .as_deref()
                .is_some_and(|r| r.contains("not valid JSON"))
        );
        assert!(t[5].invalid.as_deref().is_some_and(|r| r.contains("UTF-8")));
        assert_eq!(
            t.iter().map(|t| t.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn long_lines_are_one_error_and_the_next_line_is_fine() {
        let mut input = vec![b'x'; 3 * MAX_LINE];
        input.extend_from_slice(b"\nnext\n");
        let t = all(&input);
        assert_eq!(t.len(), 2);
        assert!(
            t[0].invalid
                .as_deref()
                .is_some_and(|r| r.contains("longer than"))
        );
        assert_eq!(t[1].id, TriggerId::from("next"));
    }

    #[test]
    fn last_line_without_newline_counts() {
        let t = all(b"a\nb");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].id, TriggerId::from("b"));
    }

    #[test]
    fn numeric_ids_are_echoed_digit_for_digit_issue16() {
        // Each id written out by hand as it must come back: through an f64 the first two
        // would become 1.2345678901234568e+29 and 9007199254740992.
        for (line, echoed) in [
            (
                r#"{"id": 123456789012345678901234567890}"#,
                "123456789012345678901234567890",
            ),
            (r#"{"id":9007199254740993}"#, "9007199254740993"),
            (r#"{"id": -0.50}"#, "-0.50"),
            (r#"{"id": 1E+3, "x": [1, {"id": 2}]}"#, "1E+3"),
            (r#"{"id": "caf\u00e9"}"#, "\"café\""),
            (r#"{"x": 1}"#, "null"),
            (r#"{"id": null}"#, "null"),
        ] {
            let (id, invalid) = parse_line(line.as_bytes(), false);
            assert!(invalid.is_none(), "{line}: {invalid:?}");
            assert_eq!(id.to_json(), echoed, "{line}");
        }
        for bad in [
            r#"{"id": true}"#,
            r#"{"id": [1]}"#,
            r#"{"id": {"a": 1}}"#,
            "{\"id\": 1} x",
        ] {
            let (_, invalid) = parse_line(bad.as_bytes(), false);
            assert!(invalid.is_some(), "{bad} was accepted");
        }
    }
}
