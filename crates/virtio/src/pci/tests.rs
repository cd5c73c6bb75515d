//! virtio-pci driven the way a driver does: walk the capabilities, negotiate, set up a queue
//! through the common configuration, kick it, and take the interrupt by MSI-X or INTx; and the
//! accesses a hostile driver makes.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use vireo_pci::config::{reg, CMD_MEMORY};
use vm_memory::GuestAddress;

use super::*;
use crate::rng::Rng;
use crate::test_util::{CountIrq, Driver};
use crate::transport::*;
use crate::{F_VERSION_1, INT_USED};

#[derive(Default)]
struct Msis(Mutex<Vec<(u64, u32)>>);
impl MsiSink for Msis {
    fn send(&self, address: u64, data: u32) {
        self.0.lock().unwrap().push((address, data));
    }
}

struct Rig {
    dev: VirtioPci,
    mem: GuestMemoryMmap,
    intx: Arc<CountIrq>,
    msis: Arc<Msis>,
}

fn rig(with_msi: bool) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let intx = Arc::new(CountIrq::default());
    let msis = Arc::new(Msis::default());
    let msi = with_msi.then(|| msis.clone() as Arc<dyn MsiSink>);
    let dev = VirtioPci::new(Box::new(Rng::new()), mem.clone(), intx.clone(), msi).unwrap();
    Rig {
        dev,
        mem,
        intx,
        msis,
    }
}

fn cfg(d: &VirtioPci, off: usize, len: usize) -> u32 {
    let mut b = vec![0u8; len];
    d.config().read(off, &mut b);
    le_value(&b) as u32
}

fn cfg_write(d: &mut VirtioPci, off: usize, v: u32, len: usize) {
    d.config_mut().write(off, &v.to_le_bytes()[..len]);
    d.config_written(off);
}

fn rd(d: &mut VirtioPci, off: u64, len: usize) -> u64 {
    let mut b = vec![0u8; len];
    d.bar_read(0, off, &mut b);
    le_value(&b)
}

fn wr(d: &mut VirtioPci, off: u64, v: u64, len: usize) {
    d.bar_write(0, off, &v.to_le_bytes()[..len]);
}

/// Capabilities as (id, offset in config space).
fn caps(d: &VirtioPci) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = cfg(d, reg::CAP_PTR, 1) as usize;
    while at != 0 && out.len() < 48 {
        out.push((cfg(d, at, 1) as u8, at));
        at = cfg(d, at + 1, 1) as usize;
    }
    out
}

/// The virtio structures as cfg_type → (bar, offset, length).
fn virtio_structs(d: &VirtioPci) -> Vec<(u8, u8, u32, u32)> {
    caps(d)
        .into_iter()
        .filter(|&(id, _)| id == 0x09)
        .map(|(_, at)| {
            (
                cfg(d, at + 3, 1) as u8,
                cfg(d, at + 4, 1) as u8,
                cfg(d, at + 8, 4),
                cfg(d, at + 12, 4),
            )
        })
        .collect()
}

