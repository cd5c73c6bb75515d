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

/// Where a device's message-signalled interrupts (MSI, MSI-X) go: a write of `data` to
/// `address`, which the platform's interrupt controller decodes (on x86 the local APIC's
/// 0xfee0_0000 window). Accelerators without an MSI controller have no sink, and devices then
/// offer no MSI capability.
pub trait MsiSink: Send + Sync {
    fn send(&self, address: u64, data: u32);
}
