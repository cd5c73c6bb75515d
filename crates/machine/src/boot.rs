//! What an accelerator's board needs to boot a guest. The CLI builds it from a [`VmSpec`]-like
//! request; each board (the emulator's RISC-V `virt`, the kvm x86-64 PC) turns it into memory
//! contents and vCPU state its own way.
//!
//! Contract every board honours, so the CLI is accelerator-neutral:
//! - the board creates its console UART and returns it shared (`Arc<Mutex<Uart>>`-like), so a
//!   console thread can feed host input into it from any thread;
//! - everything the guest transmits lands in the `ConsoleOutput` buffer the caller hands in;
//! - the board appends `vireo.exit=0xADDR` to the kernel command line, the guest-physical address
//!   of a 32-bit `sifive,test0`-compatible exit register (0x5555 = status 0,
//!   `(status << 16) | 0x3333` = failure status), which vireo's /init uses to report a command's
//!   exit status.
//!
//! [`VmSpec`]: https://docs.rs/vireo-spec

use std::path::PathBuf;

/// A boot request.
#[derive(Debug, Clone, Default)]
pub struct BootConfig {
    /// The kernel file (format checked by the board's loader).
    pub kernel: PathBuf,
    /// The initramfs bytes (the CLI may have appended an archive to the image's one).
    pub initrd: Option<Vec<u8>>,
    /// The kernel command line, before the board appends its own parameters.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Optional firmware run before the kernel (OpenSBI on RISC-V).
    pub firmware: Option<PathBuf>,
    /// How virtio devices are attached.
    pub virtio_transport: VirtioTransport,
}

/// The bus virtio devices sit on. Both are virtio 1.x; the device models are the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VirtioTransport {
    /// virtio-mmio v2 windows described in the device tree (or ACPI): the smallest, fastest
    /// to probe.
    #[default]
    Mmio,
    /// virtio-pci functions on a PCI root bus (ECAM, and CF8/CFC on x86), with MSI-X where
    /// the accelerator has an MSI controller and INTx otherwise.
    Pci,
}
