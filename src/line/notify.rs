//! systemd's notify protocol (sd_notify(3)): `READY=1` once the model is warm, and `WATCHDOG=1`
//! every half `WATCHDOG_USEC` while the pipeline makes progress — so systemd restarts an
//! inspection that hangs (`WatchdogSec=`), not only one that exits. Datagrams to the Unix socket
//! in `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::line::monitor::Monitor;

/// The service manager's notify socket, when there is one.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when not run by a service manager that listens.
    pub fn from_env() -> Option<Self> {
        let path = std::env::var("NOTIFY_SOCKET").ok()?;
        let address = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
            None => SocketAddr::from_pathname(&path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Self { socket, address })
    }

    /// Sends one message; a failure is reported once per call and otherwise ignored (the
    /// inspection must not stop because its supervisor's socket is gone).
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            crate::log_line!("efficientad: cannot notify the service manager ({message}): {e}");
        }
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process when
/// `WATCHDOG_PID` is set).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings `WATCHDOG=1` every half interval until `done`, but only while no grab or inference
/// has been running longer than the interval: a stuck pipeline stops the pings and systemd
/// restarts the service.
pub fn watchdog(
    notifier: Arc<Notifier>,
    monitor: Arc<Monitor>,
    interval: Duration,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut warned = false;
        while !done.load(Ordering::SeqCst) {
            if monitor.stalled(interval) {
                if !warned {
                    crate::log_line!(
                        "efficientad: the pipeline has been stuck for over {interval:?}; watchdog pings stopped"
                    );
                    warned = true;
                }
            } else {
                warned = false;
                notifier.send("WATCHDOG=1");
            }
            std::thread::sleep(interval / 2);
        }
    })
}
