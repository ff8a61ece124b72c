//! From raw maps to a verdict: map normalization and the score ([`anomaly`]), the inspection
//! region, the one verdict step ([`inspect`]) and the calibration file it reads.

pub mod anomaly;
pub mod calibration;
pub mod inspect;
pub mod region;
