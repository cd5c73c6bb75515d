//! What every virtio transport does the same way (virtio 1.2 §2, §3.1): feature negotiation,
//! the device status state machine, queue setup before DRIVER_OK, activation with checked
//! rings, notification and reset. virtio-mmio and virtio-pci only differ in how the guest's
//! register accesses reach these.

use vireo_machine::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

use crate::state::{CoreState, QueueState, StateError};
use crate::{Activation, Interrupt, VirtioDevice, F_VERSION_1};

/// Device status bits (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

const F_EVENT_IDX: u64 = 1 << 29;

/// The three areas of a split virtqueue (§2.7), as the transports name them.
#[derive(Debug, Clone, Copy)]
pub enum Ring {
    Desc,
    /// The available ring.
    Driver,
    /// The used ring.
    Device,
}

/// One device and the transport-independent state the driver builds up around it.
pub(crate) struct DeviceCore {
    pub device: Box<dyn VirtioDevice>,
    pub mem: GuestMemoryMmap,
    pub interrupt: Interrupt,
    pub queues: Vec<Queue>,
    pub queue_sel: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub config_generation: u32,
    pub active: bool,
}

impl DeviceCore {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, interrupt: Interrupt) -> Self {
        let queues = Self::fresh_queues(device.as_ref());
        DeviceCore {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            active: false,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            // Sizes come from our own devices (powers of two ≤ 32768), never from the guest.
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }

    /// The selected queue, for reading its registers.
    pub fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, for setting it up: queue registers only mean something before
    /// DRIVER_OK and for an existing queue.
    pub fn selected_mut(&mut self) -> Option<&mut Queue> {
        if self.active {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The 32 device feature bits selected by `device_features_sel`.
    pub fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => self.device.features() as u32,
            1 => (self.device.features() >> 32) as u32,
            _ => 0,
        }
    }

    /// The 32 accepted feature bits selected by `driver_features_sel`.
    pub fn driver_features_word(&self) -> u32 {
        match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// Sets the low and/or high half of the selected queue's `ring` address (setup only).
    pub fn set_ring_address(&mut self, ring: Ring, lo: Option<u32>, hi: Option<u32>) {
        if let Some(q) = self.selected_mut() {
            match ring {
                Ring::Desc => q.set_desc_table_address(lo, hi),
                Ring::Driver => q.set_avail_ring_address(lo, hi),
                Ring::Device => q.set_used_ring_address(lo, hi),
            }
        }
    }

    /// The driver writes accepted features until it sets FEATURES_OK; later writes are ignored.
    pub fn set_driver_features_word(&mut self, v: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    /// Sets the selected queue's size; an invalid size (zero, not a power of two, above the
    /// maximum, wider than 16 bits) is refused and leaves the old one.
    pub fn set_queue_size(&mut self, v: u32) {
        if let (Some(q), Ok(size)) = (self.selected_mut(), u16::try_from(v)) {
            let _ = q.try_set_size(size);
        }
    }

    pub fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.queues = Self::fresh_queues(self.device.as_ref());
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.clear();
    }

    pub fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (§2.1.2); anything else is ignored.
        if v & self.status != self.status {
            return;
        }
        let new = v & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if new & STATUS_DRIVER_OK != 0 && !self.active {
            self.activate();
        }
    }

