//! How a guest asks to stop, and how that reaches the VMM's run loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Why a guest stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off normally (status 0).
    PowerOff,
    /// The guest powered off reporting a failure status (0..=65535). vireo exits with its low
    /// byte, as a shell does, or 1 when that byte is 0: a failure never reads as success.
    Failure(u16),
    /// The guest asked for a reset (reboot, or a kernel panic with panic=-1).
    Reset,
}

impl GuestExit {
    /// The status a process running this guest should exit with.
    pub fn status(self) -> i32 {
        match self {
            GuestExit::PowerOff => 0,
            GuestExit::Failure(c) => match c & 0xff {
                0 => 1,
                low => i32::from(low),
            },
            GuestExit::Reset => 1,
        }
    }
}

/// A one-shot latch, set by a device from any thread and polled by the run loops.
#[derive(Default)]
pub struct ExitSignal {
    raised: AtomicBool,
    why: Mutex<Option<GuestExit>>,
}

impl ExitSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the first exit request; later ones are ignored.
    pub fn raise(&self, why: GuestExit) {
        let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some(why);
            self.raised.store(true, Ordering::Release);
        }
    }

    /// Cheap check for the hot loop.
    #[inline]
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Option<GuestExit> {
        *self.why.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_wins() {
        let s = ExitSignal::new();
        assert!(!s.is_raised());
        s.raise(GuestExit::Failure(0x107));
        s.raise(GuestExit::PowerOff);
        assert!(s.is_raised());
        assert_eq!(s.get(), Some(GuestExit::Failure(0x107)));
        assert_eq!(GuestExit::Failure(0x107).status(), 7);
        // A failure whose low byte is zero (a finisher code of 256, or 0) is still a failure.
        assert_eq!(GuestExit::Failure(0x100).status(), 1);
        assert_eq!(GuestExit::Failure(0).status(), 1);
    }
}
