//! virtio-console against real descriptor chains in guest memory.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vireo_machine::GuestMemoryMmap;
use vireo_machine::NoIrq;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::test_util::{add_chain, used};
use crate::{Activation, Interrupt, VirtioDevice, INT_USED};

const QSIZE: u16 = 16;
const MEM_SIZE: usize = 0x40_0000;
/// The two queues' rings, apart.
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x8000;

/// A sink the test can read back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Rig<'a> {
    console: Console,
    sink: Sink,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    interrupt: Interrupt,
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    let sink = Sink::default();
    Rig {
        console: Console::new(Box::new(sink.clone())),
        sink,
        rx: MockSplitQueue::create(mem, GuestAddress(RX_RING), QSIZE),
        tx: MockSplitQueue::create(mem, GuestAddress(TX_RING), QSIZE),
        interrupt: Interrupt::new(Arc::new(NoIrq)),
    }
}

impl Rig<'_> {
    fn activate(&mut self, mem: &GuestMemoryMmap) {
        self.console
            .activate(Activation {
                mem: mem.clone(),
                queues: vec![
                    Some(self.rx.create_queue().unwrap()),
                    Some(self.tx.create_queue().unwrap()),
                ],
                interrupt: self.interrupt.clone(),
                features: self.console.features(),
            })
            .unwrap();
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn transmit_reaches_the_sink() {
    let mem = memory();
    let mut r = rig(&mem);
    r.activate(&mem);
    mem.write_slice(b"hello, ", GuestAddress(0x1_0000)).unwrap();
    mem.write_slice(b"world\n", GuestAddress(0x1_1000)).unwrap();
    add_chain(
        &r.tx,
        QSIZE,
        0,
        &[(0x1_0000, 7, false), (0x1_1000, 6, false)],
    );
    mem.write_slice(b"second", GuestAddress(0x1_2000)).unwrap();
    add_chain(&r.tx, QSIZE, 2, &[(0x1_2000, 6, false)]);
    r.console.queue_notify(TRANSMITQ as u16);
    assert_eq!(&*r.sink.0.lock().unwrap(), b"hello, world\nsecond");
    assert_eq!(r.tx.used().idx().load(), 2);
    assert_eq!(used(&r.tx, 0), (0, 0));
    assert_eq!(used(&r.tx, 1), (2, 0));
    assert_ne!(r.interrupt.status() & INT_USED, 0);
}

#[test]
fn hostile_transmit_chains_are_returned_unread() {
    let mem = memory();
    let mut r = rig(&mem);
    r.activate(&mem);
    // Outside guest memory; device-writable only; a huge (in-memory) buffer is truncated.
    add_chain(&r.tx, QSIZE, 0, &[(MEM_SIZE as u64 - 4, 64, false)]);
    add_chain(&r.tx, QSIZE, 1, &[(0x1_0000, 64, true)]);
    mem.write_slice(&vec![b'x'; 3 * 1024 * 1024], GuestAddress(0x10_0000))
        .unwrap();
    add_chain(&r.tx, QSIZE, 2, &[(0x10_0000, 3 * 1024 * 1024, false)]);
    r.console.queue_notify(TRANSMITQ as u16);
    assert_eq!(r.tx.used().idx().load(), 3);
    assert_eq!(r.sink.0.lock().unwrap().len(), MAX_TRANSMIT_PER_CHAIN);
}

#[test]
fn input_reaches_a_receive_buffer() {
    let mem = memory();
    let mut r = rig(&mem);
    r.activate(&mem);
    add_chain(&r.rx, QSIZE, 0, &[(0x2_0000, 64, true)]);
    r.console.queue_notify(RECEIVEQ as u16);
    assert_eq!(r.rx.used().idx().load(), 0, "nothing to deliver yet");

    let input = r.console.input_handle();
    // Pushed from another thread, as a terminal reader would.
    std::thread::spawn(move || assert_eq!(input.push(b"ls -l\n"), 6))
        .join()
        .unwrap();
    assert_eq!(r.rx.used().idx().load(), 1);
    assert_eq!(used(&r.rx, 0), (0, 6));
    assert_eq!(read(&mem, 0x2_0000, 6), b"ls -l\n");
    assert_ne!(r.interrupt.status() & INT_USED, 0);
}

#[test]
fn input_before_buffers_waits_for_them() {
    let mem = memory();
    let mut r = rig(&mem);
    let input = r.console.input_handle();
    // Before the driver is even there.
    assert_eq!(input.push(b"early "), 6);
    r.activate(&mem);
    assert_eq!(input.push(b"bytes"), 5);
    assert_eq!(input.pending(), 11);
    assert_eq!(r.rx.used().idx().load(), 0);

    // Two small buffers: the input is split across them in order, the rest waits.
    add_chain(&r.rx, QSIZE, 0, &[(0x2_0000, 4, true)]);
    add_chain(&r.rx, QSIZE, 1, &[(0x2_1000, 4, true)]);
    r.console.queue_notify(RECEIVEQ as u16);
    assert_eq!(r.rx.used().idx().load(), 2);
    assert_eq!(read(&mem, 0x2_0000, 4), b"earl");
    assert_eq!(read(&mem, 0x2_1000, 4), b"y by");
    assert_eq!(input.pending(), 3);
    // A device-readable buffer takes nothing; the next writable one gets the rest.
    add_chain(&r.rx, QSIZE, 2, &[(0x2_2000, 16, false)]);
    add_chain(&r.rx, QSIZE, 3, &[(0x2_3000, 16, true)]);
    r.console.queue_notify(RECEIVEQ as u16);
    assert_eq!(used(&r.rx, 2), (2, 0));
    assert_eq!(used(&r.rx, 3), (3, 3));
    assert_eq!(read(&mem, 0x2_3000, 3), b"tes");
    assert_eq!(input.pending(), 0);
}

#[test]
fn pending_input_is_bounded() {
    let mem = memory();
    let r = rig(&mem);
    let input = r.console.input_handle();
    let big = vec![b'a'; PENDING_INPUT_MAX + 100];
    assert_eq!(input.push(&big), PENDING_INPUT_MAX);
    assert_eq!(input.push(b"more"), 0);
    assert_eq!(input.pending(), PENDING_INPUT_MAX);
}

#[test]
fn config_and_activation() {
    let mem = memory();
    let mut r = rig(&mem);
    let mut c = [0xffu8; 12];
    r.console.read_config(0, &mut c);
    assert_eq!(c, [0; 12]);
    assert_eq!(r.console.queue_max_sizes().len(), 2);
    let e = r
        .console
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![Some(r.rx.create_queue().unwrap()), None],
            interrupt: r.interrupt.clone(),
            features: r.console.features(),
        })
        .err()
        .unwrap();
    assert!(e.to_string().contains("transmitq"), "{e}");
    // After a reset the handle still works and keeps the bytes for the next driver.
    r.activate(&mem);
    r.console.reset();
    let input = r.console.input_handle();
    assert_eq!(input.push(b"x"), 1);
    assert_eq!(input.pending(), 1);
    r.console.queue_notify(RECEIVEQ as u16);
    r.console.queue_notify(TRANSMITQ as u16);
    r.console.queue_notify(9);
}
