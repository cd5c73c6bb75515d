//! virtio-pci: the PCI root's configuration space (ECAM: the host bridge and a function's
//! header, BARs, capability list) and the function's BAR (common configuration, ISR, device
//! configuration, notifications), with virtio-rng serving the queue.
#![no_main]
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vireo_fuzz::{memory, ops, Op, Regs, SyncRegs, QUEUE_SIZE, RINGS};
use vireo_machine::NoIrq;
use vireo_pci::{Ecam, MmioWindow, PciRoot};
use vireo_virtio::pci::VirtioPci;
use vm_memory::{Bytes, GuestAddress};

const WINDOW: u64 = 0x4000_0000;
/// Device 1's configuration space in ECAM (bus 0, device 1, function 0).
const DEV1: u64 = 1 << 15;

fn w(t: &mut impl Regs, off: u64, v: u64, len: usize) {
    t.write(off, &v.to_le_bytes()[..len]);
}

fuzz_target!(|data: &[u8]| {
    let (mem, rest) = memory(data);
    let Ok(mut root) = PciRoot::new(WINDOW, 0x4000_0000) else {
        return;
    };
    let Ok(f) = VirtioPci::new(
        Box::new(vireo_virtio::rng::Rng::new()),
        mem.clone(),
        Arc::new(NoIrq),
        None,
    ) else {
        return;
    };
    if root.add(Box::new(f)).is_err() {
        return;
    }
    let root = Arc::new(Mutex::new(root));
    let mut ecam = Ecam(root.clone());
    let mut bar = SyncRegs(MmioWindow::new(root));
    // What a driver does first: memory decoding on, then the common configuration (virtio 1.2
    // §4.1.4.3) for one queue at RINGS, and DRIVER_OK.
    w(&mut ecam, DEV1 + 4, 0x6, 2);
    w(&mut bar, 0x14, 1 | 2, 1);
    for sel in 0..2 {
        // Exactly what is offered: the transport refuses FEATURES_OK for anything more.
        w(&mut bar, 0x00, sel, 4);
        let mut offered = [0u8; 4];
        bar.read(0x04, &mut offered);
        w(&mut bar, 0x08, sel, 4);
        w(&mut bar, 0x0c, u64::from(u32::from_le_bytes(offered)), 4);
    }
    w(&mut bar, 0x14, 1 | 2 | 8, 1);
    let mut status = [0u8];
    bar.read(0x14, &mut status);
    assert_eq!(
        status[0],
        1 | 2 | 8,
        "the device refused the features it offered"
    );
    w(&mut bar, 0x16, 0, 2);
    w(&mut bar, 0x18, u64::from(QUEUE_SIZE), 2);
    w(&mut bar, 0x20, RINGS, 8);
    w(&mut bar, 0x28, RINGS + 0x100, 8);
    w(&mut bar, 0x30, RINGS + 0x200, 8);
    w(&mut bar, 0x1c, 1, 2);
    w(&mut bar, 0x14, 1 | 2 | 8 | 4, 1);
    for op in ops(rest) {
        match op {
            Op::Read { space, offset, len } => {
                let mut b = vec![0u8; len];
                if space < 2 {
                    ecam.read(offset, &mut b);
                } else {
                    bar.read(offset & 0x7fff, &mut b);
                }
            }
            Op::Write {
                space,
                offset,
                data,
            } => {
                if space < 2 {
                    ecam.write(offset, &data);
                } else {
                    bar.write(offset & 0x7fff, &data);
                }
            }
            // The notify region: queue q at 0x3000 + 4·q.
            Op::Notify { queue } => w(&mut bar, 0x3000 + 4 * u64::from(queue), 0, 2),
            Op::Poke { addr, data } => {
                let _ = mem.write_slice(&data, GuestAddress(RINGS + addr % 0x3000));
            }
        }
    }
});
