//! Camera settings from the command line. Always compiled, whatever cameras this binary was
//! built with, so the command line and its help are the same everywhere; only the drivers that
//! apply them sit behind the `gige` and `usb` features.

use std::str::FromStr;

/// Settings of every camera kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CameraOptions {
    pub gige: GigeSettings,
    pub usb: UsbSettings,
}

/// What fires a GigE camera's exposures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GigeTrigger {
    /// Each stdin trigger fires one software-triggered exposure.
    #[default]
    Software,
    /// The camera streams continuously (free-run mode).
    Free,
    /// The camera's own input line fires exposures, e.g. `Line1`.
    Line(String),
}

impl FromStr for GigeTrigger {
    type Err = String;

    /// `software`, `free`, or an input line name such as `Line1`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "" => Err("a GigE trigger is software, free or an input line such as Line1".into()),
            t if t.eq_ignore_ascii_case("software") => Ok(Self::Software),
            t if t.eq_ignore_ascii_case("free") => Ok(Self::Free),
            t if t.chars().any(char::is_whitespace) => Err(format!(
                "`{t}` is not a GigE trigger: use software, free or an input line such as Line1"
            )),
            line => Ok(Self::Line(line.to_owned())),
        }
    }
}

/// GigE camera settings applied at open (None = leave as the camera has it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GigeSettings {
    pub pixel_format: Option<String>,
    /// Receive frames on a plain UDP socket, never on aravis's packet socket.
    pub udp_socket_only: bool,
    pub exposure_us: Option<f64>,
    pub gain: Option<f64>,
    pub frame_rate: Option<f64>,
    pub trigger: GigeTrigger,
}

/// USB capture format to request (None = the camera's fastest).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsbSettings {
    /// `mjpeg` or `yuyv`.
    pub format: Option<String>,
    pub resolution: Option<(u32, u32)>,
    pub fps: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gige_triggers_parse() {
        assert_eq!("software".parse(), Ok(GigeTrigger::Software));
        assert_eq!("Free".parse(), Ok(GigeTrigger::Free));
        assert_eq!("Line1".parse(), Ok(GigeTrigger::Line("Line1".into())));
        assert!("".parse::<GigeTrigger>().is_err());
        assert!("Line 1".parse::<GigeTrigger>().is_err());
    }
}
