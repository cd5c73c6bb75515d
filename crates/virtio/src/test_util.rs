//! Test scaffolding shared by the device tests: the driver side of a split queue built on
//! virtio-queue's mock, and an interrupt line that counts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vireo_machine::GuestMemoryMmap;
use vireo_machine::IrqLine;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

#[derive(Default)]
pub(crate) struct CountIrq(pub(crate) AtomicU32);

impl IrqLine for CountIrq {
    fn set_level(&self, high: bool) {
        if high {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The driver side of one split queue.
pub(crate) struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    q: MockSplitQueue<'a, GuestMemoryMmap>,
    size: u16,
    pub(crate) next_desc: u16,
    used_seen: u16,
}

impl<'a> Driver<'a> {
    pub(crate) fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        Driver {
            mem,
            q: MockSplitQueue::create(mem, GuestAddress(base), size),
            size,
            next_desc: 0,
            used_seen: 0,
        }
    }

    pub(crate) fn queue(&self) -> Queue {
        let mut q: Queue = self.q.create_queue().unwrap();
        let used = self.used_addr().0;
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q
    }

    /// The used ring, placed by hand: the mock puts it right after the first half of the
    /// available ring (it sizes that ring in elements, not bytes), so with more than
    /// `size / 2` entries in flight the two would overlap.
    pub(crate) fn used_addr(&self) -> GuestAddress {
        self.q.desc_table_addr().unchecked_add(0x2000)
    }

    /// Publishes a chain of (address, length, device-writable) buffers; returns its head.
    pub(crate) fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let n = bufs.len() as u16;
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i as u16 == n - 1;
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let next = (idx + 1) % self.size;
            self.store(idx, addr, len, flags, next);
        }
        self.next_desc = (head + n) % self.size;
        self.publish(head);
        head
    }

    pub(crate) fn store(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.q
            .desc_table()
            .store(
                idx,
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
            )
            .unwrap();
    }

    /// Publishes two descriptors that point at each other.
    pub(crate) fn add_loop(&mut self, addr: u64, writable: bool) -> u16 {
        let a = self.next_desc;
        let b = (a + 1) % self.size;
        let w = if writable { F_WRITE } else { 0 };
        self.store(a, addr, 64, F_NEXT | w, b);
        self.store(b, addr + 64, 64, F_NEXT | w, a);
        self.next_desc = (a + 2) % self.size;
        self.publish(a);
        a
    }

    pub(crate) fn publish(&self, head: u16) {
        let avail = self.q.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = 4 + u64::from(idx % self.size) * 2;
        self.mem.write_obj(head, avail.unchecked_add(slot)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
    }

    /// Used entries (head, length) returned since the last call.
    pub(crate) fn used(&mut self) -> Vec<(u16, u32)> {
        let used = self.used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = 4 + u64::from(self.used_seen % self.size) * 8;
            let id: u32 = self.mem.read_obj(used.unchecked_add(slot)).unwrap();
            let len: u32 = self.mem.read_obj(used.unchecked_add(slot + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Waits until `n` more used entries appear (the worker fills them asynchronously).
    pub(crate) fn wait_used(&mut self, n: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.used());
            assert!(
                Instant::now() < deadline,
                "waited 10 s for {n} used buffers, got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        got
    }
}

/// Publishes one chain of (address, length, device-writable) buffers at descriptor `first` on
/// a virtio-queue mock of `size` entries (for tests that build rings with the mock directly).
pub(crate) fn add_chain(
    vq: &MockSplitQueue<GuestMemoryMmap>,
    size: u16,
    first: u16,
    bufs: &[(u64, u32, bool)],
) {
    for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
        let index = first + i as u16;
        let last = i + 1 == bufs.len();
        let flags = if writable { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
        let d = SplitDescriptor::new(addr, len, flags, if last { 0 } else { index + 1 });
        vq.desc_table()
            .store(index, RawDescriptor::from(d))
            .unwrap();
    }
    let idx = vq.avail().idx().load();
    vq.avail()
        .ring()
        .ref_at(usize::from(idx % size))
        .unwrap()
        .store(first);
    vq.avail().idx().store(idx.wrapping_add(1));
}

/// Used-ring entry `i` of a mock queue: (descriptor id, length written).
pub(crate) fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: u16) -> (u32, u32) {
    let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
    (e.id(), e.len())
}
