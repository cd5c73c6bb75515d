//! virtio-serial against real split queues in guest memory, driven the way Linux's
//! virtio_console driver drives them.

use std::sync::Arc;
use std::time::Duration;

use vireo_machine::GuestMemoryMmap;
use vireo_machine::NoIrq;
use vm_memory::{Bytes, GuestAddress};

use super::port::ReadOutcome;
use super::*;
use crate::test_util::Driver;
use crate::{Activation, Interrupt, VirtioDevice};

const QSIZE: u16 = 16;
const MEM_SIZE: usize = 0x80_0000;
/// Each queue's rings get 16 KiB from here on; buffers live above `DATA`.
const RINGS: u64 = 0;
const DATA: u64 = 0x10_0000;

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    dev: Serial,
    queues: Vec<Driver<'a>>,
    /// Next free byte for buffers.
    next: u64,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

impl<'a> Rig<'a> {
    /// A device with `names`, activated, with the control receiveq stocked.
    fn new(mem: &'a GuestMemoryMmap, names: &[&str]) -> Self {
        let mut dev = Serial::new(names).unwrap();
        let n = dev.queue_max_sizes().len();
        let queues: Vec<Driver> = (0..n)
            .map(|i| Driver::new(mem, RINGS + i as u64 * 0x4000, QSIZE))
            .collect();
        dev.activate(Activation {
            mem: mem.clone(),
            queues: queues.iter().map(|d| Some(d.queue())).collect(),
            interrupt: Interrupt::new(Arc::new(NoIrq)),
            features: dev.features(),
        })
        .unwrap();
        let mut rig = Rig {
            mem,
            dev,
            queues,
            next: DATA,
        };
        for _ in 0..8 {
            rig.post_control_buffer(64);
        }
        rig
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next;
        self.next += u64::from(len).next_multiple_of(64);
        a
    }

    fn post_control_buffer(&mut self, len: u32) {
        let a = self.alloc(len);
        self.queues[CONTROL_RX].add(&[(a, len, true)]);
    }

    /// The driver sends a control message.
    fn send(&mut self, id: u32, ev: u16, value: u16) {
        let a = self.alloc(8);
        let msg = super::port::control_message(id, ev, value, &[]);
        self.mem.write_slice(&msg, GuestAddress(a)).unwrap();
        self.queues[CONTROL_TX].add(&[(a, 8, false)]);
        self.dev.queue_notify(CONTROL_TX as u16);
    }

    /// Control messages the device returned since the last call: (id, event, value, payload).
    fn received(&mut self) -> Vec<(u32, u16, u16, Vec<u8>)> {
        let used = self.queues[CONTROL_RX].used();
        used.into_iter()
            .filter(|&(_, len)| len > 0)
            .map(|(head, len)| {
                let addr = self.buffer_addr(CONTROL_RX, head);
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                (
                    u32::from_le_bytes(b[0..4].try_into().unwrap()),
                    u16::from_le_bytes(b[4..6].try_into().unwrap()),
                    u16::from_le_bytes(b[6..8].try_into().unwrap()),
                    b[8..].to_vec(),
                )
            })
            .collect()
    }

    /// Where descriptor `head` of queue `q` points (the test's chains are one descriptor).
    fn buffer_addr(&self, q: usize, head: u16) -> u64 {
        let table = RINGS + q as u64 * 0x4000;
        self.mem
            .read_obj::<u64>(GuestAddress(table + u64::from(head) * 16))
            .unwrap()
    }

    /// The usual bring-up: DEVICE_READY, then PORT_READY for every port.
    fn bring_up(&mut self, ports: u32) -> Vec<(u32, u16, u16, Vec<u8>)> {
        self.send(0xffff_ffff, event::DEVICE_READY, 1);
        let mut got = self.received();
        for p in 0..ports {
            self.send(p, event::PORT_READY, 1);
        }
        got.extend(self.received());
        got
    }

    /// Posts a receive buffer on port `p`; returns its address.
    fn post_rx(&mut self, p: usize, len: u32) -> u64 {
        let a = self.alloc(len);
        self.queues[port_queues(p).0].add(&[(a, len, true)]);
        self.dev.queue_notify(port_queues(p).0 as u16);
        a
    }

    /// The guest writes `data` to port `p` (one chain).
    fn transmit(&mut self, p: usize, data: &[u8]) {
        let a = self.alloc(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(a)).unwrap();
        let q = port_queues(p).1;
        self.queues[q].add(&[(a, data.len() as u32, false)]);
        self.dev.queue_notify(q as u16);
    }

    fn read_all(&self, port: &SerialPort) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let ReadOutcome::Data(n) = port.read(&mut buf, Some(Duration::from_millis(20))) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }
}

