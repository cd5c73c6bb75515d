//! The virtio-pci transport, modern interface only (virtio 1.2 §4.1): a PCI function whose
//! 64-bit memory BAR 0 holds the common configuration, ISR, device configuration and
//! notification structures, each announced by a vendor capability, plus the MSI-X table and
//! pending bits when the platform can deliver MSIs. Without MSI-X (or until the driver enables
//! it) interrupts go out on INTA#.

use std::sync::Arc;

use vireo_machine::bus::{le_value, set_le_value};
use vireo_machine::GuestMemoryMmap;
use vireo_machine::{IrqLine, MsiSink};
use vireo_pci::config::{ConfigError, ConfigSpace, Identity};
use vireo_pci::{msix, MsixTable, PciDevice};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use crate::transport::{DeviceCore, Ring};
use crate::{types, Interrupt, MsixRoute, VirtioDevice, NO_VECTOR};

/// The virtio vendor ID; modern device IDs are 0x1040 + the virtio device type.
pub const VENDOR: u16 = 0x1af4;
const DEVICE_BASE: u16 = 0x1040;

/// BAR 0 layout: one page per structure.
const BAR: usize = 0;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x40;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_LEN: u64 = 0x1000;
/// Each queue's doorbell is `queue_notify_off × NOTIFY_MULTIPLIER` into the notify page, and
/// queue_notify_off is the queue's index.
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x6000;
const BAR_SIZE: u64 = 0x8000;
/// Vectors that fit between the table and the PBA.
const MAX_VECTORS: usize = ((MSIX_PBA - MSIX_TABLE) / 16) as usize;

/// virtio_pci_cap cfg_type values (§4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_VENDOR: u8 = 0x09;

/// Where a board can have doorbell writes signal an eventfd without leaving its kernel (KVM's
/// ioeventfd): a write of any width to `addr` then wakes the device's I/O thread directly and
/// the vCPU never exits for it. Boards without one (emu) reach the same eventfd through
/// `queue_notify`.
pub trait NotifyRegistry: Send + Sync {
    fn register(&self, addr: u64, fd: &EventFd) -> std::io::Result<()>;
    fn unregister(&self, addr: u64, fd: &EventFd) -> std::io::Result<()>;
}

/// One virtio device as a PCI function.
pub struct VirtioPci {
    core: DeviceCore,
    config: ConfigSpace,
    msix: Option<(Arc<MsixRoute>, usize)>,
    notify: Option<Arc<dyn NotifyRegistry>>,
    /// Doorbells registered with `notify`: guest-physical address and the eventfd.
    registered: Vec<(u64, Arc<EventFd>)>,
}

