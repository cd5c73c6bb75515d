//! The VMM layer: what `vireo run` and the per-VM `vireo vmm` process share (and later
//! snapshots, migration and hot-plug).
//!
//! - [`payload`]: a definition ([`vireo_spec::VmSpec`]) to what boots and on which
//!   accelerator ([`payload::resolve`], [`payload::plan`], the KVM host check);
//! - [`devices`]: typed device configurations and the device manager's handles;
//! - [`jailing`]: what a VM's jail shows it, and entering it;
//! - [`vm`]: one lifecycle for both accelerators (create, run on a VM-owned thread, pause,
//!   resume, stop from any thread, counters);
//! - [`channel`]: the command channel to vireo's /init (virtio-serial ports);
//! - [`supervise`]: who ends a run and with which status;
//! - [`server`]: the `vireo vmm` process — one VM, its control and console sockets;
//! - [`snapshot`]: snapshots (the directory, taking one, loading one to restore);
//! - [`watch`]: kernel panics and vireo's /init marker in console output.

pub mod channel;
pub mod devices;
pub mod jailing;
pub mod payload;
pub mod server;
pub mod snapshot;
pub mod supervise;
pub mod vm;
pub mod watch;

pub use devices::{DeviceConfig, DeviceHandle, Devices};
pub use payload::{check_kvm, plan, resolve, Arch, GuestTty, Payload, Plan};
pub use vm::{RunError, Vm, VmControl};

/// Why the VMM cannot do what was asked; the message names the thing and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub fn fail(msg: impl std::fmt::Display) -> Error {
    Error(msg.to_string())
}
