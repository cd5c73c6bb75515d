//! virtio 1.x devices and their transports, shared by every accelerator.
//!
//! A device implements [`VirtioDevice`]: what it offers (type, features, queue sizes, config
//! space) and what it does when the driver activates it and kicks its queues. A transport
//! ([`mmio::MmioTransport`], virtio-mmio version 2) turns the guest's register accesses into
//! those calls and is what goes on a [`vireo_machine::Bus`]. Devices reach guest memory only
//! through vm-memory and virtio-queue, and treat every descriptor as hostile: addresses,
//! lengths, chain lengths and indices are checked by virtio-queue and again by the device's
//! own expectations; a malformed request gets an error status or the device asks for a reset,
//! never a crash.
//!
//! Each device is a folder: `device.rs` (what the guest sees), and a backend where it talks to
//! the host.

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vireo_machine::GuestMemoryMmap;
use vireo_machine::IrqLine;
use vireo_pci::MsixTable;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

pub mod block;
pub mod console;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod rng;
pub mod serial;
pub mod state;
#[cfg(test)]
mod test_util;
mod transport;
pub mod vsock;
mod worker;

/// Device IDs (virtio 1.2 §5).
pub mod types {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
}

/// Feature bits every vireo device offers.
pub const F_VERSION_1: u64 = 1 << 32;
/// The device may read and write guest memory out of order relative to the driver (no IOMMU
/// here), which is what virtio 1.x drivers expect from a hypervisor's device.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Errors a device reports when the driver activates it.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up the queues in a way the device cannot use.
    #[error("queue {index}: {reason}")]
    BadQueue { index: usize, reason: String },
    /// A host resource the device needs failed.
    #[error("{0}")]
    Backend(String),
}

/// The interrupt state of one device: the InterruptStatus (virtio-mmio) / ISR (virtio-pci) bits
/// and the line behind them, or, once a virtio-pci driver enabled MSI-X, the vector each queue
/// was given. Cloned into device worker threads.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    line: Arc<dyn IrqLine>,
    msix: Option<Arc<MsixRoute>>,
}

/// The driver's choice of MSI-X vector for each queue and for configuration changes
/// (virtio 1.2 §4.1.5.1.2), and the table they index.
pub struct MsixRoute {
    table: Mutex<MsixTable>,
    /// The table's size, fixed at creation (kept here so checking a vector takes no lock).
    vectors: usize,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

/// "No vector": the driver wants no interrupt for this event.
pub const NO_VECTOR: u16 = 0xffff;

impl MsixRoute {
    pub fn new(table: MsixTable, queues: usize) -> Self {
        MsixRoute {
            vectors: table.vectors(),
            table: Mutex::new(table),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        }
    }

    pub fn table(&self) -> MutexGuard<'_, MsixTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    /// Records the driver's vector for config changes; one past the table reads back as
    /// NO_VECTOR, which is how the driver learns the device refused it.
    pub fn set_config_vector(&self, v: u16) {
        self.config_vector.store(self.checked(v), Ordering::Release);
    }

    pub fn queue_vector(&self, queue: usize) -> u16 {
        self.queue_vectors
            .get(queue)
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    pub fn set_queue_vector(&self, queue: usize, v: u16) {
        if let Some(slot) = self.queue_vectors.get(queue) {
            slot.store(self.checked(v), Ordering::Release);
        }
    }

    fn checked(&self, v: u16) -> u16 {
        if usize::from(v) < self.vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    pub fn save(&self) -> state::MsixRouteState {
        state::MsixRouteState {
            table: self.table().save(),
            config_vector: self.config_vector(),
            queue_vectors: (0..self.queue_vectors.len())
                .map(|q| self.queue_vector(q))
                .collect(),
        }
    }

    /// Puts the driver's choices back; vectors past the table are refused, as the driver's
    /// own writes are (they read back as NO_VECTOR).
    pub fn restore(&self, st: &state::MsixRouteState) -> Result<(), String> {
        if st.queue_vectors.len() != self.queue_vectors.len() {
            return Err(format!(
                "MSI-X vectors for {} queues, this device has {}",
                st.queue_vectors.len(),
                self.queue_vectors.len()
            ));
        }
        for &v in std::iter::once(&st.config_vector).chain(&st.queue_vectors) {
            if v != NO_VECTOR && self.checked(v) == NO_VECTOR {
                return Err(format!(
                    "MSI-X vector {v} is past the table ({} vectors)",
                    self.vectors
                ));
            }
        }
        self.table().restore(&st.table)?;
        self.config_vector
            .store(st.config_vector, Ordering::Release);
        for (slot, &v) in self.queue_vectors.iter().zip(&st.queue_vectors) {
            slot.store(v, Ordering::Release);
        }
        Ok(())
    }

    pub fn reset(&self) {
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
    }

    /// Sends `vector` if MSI-X is on; false when the event should take the INTx path.
    fn send(&self, vector: u16) -> bool {
        let mut t = self.table();
        if !t.enabled() {
            return false;
        }
        if vector != NO_VECTOR {
            t.notify(vector);
        }
        true
    }
}

/// InterruptStatus bit: a used buffer was returned.
pub const INT_USED: u32 = 1;
/// InterruptStatus bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            line,
            msix: None,
        }
    }

