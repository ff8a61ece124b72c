//! Runs beside the line: frame sources (cameras, folders), the streaming pipeline, the PLC
//! protocol on stdin/stdout, and supervision (live counters, HTTP, systemd notify).

pub mod capture;
pub mod http;
pub mod live;
pub mod monitor;
pub mod notify;
pub mod pipeline;
pub mod protocol;
pub mod source;
