//! virtio-console (virtio 1.2 §5.3) with a single port: the guest's `hvc0`, usable as its
//! console with `console=hvc0`.
//!
//! # What the guest is offered
//!
//! VIRTIO_F_VERSION_1 only: no VIRTIO_CONSOLE_F_SIZE, F_MULTIPORT or F_EMERG_WRITE. Two queues
//! of [`QUEUE_SIZE`] entries: receiveq ([`RECEIVEQ`], host to guest) and transmitq
//! ([`TRANSMITQ`], guest to host).
//!
//! # Configuration space (struct virtio_console_config)
//!
//! `le16 cols` (0), `le16 rows` (0), `le32 max_nr_ports` (0): all zero, since neither F_SIZE nor
//! F_MULTIPORT is offered. `emerg_wr` does not exist without F_EMERG_WRITE.
//!
//! # Data flow
//!
//! - transmitq: each chain's device-readable bytes go to the output sink given to
//!   [`Console::new`] (any `Write + Send`, such as `vireo_devices::serial::ConsoleOutput`), at
//!   most [`MAX_TRANSMIT_PER_CHAIN`] bytes per chain; the chain comes back with length 0.
//!   Served in the vCPU thread that kicked the queue.
//! - receiveq: another thread pushes host bytes through [`ConsoleInput`] (from
//!   [`Console::input_handle`]). They go straight into the driver's posted, device-writable
//!   buffers; what does not fit waits in a buffer of at most [`PENDING_INPUT_MAX`] bytes until
//!   the driver posts more (its kick on receiveq, or the next push, delivers them). The queue,
//!   guest memory and interrupt live behind a mutex shared by the device and the handles.
//!
//! Chains pointing outside guest memory, or with nothing in the right direction, are returned
//! with length 0 and never read or written.

mod backend;
mod device;
#[cfg(test)]
mod tests;

pub use backend::ConsoleInput;
pub use device::Console;

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of receiveq (port 0 input).
pub const RECEIVEQ: usize = 0;
/// Index of transmitq (port 0 output).
pub const TRANSMITQ: usize = 1;
/// Host input buffered while the guest has no receive buffers.
pub const PENDING_INPUT_MAX: usize = 64 * 1024;
/// Guest output taken from one transmit chain at most; a chain claiming more is truncated.
pub const MAX_TRANSMIT_PER_CHAIN: usize = 64 * 1024;
/// cols, rows, max_nr_ports.
const CONFIG_LEN: usize = 8;
