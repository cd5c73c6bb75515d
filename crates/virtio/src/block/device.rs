//! What the guest sees of virtio-blk: features, the configuration space, and the request queue.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vireo_machine::GuestMemoryMmap;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{is_unsupported, BlockError, DiskBackend, DiskFile, FileId};
use super::format::DiskFormat;
use super::{
    CONFIG_LEN, DISCARD_SECTOR_ALIGNMENT, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    MAX_QUEUES, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, QUEUE_SIZE, SECTOR_SHIFT,
    SECTOR_SIZE,
};
use crate::worker::{wait_readable, Worker};
use crate::{
    types, ActivateError, Activation, DeviceCounters, Interrupt, VirtioDevice, F_VERSION_1,
};

/// How a disk is attached.
#[derive(Clone, Debug)]
pub struct BlockConfig {
    /// A raw image file or a host block device.
    pub path: PathBuf,
    /// Refuse guest writes (and offer VIRTIO_BLK_F_RO).
    pub readonly: bool,
    /// The device ID string the guest reads with GET_ID (at most 20 ASCII bytes).
    pub serial: Option<String>,
    /// What the image is; `None` probes it and refuses any known container format.
    pub format: Option<DiskFormat>,
    /// Request queues offered (1..=[`MAX_QUEUES`]), each served by its own I/O thread; the
    /// driver uses up to one per vCPU.
    pub num_queues: u16,
}

/// Bytes moved through the host per read/write system call.
const BOUNCE_LEN: usize = 128 * 1024;

/// Bytes of one request header (type, reserved, sector).
const HEADER_LEN: usize = 16;
/// Bytes of one discard / write-zeroes segment.
const SEGMENT_LEN: usize = 16;

/// A virtio-blk device over one disk image.
///
/// Requests are served off the vCPU: each active queue has an I/O thread that owns the queue
/// and sleeps on an eventfd. A notification (the transport's `queue_notify`, or on kvm the
/// kernel itself through an ioeventfd on the doorbell) only wakes that thread, so a slow disk
/// holds neither a vCPU nor the device's lock, and queues are served in parallel.
pub struct Block {
    shared: Arc<Shared>,
    config: [u8; CONFIG_LEN],
    warnings: Vec<String>,
    queue_sizes: Vec<u16>,
    workers: Vec<QueueWorker>,
}

/// What every I/O thread of one disk reads.
struct Shared {
    disk: DiskFile,
    readonly: bool,
    id: [u8; ID_BYTES],
    /// Capacity in 512-byte sectors.
    capacity: u64,
    counters: Arc<DeviceCounters>,
    /// Set by an I/O thread that met a request it could not answer.
    needs_reset: AtomicBool,
}

/// One queue's I/O thread and how far it got.
struct QueueWorker {
    index: u16,
    progress: Arc<Progress>,
    // Dropped (stopped and joined) after nothing else refers to the thread.
    worker: Worker,
}