/// Negotiates VERSION_1 and sets up queue 0 on `drv`'s rings; returns before DRIVER_OK.
fn bring_up(d: &mut VirtioPci, drv: &Driver) {
    wr(d, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    wr(d, 0x08, 1, 4);
    wr(d, 0x0c, F_VERSION_1 >> 32, 4);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    wr(d, 0x14, u64::from(s), 1);
    assert_eq!(rd(d, 0x14, 1) as u32, s, "features accepted");
    let q = drv.queue();
    wr(d, 0x16, 0, 2);
    wr(d, 0x18, u64::from(q.size()), 2);
    // 64-bit fields written as two halves, as Linux does, and one as a qword.
    wr(d, 0x20, q.desc_table() & 0xffff_ffff, 4);
    wr(d, 0x24, q.desc_table() >> 32, 4);
    wr(d, 0x28, q.avail_ring(), 8);
    wr(d, 0x30, q.used_ring() & 0xffff_ffff, 4);
    wr(d, 0x34, q.used_ring() >> 32, 4);
    assert_eq!(rd(d, 0x28, 8), q.avail_ring());
    assert_eq!(rd(d, 0x30, 4), q.used_ring() & 0xffff_ffff);
    wr(d, 0x1c, 1, 2);
}

fn driver_ok(d: &mut VirtioPci) {
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    wr(d, 0x14, u64::from(s), 1);
    assert_eq!(rd(d, 0x14, 1) as u32, s, "device live");
}

#[test]
fn identity_and_capabilities() {
    let r = rig(true);
    let d = &r.dev;
    assert_eq!(cfg(d, reg::VENDOR_ID, 2), 0x1af4);
    assert_eq!(cfg(d, reg::DEVICE_ID, 2), 0x1044, "0x1040 + entropy (4)");
    assert_eq!(cfg(d, reg::REVISION, 1), 1);
    assert_eq!(cfg(d, reg::SUBSYS_ID, 2), 0x40);
    assert_eq!(cfg(d, reg::INTERRUPT_PIN, 1), 1);
    let structs = virtio_structs(d);
    let types: Vec<u8> = structs.iter().map(|s| s.0).collect();
    assert_eq!(types, vec![CAP_COMMON, CAP_ISR, CAP_DEVICE, CAP_NOTIFY]);
    for (ty, bar, off, len) in &structs {
        assert_eq!(*bar, 0);
        assert!(u64::from(*off) + u64::from(*len) <= BAR_SIZE, "type {ty}");
    }
    let notify_at = caps(d).into_iter().filter(|c| c.0 == 9).nth(3).unwrap().1;
    assert_eq!(cfg(d, notify_at + 16, 4), NOTIFY_MULTIPLIER);
    let msix: Vec<usize> = caps(d)
        .into_iter()
        .filter(|c| c.0 == msix::CAP_ID)
        .map(|c| c.1)
        .collect();
    assert_eq!(msix.len(), 1);
    // One queue plus the config vector.
    assert_eq!(cfg(d, msix[0] + 2, 2) & 0x7ff, 1);
    assert!(
        !caps(&rig(false).dev).iter().any(|c| c.0 == msix::CAP_ID),
        "no MSI controller, no MSI-X capability"
    );
}

/// Turns memory decoding and MSI-X on, and points vector 1 at 0xfee0_0000 with data 0x45,
/// unmasked.
fn enable_msix(d: &mut VirtioPci) {
    let msix_at = caps(d).into_iter().find(|c| c.0 == msix::CAP_ID).unwrap().1;
    cfg_write(d, reg::COMMAND, u32::from(CMD_MEMORY), 2);
    cfg_write(d, msix_at + 2, 0x8000, 2);
    wr(d, MSIX_TABLE + 16, 0xfee0_0000, 8);
    wr(d, MSIX_TABLE + 24, 0x45, 4);
    wr(d, MSIX_TABLE + 28, 0, 4);
}

#[test]
fn request_completes_with_an_msix_message() {
    let mut r = rig(true);
    let mut drv = Driver::new(&r.mem, 0x1_0000, 16);
    let d = &mut r.dev;
    enable_msix(d);
    // Vector 1 → address/data; queue 0 uses it; config changes use vector 0.
    bring_up(d, &drv);
    wr(d, 0x10, 0, 2);
    assert_eq!(rd(d, 0x10, 2), 0);
    wr(d, 0x1a, 1, 2);
    assert_eq!(rd(d, 0x1a, 2), 1);
    driver_ok(d);
    drv.add(&[(0x8_0000, 32, true)]);
    wr(d, NOTIFY, 0, 2);
    assert_eq!(drv.used(), vec![(0, 32)]);
    assert_eq!(*r.msis.0.lock().unwrap(), vec![(0xfee0_0000, 0x45)]);
    assert_eq!(
        r.intx.0.load(Ordering::SeqCst),
        0,
        "no INTx while MSI-X is on"
    );
    assert_eq!(rd(d, ISR, 1), 0);
}

#[test]
fn request_completes_on_intx_and_isr_read_clears_it() {
    let mut r = rig(false);
    let mut drv = Driver::new(&r.mem, 0x1_0000, 16);
    let d = &mut r.dev;
    bring_up(d, &drv);
    // No MSI-X: vectors read back as NO_VECTOR.
    wr(d, 0x1a, 0, 2);
    assert_eq!(rd(d, 0x1a, 2), u64::from(NO_VECTOR));
    driver_ok(d);
    drv.add(&[(0x8_0000, 16, true)]);
    wr(d, NOTIFY, 0, 2);
    assert_eq!(drv.used(), vec![(0, 16)]);
    assert_eq!(r.intx.0.load(Ordering::SeqCst), 1);
    assert_eq!(rd(d, ISR, 1), u64::from(INT_USED));
    assert_eq!(rd(d, ISR, 1), 0, "read to clear");
}

#[test]
fn vectors_past_the_table_read_back_as_none() {
    let mut r = rig(true);
    let d = &mut r.dev;
    wr(d, 0x10, 2, 2);
    assert_eq!(rd(d, 0x10, 2), u64::from(NO_VECTOR));
    wr(d, 0x1a, 0x7fff, 2);
    assert_eq!(rd(d, 0x1a, 2), u64::from(NO_VECTOR));
    wr(d, 0x1a, 1, 2);
    assert_eq!(rd(d, 0x1a, 2), 1);
    // A reset forgets them (§4.1.5.1.2.1).
    wr(d, 0x14, 0, 1);
    assert_eq!(rd(d, 0x1a, 2), u64::from(NO_VECTOR));
}

#[test]
fn hostile_accesses_are_harmless() {
    let mut r = rig(true);
    let mut drv = Driver::new(&r.mem, 0x1_0000, 16);
    let d = &mut r.dev;
    // A queue that does not exist: nothing to read, writes go nowhere.
    wr(d, 0x16, 5, 2);
    assert_eq!(rd(d, 0x18, 2), 0);
    assert_eq!(rd(d, 0x1e, 2), 0);
    assert_eq!(rd(d, 0x1a, 2), u64::from(NO_VECTOR));
    wr(d, 0x18, 8, 2);
    wr(d, 0x1c, 1, 2);
    wr(d, 0x20, 0xdead_beef, 8);
    // Odd widths and offsets, kicks of absent queues, beyond every structure.
    for off in [0x01, 0x03, 0x13, 0x3f, 0x40, 0xfff, 0x1001, 0x3ffe, 0x7fff] {
        for len in [1, 2, 4, 8] {
            let _ = rd(d, off, len);
            wr(d, off, u64::MAX, len);
        }
    }
    wr(d, NOTIFY + 4 * 9, 9, 2);
    wr(d, NOTIFY + 0xffc, 0, 4);
    // Features the device never offered are refused at FEATURES_OK.
    wr(d, 0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    wr(d, 0x08, 0, 4);
    wr(d, 0x0c, 0xffff_ffff, 4);
    wr(
        d,
        0x14,
        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        1,
    );
    assert_eq!(rd(d, 0x14, 1) as u32 & STATUS_FEATURES_OK, 0);
    // After all that, a reset and a proper bring-up still work.
    wr(d, 0x14, 0, 1);
    bring_up(d, &drv);
    driver_ok(d);
    drv.add(&[(0x8_0000, 8, true)]);
    wr(d, NOTIFY, 0, 2);
    assert_eq!(drv.used(), vec![(0, 8)]);
}

#[test]
fn rings_outside_memory_need_a_reset_not_a_crash() {
    let mut r = rig(false);
    let drv = Driver::new(&r.mem, 0x1_0000, 16);
    let d = &mut r.dev;
    bring_up(d, &drv);
    wr(d, 0x20, 0xffff_0000_0000, 8);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    wr(d, 0x14, u64::from(s), 1);
    assert_ne!(rd(d, 0x14, 1) as u32 & STATUS_NEEDS_RESET, 0);
    wr(d, NOTIFY, 0, 2);
}

/// What a driver reads back of its setup: queue count, status, queue 0's vector, whether it is
/// enabled, and its descriptor and driver ring addresses.
fn driver_view(d: &mut VirtioPci) -> Vec<u64> {
    [
        (0x12, 2),
        (0x14, 1),
        (0x1a, 2),
        (0x1c, 2),
        (0x20, 8),
        (0x28, 8),
    ]
    .iter()
    .map(|&(off, len)| rd(d, off, len))
    .collect()
}

#[test]
fn a_saved_function_restores_onto_a_fresh_one_and_serves_on() {
    let mut r = rig(true);
    let mut drv = Driver::new(&r.mem, 0x1_0000, 16);
    let d = &mut r.dev;
    // The guest moves the BAR (as a kernel reassigning resources does) and enables MSI-X.
    cfg_write(d, reg::BAR0, 0x6000_0000, 4);
    enable_msix(d);
    bring_up(d, &drv);
    wr(d, 0x1a, 1, 2);
    driver_ok(d);
    drv.add(&[(0x8_0000, 32, true)]);
    wr(d, NOTIFY, 0, 2);
    assert_eq!(drv.used(), vec![(0, 32)]);
    assert!(d.pause(std::time::Duration::from_secs(1)));
    let (core, pci) = d.save_state().unwrap();
    let common = driver_view(d);

    // A no-MSI board refuses it and is left at reset.
    let mut plain = rig(false);
    let e = plain
        .dev
        .restore_state(&core, &pci)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MSI-X"), "{e}");
    assert_eq!(rd(&mut plain.dev, 0x14, 1), 0);
    assert_eq!(plain.dev.config().bar_window(0), None);

    let mut back = VirtioPci::new(
        Box::new(Rng::new()),
        r.mem.clone(),
        r.intx.clone(),
        Some(r.msis.clone() as Arc<dyn MsiSink>),
    )
    .unwrap();
    back.restore_state(&core, &pci).unwrap();
    assert_eq!(back.config().bar_window(0), Some((0x6000_0000, BAR_SIZE)));
    let again = driver_view(&mut back);
    assert_eq!(again, common);
    // The queue goes on from where it was, and completes on the driver's vector.
    drv.add(&[(0x8_1000, 16, true)]);
    wr(&mut back, NOTIFY, 0, 2);
    assert_eq!(
        drv.used(),
        vec![(1, 16)],
        "the second chain, at descriptor 1"
    );
    assert_eq!(
        *r.msis.0.lock().unwrap(),
        vec![(0xfee0_0000, 0x45), (0xfee0_0000, 0x45)]
    );
}
