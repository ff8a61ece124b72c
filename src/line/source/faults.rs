//! A fault-injecting wrapper around any source, for soak and robustness tests: every Nth grab
//! stalls, drops its frame, delivers garbage or loses the camera, so the pipeline's handling of
//! each is exercised on purpose (`run --inject-faults`, `soak --faults`).

use std::str::FromStr;
use std::time::Duration;

use image::RgbImage;

use super::{Frame, FrameSource, SourceError};

/// Which grabs fail, and how. A period of 0 never fires; when several fire on one grab, the
/// first in the order below wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Every Nth grab the camera disconnects (the next reconnect succeeds).
    pub disconnect: u64,
    /// Every Nth grab hangs past the frame timeout and times out.
    pub stall: u64,
    /// Every Nth grab loses its frame (an incomplete transfer: a bad frame).
    pub drop: u64,
    /// Every Nth grab delivers garbage: alternately an empty image and a noise image of an odd
    /// size.
    pub garbage: u64,
    /// The Nth grab never returns (a driver that hangs): what the systemd watchdog is for.
    pub hang: u64,
}

impl FromStr for FaultPlan {
    type Err = String;

    /// `disconnect=97,stall=50,drop=7,garbage=11,hang=500` (any subset, any order).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut plan = FaultPlan::default();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not KIND=N"))?;
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| format!("`{value}` in `{part}` is not a whole number"))?;
            match key.trim() {
                "disconnect" => plan.disconnect = n,
                "stall" => plan.stall = n,
                "drop" => plan.drop = n,
                "garbage" => plan.garbage = n,
                "hang" => plan.hang = n,
                other => {
                    return Err(format!(
                        "`{other}` is not a fault; use disconnect, stall, drop, garbage or hang"
                    ));
                }
            }
        }
        Ok(plan)
    }
}

/// Wraps a source and injects the faults of a [`FaultPlan`].
pub struct FaultySource {
    inner: Box<dyn FrameSource>,
    plan: FaultPlan,
    grabs: u64,
    garbage: u64,
}

impl FaultySource {
    pub fn new(inner: Box<dyn FrameSource>, plan: FaultPlan) -> Self {
        Self {
            inner,
            plan,
            grabs: 0,
            garbage: 0,
        }
    }
}

fn fires(period: u64, grab: u64) -> bool {
    period > 0 && grab.is_multiple_of(period)
}

impl FrameSource for FaultySource {
    fn grab(&mut self, timeout: Duration) -> Result<Frame, SourceError> {
        self.grabs += 1;
        let n = self.grabs;
        if self.plan.hang > 0 && n == self.plan.hang {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        if fires(self.plan.disconnect, n) {
            return Err(SourceError::Disconnected("injected disconnect".into()));
        }
        if fires(self.plan.stall, n) {
            std::thread::sleep(timeout);
            return Err(SourceError::Timeout(timeout));
        }
        let mut frame = self.inner.grab(timeout)?;
        if fires(self.plan.drop, n) {
            return Err(SourceError::BadFrame("frame dropped (injected)".into()));
        }
        if fires(self.plan.garbage, n) {
            self.garbage += 1;
            frame.image = if self.garbage % 2 == 1 {
                RgbImage::new(0, 0)
            } else {
                // Deterministic noise (an LCG), so a failing run can be repeated.
                let mut state = self.garbage.wrapping_mul(6_364_136_223_846_793_005);
                RgbImage::from_fn(97, 13, |_, _| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let b = (state >> 56) as u8;
                    image::Rgb([b, b.rotate_left(3), b.rotate_left(5)])
                })
            };
        }
        Ok(frame)
    }

    fn reconnect(&mut self) -> Result<(), SourceError> {
        self.inner.reconnect()
    }

    fn describe(&self) -> String {
        format!(
            "{} with injected faults {:?}",
            self.inner.describe(),
            self.plan
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_refuse_clearly() {
        let plan: FaultPlan = "stall=5, drop=7,garbage=11,disconnect=97"
            .parse()
            .expect("plan");
        assert_eq!(
            plan,
            FaultPlan {
                disconnect: 97,
                stall: 5,
                drop: 7,
                garbage: 11,
                hang: 0
            }
        );
        assert_eq!("hang=3".parse::<FaultPlan>().map(|p| p.hang), Ok(3));
        assert_eq!("".parse(), Ok(FaultPlan::default()));
        assert!("stall".parse::<FaultPlan>().is_err());
        assert!("stall=x".parse::<FaultPlan>().is_err());
        assert!("melt=3".parse::<FaultPlan>().is_err());
    }
}
