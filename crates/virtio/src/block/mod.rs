//! virtio-blk (virtio 1.2 §5.2): one disk, a raw or qcow2 image file or a host block device,
//! behind 1 to [`MAX_QUEUES`] request queues of [`QUEUE_SIZE`] entries, each served by its own
//! I/O thread.
//!
//! # What the host is protected from
//!
//! An image is probed by content and refused when it is a container format (qcow2, QED, VMDK,
//! VDI, VHDX, VHD) or a LUKS volume, unless [`BlockConfig::format`] says it is raw; and it is
//! locked with QEMU's byte-range OFD locks while the device lives, so a second writer (or a
//! writer and a reader), vireo or QEMU, is refused. See `format.rs` and `lock.rs`.
//!
//! # What the guest is offered
//!
//! VIRTIO_F_VERSION_1, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH,
//! VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_F_RO when the disk is attached
//! read-only, and VIRTIO_BLK_F_MQ when it has more than one queue.
//!
//! # Configuration space (struct virtio_blk_config, little-endian, read-only)
//!
//! | offset | field | value |
//! |---|---|---|
//! | 0 | capacity | image size / 512, rounded down ([`Block::warning`] says so) |
//! | 12 | seg_max | `QUEUE_SIZE - 2` (the header and the status take a descriptor each) |
//! | 20 | blk_size | 512 |
//! | 34 | num_queues | [`BlockConfig::num_queues`] |
//! | 36 | max_discard_sectors | [`MAX_DISCARD_SECTORS`] |
//! | 40 | max_discard_seg | [`MAX_DISCARD_SEG`] |
//! | 44 | discard_sector_alignment | [`DISCARD_SECTOR_ALIGNMENT`] (4 KiB) |
//! | 48 | max_write_zeroes_sectors | [`MAX_WRITE_ZEROES_SECTORS`] |
//! | 52 | max_write_zeroes_seg | [`MAX_WRITE_ZEROES_SEG`] |
//! | 56 | write_zeroes_may_unmap | 1 |
//!
//! Everything else (size_max, geometry, topology, writeback, secure erase, zoned) reads as 0.
//!
//! # Requests
//!
//! Each chain is a 16-byte device-readable header (le32 type, le32 reserved, le64 sector), the
//! data, and a final device-writable status byte (OK 0, IOERR 1, UNSUPP 2).
//!
//! # Threads
//!
//! A notification only wakes the queue's I/O thread (an eventfd; on kvm the kernel writes it
//! through an ioeventfd, so the vCPU does not even exit). The thread owns the queue: it serves
//! chains with positioned reads and writes through the image's backend (`backend.rs`: raw or qcow2),
//! publishes used entries every 64 chains and when the ring is empty, re-enables
//! notifications and looks once more before sleeping. The vCPU holds the device's lock only
//! for the doorbell, so a slow disk stalls no vCPU (no hart on emu), and queues run in
//! parallel. Reset stops and joins the threads before the device is reconfigured.
//!
//! - IN / OUT: whole sectors inside the capacity, else IOERR. OUT on a read-only disk is
//!   IOERR and writes nothing.
//! - FLUSH: `fdatasync` on the image before the status is written. If the driver did not
//!   accept FLUSH, every write is synced before it completes (write-through, §5.2.6.2).
//! - GET_ID: the serial, NUL-padded to 20 bytes (no terminator when it is 20 long).
//! - DISCARD: punches a hole (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`); a host that cannot
//!   punch keeps the data (discard is a hint). The unmap flag on a discard is UNSUPP.
//! - WRITE_ZEROES: with unmap, punches a hole; without, zeroes the range keeping it allocated
//!   (`FALLOC_FL_ZERO_RANGE`); either falls back to writing zeroes. Both read back as zero.
//!   Unknown segment flags are UNSUPP; too many segments or sectors, or a range past the end,
//!   are IOERR.
//! - Anything else: UNSUPP.
//!
//! The guest's chains are hostile input. Before reading anything the device walks the chain:
//! a chain that ends in a loop or a bad index, or whose last descriptor is not a device-writable
//! byte inside guest memory, has nowhere to put a status and is returned with length 0 and
//! flagged in [`Block::needs_reset`]. A chain with a descriptor outside guest memory, a
//! device-readable descriptor after a device-writable one, or a short header gets IOERR.
//! Transfers go through a fixed bounce buffer, so a request's length never sizes an
//! allocation.

mod backend;
mod device;
mod format;
pub mod image;
mod lock;
mod qcow2;
#[cfg(test)]
mod qcow2_tests;
#[cfg(test)]
mod tests;

pub use backend::{BlockError, FileId};
pub use device::{Block, BlockConfig};
pub use format::{DiskFormat, ForeignFormat};
pub use lock::Holder;
pub use qcow2::MAX_CHAIN;

/// Entries in each request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Request queues (and I/O threads) one disk may have.
pub const MAX_QUEUES: usize = 16;
/// The protocol's sector, whatever the image's block size.
pub const SECTOR_SIZE: u64 = 512;
const SECTOR_SHIFT: u32 = 9;
/// Length of the device ID string (GET_ID).
pub const ID_BYTES: usize = 20;
/// Sectors one discard segment may cover (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Segments in one discard request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Discard granularity in sectors (4 KiB, the usual host file system block).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Sectors one write-zeroes segment may cover (2 GiB).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
/// Segments in one write-zeroes request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 32;
/// Bytes of configuration space the device defines (through write_zeroes_may_unmap and its
/// padding).
const CONFIG_LEN: usize = 60;