#[test]
fn bring_up_announces_named_open_ports() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["vireo.stdin", "vireo.stdout"]);
    let got = rig.bring_up(2);
    assert_eq!(
        got,
        vec![
            (0, event::DEVICE_ADD, 0, vec![]),
            (1, event::DEVICE_ADD, 0, vec![]),
            (0, event::PORT_NAME, 0, b"vireo.stdin".to_vec()),
            (0, event::PORT_OPEN, 1, vec![]),
            (1, event::PORT_NAME, 0, b"vireo.stdout".to_vec()),
            (1, event::PORT_OPEN, 1, vec![]),
        ]
    );
    // max_nr_ports in the config space; F_MULTIPORT offered.
    let mut cfg = [0u8; 4];
    rig.dev.read_config(4, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 2);
    assert_ne!(rig.dev.features() & F_MULTIPORT, 0);
    // Port 1's queues are 4 and 5, after the control pair.
    assert_eq!(rig.dev.queue_max_sizes().len(), 6);
}

#[test]
fn input_waits_for_the_guest_to_open_then_ends_with_eof() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["in"]);
    rig.bring_up(1);
    let port = rig.dev.port("in").unwrap();
    let buf = rig.post_rx(0, 64);
    assert_eq!(port.write(b"hello"), 5);
    port.close_input();
    // Linux drops data for a port nobody has open: nothing moves, and the end of input must
    // not overtake the bytes still waiting.
    assert!(rig.queues[0].used().is_empty());
    assert!(rig.received().is_empty());
    assert_eq!(port.input_pending(), 5);
    rig.send(0, event::PORT_OPEN, 1);
    assert_eq!(rig.queues[0].used(), vec![(0, 5)]);
    let mut got = [0u8; 5];
    mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(&got, b"hello");
    assert_eq!(rig.received(), vec![(0, event::PORT_OPEN, 0, vec![])]);
    // After the end, input is refused.
    assert_eq!(port.write(b"late"), 0);
}

#[test]
fn a_closed_input_can_be_opened_again_for_the_next_stream() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["in"]);
    rig.bring_up(1);
    rig.send(0, event::PORT_OPEN, 1);
    let port = rig.dev.port("in").unwrap();
    port.close_input();
    assert_eq!(rig.received(), vec![(0, event::PORT_OPEN, 0, vec![])]);
    assert_eq!(port.write(b"x"), 0, "closed input takes nothing");
    port.open_input();
    assert_eq!(rig.received(), vec![(0, event::PORT_OPEN, 1, vec![])]);
    let buf = rig.post_rx(0, 64);
    assert_eq!(port.write(b"again"), 5);
    assert_eq!(rig.queues[0].used(), vec![(0, 5)]);
    let mut got = [0u8; 5];
    mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(&got, b"again");
}

#[test]
fn input_closed_before_ready_is_never_opened() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["in"]);
    let port = rig.dev.port("in").unwrap();
    port.close_input();
    let got = rig.bring_up(1);
    assert!(
        !got.contains(&(0, event::PORT_OPEN, 1, vec![])),
        "a closed, empty input was announced open: {got:?}"
    );
}

#[test]
fn input_is_bounded_and_binary_safe() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["in"]);
    rig.bring_up(1);
    let port = rig.dev.port("in").unwrap();
    let data: Vec<u8> = (0..PORT_INPUT_MAX + 100).map(|i| (i * 7) as u8).collect();
    assert_eq!(port.write(&data), PORT_INPUT_MAX);
    rig.send(0, event::PORT_OPEN, 1);
    let mut got = Vec::new();
    while got.len() < PORT_INPUT_MAX {
        let a = rig.post_rx(0, 4096);
        let used = rig.queues[0].used();
        assert_eq!(used.len(), 1, "one buffer posted, one filled");
        let mut b = vec![0u8; used[0].1 as usize];
        mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        got.extend(b);
    }
    assert_eq!(got, data[..PORT_INPUT_MAX]);
}

#[test]
fn output_reaches_the_host_in_order() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["out", "err"]);
    rig.bring_up(2);
    let out = rig.dev.port("out").unwrap();
    let err = rig.dev.port("err").unwrap();
    rig.transmit(0, b"one ");
    rig.transmit(1, b"oops");
    rig.transmit(0, b"two\0\xff");
    assert_eq!(rig.read_all(&out), b"one two\0\xff");
    assert_eq!(rig.read_all(&err), b"oops");
    assert!(!out.output_waiting());
}

#[test]
fn a_slow_reader_makes_the_guest_wait_without_losing_bytes() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["out"]);
    rig.bring_up(1);
    let out = rig.dev.port("out").unwrap();
    let chunk = MAX_TRANSMIT_PER_CHAIN;
    let chains = PORT_OUTPUT_MAX / chunk + 2;
    let mut sent = Vec::new();
    for i in 0..chains {
        let data = vec![i as u8; chunk];
        sent.extend_from_slice(&data);
        rig.transmit(0, &data);
    }
    // The host buffer fills; the rest stays in the ring.
    assert_eq!(rig.queues[1].used().len(), PORT_OUTPUT_MAX / chunk);
    assert!(out.output_waiting());
    // Reading takes the waiting chains from the ring itself, with no guest kick.
    assert_eq!(rig.read_all(&out), sent);
    assert_eq!(rig.queues[1].used().len(), 2);
    assert!(!out.output_waiting());
}

