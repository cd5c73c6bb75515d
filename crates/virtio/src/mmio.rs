//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): a 0x200-byte register window per
//! device, the device's configuration space from 0x100.

use std::sync::Arc;

use vireo_machine::bus::{le_value, set_le_value};
use vireo_machine::{BusDevice, IrqLine};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::{Activation, Interrupt, VirtioDevice};

pub const MMIO_WINDOW: u64 = 0x200;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x4f52_4956; // "VIRO"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// Device status bits (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    active: bool,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: Arc<dyn IrqLine>) -> Self {
        let queues = Self::fresh_queues(device.as_ref());
        MmioTransport {
            device,
            mem,
            interrupt: Interrupt::new(irq),
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

    /// The device's type, for the device tree and messages.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        // Queue registers only mean something before DRIVER_OK and for an existing queue.
        if self.active {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
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

    fn set_status(&mut self, v: u32) {
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
            if self.driver_features & !offered != 0
                || self.driver_features & crate::F_VERSION_1 == 0
            {
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
                self.status |= STATUS_NEEDS_RESET;
                self.interrupt.signal_config();
                return;
            }
            let Ok(mut q) = Queue::try_from(q.state()) else {
                self.status |= STATUS_NEEDS_RESET;
                return;
            };
            q.set_event_idx(self.driver_features & (1 << 29) != 0);
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
            Err(_) => {
                self.status |= STATUS_NEEDS_RESET;
                self.interrupt.signal_config();
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        // Registers are 32-bit and must be read as such (§4.2.2.2).
        if data.len() != 4 || offset % 4 != 0 {
            set_le_value(data, 0);
            return;
        }
        let v: u32 = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => 2,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: length all ones means "none".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        set_le_value(data, u64::from(v));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            if !self.active || self.status & STATUS_DRIVER_OK != 0 {
                self.device.write_config(offset - CONFIG, data);
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let v = le_value(data) as u32;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected() {
                    // An invalid size (zero, not a power of two, above the maximum) is refused
                    // by virtio-queue and leaves the old one.
                    let _ = q.try_set_size(v as u16).ok().filter(|_| v <= 0xffff);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_DESC_LOW => {
                if let Some(q) = self.selected() {
                    q.set_desc_table_address(Some(v), None);
                }
            }
            REG_QUEUE_DESC_HIGH => {
                if let Some(q) = self.selected() {
                    q.set_desc_table_address(None, Some(v));
                }
            }
            REG_QUEUE_DRIVER_LOW => {
                if let Some(q) = self.selected() {
                    q.set_avail_ring_address(Some(v), None);
                }
            }
            REG_QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.selected() {
                    q.set_avail_ring_address(None, Some(v));
                }
            }
            REG_QUEUE_DEVICE_LOW => {
                if let Some(q) = self.selected() {
                    q.set_used_ring_address(Some(v), None);
                }
            }
            REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected() {
                    q.set_used_ring_address(None, Some(v));
                }
            }
            REG_QUEUE_NOTIFY => {
                if self.active && (v as usize) < self.queues.len() {
                    self.device.queue_notify(v as u16);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            _ => {}
        }
    }
}
