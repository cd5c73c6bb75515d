//! virtio-rng against real descriptor chains in guest memory.

use std::sync::Arc;

use vireo_machine::GuestMemoryMmap;
use vireo_machine::NoIrq;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::test_util::{add_chain, used};
use crate::{Activation, Interrupt, VirtioDevice, INT_USED};

const QSIZE: u16 = 16;
const MEM_SIZE: usize = 0x20_0000;

fn activated(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> (Rng, Interrupt) {
    let mut rng = Rng::new();
    let interrupt = Interrupt::new(Arc::new(NoIrq));
    rng.activate(Activation {
        mem: mem.clone(),
        queues: vec![Some(vq.create_queue().unwrap())],
        interrupt: interrupt.clone(),
        features: rng.features(),
    })
    .unwrap();
    (rng, interrupt)
}

#[test]
fn writable_buffers_are_filled() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let (mut rng, interrupt) = activated(&mem, &vq);
    // Two buffers in one chain, and a second chain.
    add_chain(
        &vq,
        QSIZE,
        0,
        &[(0x1_0000, 64, true), (0x1_1000, 100, true)],
    );
    add_chain(&vq, QSIZE, 2, &[(0x2_0000, 4096, true)]);
    rng.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 2);
    assert_eq!(used(&vq, 0), (0, 164));
    assert_eq!(used(&vq, 1), (2, 4096));
    assert_ne!(interrupt.status() & INT_USED, 0);
    let mut a = [0u8; 64];
    mem.read_slice(&mut a, GuestAddress(0x1_0000)).unwrap();
    assert!(
        a.iter().any(|&b| b != 0),
        "64 random bytes are not all zero"
    );
    let mut b = [0u8; 100];
    mem.read_slice(&mut b, GuestAddress(0x1_1000)).unwrap();
    assert!(b.iter().any(|&x| x != 0));
    assert_ne!(&a[..], &b[..64], "two fills differ");
}

#[test]
fn readable_buffers_are_skipped_and_requests_bounded() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let (mut rng, _) = activated(&mem, &vq);
    let canary = [0x5au8; 256];
    mem.write_slice(&canary, GuestAddress(0x1_0000)).unwrap();
    // Only a device-readable buffer: nothing written, returned empty.
    add_chain(&vq, QSIZE, 0, &[(0x1_0000, 256, false)]);
    // A readable buffer before a writable one: only the writable one is filled.
    mem.write_slice(&canary, GuestAddress(0x3_0000)).unwrap();
    add_chain(
        &vq,
        QSIZE,
        1,
        &[(0x3_0000, 256, false), (0x4_0000, 32, true)],
    );
    // A buffer larger than the per-request bound.
    add_chain(&vq, QSIZE, 3, &[(0x5_0000, 1024 * 1024, true)]);
    // A buffer outside guest memory.
    add_chain(&vq, QSIZE, 4, &[(MEM_SIZE as u64 - 16, 64, true)]);
    rng.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 4);
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(used(&vq, 1), (1, 32));
    assert_eq!(used(&vq, 2), (3, MAX_BYTES_PER_REQUEST as u32));
    assert_eq!(used(&vq, 3), (4, 0));
    let mut back = [0u8; 256];
    mem.read_slice(&mut back, GuestAddress(0x1_0000)).unwrap();
    assert_eq!(back, canary);
    mem.read_slice(&mut back, GuestAddress(0x3_0000)).unwrap();
    assert_eq!(back, canary);
    // Past the bound, the buffer is untouched (it was zero).
    let mut past = [0u8; 64];
    mem.read_slice(
        &mut past,
        GuestAddress(0x5_0000 + MAX_BYTES_PER_REQUEST as u64),
    )
    .unwrap();
    assert_eq!(past, [0; 64]);
}

#[test]
fn no_config_and_no_queue_before_activation() {
    let mut rng = Rng::new();
    let mut c = [0xffu8; 8];
    rng.read_config(0, &mut c);
    assert_eq!(c, [0; 8]);
    rng.queue_notify(0);
    rng.reset();
    assert_eq!(rng.device_type(), crate::types::RNG);
}