#[test]
fn closed_output_is_dropped_so_the_guest_never_blocks() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["out"]);
    rig.bring_up(1);
    let out = rig.dev.port("out").unwrap();
    out.close_output();
    for _ in 0..PORT_OUTPUT_MAX / MAX_TRANSMIT_PER_CHAIN + 2 {
        rig.transmit(0, &vec![1u8; MAX_TRANSMIT_PER_CHAIN]);
    }
    assert_eq!(
        rig.queues[1].used().len(),
        PORT_OUTPUT_MAX / MAX_TRANSMIT_PER_CHAIN + 2
    );
    assert!(!out.output_waiting());
}

#[test]
fn hostile_control_messages_are_ignored() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["a"]);
    rig.bring_up(1);
    // A message shorter than its header, a port that does not exist, an unknown event.
    let a = rig.alloc(8);
    rig.queues[CONTROL_TX].add(&[(a, 3, false)]);
    rig.dev.queue_notify(CONTROL_TX as u16);
    rig.send(7, event::PORT_READY, 1);
    rig.send(0, 0x7777, 1);
    rig.send(u32::MAX, event::PORT_OPEN, 1);
    assert!(rig.received().is_empty());
    // A control buffer too small for a name gets nothing rather than a truncated message.
    let mut rig = Rig::new(&mem, &["a-rather-long-port-name"]);
    // Use up the stocked 64-byte buffers with DEVICE_READY repeats, then offer a tiny one.
    rig.send(0, event::DEVICE_READY, 1);
    for _ in 0..7 {
        rig.send(0, event::DEVICE_READY, 1);
    }
    assert_eq!(rig.received().len(), 8);
    rig.post_control_buffer(12);
    rig.send(0, event::PORT_READY, 1);
    let used = rig.queues[CONTROL_RX].used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 0, "a name cut short was sent");
}

#[test]
fn repeated_port_ready_cannot_grow_the_control_queue() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["a"]);
    // No buffers are returned to the device beyond the 8 stocked: every reply must wait.
    for _ in 0..CONTROL_PENDING_MAX * 4 {
        rig.send(0, event::PORT_READY, 1);
        let _ = rig.queues[CONTROL_TX].used();
    }
    assert!(rig.dev.shared.lock().control.len() <= CONTROL_PENDING_MAX);
}

#[test]
fn bad_port_lists_are_refused() {
    assert!(matches!(
        Serial::new::<&str>(&[]),
        Err(SerialError::PortCount { .. })
    ));
    assert!(matches!(
        Serial::new(&["a b"]),
        Err(SerialError::BadName { .. })
    ));
    assert!(matches!(
        Serial::new(&["a", "a"]),
        Err(SerialError::DuplicateName { .. })
    ));
    let many: Vec<String> = (0..=MAX_PORTS).map(|i| format!("p{i}")).collect();
    assert!(matches!(
        Serial::new(&many),
        Err(SerialError::PortCount { .. })
    ));
}

#[test]
fn reset_forgets_the_driver_but_keeps_host_input() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["in"]);
    rig.bring_up(1);
    let port = rig.dev.port("in").unwrap();
    rig.send(0, event::PORT_OPEN, 1);
    rig.dev.reset();
    assert!(!port.guest_connected());
    assert_eq!(port.write(b"kept"), 4);
    assert_eq!(port.input_pending(), 4);
}

#[test]
fn after_the_end_reads_drain_then_end_and_writes_stop_waiting() {
    let mem = memory();
    let mut rig = Rig::new(&mem, &["out", "in"]);
    rig.bring_up(2);
    let out = rig.dev.port("out").unwrap();
    let input = rig.dev.port("in").unwrap();
    rig.transmit(0, b"last words");
    // A reader blocked without a deadline is woken by the end, after the bytes.
    let reader = {
        let out = out.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4];
            loop {
                match out.read(&mut buf, None) {
                    ReadOutcome::Data(n) => got.extend_from_slice(&buf[..n]),
                    ReadOutcome::Ended => return got,
                    ReadOutcome::Timeout => panic!("no deadline was given"),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    out.end();
    assert_eq!(reader.join().unwrap(), b"last words");
    // The guest never opened "in": a writer with no deadline returns instead of waiting.
    let data = vec![7u8; PORT_INPUT_MAX + 10];
    assert_eq!(input.write_all(&data, None), PORT_INPUT_MAX);
}
