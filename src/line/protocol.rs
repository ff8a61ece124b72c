//! The PLC bridge protocol (docs/design.md), in one place: trigger lines in ([`trigger`]), answer
//! lines out ([`answer`]), and the one JSON-lines writer every command prints results with.

pub mod answer;
pub mod trigger;

pub use answer::{
    Answer, AnswerError, ErrorKind, FrameInfo, JsonLines, Latency, ModelTag, rfc3339,
};
pub use trigger::{MAX_LINE, Trigger, TriggerId, parse_line, read_triggers};
