//! virtio-net (virtio 1.2 §5.1): one receive queue, one transmit queue, a MAC address and a
//! link that is up, no offloads.
//!
//! # What the guest sees
//! Features: `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC`, `VIRTIO_NET_F_STATUS`. Configuration
//! space: `mac[6]`, `status: le16` (`VIRTIO_NET_S_LINK_UP` while the backend works) and
//! `max_virtqueue_pairs: le16 = 1`. Every frame in either direction is preceded by the 12-byte
//! `virtio_net_hdr_v1`; the device ignores the header the driver sends (no checksum or
//! segmentation offload was offered) and writes one with every field zero except
//! `num_buffers = 1` (required without `VIRTIO_NET_F_MRG_RXBUF`, §5.1.6.4).
//!
//! # Data path
//! - Transmit runs on the vCPU thread in `queue_notify`: each chain's readable part is the
//!   header plus one frame, copied out and handed to the backend. A chain the device cannot use
//!   (outside guest memory, shorter than the header, larger than [`MAX_FRAME_LEN`], a descriptor
//!   loop, which virtio-queue cuts at the queue size) is returned unused and counted; the next
//!   one is served. When the backend's socket is full the rest stays in the ring and the worker
//!   resumes once it drains.
//! - Receive runs on a worker thread started at activation and joined at reset or drop. It polls
//!   the backend and an eventfd that `queue_notify(RX)` and shutdown write. A frame is held
//!   while the guest has no receive buffer (the worker then stops polling the backend, so it
//!   never spins); a frame larger than the guest's buffer is dropped and the buffer reused.
//!
//! # Backends
//! - [`NetBackendConfig::User`]: a `passt` child (see `passt.rs` for the exact command line)
//!   reached over a Unix stream socket, frames prefixed by a 32-bit big-endian length. passt
//!   gives the guest DHCP, DNS, outbound TCP/UDP and the host's loopback at the gateway address,
//!   and forwards [`HostFwd`] ports (TCP or UDP, on the host's loopback unless an address is
//!   given); it runs until the device is dropped.
//! - [`NetBackendConfig::Tap`]: a pre-created tap device, one frame per read/write.
//!
//! Files: `device.rs` (the device and its queues), `worker.rs` (the receive thread),
//! `backend.rs` (framing, the backend enum), `passt.rs`, `tap.rs`, `hostfwd.rs`.

mod backend;
mod device;
mod hostfwd;
mod passt;
mod tap;
#[cfg(test)]
mod tests;
mod worker;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitStatus;

pub use backend::{NetBackendConfig, OpenBackend};
pub use device::{Net, NetStats};
pub use hostfwd::{HostFwd, HostFwdError, Protocol, DEFAULT_HOST_ADDR};
pub use passt::command_args as passt_args;

/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const VNET_HDR_LEN: usize = 12;
/// The largest Ethernet frame carried either way: a 65 535-byte IP datagram behind a
/// VLAN-tagged Ethernet header. Longer transmit requests are dropped.
pub const MAX_FRAME_LEN: usize = 65_535 + 18;

const _: () =
    assert!(VNET_HDR_LEN == std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>());

/// Errors creating a virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A device was built on a backend another device still has (a bug in vireo).
    #[error("the network backend is in use by another device")]
    BackendInUse,
    /// `passt` is not on PATH.
    #[error(
        "user-mode networking needs passt, which was not found on PATH: apt-get install passt"
    )]
    PasstMissing,
    /// A forwarded host port is taken by another socket.
    #[error(
        "hostfwd {fwd}: host port {port} is already in use (on {})",
        passt::host_and_port(addr, port)
    )]
    HostPortInUse {
        fwd: HostFwd,
        addr: IpAddr,
        port: u16,
    },
    /// The forward's host address is not one of this host's.
    #[error("hostfwd {fwd}: host address {addr} is not an address of this host")]
    HostAddrNotLocal { fwd: HostFwd, addr: IpAddr },
    /// A forwarded host port may not be bound by this user (or at all).
    #[error(
        "hostfwd {fwd}: host port {port} cannot be bound (on {}): {source}",
        passt::host_and_port(addr, port)
    )]
    HostPortDenied {
        fwd: HostFwd,
        addr: IpAddr,
        port: u16,
        source: std::io::Error,
    },
    /// Two forwards name the same host port for one protocol (passt takes one address per
    /// port and protocol).
    #[error("host port {port} is forwarded twice ({first} and {second}); passt forwards a port once per protocol, whatever the address")]
    HostPortTwice {
        port: u16,
        first: HostFwd,
        second: HostFwd,
    },
    /// The passt executable could not be run.
    #[error("cannot run passt ({path}): {source}")]
    PasstSpawn {
        path: PathBuf,
        source: std::io::Error,
    },
    /// passt exited before its socket accepted a connection.
    #[error("passt exited ({status}) before opening its socket {socket}: {stderr}")]
    PasstExited {
        status: ExitStatus,
        socket: PathBuf,
        stderr: String,
    },
    /// passt's socket did not accept a connection in time.
    #[error("passt did not open its socket {socket} within {secs} s: {source}")]
    PasstTimeout {
        socket: PathBuf,
        secs: u64,
        source: std::io::Error,
    },
    /// The socket to passt could not be set up.
    #[error("socket to passt {socket}: {source}")]
    PasstSocket {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The tap name cannot be an interface name.
    #[error("tap device name {name:?} is invalid: expected 1 to 15 bytes without NUL or '/'")]
    TapName { name: String },
    /// No interface of that name exists.
    #[error("tap device {name:?} does not exist: create it first (ip tuntap add {name} mode tap)")]
    TapMissing { name: String },
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun for tap device {name:?}: {source}")]
    TunOpen {
        name: String,
        source: std::io::Error,
    },
    /// TUNSETIFF refused the interface.
    #[error("cannot attach to tap device {name:?} (expected an existing tap this user may open): {source}")]
    TapAttach {
        name: String,
        source: std::io::Error,
    },
    /// The receive worker's wake-up eventfd could not be created.
    #[error("virtio-net eventfd: {0}")]
    EventFd(std::io::Error),
}