    /// The device status the driver reads: with DEVICE_NEEDS_RESET once the device asked for
    /// it, even from one of its own threads.
    pub fn status(&self) -> u32 {
        if self.active && self.device.needs_reset() {
            self.status | STATUS_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Sets DEVICE_NEEDS_RESET and tells the driver (a configuration-change interrupt).
    fn request_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt.signal_config();
    }

    fn activate(&mut self) {
        if self.status & STATUS_FEATURES_OK == 0 {
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        let mut queues: Vec<Option<Queue>> = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            if !q.ready() {
                queues.push(None);
                continue;
            }
            // Rings must lie in guest RAM, aligned, and the size must be a power of two.
            if !q.is_valid(&self.mem) {
                self.request_reset();
                return;
            }
            let Ok(mut q) = Queue::try_from(q.state()) else {
                self.status |= STATUS_NEEDS_RESET;
                return;
            };
            q.set_event_idx(self.driver_features & F_EVENT_IDX != 0);
            queues.push(Some(q));
        }
        let act = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        match self.device.activate(act) {
            Ok(()) => self.active = true,
            Err(_) => self.request_reset(),
        }
    }

    /// The driver kicked queue `index`.
    pub fn notify(&mut self, index: u32) {
        if !self.active || index as usize >= self.queues.len() {
            return;
        }
        self.device.queue_notify(index as u16);
        if self.device.needs_reset() && self.status & STATUS_NEEDS_RESET == 0 {
            self.request_reset();
        }
    }

    /// The driver writes the device's configuration space only before activation or while
    /// the device is live.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.active || self.status & STATUS_DRIVER_OK != 0 {
            self.device.write_config(offset, data);
        }
    }

    /// The driver's side of this device and each queue's position (see [`crate::state`]).
    /// The device must be paused: its queues are read from guest memory. The used index
    /// found there is the guest's to overwrite, so it is checked as a restore will check it:
    /// a guest that scribbled on its ring gets a refused snapshot, not an unrestorable one.
    pub fn save(&self) -> Result<CoreState, StateError> {
        let device_type = self.device.device_type();
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            // A live queue's position is the used ring's index the device last wrote.
            let pos = if self.active && q.ready() {
                let used = q
                    .used_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
                    .map_err(|e| StateError::BadQueue {
                        device_type,
                        index,
                        reason: format!("cannot read the used ring: {e:?}"),
                    })?;
                check_position(q, &self.mem, used.0).map_err(|reason| StateError::BadQueue {
                    device_type,
                    index,
                    reason,
                })?;
                used.0
            } else {
                0
            };
            queues.push(QueueState {
                size: q.size(),
                ready: q.ready(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                next_avail: pos,
                next_used: pos,
            });
        }
        Ok(CoreState {
            device_type,
            offered: self.device.features(),
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            status: self.status(),
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            active: self.active,
            queues,
            device: self.device.save_state(),
        })
    }

    /// Puts a saved state back on a freshly built device (never activated) and, if the driver
    /// had set DRIVER_OK, activates it with queues continuing from their saved positions.
    pub fn restore(&mut self, st: &CoreState) -> Result<(), StateError> {
        let device_type = self.device.device_type();
        if st.device_type != device_type {
            return Err(StateError::WrongDevice {
                saved: st.device_type,
                built: device_type,
            });
        }
        // Features the driver accepted must still be offered; new offers are harmless (the
        // driver never saw them).
        let offered = self.device.features();
        if st.driver_features & !offered != 0 {
            return Err(StateError::Features {
                device_type,
                saved: st.offered,
                built: offered,
            });
        }
        let fresh = Self::fresh_queues(self.device.as_ref());
        if st.queues.len() != fresh.len() {
            return Err(StateError::Queues {
                device_type,
                saved: st.queues.len(),
                built: fresh.len(),
            });
        }
        let mut queues = fresh;
        for (i, (q, s)) in queues.iter_mut().zip(&st.queues).enumerate() {
            let bad = |reason: String| StateError::BadQueue {
                device_type,
                index: i,
                reason,
            };
            if s.size != q.size() {
                q.try_set_size(s.size)
                    .map_err(|e| bad(format!("size {}: {e:?}", s.size)))?;
            }
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(s.desc);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(s.avail);
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(s.used);
            q.set_used_ring_address(lo, hi);
            q.set_ready(s.ready);
            q.set_next_avail(s.next_avail);
            q.set_next_used(s.next_used);
            if st.active && s.ready {
                if !q.is_valid(&self.mem) {
                    return Err(bad("its rings are not in guest RAM".into()));
                }
                if s.next_used != s.next_avail {
                    return Err(bad(format!(
                        "next available {} and next used {} differ; a paused device has them equal",
                        s.next_avail, s.next_used
                    )));
                }
                check_position(q, &self.mem, s.next_avail).map_err(bad)?;
            }
        }
        self.device
            .restore_state(&st.device)
            .map_err(|reason| StateError::Device {
                device_type,
                reason,
            })?;
        self.queues = queues;
        self.queue_sel = st.queue_sel;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.driver_features = st.driver_features;
        self.config_generation = st.config_generation;
        self.status = st.status & !STATUS_NEEDS_RESET;
        self.interrupt.restore_status(st.interrupt_status);
        if st.active {
            let mut act_queues = Vec::with_capacity(self.queues.len());
            for q in &self.queues {
                if !q.ready() {
                    act_queues.push(None);
                    continue;
                }
                let mut live = Queue::try_from(q.state()).map_err(|e| StateError::BadQueue {
                    device_type,
                    index: act_queues.len(),
                    reason: format!("{e:?}"),
                })?;
                live.set_event_idx(self.driver_features & F_EVENT_IDX != 0);
                act_queues.push(Some(live));
            }
            let act = Activation {
                mem: self.mem.clone(),
                queues: act_queues,
                interrupt: self.interrupt.clone(),
                features: self.driver_features,
            };
            self.device.activate(act).map_err(|e| StateError::Device {
                device_type,
                reason: format!("cannot activate: {e}"),
            })?;
            self.active = true;
        }
        Ok(())
    }
}

/// A device position `pos` in queue `q` is one the driver's available index can be at most a
/// ring ahead of (virtio 1.2 §2.7.13: the driver never makes more than a ring's worth
/// available).
fn check_position(q: &Queue, mem: &GuestMemoryMmap, pos: u16) -> Result<(), String> {
    let avail = q
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_err(|e| format!("cannot read the available ring: {e:?}"))?;
    if avail.0.wrapping_sub(pos) > q.size() {
        return Err(format!(
            "the device is at {pos} but the driver's available index is {}",
            avail.0
        ));
    }
    Ok(())
}
