//! Interrupt lines from devices to whatever interrupt controller the accelerator provides.

/// One interrupt output of a device.
///
/// Level-triggered controllers (the PLIC, an IOAPIC pin) see the level; `pulse` is for devices
/// whose model signals events (a 16550 raising its interrupt on a new condition) and is a raise
/// followed by a lower, which a level controller latches as pending.
pub trait IrqLine: Send + Sync {
    fn set_level(&self, high: bool);
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// A line connected to nothing (devices used without interrupts, tests).
pub struct NoIrq;

impl IrqLine for NoIrq {
    fn set_level(&self, _high: bool) {}
}
