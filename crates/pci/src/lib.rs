//! PCI for vireo's machines, shared by every accelerator: a root complex whose bus 0 is reached
//! through ECAM or the CF8/CFC ports, configuration spaces with write masks, memory BARs the
//! guest may move, and MSI-X tables. Devices (virtio-pci in `vireo-virtio`) implement
//! [`PciDevice`]; the board puts [`Ecam`] or [`PioConfig`] and the [`MmioWindow`] on its buses
//! and describes them to the guest (device tree or ACPI).

pub mod config;
pub mod msix;
pub mod root;

pub use config::{ConfigError, ConfigSpace, ConfigState, Identity};
pub use msix::{MsixState, MsixTable};
pub use root::{
    Ecam, MmioWindow, PciDevice, PciError, PciRoot, PioConfig, SharedFunction, SharedRoot,
    ECAM_BUS_SIZE, PIO_CONFIG_LEN, PIO_CONFIG_PORT,
};
