//! virtio-serial: virtio-console with VIRTIO_CONSOLE_F_MULTIPORT (virtio 1.2 §5.3), a set of
//! named generic ports. The guest sees each as a character device `/dev/vportNpM` (not a tty:
//! bytes pass unchanged in both directions) whose name is in
//! `/sys/class/virtio-ports/vportNpM/name`. vireo carries a guest command's stdin, stdout,
//! stderr and a control channel over four such ports (see `vireo_image`'s /init).
//!
//! # What the guest is offered
//!
//! VIRTIO_F_VERSION_1 and VIRTIO_CONSOLE_F_MULTIPORT; no F_SIZE (no port is a console) and no
//! F_EMERG_WRITE. Configuration space: `le16 cols` (0), `le16 rows` (0), `le32 max_nr_ports`
//! (the number of ports). Queues, each of [`QUEUE_SIZE`] entries: 0/1 are port 0's receiveq
//! (host to guest) and transmitq (guest to host), 2/3 the control receiveq and transmitq, then
//! two per further port: port `p` ≥ 1 at `2 + 2p` and `3 + 2p`.
//!
//! # Control protocol (struct virtio_console_control: `le32 id, le16 event, le16 value`)
//!
//! 1. The driver sends DEVICE_READY (value 1) on the control transmitq.
//! 2. The device answers with DEVICE_ADD for every port, on the control receiveq.
//! 3. For each, the driver sends PORT_READY (id, 1); the device answers PORT_NAME (id, the
//!    name's bytes after the header) and PORT_OPEN (id, 1): the host end is connected.
//! 4. The driver sends PORT_OPEN (id, 1) when a guest program opens the port and (id, 0) when
//!    the last one closes it. Linux discards data that arrives while no one has the port open,
//!    so input is delivered only between those two.
//! 5. When the host closes a port's input ([`SerialPort::close_input`]) and every byte has been
//!    delivered, the device sends PORT_OPEN (id, 0); a guest read then returns end of file.
//!
//! Control messages the driver has no buffers for wait in a queue of at most
//! [`CONTROL_PENDING_MAX`] messages (a driver that repeats PORT_READY without reading cannot
//! grow it further); unknown events and messages shorter than the header are ignored.
//!
//! # Data flow and bounds
//!
//! Host threads hold [`SerialPort`] handles. Input waits in at most [`PORT_INPUT_MAX`] bytes per
//! port until the guest has the port open and has posted buffers. Guest output is taken from
//! the transmitq only while the port's output buffer holds less than [`PORT_OUTPUT_MAX`] bytes
//! (at most [`MAX_TRANSMIT_PER_CHAIN`] bytes are read from one chain): a host reader that falls
//! behind leaves the guest's buffers in the ring, so the guest's writes block, as on a pipe.
//! Reading from a handle takes the next chains from the ring itself, so output keeps flowing
//! even after the vCPUs stopped (the VMM drains a finished guest's last output that way).
//! Chains outside guest memory or with nothing in the right direction come back with length
//! 0. Device, handles and the queues share one mutex and a condition variable that wakes host
//! readers and writers.

mod device;
mod port;
#[cfg(test)]
mod tests;

pub use device::Serial;
pub use port::{ReadOutcome, SerialPort};

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 128;
/// Ports one device may have.
pub const MAX_PORTS: usize = 16;
/// Host input buffered per port while the guest is not reading.
pub const PORT_INPUT_MAX: usize = 64 * 1024;
/// Guest output buffered per port for a host reader before the guest is made to wait.
pub const PORT_OUTPUT_MAX: usize = 256 * 1024;
/// Guest output read from one transmit chain at most; a chain claiming more is truncated.
pub const MAX_TRANSMIT_PER_CHAIN: usize = 64 * 1024;
/// Control messages waiting for driver buffers at most.
pub const CONTROL_PENDING_MAX: usize = 256;
/// Longest port name.
pub const MAX_NAME: usize = 64;

/// Control receiveq / transmitq.
pub(crate) const CONTROL_RX: usize = 2;
pub(crate) const CONTROL_TX: usize = 3;

/// Control events (virtio 1.2 §5.3.6.2).
pub(crate) mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const DEVICE_ADD: u16 = 1;
    pub const PORT_READY: u16 = 3;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

/// VIRTIO_CONSOLE_F_MULTIPORT.
pub const F_MULTIPORT: u64 = 1 << 1;

/// The receiveq and transmitq indices of port `p`.
pub(crate) fn port_queues(p: usize) -> (usize, usize) {
    if p == 0 {
        (0, 1)
    } else {
        (2 + 2 * p, 3 + 2 * p)
    }
}

/// Which port a data queue belongs to, and whether it is the transmitq.
pub(crate) fn queue_port(q: usize) -> Option<(usize, bool)> {
    match q {
        0 => Some((0, false)),
        1 => Some((0, true)),
        CONTROL_RX | CONTROL_TX => None,
        q => Some(((q - 2) / 2, q % 2 == 1)),
    }
}

/// Errors building a device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("virtio-serial: {count} ports asked for; expected 1 to {MAX_PORTS}")]
    PortCount { count: usize },
    #[error("virtio-serial port name {name:?}: expected 1 to {MAX_NAME} printable ASCII bytes")]
    BadName { name: String },
    #[error("virtio-serial port name {name:?} is given twice")]
    DuplicateName { name: String },
}