    /// An interrupt that uses MSI-X vectors when the driver enables them and `line` (INTx)
    /// otherwise.
    pub fn with_msix(line: Arc<dyn IrqLine>, msix: Arc<MsixRoute>) -> Self {
        Interrupt {
            msix: Some(msix),
            ..Self::new(line)
        }
    }

    /// Tells the driver used buffers are waiting on `queue`.
    pub fn signal_used(&self, queue: u16) {
        if let Some(m) = &self.msix {
            if m.send(m.queue_vector(usize::from(queue))) {
                return;
            }
        }
        self.status.fetch_or(INT_USED, Ordering::AcqRel);
        self.line.set_level(true);
    }

    /// Signals used buffers on `queue` unless the driver suppressed notifications
    /// (VIRTIO_F_EVENT_IDX or the NO_INTERRUPT flag); a ring it cannot read counts as "notify".
    pub fn notify_used(&self, queue: u16, q: &mut Queue, mem: &GuestMemoryMmap) {
        if q.needs_notification(mem).unwrap_or(true) {
            self.signal_used(queue);
        }
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config(&self) {
        if let Some(m) = &self.msix {
            if m.send(m.config_vector()) {
                return;
            }
        }
        self.status.fetch_or(INT_CONFIG, Ordering::AcqRel);
        self.line.set_level(true);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The driver acknowledged `bits`; the line drops when nothing is left.
    pub fn ack(&self, bits: u32) {
        let left = self.status.fetch_and(!bits, Ordering::AcqRel) & !bits;
        if left == 0 {
            self.line.set_level(false);
        }
    }

    /// Puts back the InterruptStatus bits of a snapshot. The line itself is the interrupt
    /// controller's state, restored with it.
    pub(crate) fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::Release);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.line.set_level(false);
        if let Some(m) = &self.msix {
            m.reset();
        }
    }
}

/// What the driver handed over when it set DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// The queues in index order; a queue the driver left disabled is `None`.
    pub queues: Vec<Option<Queue>>,
    pub interrupt: Interrupt,
    /// The features the driver accepted.
    pub features: u64,
}

impl Activation {
    /// Takes queue `index` (called `name` in the device's section of the spec) for the device;
    /// a queue the driver did not enable is an error naming it.
    pub fn take_queue(&mut self, index: usize, name: &str) -> Result<Queue, ActivateError> {
        self.queues
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| ActivateError::BadQueue {
                index,
                reason: format!("{name} is not enabled; expected it ready"),
            })
    }
}

/// Counters a device keeps for the host (metrics), named once, updated lock-free from the
/// vCPU or worker thread, read from any thread.
pub struct DeviceCounters {
    names: &'static [&'static str],
    values: Box<[std::sync::atomic::AtomicU64]>,
}

