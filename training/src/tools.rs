//! Measurements around training: step timing against PyTorch ([`bench`]), quality checkpoints
//! of a run ([`quality`]) and their curves ([`curves`]), and the teacher gauge ([`gauge`]).

pub mod bench;
pub mod curves;
pub mod gauge;
pub mod quality;
