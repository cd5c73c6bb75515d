//! The machine core: what every accelerator and every device agrees on.
//!
//! - [`memory::GuestRam`]: guest-physical RAM, accessed only through vm-memory's bounds-checked
//!   API.
//! - [`bus::Bus`] and [`bus::BusDevice`]: MMIO and port-I/O dispatch by guest-physical address.
//!   Devices see an offset into their own window and little-endian byte slices, the same shape a
//!   KVM MMIO/PIO exit and an emulated load/store have.
//! - [`irq::IrqLine`]: a device's interrupt output. The interrupt controller behind it (the
//!   emulator's PLIC, KVM's in-kernel irqchip) is the accelerator's business.
//! - [`exit::ExitSignal`]: how a device (a power-off register, a reset port) asks the VMM to stop
//!   the guest, and with which status.
//!
//! Nothing here knows which accelerator is running.

pub mod boot;
pub mod bus;
pub mod exit;
pub mod irq;
pub mod memory;
pub mod sandbox;

pub use boot::{BootConfig, VirtioTransport};
pub use bus::{Bus, BusDevice, BusError, SharedDevice};
pub use exit::{ExitSignal, GuestExit};
pub use irq::{IrqLine, MsiSink, NoIrq};
pub use memory::{DirtyPages, GuestMemoryMmap, GuestRam, MemoryError};
