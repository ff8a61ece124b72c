//! Integration tests of the runtime: they drive the built `efficientad` binary the way a user
//! or a PLC bridge would, on random-weight bundles exported by the training crate and real
//! images from the datasets (`../shared/data` or `EFFICIENTAD_SHARED_DATA`), and compare with
//! independent reference computations. One module per feature; shared helpers in `util`.

mod bench;
mod calibrate;
mod cameras;
mod capture;
mod changeover;
mod datasets;
mod demo;
mod eval;
mod infer;
mod library_loading;
mod line_protocol;
mod platform;
mod properties;
mod quantize;
mod region;
mod soak;
mod supervision;
mod util;
