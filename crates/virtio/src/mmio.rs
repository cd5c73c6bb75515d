//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): a 0x200-byte register window per
//! device, the device's configuration space from 0x100.

use std::sync::Arc;

use vireo_machine::bus::{le_value, set_le_value};
use vireo_machine::GuestMemoryMmap;
use vireo_machine::{BusDevice, IrqLine};
use virtio_queue::QueueT;

use crate::transport::{DeviceCore, Ring};
pub use crate::transport::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
};
use crate::{Interrupt, VirtioDevice};

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

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    core: DeviceCore,
}

impl MmioTransport {
    /// The device's [`VirtioDevice::quiesce`].
    pub fn quiesce(&self, timeout: std::time::Duration) -> bool {
        self.core.device.quiesce(timeout)
    }

    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: Arc<dyn IrqLine>) -> Self {
        MmioTransport {
            core: DeviceCore::new(device, mem, Interrupt::new(irq)),
        }
    }

    /// Stops the device's host-side deliveries ([`VirtioDevice::pause`]).
    pub fn pause(&self, timeout: std::time::Duration) -> bool {
        self.core.device.pause(timeout)
    }

    /// Lets the device deliver again.
    pub fn resume(&self) {
        self.core.device.resume()
    }

    /// The transport's and the device's state; the device must be paused.
    pub fn save_state(&self) -> Result<crate::state::CoreState, crate::state::StateError> {
        self.core.save()
    }

    /// Puts a saved state back (on a transport built around a fresh device).
    pub fn restore_state(
        &mut self,
        st: &crate::state::CoreState,
    ) -> Result<(), crate::state::StateError> {
        self.core.restore(st)
    }

    /// The device's type, for the device tree and messages.
    pub fn device_type(&self) -> u32 {
        self.core.device.device_type()
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let c = &self.core;
        if offset >= CONFIG {
            c.device.read_config(offset - CONFIG, data);
            return;
        }
        // Registers are 32-bit and must be read as such (§4.2.2.2).
        if data.len() != 4 || !offset.is_multiple_of(4) {
            set_le_value(data, 0);
            return;
        }
        let v: u32 = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => 2,
            REG_DEVICE_ID => c.device.device_type(),
            REG_VENDOR_ID => VENDOR,
            REG_DEVICE_FEATURES => c.device_features_word(),
            REG_QUEUE_NUM_MAX => c.selected().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => c.selected().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => c.interrupt.status(),
            REG_STATUS => c.status(),
            // No shared memory regions: length all ones means "none".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => c.config_generation,
            _ => 0,
        };
        set_le_value(data, u64::from(v));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let c = &mut self.core;
        if offset >= CONFIG {
            c.write_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let v = le_value(data) as u32;
        match offset {
            REG_DEVICE_FEATURES_SEL => c.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => c.driver_features_sel = v,
            REG_DRIVER_FEATURES => c.set_driver_features_word(v),
            REG_QUEUE_SEL => c.queue_sel = v,
            REG_QUEUE_NUM => c.set_queue_size(v),
            REG_QUEUE_READY => {
                if let Some(q) = c.selected_mut() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_DESC_LOW => c.set_ring_address(Ring::Desc, Some(v), None),
            REG_QUEUE_DESC_HIGH => c.set_ring_address(Ring::Desc, None, Some(v)),
            REG_QUEUE_DRIVER_LOW => c.set_ring_address(Ring::Driver, Some(v), None),
            REG_QUEUE_DRIVER_HIGH => c.set_ring_address(Ring::Driver, None, Some(v)),
            REG_QUEUE_DEVICE_LOW => c.set_ring_address(Ring::Device, Some(v), None),
            REG_QUEUE_DEVICE_HIGH => c.set_ring_address(Ring::Device, None, Some(v)),
            REG_QUEUE_NOTIFY => c.notify(v),
            REG_INTERRUPT_ACK => c.interrupt.ack(v),
            REG_STATUS => c.set_status(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ActivateError, Activation, F_VERSION_1};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    /// A device that records what the transport did to it.
    #[derive(Default)]
    struct Probe {
        activated: Arc<AtomicBool>,
        notified: Arc<AtomicU32>,
        resets: Arc<AtomicU32>,
        queues_seen: Arc<Mutex<Vec<bool>>>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            crate::types::RNG
        }
        fn features(&self) -> u64 {
            F_VERSION_1 | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::read_config_bytes(&[0xaa, 0xbb], offset, data);
        }
        fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
            *self.queues_seen.lock().unwrap() = act.queues.iter().map(|q| q.is_some()).collect();
            self.activated.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn queue_notify(&mut self, _index: u16) {
            self.notified.fetch_add(1, Ordering::SeqCst);
        }
        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
            self.activated.store(false, Ordering::SeqCst);
        }
    }

    struct Line(AtomicBool);
    impl IrqLine for Line {
        fn set_level(&self, high: bool) {
            self.0.store(high, Ordering::SeqCst);
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// The transport, then the probe's activated/notified/resets/queues-seen records, and
    /// the interrupt line.
    type Setup = (
        MmioTransport,
        Arc<AtomicBool>,
        Arc<AtomicU32>,
        Arc<AtomicU32>,
        Arc<Mutex<Vec<bool>>>,
        Arc<Line>,
    );

    fn setup() -> Setup {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let p = Probe::default();
        let (a, n, r, q) = (
            p.activated.clone(),
            p.notified.clone(),
            p.resets.clone(),
            p.queues_seen.clone(),
        );
        let line = Arc::new(Line(AtomicBool::new(false)));
        (
            MmioTransport::new(Box::new(p), mem, line.clone()),
            a,
            n,
            r,
            q,
            line,
        )
    }

    fn negotiate(t: &mut MmioTransport) {
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, REG_DRIVER_FEATURES_SEL, 1);
        wr(t, REG_DRIVER_FEATURES, 1); // VERSION_1
        wr(t, REG_DRIVER_FEATURES_SEL, 0);
        wr(t, REG_DRIVER_FEATURES, 1);
        wr(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, desc: u64, avail: u64, used: u64, size: u32) {
        wr(t, REG_QUEUE_SEL, sel);
        wr(t, REG_QUEUE_NUM, size);
        wr(t, REG_QUEUE_DESC_LOW, desc as u32);
        wr(t, REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        wr(t, REG_QUEUE_DRIVER_LOW, avail as u32);
        wr(t, REG_QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        wr(t, REG_QUEUE_DEVICE_LOW, used as u32);
        wr(t, REG_QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        wr(t, REG_QUEUE_READY, 1);
    }

    #[test]
    fn identity_and_config() {
        let (mut t, ..) = setup();
        assert_eq!(rd(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), crate::types::RNG);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
        wr(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 8);
        wr(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0, "no such queue");
        let mut b = [0u8; 4];
        t.read(CONFIG, &mut b);
        assert_eq!(b, [0xaa, 0xbb, 0, 0]);
        // Narrow or misaligned register reads return zero rather than a torn value.
        let mut one = [0xffu8; 1];
        t.read(REG_MAGIC, &mut one);
        assert_eq!(one, [0]);
        assert_eq!(rd(&mut t, REG_MAGIC + 2), 0);
    }

    #[test]
    fn activation_with_valid_queues() {
        let (mut t, active, notified, _, seen, _) = setup();
        negotiate(&mut t);
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        setup_queue(&mut t, 0, 0x1000, 0x2000, 0x3000, 16);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(active.load(Ordering::SeqCst));
        assert_eq!(*seen.lock().unwrap(), vec![true, false]);
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        wr(&mut t, REG_QUEUE_NOTIFY, 9); // no such queue: ignored
        assert_eq!(notified.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn features_the_device_lacks_are_refused() {
        let (mut t, ..) = setup();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1 | 4);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        // A legacy driver (no VERSION_1) is refused too.
        let (mut t, ..) = setup();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn hostile_queue_setup_needs_reset_not_a_crash() {
        let (mut t, active, ..) = setup();
        negotiate(&mut t);
        // Size not a power of two and above the maximum: refused, size stays at the maximum.
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_NUM, 12);
        wr(&mut t, REG_QUEUE_NUM, 1 << 20);
        assert_eq!(t.core.queues[0].size(), 16);
        // A value whose low 16 bits are a valid size is still out of range.
        wr(&mut t, REG_QUEUE_NUM, 0x1_0008);
        assert_eq!(t.core.queues[0].size(), 16, "0x10008 must not pass as 8");
        wr(&mut t, REG_QUEUE_NUM, 8);
        assert_eq!(t.core.queues[0].size(), 8);
        wr(&mut t, REG_QUEUE_NUM, 16);
        // Rings outside guest memory (64 KiB here).
        setup_queue(&mut t, 0, 0xffff_fff0_0000, 0x2000, 0x3000, 16);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(!active.load(Ordering::SeqCst));
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        // Notifies to a device that never activated do nothing.
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        // Selecting a queue that does not exist and writing its registers is harmless.
        wr(&mut t, REG_QUEUE_SEL, 0xffff_ffff);
        setup_queue(&mut t, 0xffff_ffff, 0, 0, 0, 4);
        // Reset brings it back.
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1000, 0x2000, 0x3000, 16);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(active.load(Ordering::SeqCst));
    }

    #[test]
    fn interrupts_and_reset() {
        let (mut t, active, _, resets, _, line) = setup();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1000, 0x2000, 0x3000, 16);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        t.core.interrupt.signal_used(0);
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 1);
        wr(&mut t, REG_INTERRUPT_ACK, 1);
        assert!(!line.0.load(Ordering::SeqCst));
        // Queue registers are frozen once the device runs.
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
        // Status bits can only be added; clearing one is ignored; 0 resets.
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_DRIVER_OK, 0);
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        assert!(!active.load(Ordering::SeqCst));
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn a_saved_transport_restores_onto_a_fresh_device_and_continues() {
        use vm_memory::Bytes;
        let (mut t, activated, ..) = setup();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1000, 0x2000, 0x3000, 16);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(activated.load(Ordering::SeqCst));
        let mem = t.core.mem.clone();
        // The device has returned 5 chains; the driver has made 7 available.
        mem.write_obj(5u16, GuestAddress(0x3002)).unwrap();
        mem.write_obj(7u16, GuestAddress(0x2002)).unwrap();
        let st = t.save_state().unwrap();
        assert!(st.active);
        assert_eq!((st.queues[0].next_avail, st.queues[0].next_used), (5, 5));
        assert_eq!(st.queues[0].desc, 0x1000);

        let fresh = |dev: Box<dyn VirtioDevice>| {
            MmioTransport::new(dev, mem.clone(), Arc::new(Line(AtomicBool::new(false))))
        };
        let p = Probe::default();
        let (a, q) = (p.activated.clone(), p.queues_seen.clone());
        let mut r = fresh(Box::new(p));
        r.restore_state(&st).unwrap();
        assert!(
            a.load(Ordering::SeqCst),
            "restored active: the device is activated"
        );
        assert_eq!(*q.lock().unwrap(), vec![true, false]);
        assert_ne!(rd(&mut r, REG_STATUS) & STATUS_DRIVER_OK, 0);
        wr(&mut r, REG_QUEUE_SEL, 0);
        assert_eq!(rd(&mut r, REG_QUEUE_READY), 1);
        assert_eq!(rd(&mut r, REG_QUEUE_NUM_MAX), 16);
        assert_eq!(
            r.save_state().unwrap(),
            st,
            "a restore then a save changed the state"
        );

        // A device of another type, and a position the driver's ring contradicts.
        struct Other;
        impl VirtioDevice for Other {
            fn device_type(&self) -> u32 {
                crate::types::BLOCK
            }
            fn features(&self) -> u64 {
                F_VERSION_1
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[16, 8]
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn activate(&mut self, _: Activation) -> Result<(), ActivateError> {
                Ok(())
            }
            fn queue_notify(&mut self, _: u16) {}
            fn reset(&mut self) {}
        }
        let e = fresh(Box::new(Other)).restore_state(&st).unwrap_err();
        assert!(
            e.to_string()
                .contains("type 4 here, the definition gives type 2"),
            "{e}"
        );
        mem.write_obj(200u16, GuestAddress(0x2002)).unwrap();
        let e = fresh(Box::<Probe>::default())
            .restore_state(&st)
            .unwrap_err();
        assert!(e.to_string().contains("available index is 200"), "{e}");
        // The guest can write its used index too: a contradicting one refuses the snapshot.
        let e = r.save_state().unwrap_err();
        assert!(e.to_string().contains("available index is 200"), "{e}");
        let mut split = st.clone();
        split.queues[0].next_used = 4;
        mem.write_obj(7u16, GuestAddress(0x2002)).unwrap();
        let e = fresh(Box::<Probe>::default())
            .restore_state(&split)
            .unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        // Bytes for a device that keeps none are refused.
        let mut odd = st.clone();
        odd.device = vec![1];
        mem.write_obj(7u16, GuestAddress(0x2002)).unwrap();
        assert!(fresh(Box::<Probe>::default()).restore_state(&odd).is_err());
    }
}
