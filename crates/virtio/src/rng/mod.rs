//! virtio-rng, the entropy device (virtio 1.2 §5.4).
//!
//! # What the guest is offered
//!
//! VIRTIO_F_VERSION_1 and nothing else. One queue, requestq (0), of [`QUEUE_SIZE`] entries.
//! There is no configuration space (reads return zero).
//!
//! # Requests
//!
//! The driver posts device-writable buffers; the device fills them with the host kernel's
//! randomness (`getrandom(2)`) and returns them with the number of bytes written. At most
//! [`MAX_BYTES_PER_REQUEST`] bytes are written per chain (the driver sees a short used length
//! and asks again), drawn through a fixed 4 KiB buffer, so a guest's buffer sizes never size
//! a host allocation. Device-readable buffers in a chain are skipped; a chain that points
//! outside guest memory, or has nothing writable, comes back with length 0.

mod backend;
mod device;
#[cfg(test)]
mod tests;

pub use device::Rng;

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// Random bytes written into one chain at most.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
