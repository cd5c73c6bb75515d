//! What the fuzz targets share: a guest memory the input fills, and a driver that the input
//! scripts, so that every target reaches its parser with guest-chosen bytes.
//!
//! Input layout for the device targets: two bytes give the length of a script of [`Op`]s that
//! follows (register reads and writes at any offset and width, queue notifications, pokes into
//! memory between them); the bytes after the script go into guest memory at [`RINGS`], where
//! the queues' rings and buffers live, so descriptors, indexes and payloads are all the
//! fuzzer's. A short input is all script, so the fuzzer reaches the registers at once.

use vireo_machine::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// Guest memory size: small, so that most fuzzer-made addresses hit or just miss it.
pub const MEM_SIZE: usize = 0x1_0000;
/// Where the input's bytes go in guest memory, and where the queues are placed.
pub const RINGS: u64 = 0x1000;
/// How many input bytes fill guest memory.
pub const MEM_FILL: usize = 0x3000;
/// Queue size set up by [`bring_up_mmio`].
pub const QUEUE_SIZE: u32 = 16;

/// A fresh guest memory holding the input's memory part; returns it and the script.
pub fn memory(data: &[u8]) -> (GuestMemoryMmap, &[u8]) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("guest memory for fuzzing");
    let (script, fill) = match data {
        [a, b, rest @ ..] => {
            let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
            rest.split_at(n)
        }
        _ => (data, &[][..]),
    };
    let n = fill.len().min(MEM_FILL);
    let _ = mem.write_slice(&fill[..n], GuestAddress(RINGS));
    (mem, script)
}

/// One step of a script.
#[derive(Debug)]
pub enum Op {
    /// `space` picks an address space where a target has several (PCI: config or BAR).
    Read {
        space: u8,
        offset: u64,
        len: usize,
    },
    Write {
        space: u8,
        offset: u64,
        data: Vec<u8>,
    },
    Notify {
        queue: u16,
    },
    Poke {
        addr: u64,
        data: [u8; 8],
    },
}

/// Splits the input into ops: a kind byte, then its operands (little-endian), until it runs out.
pub fn ops(mut d: &[u8]) -> Vec<Op> {
    let mut v = Vec::new();
    let take = |d: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        if d.len() < n {
            return None;
        }
        let (a, b) = d.split_at(n);
        *d = b;
        Some(a.to_vec())
    };
    while let Some((&kind, rest)) = d.split_first() {
        d = rest;
        let Some(h) = take(&mut d, 2) else { break };
        let offset = u64::from(u16::from_le_bytes([h[0], h[1]]));
        // Widths 1, 2, 4 and 8 mostly, and now and then an odd one.
        let len = match kind >> 5 {
            0 => 1,
            1 => 2,
            2 | 3 | 4 => 4,
            5 | 6 => 8,
            _ => 3,
        };
        let space = (kind >> 2) & 3;
        match kind & 3 {
            0 => v.push(Op::Read { space, offset, len }),
            1 => match take(&mut d, len) {
                Some(data) => v.push(Op::Write {
                    space,
                    offset,
                    data,
                }),
                None => break,
            },
            2 => v.push(Op::Notify {
                queue: (offset & 3) as u16,
            }),
            _ => match take(&mut d, 8) {
                Some(b) => v.push(Op::Poke {
                    addr: offset,
                    data: b.try_into().unwrap_or_default(),
                }),
                None => break,
            },
        }
    }
    v
}

/// virtio-mmio register offsets the bring-up writes (virtio 1.2 §4.2.2).
pub mod mmio_reg {
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
}

/// Anything with 32-bit register writes (a transport on the bus).
pub trait Regs {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

impl<T: vireo_machine::BusDevice> Regs for T {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        vireo_machine::BusDevice::read(self, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        vireo_machine::BusDevice::write(self, offset, data)
    }
}

/// A device that locks for itself (the PCI BAR window), as register file.
pub struct SyncRegs<T>(pub T);

impl<T: vireo_machine::bus::SyncBusDevice> Regs for SyncRegs<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data)
    }
}