/// Tickets for [`Block::wait_idle`]: `asked` counts the waits requested, `done` is the last
/// ticket the thread had taken when it found its queue empty.
#[derive(Default)]
struct Progress {
    tickets: Mutex<(u64, u64)>,
    changed: Condvar,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn ask(&self) -> u64 {
        let mut t = self.lock();
        t.0 += 1;
        t.0
    }
    fn taken(&self) -> u64 {
        self.lock().0
    }
    fn finished(&self, ticket: u64) {
        let mut t = self.lock();
        t.1 = t.1.max(ticket);
        self.changed.notify_all();
    }
    /// Waits until `ticket` is done or `deadline` passes; true when done.
    fn wait(&self, ticket: u64, deadline: Instant) -> bool {
        let mut t = self.lock();
        while t.1 < ticket {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            t = self
                .changed
                .wait_timeout(t, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// [`Block`]'s counters, by index into these names.
pub const COUNTERS: &[&str] = &[
    "read_requests",
    "read_bytes",
    "write_requests",
    "write_bytes",
    "flush_requests",
    "discard_requests",
    "failed_requests",
    "notify_exits",
    "io_wakeups",
];
const C_READS: usize = 0;
const C_READ_BYTES: usize = 1;
const C_WRITES: usize = 2;
const C_WRITE_BYTES: usize = 3;
const C_FLUSHES: usize = 4;
const C_DISCARDS: usize = 5;
const C_FAILED: usize = 6;
/// Doorbells that reached vireo through a vCPU exit (not through an ioeventfd).
const C_NOTIFY_EXITS: usize = 7;
/// Times an I/O thread woke up to look at its queue.
const C_WAKEUPS: usize = 8;

/// What one I/O thread owns.
struct Active {
    index: u16,
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Interrupt,
    /// FLUSH was not negotiated: every write must be durable before it completes (§5.2.6.2).
    writethrough: bool,
    bounce: Vec<u8>,
}

/// What became of one descriptor chain.
enum Outcome {
    /// The status byte was written; `len` bytes of device-writable memory were written in all.
    Completed { len: u32 },
    /// No status could be written (the chain is broken or has nowhere to put it).
    Dropped,
}

/// Where a chain's parts lie, checked before anything is read or written.
struct Layout {
    status: GuestAddress,
    /// The chain is usable as Reader/Writer; otherwise the request fails with IOERR.
    well_formed: bool,
}

/// Request failures, each becoming a status byte.
enum Failure {
    IoErr,
    Unsupp,
}

impl Failure {
    fn status(&self) -> u8 {
        match self {
            Failure::IoErr => VIRTIO_BLK_S_IOERR as u8,
            Failure::Unsupp => VIRTIO_BLK_S_UNSUPP as u8,
        }
    }
}

impl Block {
    /// Opens the image named by `cfg`.
    pub fn open(cfg: &BlockConfig) -> Result<Block, BlockError> {
        let id = serial_id(cfg.serial.as_deref())?;
        if cfg.num_queues == 0 || usize::from(cfg.num_queues) > MAX_QUEUES {
            return Err(BlockError::BadQueues {
                num_queues: cfg.num_queues,
            });
        }
        let disk = DiskFile::open(&cfg.path, cfg.readonly, cfg.format)?;
        let size = disk.size();
        let capacity = size >> SECTOR_SHIFT;
        let tail = size % SECTOR_SIZE;
        let mut warnings: Vec<String> =
            disk.lock_warning().map(str::to_owned).into_iter().collect();
        if tail != 0 {
            warnings.push(format!(
                "disk image {}: size {size} bytes is not a multiple of {SECTOR_SIZE}; \
                 the last {tail} bytes are not visible to the guest",
                disk.path().display()
            ));
        }
        let mut config = [0u8; CONFIG_LEN];
        build_config(&mut config, capacity, cfg.num_queues);
        Ok(Block {
            shared: Arc::new(Shared {
                disk,
                readonly: cfg.readonly,
                id,
                capacity,
                counters: DeviceCounters::new(COUNTERS),
                needs_reset: AtomicBool::new(false),
            }),
            config,
            warnings,
            queue_sizes: vec![QUEUE_SIZE; usize::from(cfg.num_queues)],
            workers: Vec::new(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }

    /// Waits until every I/O thread has served what its queue held when this was called (and
    /// found it empty), or `timeout` passes; false on a timeout. Pause and snapshot use it
    /// to quiesce the disk; without an active queue there is nothing to wait for.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let tickets: Vec<u64> = self
            .workers
            .iter()
            .map(|w| {
                let t = w.progress.ask();
                w.worker.kick();
                t
            })
            .collect();
        self.workers
            .iter()
            .zip(tickets)
            .all(|(w, t)| w.progress.wait(t, deadline))
    }

    /// What the user should know about the image: a size that is not a whole number of
    /// sectors, a file system that cannot lock it.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The image's format: `raw` or `qcow2`.
    pub fn format(&self) -> &'static str {
        self.shared.disk.format()
    }

    /// A descriptor of the image file itself (the top of a chain), for copying it while the
    /// device is paused: an overlay the VMM unlinked once open is reachable only this way.
    pub fn image_file(&self) -> std::io::Result<std::fs::File> {
        self.shared.disk.file().try_clone()
    }

    /// Whether the guest may write the disk.
    pub fn is_readonly(&self) -> bool {
        self.shared.readonly
    }

    /// Which file the image is (the same for every path that names it).
    pub fn file_id(&self) -> FileId {
        self.shared.disk.id()
    }
}

/// Chains served in one batch before the used ring is published and the driver notified, so
/// a driver that keeps the ring full still hears of completions.
const BATCH: usize = 64;

/// An I/O thread: serves its queue whenever woken, until told to stop.
fn serve(
    shared: &Shared,
    mut active: Active,
    progress: &Progress,
    wake: &EventFd,
    stop: &AtomicBool,
) {
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let ticket = progress.taken();
        shared.counters.add(C_WAKEUPS, 1);
        drain(shared, &mut active, stop);
        progress.finished(ticket);
        wait_readable(wake);
    }
}

/// Serves chains until the driver has none left (checked again after re-enabling
/// notifications, so one added meanwhile is not missed).
fn drain(shared: &Shared, active: &mut Active, stop: &AtomicBool) {
    let Active {
        index,
        mem,
        queue,
        interrupt,
        writethrough,
        bounce,
    } = active;
    let mem: &GuestMemoryMmap = mem;
    let mut requests = Requests {
        counters: &shared.counters,
        disk: shared.disk.backend(),
        readonly: shared.readonly,
        id: &shared.id,
        capacity: shared.capacity,
        bounce,
        writethrough: *writethrough,
    };
    let broken = || {
        shared.needs_reset.store(true, Ordering::Release);
        interrupt.signal_config();
    };
    loop {
        if queue.disable_notification(mem).is_err() {
            broken();
            return;
        }
        let mut served = 0;
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let chain = match queue.iter(mem) {
                Ok(mut chains) => chains.next(),
                Err(_) => {
                    // The available index moved by more than the ring size.
                    broken();
                    return;
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let len = match requests.handle(mem, chain) {
                Outcome::Completed { len } => len,
                Outcome::Dropped => {
                    broken();
                    0
                }
            };
            // A head index outside the ring cannot be returned at all.
            if queue.add_used(mem, head, len).is_err() {
                broken();
                continue;
            }
            served += 1;
            if served % BATCH == 0 {
                interrupt.notify_used(*index, queue, mem);
            }
        }
        if served % BATCH != 0 {
            interrupt.notify_used(*index, queue, mem);
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => return,
            Err(_) => {
                broken();
                return;
            }
        }
    }
}

/// The serial as the 20-byte NUL-padded device ID.
fn serial_id(serial: Option<&str>) -> Result<[u8; ID_BYTES], BlockError> {
    let mut id = [0u8; ID_BYTES];
    if let Some(s) = serial {
        if !s.is_ascii() || s.contains('\0') {
            return Err(BlockError::SerialNotAscii {
                serial: s.to_string(),
            });
        }
        if s.len() > ID_BYTES {
            return Err(BlockError::SerialTooLong {
                serial: s.to_string(),
                len: s.len(),
            });
        }
        id[..s.len()].copy_from_slice(s.as_bytes());
    }
    Ok(id)
}

/// Offsets in struct virtio_blk_config (virtio 1.2 §5.2.4).
pub(crate) mod config_offset {
    pub const CAPACITY: usize = 0;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

fn build_config(c: &mut [u8; CONFIG_LEN], capacity: u64, num_queues: u16) {
    use config_offset as o;
    let put32 = |c: &mut [u8; CONFIG_LEN], at: usize, v: u32| {
        c[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    c[o::CAPACITY..o::CAPACITY + 8].copy_from_slice(&capacity.to_le_bytes());
    // The header and the status take one descriptor each.
    put32(c, o::SEG_MAX, u32::from(QUEUE_SIZE) - 2);
    put32(c, o::BLK_SIZE, SECTOR_SIZE as u32);
    c[o::NUM_QUEUES..o::NUM_QUEUES + 2].copy_from_slice(&num_queues.to_le_bytes());
    put32(c, o::MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS);
    put32(c, o::MAX_DISCARD_SEG, MAX_DISCARD_SEG);
    put32(c, o::DISCARD_SECTOR_ALIGNMENT, DISCARD_SECTOR_ALIGNMENT);
    put32(c, o::MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SECTORS);
    put32(c, o::MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SEG);
    c[o::WRITE_ZEROES_MAY_UNMAP] = 1;
}

/// Walks a chain once without touching its buffers: where the status byte goes and whether
/// the rest can be parsed. `None` when no status byte can be written.
fn layout(mem: &GuestMemoryMmap, chain: &DescriptorChain<&GuestMemoryMmap>) -> Option<Layout> {
    let mut last = None;
    let mut seen_writable = false;
    let mut well_formed = true;
    for desc in chain.clone() {
        if desc.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            // Device-readable after device-writable (§2.7.4.2 forbids it).
            well_formed = false;
        }
        if !GuestMemory::check_range(mem, desc.addr(), desc.len() as usize, Permissions::Read) {
            well_formed = false;
        }
        last = Some(desc);
    }
    let last = last?;
    // The walk stops early on a loop, an index past the table or an unreadable descriptor;
    // the last descriptor seen still says NEXT then, and the real end is unknown.
    if last.has_next() || !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let status = last.addr().checked_add(u64::from(last.len()) - 1)?;
    if !GuestMemory::check_range(mem, status, 1, Permissions::Write) {
        return None;
    }
    Some(Layout {
        status,
        well_formed,
    })
}

/// The request executor: the disk and what it needs, borrowed from [`Block`] while the queue
/// is borrowed too.
struct Requests<'a> {
    counters: &'a DeviceCounters,
    disk: &'a dyn DiskBackend,
    readonly: bool,
    id: &'a [u8; ID_BYTES],
    capacity: u64,
    bounce: &'a mut Vec<u8>,
    writethrough: bool,
}

impl Requests<'_> {
    fn handle(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Outcome {
        let Some(layout) = layout(mem, &chain) else {
            return Outcome::Dropped;
        };
        let (status, data_written) = if layout.well_formed {
            match self.execute(mem, chain) {
                Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
                Err((f, n)) => (f.status(), n),
            }
        } else {
            (VIRTIO_BLK_S_IOERR as u8, 0)
        };
        if mem.write_obj(status, layout.status).is_err() {
            return Outcome::Dropped;
        }
        Outcome::Completed {
            len: data_written.saturating_add(1),
        }
    }

    /// Runs one request; the count is the bytes written into the driver's data buffers.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<u32, (Failure, u32)> {
        let ioerr = Err((Failure::IoErr, 0));
        let Ok(mut reader) = Reader::new(mem, chain.clone()) else {
            return ioerr;
        };
        let Ok(mut writer) = Writer::new(mem, chain) else {
            return ioerr;
        };
        // The last writable byte is the status; the data buffers are what comes before it.
        let writable = writer.available_bytes();
        if writable == 0 || writer.split_at(writable - 1).is_err() {
            return ioerr;
        }
        if reader.available_bytes() < HEADER_LEN {
            return ioerr;
        }
        let mut header = [0u8; HEADER_LEN];
        if reader.read_exact(&mut header).is_err() {
            return ioerr;
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);

        let c = self.counters;
        let r = match kind {
            VIRTIO_BLK_T_IN => {
                c.add(C_READS, 1);
                let r = self.read(sector, &mut writer);
                if let Ok(n) = r {
                    c.add(C_READ_BYTES, u64::from(n));
                }
                r
            }
            VIRTIO_BLK_T_OUT => {
                c.add(C_WRITES, 1);
                let len = reader.available_bytes() as u64;
                let r = self.write(sector, &mut reader).map(|()| 0);
                if r.is_ok() {
                    c.add(C_WRITE_BYTES, len);
                }
                r
            }
            VIRTIO_BLK_T_FLUSH => {
                c.add(C_FLUSHES, 1);
                self.flush().map(|()| 0)
            }
            VIRTIO_BLK_T_GET_ID => self.get_id(&mut writer),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                c.add(C_DISCARDS, 1);
                self.discard_or_zero(&mut reader, kind == VIRTIO_BLK_T_WRITE_ZEROES)
                    .map(|()| 0)
            }
            _ => Err((Failure::Unsupp, 0)),
        };
        if r.is_err() {
            c.add(C_FAILED, 1);
        }
        r
    }

    /// The byte range of `len` bytes at `sector`, if it is whole sectors inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.capacity << SECTOR_SHIFT).then_some(offset)
    }

    fn read<B: BitmapSlice>(
        &mut self,
        sector: u64,
        writer: &mut Writer<'_, B>,
    ) -> Result<u32, (Failure, u32)> {
        let len = writer.available_bytes();
        let Some(offset) = self.range(sector, len as u64) else {
            return Err((Failure::IoErr, 0));
        };
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(self.bounce.len());
            let buf = &mut self.bounce[..n];
            if self.disk.read_exact_at(buf, offset + done as u64).is_err()
                || writer.write_all(buf).is_err()
            {
                return Err((Failure::IoErr, writer.bytes_written() as u32));
            }
            done += n;
        }
        Ok(writer.bytes_written() as u32)
    }

    fn write<B: BitmapSlice>(
        &mut self,
        sector: u64,
        reader: &mut Reader<'_, B>,
    ) -> Result<(), (Failure, u32)> {
        let ioerr = Err((Failure::IoErr, 0));
        // §5.2.6.2: a write on a read-only device fails with IOERR and writes nothing.
        if self.readonly {
            return ioerr;
        }
        let len = reader.available_bytes();
        let Some(offset) = self.range(sector, len as u64) else {
            return ioerr;
        };
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(self.bounce.len());
            let buf = &mut self.bounce[..n];
            if reader.read_exact(buf).is_err()
                || self.disk.write_all_at(buf, offset + done as u64).is_err()
            {
                return ioerr;
            }
            done += n;
        }
        self.settle()
    }

    /// After a write: the image's metadata is written back, and in write-through mode (FLUSH
    /// not negotiated) the write is durable.
    fn settle(&self) -> Result<(), (Failure, u32)> {
        self.disk.write_done().map_err(|_| (Failure::IoErr, 0))?;
        if self.writethrough {
            self.disk.sync_data().map_err(|_| (Failure::IoErr, 0))?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), (Failure, u32)> {
        if self.readonly {
            return Ok(());
        }
        self.disk.sync_data().map_err(|_| (Failure::IoErr, 0))
    }

    fn get_id<B: BitmapSlice>(&self, writer: &mut Writer<'_, B>) -> Result<u32, (Failure, u32)> {
        let n = writer.available_bytes().min(ID_BYTES);
        writer
            .write_all(&self.id[..n])
            .map_err(|_| (Failure::IoErr, 0))?;
        Ok(n as u32)
    }

    fn discard_or_zero<B: BitmapSlice>(
        &mut self,
        reader: &mut Reader<'_, B>,
        zero: bool,
    ) -> Result<(), (Failure, u32)> {
        let ioerr = Err((Failure::IoErr, 0));
        if self.readonly {
            return ioerr;
        }
        let (max_seg, max_sectors) = if zero {
            (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
        } else {
            (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
        };
        let len = reader.available_bytes();
        if len == 0 || !len.is_multiple_of(SEGMENT_LEN) || len / SEGMENT_LEN > max_seg as usize {
            return ioerr;
        }
        // Check every segment before touching the disk: flags first (UNSUPP), then ranges.
        let mut segments = Vec::with_capacity(len / SEGMENT_LEN);
        for _ in 0..len / SEGMENT_LEN {
            let mut raw = [0u8; SEGMENT_LEN];
            if reader.read_exact(&mut raw).is_err() {
                return ioerr;
            }
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&raw[0..8]);
            let sector = u64::from_le_bytes(sector);
            let num = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
            let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            // §5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (unmap && !zero) {
                return Err((Failure::Unsupp, 0));
            }
            segments.push((sector, num, unmap));
        }
        for &(sector, num, _) in &segments {
            if num > max_sectors || self.range(sector, u64::from(num) << SECTOR_SHIFT).is_none() {
                return ioerr;
            }
        }
        for (sector, num, unmap) in segments {
            let offset = sector << SECTOR_SHIFT;
            let len = u64::from(num) << SECTOR_SHIFT;
            if len == 0 {
                continue;
            }
            let result = if !zero {
                // Discard is a hint: a host that cannot deallocate simply keeps the data.
                match self.disk.punch_hole(offset, len) {
                    Err(e) if is_unsupported(&e) => Ok(()),
                    r => r,
                }
            } else {
                self.bounce.fill(0);
                if unmap {
                    self.disk
                        .punch_or_write_zeroes(offset, len, self.bounce.as_slice())
                } else {
                    self.disk.write_zeroes(offset, len, self.bounce.as_slice())
                }
            };
            if result.is_err() {
                return ioerr;
            }
        }
        self.settle()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        types::BLOCK
    }

    /// The driver sent a request the device could not answer (no place for a status byte, a
    /// broken chain, a bad ring index): the transport raises DEVICE_NEEDS_RESET.
    fn needs_reset(&self) -> bool {
        self.shared.needs_reset.load(Ordering::Acquire)
    }

    fn counters(&self) -> Option<Arc<DeviceCounters>> {
        Some(self.shared.counters.clone())
    }

    fn features(&self) -> u64 {
        let mut f = F_VERSION_1
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if self.shared.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.queue_sizes.len() > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut act: Activation) -> Result<(), ActivateError> {
        self.workers.clear();
        let writethrough = act.features & (1 << VIRTIO_BLK_F_FLUSH) == 0;
        // Without MQ the driver uses the first queue only (§5.2.2).
        let queues = if act.features & (1 << VIRTIO_BLK_F_MQ) != 0 {
            self.queue_sizes.len()
        } else {
            1
        };
        let mut started = Vec::with_capacity(queues);
        for i in 0..queues {
            let queue = if i == 0 {
                act.take_queue(0, "requestq")?
            } else {
                // A driver may enable fewer queues than offered (one per vCPU it has).
                match act.queues.get_mut(i).and_then(Option::take) {
                    Some(q) => q,
                    None => continue,
                }
            };
            let index = i as u16;
            let active = Active {
                index,
                mem: act.mem.clone(),
                queue,
                interrupt: act.interrupt.clone(),
                writethrough,
                bounce: vec![0; BOUNCE_LEN],
            };
            let progress = Arc::new(Progress::default());
            let (shared, p) = (self.shared.clone(), progress.clone());
            let worker = Worker::start(&format!("vireo-blk-q{i}"), move |wake, stop| {
                serve(&shared, active, &p, wake, stop)
            })
            .map_err(|e| ActivateError::Backend(format!("cannot start an I/O thread: {e}")))?;
            started.push(QueueWorker {
                index,
                progress,
                worker,
            });
        }
        self.workers = started;
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        self.shared.counters.add(C_NOTIFY_EXITS, 1);
        if let Some(w) = self.workers.iter().find(|w| w.index == index) {
            w.worker.kick();
        }
    }

    fn quiesce(&self, timeout: Duration) -> bool {
        self.wait_idle(timeout)
    }

    fn queue_event(&self, index: u16) -> Option<Arc<EventFd>> {
        self.workers
            .iter()
            .find(|w| w.index == index)
            .map(|w| w.worker.event())
    }

    fn reset(&mut self) {
        // Stops and joins the threads: nothing touches guest memory after this returns.
        self.workers.clear();
        self.shared.needs_reset.store(false, Ordering::Release);
    }
}
