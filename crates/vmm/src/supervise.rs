//! Ending a run from any thread: the user's escape key, a signal to vireo, a closed stdout or
//! a guest panic. A graceful stop asks the guest (through vireo's /init control port) to sync
//! and power off, and stops it anyway after [`GRACE`]; the first reason recorded decides the
//! exit status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use vireo_machine::GuestExit;
use vireo_virtio::serial::SerialPort;

use crate::VmControl;

/// How long a guest asked to power off may take before it is stopped.
pub const GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Inner {
    stopper: Option<VmControl>,
    ctl: Option<SerialPort>,
    /// The command's pseudo-terminal input (telnet-framed), for window sizes.
    tty: Option<SerialPort>,
    /// The exit status the run ends with, once something ended it.
    status: Option<u8>,
    /// A power-off request went to the guest already.
    asked: bool,
}

/// Shared by every thread that may end the run.
#[derive(Default)]
pub struct Supervisor {
    inner: Mutex<Inner>,
    /// Counts boots, so a grace timer started for one boot cannot stop the next.
    boot: AtomicU64,
}

impl Supervisor {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A (re)booted guest: what stops it, and its control port if it has vireo's /init.
    pub fn attach(&self, stopper: VmControl, ctl: Option<SerialPort>, tty: Option<SerialPort>) {
        let mut i = self.lock();
        self.boot.fetch_add(1, Ordering::AcqRel);
        i.stopper = Some(stopper);
        i.ctl = ctl;
        i.tty = tty;
        i.asked = false;
        // A stop that came while no guest was attached (between boots) applies now.
        if i.status.is_some() {
            if let Some(s) = &i.stopper {
                s.stop(GuestExit::PowerOff);
            }
        }
    }

    /// Ends the run now with `status` (unless an earlier reason already set one).
    pub fn abort(&self, status: u8) {
        let mut i = self.lock();
        i.status.get_or_insert(status);
        if let Some(s) = &i.stopper {
            s.stop(GuestExit::PowerOff);
        }
    }

    /// Asks the guest to power off and ends the run with `status`; a guest that has not
    /// stopped after [`GRACE`], or a second request, is stopped at once.
    pub fn shutdown(self: &Arc<Self>, status: u8) {
        self.shutdown_within(status, GRACE)
    }

    /// [`Supervisor::shutdown`] with `grace` for the guest to power off.
    pub fn shutdown_within(self: &Arc<Self>, status: u8, grace: Duration) {
        let mut i = self.lock();
        i.status.get_or_insert(status);
        let ctl = match (&i.ctl, i.asked) {
            (Some(ctl), false) => ctl.clone(),
            _ => {
                if let Some(s) = &i.stopper {
                    s.stop(GuestExit::PowerOff);
                }
                return;
            }
        };
        i.asked = true;
        drop(i);
        // Taken even while the guest has not opened the port yet: /init reads it as soon
        // as it does.
        ctl.write(b"poweroff\n");
        let me = self.clone();
        let boot = self.boot.load(Ordering::Acquire);
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            if me.boot.load(Ordering::Acquire) == boot {
                me.abort(status);
            }
        });
    }

    /// The guest kernel panicked and, without `panic=-1`, would spin: stop it.
    pub fn guest_panicked(&self) {
        if let Some(s) = &self.lock().stopper {
            s.stop(GuestExit::Reset);
        }
    }

    /// The status something other than the guest ended the run with.
    pub fn status(&self) -> Option<u8> {
        self.lock().status
    }

    /// Writes `bytes` (a window-size message) to the command's pseudo-terminal input, if it
    /// has one.
    pub fn tty_write(&self, bytes: &[u8]) {
        if let Some(tty) = &self.lock().tty {
            tty.write(bytes);
        }
    }

    /// Whether a power-off request went to the guest since it booted.
    pub fn asked(&self) -> bool {
        self.lock().asked
    }
}
