//! virtio-vsock (virtio 1.2 §5.10) with host sockets on Unix domain sockets, in the model
//! Firecracker introduced: the guest's `AF_VSOCK` stream sockets reach Unix sockets on the
//! host, and host programs reach guest ports through one Unix listener.
//!
//! # What the guest sees
//! Queues rx (0), tx (1), event (2; the device never posts events). Feature
//! `VIRTIO_F_VERSION_1` only (stream sockets, no seqpacket). Configuration space:
//! `guest_cid: le64`. Every packet starts with the 44-byte little-endian `virtio_vsock_hdr`
//! ([`packet::Header`]). The host is CID 2.
//!
//! # The handshakes
//! Guest connects to host port `P` (guest `connect(2, P)`):
//! 1. guest → REQUEST (src = guest CID:gport, dst = 2:P)
//! 2. vireo connects to the Unix socket `<uds_path>_<P>`; nothing listening (or the path is
//!    unusable) → RST to the guest, done.
//! 3. vireo → RESPONSE; the connection is established.
//!
//! Host connects to guest port `P`:
//! 1. a host client connects to the Unix listener `<uds_path>` and writes `CONNECT <P>\n`
//!    (decimal, at most [`MAX_CONNECT_LINE`] bytes; anything else closes the client)
//! 2. vireo picks a free host-side port `L` (from 2^30 up) and sends REQUEST (src = 2:L,
//!    dst = guest CID:P)
//! 3. guest → RESPONSE: vireo writes `OK <L>\n` to the client and the connection is
//!    established; guest → RST: vireo closes the client.
//!
//! # Established connections
//! RW packets carry bytes both ways. Flow control is credit-based (§5.10.6.3): each packet
//! states the sender's `buf_alloc` and `fwd_cnt`; a sender keeps the bytes it has sent minus the
//! peer's `fwd_cnt` within the peer's `buf_alloc`. vireo advertises [`CONN_BUF_ALLOC`] per
//! connection and buffers at most that much guest data a slow host socket has not taken; a
//! guest that overruns the credit is reset. vireo reads the host socket only while the guest
//! has credit and a receive buffer, so host data waits in the host socket, not in vireo. It
//! sends CREDIT_UPDATE on CREDIT_REQUEST and whenever a quarter of the buffer has been freed
//! since the guest last heard.
//!
//! Closing: guest SHUTDOWN(SEND) shuts the host socket's write side once buffered data is out;
//! SHUTDOWN with both flags is answered with RST and the host socket is closed. Host end of
//! file → SHUTDOWN(both) to the guest, which answers with RST. RST either way drops the
//! connection.
//!
//! # A hostile guest
//! A packet whose source CID is not the guest's, shorter than the header, or in memory the
//! device cannot read is dropped. One with a length beyond its buffer or above
//! [`MAX_PKT_DATA`], an unknown op or type, a destination other than the host, or for a
//! connection that does not exist is answered with RST (never an RST for an RST). Replies wait
//! in a queue of at most [`MAX_REPLIES`]; when it is full the device stops taking transmit
//! packets until the guest posts receive buffers. Connections are capped at
//! [`MAX_CONNECTIONS`], half-open host clients at [`MAX_HANDSHAKES`] (the oldest is dropped).
//!
//! Files: `device.rs` (the device, queue processing, the connection table), `conn.rs` (one
//! connection), `packet.rs` (the header), `worker.rs` (the thread polling host sockets).
//!
//! All host socket work is the worker's: a transmit notification only marks the queue for
//! it, so the thread that rings (a vCPU, the emulator) never connects or writes to a host
//! socket for the guest, and its seccomp list need not allow it.

mod conn;
mod device;
pub mod packet;
#[cfg(test)]
mod tests;
mod worker;

use std::path::PathBuf;

pub use device::{Vsock, VsockStats};

/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive buffer vireo advertises per connection, and the most guest data it holds for a
/// host socket that is not reading.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// The largest payload of one packet either way (Linux sends at most 64 KiB).
pub const MAX_PKT_DATA: usize = 64 * 1024;
/// Connections at once (so at most `MAX_CONNECTIONS * CONN_BUF_ALLOC` of buffered data).
pub const MAX_CONNECTIONS: usize = 128;
/// Host clients that connected but have not finished their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 32;
/// Replies (RST) waiting for a guest receive buffer before the tx queue is left alone.
pub const MAX_REPLIES: usize = 256;
/// The longest `CONNECT <port>\n` line.
pub const MAX_CONNECT_LINE: usize = 32;

/// Errors creating a virtio-vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is one of the reserved values.
    #[error("guest CID {cid} is reserved: expected a CID from 3 to 4294967294")]
    ReservedCid { cid: u64 },
    /// Something other than a socket is in the way of the listener.
    #[error("cannot listen on {path}: the path exists and is not a socket")]
    PathTaken { path: PathBuf },
    /// A live process (another VM) listens on the socket.
    #[error("cannot listen on {path}: another process (a running VM?) is listening there; give this VM its own uds= path or stop that one")]
    InUse { path: PathBuf },
    /// Whether the socket is live could not be told.
    #[error("cannot listen on {path}: a socket is there and connecting to it to see whether it is in use failed: {source}")]
    Probe {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The host listener could not be bound.
    #[error("cannot listen on Unix socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}
