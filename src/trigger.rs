//! The trigger protocol (DESIGN.md): stdin carries one trigger per line — an empty line, a bare
//! id, or a JSON object with an `id`. Every line, well-formed or not, is one trigger and gets
//! exactly one answer; a malformed line is answered with ERROR, never skipped.

use std::io::{BufRead, ErrorKind};
use std::time::{Instant, SystemTime};

/// Longest accepted trigger line; the rest of a longer line is read and discarded.
pub const MAX_LINE: usize = 4096;

/// One trigger as read from the PLC bridge.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// Sequence number, from 1, counting every line.
    pub seq: u64,
    /// The id to echo (a string or a number as given; null when none).
    pub id: serde_json::Value,
    pub received: Instant,
    pub received_at: SystemTime,
    /// Why the line is not a valid trigger (answered with ERROR).
    pub invalid: Option<String>,
}

/// Parses one line (without its newline) into `(id, invalid reason)`.
pub fn parse_line(line: &[u8], truncated: bool) -> (serde_json::Value, Option<String>) {
    use serde_json::Value;
    if truncated {
        return (
            Value::Null,
            Some(format!("trigger line longer than {MAX_LINE} bytes")),
        );
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return (Value::Null, Some("trigger line is not UTF-8 text".into()));
    };
    let text = text.trim_end_matches('\r').trim();
    if text.is_empty() {
        return (Value::Null, None);
    }
    if text.starts_with('{') {
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => match map.get("id") {
                Some(id @ (Value::String(_) | Value::Number(_))) => (id.clone(), None),
                Some(Value::Null) | None => (Value::Null, None),
                Some(other) => (
                    Value::Null,
                    Some(format!(
                        "trigger id must be a string or number, got {other}"
                    )),
                ),
            },
            Ok(_) => (Value::Null, Some("trigger JSON must be an object".into())),
            Err(e) => (
                Value::Null,
                Some(format!("trigger line is not valid JSON: {e}")),
            ),
        };
    }
    if text.chars().any(|c| c.is_control()) {
        return (
            Value::Null,
            Some("trigger line contains control characters".into()),
        );
    }
    if text.contains(char::is_whitespace) {
        return (
            Value::Null,
            Some("a bare trigger id may not contain spaces; send {\"id\": \"...\"} instead".into()),
        );
    }
    (Value::String(text.to_string()), None)
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
        let (id, invalid) = parse_line(&line, truncated);
        let trigger = Trigger {
            seq,
            id,
            received: Instant::now(),
            received_at: SystemTime::now(),
            invalid,
        };
        if !emit(trigger) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert_eq!(t[0].id, json!(null));
        assert!(t[0].invalid.is_none());
        assert_eq!(t[1].id, json!("part-7"));
        assert_eq!(t[2].id, json!(42));
        assert_eq!(t[3].id, json!("a b"));
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
        assert_eq!(t[1].id, json!("next"));
    }

    #[test]
    fn last_line_without_newline_counts() {
        let t = all(b"a\nb");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].id, json!("b"));
    }
}