impl DeviceCounters {
    pub fn new(names: &'static [&'static str]) -> Arc<Self> {
        Arc::new(DeviceCounters {
            names,
            values: names
                .iter()
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        })
    }

    /// Adds `n` to counter `index` (an index into the names; others are ignored).
    #[inline]
    pub fn add(&self, index: usize, n: u64) {
        if let Some(v) = self.values.get(index) {
            v.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Every counter with its name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.names
            .iter()
            .zip(self.values.iter())
            .map(|(n, v)| (*n, v.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }
}

/// A virtio device, independent of transport and accelerator.
pub trait VirtioDevice: Send {
    /// The virtio device ID ([`types`]).
    fn device_type(&self) -> u32;
    /// Features offered (include [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space. Out-of-range writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver set DRIVER_OK: start serving the queues.
    fn activate(&mut self, act: Activation) -> Result<(), ActivateError>;
    /// The driver kicked queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// The driver reset the device: drop the queues and stop any worker.
    fn reset(&mut self);
    /// Whether the device met something it cannot recover from without a reset (a request
    /// with nowhere to write its status, say); the transport then sets DEVICE_NEEDS_RESET and
    /// tells the driver.
    fn needs_reset(&self) -> bool {
        false
    }
    /// The device's counters, if it keeps any; the VMM takes the handle before the device goes
    /// to its transport.
    /// Waits until the host-side work the driver's notifications asked for so far is done
    /// (the device's own threads idle), or `timeout` passes; false on a timeout. Devices that
    /// serve requests in `queue_notify` are always idle.
    fn quiesce(&self, timeout: std::time::Duration) -> bool {
        let _ = timeout;
        true
    }
    /// The eventfd that wakes queue `index`'s I/O thread, for devices served off the vCPU
    /// (after activation). A board that can (kvm) has the kernel write it on the doorbell
    /// itself, so a notification never leaves the kernel.
    fn queue_event(&self, index: u16) -> Option<Arc<vmm_sys_util::eventfd::EventFd>> {
        let _ = index;
        None
    }
    fn counters(&self) -> Option<Arc<DeviceCounters>> {
        None
    }
    /// Stops every host-initiated delivery into guest memory (received frames, host input,
    /// vsock data) and waits, up to `timeout`, until the device's threads are outside guest
    /// memory and the work already asked for is done: after `true`, nothing of the device
    /// writes guest memory or its rings until [`VirtioDevice::resume`]. What arrives from the
    /// host meanwhile waits in the backend. Devices that only answer the driver's requests
    /// (the vCPUs are stopped) need nothing more than [`VirtioDevice::quiesce`].
    fn pause(&self, timeout: std::time::Duration) -> bool {
        self.quiesce(timeout)
    }
    /// Lets a paused device deliver again.
    fn resume(&self) {}
    /// The device's own guest-visible state beyond its transport and queues (see
    /// [`state`]), encoded by the device; empty when it has none. Called paused.
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Takes back what [`VirtioDevice::save_state`] gave, before the transport re-activates
    /// the device from a restored state. A device without own state accepts only nothing.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "device type {} keeps no state of its own but the snapshot holds {} bytes for it",
                self.device_type(),
                state.len()
            ))
        }
    }
}

/// Serves the chains the driver made available on queue `index`: at most one ring's worth per
/// call, so a driver that keeps adding buffers cannot hold the caller. Each chain goes back
/// with the byte count `serve` reports written (a head outside the ring cannot go back and is
/// dropped), and the driver is notified if it asked to be.
pub(crate) fn serve_ring(
    index: u16,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    mut serve: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) {
    let mut used_any = false;
    for _ in 0..queue.size() {
        let Ok(Some(chain)) = queue.iter(mem).map(|mut chains| chains.next()) else {
            break;
        };
        let head = chain.head_index();
        let written = serve(chain);
        used_any |= queue.add_used(mem, head, written).is_ok();
    }
    if used_any {
        interrupt.notify_used(index, queue, mem);
    }
}

/// Moves `pending` host bytes into the driver's device-writable buffers on `queue`, oldest
/// first, as far as they go: at most a ring's worth of chains per call (a driver feeding empty
/// buffers from another vCPU cannot keep the caller here), and no chain is taken once nothing
/// is pending. A chain outside guest memory, or with nothing device-writable, comes back empty.
/// Returns whether any chain went back (the caller then notifies the driver).
pub(crate) fn fill_ring(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    pending: &mut std::collections::VecDeque<u8>,
) -> bool {
    let mut used_any = false;
    for _ in 0..queue.size() {
        if pending.is_empty() {
            break;
        }
        let Ok(Some(chain)) = queue.iter(mem).map(|mut chains| chains.next()) else {
            break;
        };
        let head = chain.head_index();
        let written = match virtio_queue::Writer::new(mem, chain) {
            Ok(mut w) => {
                use std::io::Write;
                let n = w.available_bytes().min(pending.len());
                let (front, back) = pending.as_slices();
                let from_front = n.min(front.len());
                if w.write_all(&front[..from_front]).is_ok()
                    && w.write_all(&back[..n - from_front]).is_ok()
                {
                    pending.drain(..n);
                    n
                } else {
                    0
                }
            }
            Err(_) => 0,
        };
        // A chain's writable bytes are a u32 sum, so `written` fits.
        used_any |= queue.add_used(mem, head, written as u32).is_ok();
    }
    used_any
}

/// Reads little-endian bytes of a config structure at `offset` into `data` (zero past its end).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