/// Writes a 32-bit register.
pub fn w32(t: &mut impl Regs, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Reads a 32-bit register.
pub fn r32(t: &mut impl Regs, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Does what a driver does before the script starts: features (every one the device offers,
/// VERSION_1 among them), `queues` queues of [`QUEUE_SIZE`] at 0x1000 + 0x800·q (descriptors,
/// driver area at +0x100, device area at +0x200), DRIVER_OK. The script then meets a live
/// device; features the device refuses panic, since the fuzzer would never reach its queues.
pub fn bring_up_mmio(t: &mut impl Regs, queues: u32) {
    use mmio_reg::*;
    w32(t, STATUS, 1);
    w32(t, STATUS, 1 | 2);
    for sel in 0..2 {
        // Exactly what is offered: the transport refuses FEATURES_OK for anything more.
        w32(t, DEVICE_FEATURES_SEL, sel);
        let offered = r32(t, DEVICE_FEATURES);
        w32(t, DRIVER_FEATURES_SEL, sel);
        w32(t, DRIVER_FEATURES, offered);
    }
    w32(t, STATUS, 1 | 2 | 8);
    let status = r32(t, STATUS);
    assert_eq!(
        status,
        1 | 2 | 8,
        "the device refused the features it offered"
    );
    for q in 0..queues {
        let base = RINGS as u32 + 0x800 * q;
        w32(t, QUEUE_SEL, q);
        w32(t, QUEUE_NUM, QUEUE_SIZE);
        w32(t, QUEUE_DESC_LOW, base);
        w32(t, QUEUE_DRIVER_LOW, base + 0x100);
        w32(t, QUEUE_DEVICE_LOW, base + 0x200);
        w32(t, QUEUE_READY, 1);
    }
    // Not checked after DRIVER_OK: a device whose threads start serving the rings at once
    // (virtio-blk) may rightly ask for a reset over a broken chain the input left there.
    w32(t, STATUS, 1 | 2 | 8 | 4);
}

/// Plays `ops` against a virtio-mmio transport and its memory.
pub fn play_mmio(t: &mut impl Regs, mem: &GuestMemoryMmap, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Read { offset, len, .. } => {
                let mut b = vec![0u8; *len];
                t.read(offset & 0x1ff, &mut b);
            }
            Op::Write { offset, data, .. } => t.write(offset & 0x1ff, data),
            Op::Notify { queue } => w32(t, mmio_reg::QUEUE_NOTIFY, u32::from(*queue)),
            Op::Poke { addr, data } => {
                let _ = mem.write_slice(data, GuestAddress(RINGS + addr % MEM_FILL as u64));
            }
        }
    }
}

/// The whole run of a device target: memory from the input, bring-up, the script.
pub fn run_mmio_device(device: Box<dyn vireo_virtio::VirtioDevice>, queues: u32, data: &[u8]) {
    let (mem, rest) = memory(data);
    let mut t = vireo_virtio::mmio::MmioTransport::new(
        device,
        mem.clone(),
        std::sync::Arc::new(vireo_machine::NoIrq),
    );
    bring_up_mmio(&mut t, queues);
    // A device with I/O threads answers asynchronously: each notification is waited for, so a
    // run is the same every time it is replayed (a crash found reproduces).
    for op in ops(rest) {
        play_mmio(&mut t, &mem, std::slice::from_ref(&op));
        let notified = match &op {
            Op::Notify { .. } => true,
            Op::Write { offset, .. } => offset & 0x1ff == mmio_reg::QUEUE_NOTIFY,
            _ => false,
        };
        if notified {
            assert!(
                t.quiesce(std::time::Duration::from_secs(5)),
                "the device did not finish its requests within 5 s"
            );
        }
    }
}