/// A struct virtio_pci_cap for `cfg_type` covering `len` bytes at `offset` in BAR 0, with
/// `extra` appended (the notify multiplier).
fn virtio_cap(cfg_type: u8, offset: u64, len: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![
        CAP_VENDOR,
        0,
        (16 + extra.len()) as u8,
        cfg_type,
        BAR as u8,
        0,
        0,
        0,
    ];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(len as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

fn class_of(device_type: u32) -> u32 {
    match device_type {
        types::NET => 0x02_00_00,
        types::BLOCK => 0x01_80_00,
        types::CONSOLE => 0x07_80_00,
        _ => 0xff_00_00,
    }
}

impl VirtioPci {
    /// Wraps `device`. `intx` is the line INTA# of this slot is routed to; `msi`, when the
    /// platform has an MSI controller, adds an MSI-X capability with a vector per queue plus
    /// one for configuration changes.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        intx: Arc<dyn IrqLine>,
        msi: Option<Arc<dyn MsiSink>>,
    ) -> Result<Self, ConfigError> {
        let ty = device.device_type();
        let mut config = ConfigSpace::new(Identity {
            vendor: VENDOR,
            device: DEVICE_BASE.saturating_add(ty as u16),
            // Revision 1 and a subsystem ID of at least 0x40 mark a modern-only device.
            revision: 1,
            class: class_of(ty),
            subsystem_vendor: VENDOR,
            subsystem: 0x40,
        });
        config.add_memory_bar(BAR, BAR_SIZE, true, false)?;
        config.set_interrupt_pin_a();
        let no_mask = |c: &[u8]| vec![0u8; c.len()];
        for cap in [
            virtio_cap(CAP_COMMON, COMMON, COMMON_LEN, &[]),
            virtio_cap(CAP_ISR, ISR, 1, &[]),
            virtio_cap(CAP_DEVICE, DEVICE_CFG, DEVICE_CFG_LEN, &[]),
            virtio_cap(
                CAP_NOTIFY,
                NOTIFY,
                NOTIFY_LEN,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
        ] {
            config.add_capability(&cap, &no_mask(&cap))?;
        }
        let queues = device.queue_max_sizes().len();
        let (interrupt, msix) = match msi {
            Some(sink) => {
                let vectors = (queues + 1).min(MAX_VECTORS) as u16;
                let (cap, mask) =
                    msix::capability(vectors, BAR as u8, MSIX_TABLE as u32, MSIX_PBA as u32);
                let at = config.add_capability(&cap, &mask)?;
                let route = Arc::new(MsixRoute::new(MsixTable::new(vectors, sink), queues));
                (Interrupt::with_msix(intx, route.clone()), Some((route, at)))
            }
            None => (Interrupt::new(intx), None),
        };
        Ok(VirtioPci {
            core: DeviceCore::new(device, mem, interrupt),
            config,
            msix,
            notify: None,
            registered: Vec::new(),
        })
    }

    /// The device's [`VirtioDevice::quiesce`].
    pub fn quiesce(&self, timeout: std::time::Duration) -> bool {
        self.core.device.quiesce(timeout)
    }

    /// Stops the device's host-side deliveries ([`VirtioDevice::pause`]).
    pub fn pause(&self, timeout: std::time::Duration) -> bool {
        self.core.device.pause(timeout)
    }

    /// Lets the device deliver again.
    pub fn resume(&self) {
        self.core.device.resume()
    }

    /// The transport's and the device's state, and the PCI function's; the device must be
    /// paused.
    pub fn save_state(
        &self,
    ) -> Result<(crate::state::CoreState, crate::state::PciFunctionState), crate::state::StateError>
    {
        Ok((
            self.core.save()?,
            crate::state::PciFunctionState {
                config: self.config.save(),
                msix: self.route().map(|r| r.save()),
            },
        ))
    }

    /// Puts a saved state back on a function built around a fresh device: configuration space
    /// and MSI-X first, so that the device, activated by the core's restore, signals through
    /// the routes the driver had set up; then the doorbells at the BAR's restored address.
    /// The root's decode table must be refreshed after (`PciRoot::refresh`).
    pub fn restore_state(
        &mut self,
        core: &crate::state::CoreState,
        pci: &crate::state::PciFunctionState,
    ) -> Result<(), crate::state::StateError> {
        use crate::state::StateError;
        let route = self.route().cloned();
        match (&pci.msix, &route) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(StateError::Pci(format!(
                    "the snapshot's function {} MSI-X, this board's {}",
                    if pci.msix.is_some() { "has" } else { "has no" },
                    if route.is_some() { "has" } else { "has none" }
                )))
            }
            _ => {}
        }
        // The table's enable bit lives in the capability's Message Control word: the two
        // must agree, or the device would signal one way while the driver listens another.
        if let (Some((_, at)), Some(st)) = (&self.msix, &pci.msix) {
            let on = pci.config.regs.get(at + 3).is_some_and(|b| b & 0x80 != 0);
            if on != st.table.enabled {
                return Err(StateError::Pci(format!(
                    "the MSI-X enable bit in configuration space ({on}) and the table's ({}) disagree",
                    st.table.enabled
                )));
            }
        }
        let before = self.config.save();
        self.config.restore(&pci.config).map_err(StateError::Pci)?;
        let undo = |this: &mut Self, e: StateError| {
            let _ = this.config.restore(&before);
            e
        };
        if let (Some(st), Some(r)) = (&pci.msix, &route) {
            if let Err(e) = r.restore(st) {
                return Err(undo(self, StateError::Pci(e)));
            }
        }
        if let Err(e) = self.core.restore(core) {
            if let Some(r) = &route {
                r.reset();
            }
            return Err(undo(self, e));
        }
        self.sync_doorbells();
        Ok(())
    }

    /// Has the board's kernel signal the device's queue eventfds on doorbell writes.
    pub fn set_notify_registry(&mut self, registry: Arc<dyn NotifyRegistry>) {
        self.notify = Some(registry);
    }

    /// Brings the registered doorbells in line with the device: one per queue with an I/O
    /// thread, at the BAR's current address, while the device is live and the BAR decodes;
    /// none otherwise. Called after every write that can change one of those.
    fn sync_doorbells(&mut self) {
        let Some(registry) = self.notify.clone() else {
            return;
        };
        let mut want: Vec<(u64, Arc<EventFd>)> = Vec::new();
        if let (true, Some((base, _))) = (self.core.active, self.config.bar_window(BAR)) {
            for q in 0..self.core.queues.len() as u16 {
                if let Some(fd) = self.core.device.queue_event(q) {
                    let addr = base + NOTIFY + u64::from(q) * u64::from(NOTIFY_MULTIPLIER);
                    want.push((addr, fd));
                }
            }
        }
        let same = |a: &(u64, Arc<EventFd>), b: &(u64, Arc<EventFd>)| {
            a.0 == b.0 && Arc::ptr_eq(&a.1, &b.1)
        };
        for old in std::mem::take(&mut self.registered) {
            if want.iter().any(|w| same(w, &old)) {
                self.registered.push(old);
            } else {
                let _ = registry.unregister(old.0, &old.1);
            }
        }
        for w in want {
            if self.registered.iter().any(|r| same(r, &w)) {
                continue;
            }
            // Without the registration the doorbell still works, through the vCPU's exit.
            if registry.register(w.0, &w.1).is_ok() {
                self.registered.push(w);
            }
        }
    }

    /// Sets the interrupt-line register (the platform's INTx routing, for guests that read it).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.config.set_interrupt_line(line);
    }

    pub fn device_type(&self) -> u32 {
        self.core.device.device_type()
    }

    fn route(&self) -> Option<&Arc<MsixRoute>> {
        self.msix.as_ref().map(|(r, _)| r)
    }

    fn common_read(&self, off: u64, len: usize) -> u64 {
        let c = &self.core;
        let q = c.selected();
        let vector = |v: Option<u16>| u64::from(v.unwrap_or(NO_VECTOR));
        match (off, len) {
            (0x00, 4) => u64::from(c.device_features_sel),
            (0x04, 4) => u64::from(c.device_features_word()),
            (0x08, 4) => u64::from(c.driver_features_sel),
            (0x0c, 4) => u64::from(c.driver_features_word()),
            (0x10, 2) => vector(self.route().map(|r| r.config_vector())),
            (0x12, 2) => c.queues.len() as u64,
            (0x14, 1) => u64::from(c.status() as u8),
            (0x15, 1) => u64::from(c.config_generation as u8),
            (0x16, 2) => u64::from(c.queue_sel as u16),
            (0x18, 2) => q.map_or(0, |q| u64::from(q.size())),
            (0x1a, 2) => match q {
                Some(_) => vector(self.route().map(|r| r.queue_vector(c.queue_sel as usize))),
                None => u64::from(NO_VECTOR),
            },
            (0x1c, 2) => q.map_or(0, |q| u64::from(q.ready())),
            (0x1e, 2) => q.map_or(0, |_| u64::from(c.queue_sel as u16)),
            (0x20 | 0x28 | 0x30, 8) | (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) => {
                let Some(q) = q else { return 0 };
                let full = match off & !7 {
                    0x20 => q.desc_table(),
                    0x28 => q.avail_ring(),
                    _ => q.used_ring(),
                };
                if len == 8 {
                    full
                } else if off.is_multiple_of(8) {
                    full & 0xffff_ffff
                } else {
                    full >> 32
                }
            }
            _ => 0,
        }
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let v = le_value(data);
        let route = self.route().cloned();
        let c = &mut self.core;
        match (off, data.len()) {
            (0x00, 4) => c.device_features_sel = v as u32,
            (0x08, 4) => c.driver_features_sel = v as u32,
            (0x0c, 4) => c.set_driver_features_word(v as u32),
            (0x10, 2) => {
                if let Some(r) = route {
                    r.set_config_vector(v as u16);
                }
            }
            (0x14, 1) => c.set_status(v as u32),
            (0x16, 2) => c.queue_sel = v as u32,
            (0x18, 2) => c.set_queue_size(v as u32),
            (0x1a, 2) => {
                if let (Some(r), true) = (route, c.selected_mut().is_some()) {
                    r.set_queue_vector(c.queue_sel as usize, v as u16);
                }
            }
            // Drivers only ever enable a queue here (§4.1.4.3.2).
            (0x1c, 2) if v == 1 => {
                if let Some(q) = c.selected_mut() {
                    q.set_ready(true);
                }
            }
            (0x20 | 0x28 | 0x30, 8) | (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) => {
                let ring = match off & !7 {
                    0x20 => Ring::Desc,
                    0x28 => Ring::Driver,
                    _ => Ring::Device,
                };
                let (lo, hi) = match (data.len(), off % 8) {
                    (8, _) => (Some(v as u32), Some((v >> 32) as u32)),
                    (_, 0) => (Some(v as u32), None),
                    _ => (None, Some(v as u32)),
                };
                c.set_ring_address(ring, lo, hi);
            }
            _ => {}
        }
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn config_written(&mut self, offset: usize) {
        if let Some((route, at)) = &self.msix {
            // The Message Control word is bytes 2..4 of the capability.
            if (*at..*at + 4).contains(&offset) {
                let b = self.config.bytes(at + 2, 2);
                route.table().set_control(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        // The BAR may have moved, or memory decoding changed.
        self.sync_doorbells();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        set_le_value(data, 0);
        if bar != BAR {
            return;
        }
        match offset {
            COMMON..=0xfff if offset < COMMON_LEN => {
                let v = self.common_read(offset, data.len());
                set_le_value(data, v);
            }
            ISR if data.len() == 1 => {
                // Reading the ISR acknowledges it (§4.1.4.5).
                let c = &self.core;
                let v = c.interrupt.status();
                c.interrupt.ack(v);
                data[0] = v as u8;
            }
            DEVICE_CFG..=0x2fff => self.core.device.read_config(offset - DEVICE_CFG, data),
            MSIX_TABLE..=0x5fff => {
                if let Some(r) = self.route() {
                    r.table().table_read(offset - MSIX_TABLE, data);
                }
            }
            MSIX_PBA..=0x7fff => {
                if let Some(r) = self.route() {
                    r.table().pba_read(offset - MSIX_PBA, data);
                }
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != BAR {
            return;
        }
        match offset {
            COMMON..=0xfff if offset < COMMON_LEN => {
                self.common_write(offset, data);
                // A status write activates or resets the device (and its threads).
                if offset == 0x14 {
                    self.sync_doorbells();
                }
            }
            DEVICE_CFG..=0x2fff => self.core.write_config(offset - DEVICE_CFG, data),
            NOTIFY..=0x3fff => {
                let index = (offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
                self.core.notify(index as u32);
            }
            MSIX_TABLE..=0x5fff => {
                if let Some(r) = self.route() {
                    r.table().table_write(offset - MSIX_TABLE, data);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;

/// Runs `op` on the virtio-pci function behind `f`, the root's handle on it; `None` when the
/// function is not virtio-pci. How a board reaches the functions it placed, to pause, save or
/// restore them.
pub fn with_function<R>(
    f: &vireo_pci::SharedFunction,
    op: impl FnOnce(&mut VirtioPci) -> R,
) -> Option<R> {
    let mut g = f.lock().unwrap_or_else(|p| p.into_inner());
    g.as_any_mut()
        .and_then(|a| a.downcast_mut::<VirtioPci>())
        .map(op)
}

/// The device state of every function in `functions` (each a virtio-pci function) for a
/// snapshot: the transport cores and the PCI functions, in the same order. The devices must
/// be paused.
pub fn save_functions(
    functions: &[vireo_pci::SharedFunction],
) -> Result<
    (
        Vec<crate::state::CoreState>,
        Vec<crate::state::PciFunctionState>,
    ),
    String,
> {
    let mut cores = Vec::new();
    let mut pci = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        let (core, function) = with_function(f, |d| d.save_state())
            .ok_or_else(|| format!("PCI function {i} is not virtio-pci"))?
            .map_err(|e| format!("virtio device {i} (PCI): {e}"))?;
        cores.push(core);
        pci.push(function);
    }
    Ok((cores, pci))
}

/// Puts saved states back on `functions` (fresh devices from the same definition), then
/// has `root` decode the BARs where the guest had placed them. Nothing runs yet.
pub fn restore_functions(
    root: &vireo_pci::SharedRoot,
    functions: &[vireo_pci::SharedFunction],
    cores: &[crate::state::CoreState],
    pci: &[crate::state::PciFunctionState],
) -> Result<(), String> {
    if cores.len() != functions.len() || pci.len() != functions.len() {
        return Err(format!(
            "the snapshot has {} virtio devices ({} PCI function states), the definition {}",
            cores.len(),
            pci.len(),
            functions.len()
        ));
    }
    for (i, (f, (core, function))) in functions.iter().zip(cores.iter().zip(pci)).enumerate() {
        with_function(f, |d| d.restore_state(core, function))
            .ok_or_else(|| format!("PCI function {i} is not virtio-pci"))?
            .map_err(|e| format!("virtio device {i} (PCI): {e}"))?;
    }
    root.lock().unwrap_or_else(|p| p.into_inner()).refresh();
    Ok(())
}

/// Pauses every virtio-pci function in `functions` within `timeout` in all (see
/// [`VirtioDevice::pause`]); false if one did not.
pub fn pause_functions(
    functions: &[vireo_pci::SharedFunction],
    timeout: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let mut all = true;
    for f in functions {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        all &= with_function(f, |d| d.pause(left)).unwrap_or(false);
    }
    all
}

/// Lets every function in `functions` deliver again.
pub fn resume_functions(functions: &[vireo_pci::SharedFunction]) {
    for f in functions {
        let _ = with_function(f, |d| d.resume());
    }
}

/// Puts `devices` on `root` as virtio-pci functions, one slot each in order — the one place
/// both boards do it. `line_for(index, slot)` gives the INTx line of the index-th device, placed
/// in `slot`, and its number (the
/// interrupt line register the driver reads); `msi` enables MSI-X where the board has an MSI
/// controller (none: INTx only, and no MSI-X capability for the driver to try). Returns each
/// device's (slot, line number). `notify`, where the board has one, takes the doorbells of
/// devices with I/O threads.
pub fn add_functions(
    root: &mut vireo_pci::PciRoot,
    devices: Vec<Box<dyn VirtioDevice>>,
    mem: &GuestMemoryMmap,
    mut line_for: impl FnMut(usize, u8) -> Option<(Arc<dyn IrqLine>, u8)>,
    msi: Option<Arc<dyn MsiSink>>,
    notify: Option<Arc<dyn NotifyRegistry>>,
) -> Result<Vec<(u8, u8)>, String> {
    let mut placed = Vec::new();
    for (index, dev) in devices.into_iter().enumerate() {
        let slot = root
            .next_free_slot()
            .ok_or_else(|| vireo_pci::PciError::BusFull.to_string())?;
        let (line, number) = line_for(index, slot)
            .ok_or_else(|| format!("no interrupt line for PCI slot {slot}: too many devices"))?;
        let mut f =
            VirtioPci::new(dev, mem.clone(), line, msi.clone()).map_err(|e| e.to_string())?;
        f.set_interrupt_line(number);
        if let Some(n) = &notify {
            f.set_notify_registry(n.clone());
        }
        let got = root.add(Box::new(f)).map_err(|e| e.to_string())?;
        placed.push((got, number));
    }
    Ok(placed)
}
