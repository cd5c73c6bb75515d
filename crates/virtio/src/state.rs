//! What a virtio transport and its device hand to a snapshot, and take back on restore.
//!
//! A transport saves the driver's side of the negotiation (status, features, selectors, the
//! configuration generation, the interrupt bits) and each queue's setup and position; the
//! device adds its own bytes ([`crate::VirtioDevice::save_state`]). Restoring builds the
//! transport around a freshly built device (the same definition: the VM's spec travels with
//! the snapshot), puts the registers back and, when the driver had set DRIVER_OK, activates
//! the device with queues that continue where they were, as if the driver had just set
//! DRIVER_OK — so the device starts its threads and reopens its host side (a new passt, the
//! disk files) the same way a boot does.
//!
//! Queue positions. A paused device ([`crate::VirtioDevice::pause`]) holds no chain it has
//! taken from the available ring without returning it to the used ring: every device here
//! pops a chain and adds it to the used ring in the same step. So at a pause the device's next
//! available index equals its next used index, and that is the used ring's `idx` in guest
//! memory — which is in the snapshot's memory. Saving reads it from there rather than asking
//! each device's threads; restoring checks it against the ring size and the driver's
//! available index before trusting it.
//!
//! All integers are fixed-width; nothing refers to host memory.

use serde::{Deserialize, Serialize};

/// One virtqueue as the driver set it up, and where the device is in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The device's next available and used indexes (equal at a pause, see the module doc).
    pub next_avail: u16,
    pub next_used: u16,
}

/// The transport-independent state of one device (`transport::DeviceCore`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreState {
    /// The device type, and the features it offered: a restore onto a different device (a
    /// definition that changed) is refused rather than handed a driver state it never agreed.
    pub device_type: u32,
    pub offered: u64,
    pub driver_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub active: bool,
    pub queues: Vec<QueueState>,
    /// The device's own state ([`crate::VirtioDevice::save_state`]).
    pub device: Vec<u8>,
}

/// What a virtio-pci function adds to its [`CoreState`]: its configuration space (BAR
/// placement, command register, MSI-X enable) and, with MSI-X, the table and the vector the
/// driver gave configuration changes and each queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciFunctionState {
    pub config: vireo_pci::ConfigState,
    pub msix: Option<MsixRouteState>,
}

/// The driver's MSI-X choices (see `MsixRoute`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixRouteState {
    pub table: vireo_pci::MsixState,
    pub config_vector: u16,
    pub queue_vectors: Vec<u16>,
}

/// Why a transport's state cannot be taken, or a saved one put back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the snapshot holds a virtio device of type {saved} here, the definition gives type {built}")]
    WrongDevice { saved: u32, built: u32 },
    #[error("the snapshot's virtio device (type {device_type}) was offered features {saved:#x}, this build offers {built:#x}")]
    Features {
        device_type: u32,
        saved: u64,
        built: u64,
    },
    #[error("the snapshot's virtio device (type {device_type}) has {saved} queues, the definition gives {built}")]
    Queues {
        device_type: u32,
        saved: usize,
        built: usize,
    },
    #[error("virtio device (type {device_type}) queue {index}: {reason}")]
    BadQueue {
        device_type: u32,
        index: usize,
        reason: String,
    },
    #[error("virtio device (type {device_type}): {reason}")]
    Device { device_type: u32, reason: String },
    #[error("PCI function state: {0}")]
    Pci(String),
}
