//! virtio 1.x devices and their transports, shared by every accelerator.
//!
//! A device implements [`VirtioDevice`]: what it offers (type, features, queue sizes, config
//! space) and what it does when the driver activates it and kicks its queues. A transport
//! ([`mmio::MmioTransport`], virtio-mmio version 2) turns the guest's register accesses into
//! those calls and is what goes on a [`vireo_machine::Bus`]. Devices reach guest memory only
//! through vm-memory and virtio-queue, and treat every descriptor as hostile: addresses,
//! lengths, chain lengths and indices are checked by virtio-queue and again by the device's
//! own expectations; a malformed request gets an error status or the device asks for a reset,
//! never a crash.
//!
//! Each device is a folder: `device.rs` (what the guest sees), and a backend where it talks to
//! the host.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vireo_machine::IrqLine;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub mod block;
pub mod console;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
mod test_util;
pub mod vsock;
mod worker;

/// Device IDs (virtio 1.2 §5).
pub mod types {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
}

/// Feature bits every vireo device offers.
pub const F_VERSION_1: u64 = 1 << 32;
/// The device may read and write guest memory out of order relative to the driver (no IOMMU
/// here), which is what virtio 1.x drivers expect from a hypervisor's device.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Errors a device reports when the driver activates it.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up the queues in a way the device cannot use.
    #[error("queue {index}: {reason}")]
    BadQueue { index: usize, reason: String },
    /// A host resource the device needs failed.
    #[error("{0}")]
    Backend(String),
}

/// The interrupt state of one device: the virtio-mmio InterruptStatus bits and the line behind
/// them. Cloned into device worker threads.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    line: Arc<dyn IrqLine>,
}

/// InterruptStatus bit: a used buffer was returned.
pub const INT_USED: u32 = 1;
/// InterruptStatus bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            line,
        }
    }

    /// Tells the driver used buffers are waiting.
    pub fn signal_used(&self) {
        self.status.fetch_or(INT_USED, Ordering::AcqRel);
        self.line.set_level(true);
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config(&self) {
        self.status.fetch_or(INT_CONFIG, Ordering::AcqRel);
        self.line.set_level(true);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The driver acknowledged `bits`; the line drops when nothing is left.
    pub fn ack(&self, bits: u32) {
        let left = self.status.fetch_and(!bits, Ordering::AcqRel) & !bits;
        if left == 0 {
            self.line.set_level(false);
        }
    }

    fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.line.set_level(false);
    }
}

/// What the driver handed over when it set DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// The queues in index order; a queue the driver left disabled is `None`.
    pub queues: Vec<Option<Queue>>,
    pub interrupt: Interrupt,
    /// The features the driver accepted.
    pub features: u64,
}

/// A virtio device, independent of transport and accelerator.
pub trait VirtioDevice: Send {
    /// The virtio device ID ([`types`]).
    fn device_type(&self) -> u32;
    /// Features offered (include [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space. Out-of-range writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver set DRIVER_OK: start serving the queues.
    fn activate(&mut self, act: Activation) -> Result<(), ActivateError>;
    /// The driver kicked queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// The driver reset the device: drop the queues and stop any worker.
    fn reset(&mut self);
    /// Whether the device met something it cannot recover from without a reset (a request
    /// with nowhere to write its status, say); the transport then sets DEVICE_NEEDS_RESET and
    /// tells the driver.
    fn needs_reset(&self) -> bool {
        false
    }
}

/// Reads little-endian bytes of a config structure at `offset` into `data` (zero past its end).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
