//! Device-level tests: real descriptor chains built with virtio-queue's mock driver, host
//! services as Unix listeners and clients in the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vireo_machine::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::*;
use crate::test_util::{CountIrq, Driver};
use crate::{Activation, Interrupt, VirtioDevice};

const MEM_SIZE: usize = 16 << 20;
const GUEST_CID: u64 = 3;
const RX_BUF: u32 = (HDR_LEN + 4096) as u32;

/// A guest: the device, its queues, and the buffers it has posted.
struct Guest<'a> {
    dev: Vsock,
    mem: &'a GuestMemoryMmap,
    rx: Driver<'a>,
    tx: Driver<'a>,
    /// Guest-physical address of each posted receive buffer, by head index.
    rx_bufs: Vec<u64>,
    /// Used receive buffers not yet looked at.
    rx_pending: std::collections::VecDeque<(u16, u32)>,
    /// Next free transmit buffer address (bump allocation, wraps).
    tx_next: u64,
    uds: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "vireo-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Guest<'a> {
        let dir = temp_dir();
        let uds = dir.0.join("v.sock");
        let mut dev = Vsock::new(GUEST_CID, uds.clone()).unwrap();
        let rx = Driver::new(mem, 0x0, QUEUE_SIZE);
        let tx = Driver::new(mem, 0x4000, QUEUE_SIZE);
        let ev = Driver::new(mem, 0x8000, QUEUE_SIZE);
        dev.activate(Activation {
            mem: mem.clone(),
            queues: vec![Some(rx.queue()), Some(tx.queue()), Some(ev.queue())],
            interrupt: Interrupt::new(Arc::new(CountIrq::default())),
            features: dev.features(),
        })
        .unwrap();
        Guest {
            dev,
            mem,
            rx,
            tx,
            rx_bufs: vec![0; QUEUE_SIZE as usize],
            rx_pending: Default::default(),
            tx_next: 0x10_0000,
            uds,
            _dir: dir,
        }
    }

    /// Posts `n` receive buffers of a header plus 4 KiB and kicks.
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let head = self.rx.next_desc;
            let addr = 0x80_0000 + u64::from(head) * 0x2000;
            self.rx.add(&[(addr, RX_BUF, true)]);
            self.rx_bufs[head as usize] = addr;
        }
        self.dev.queue_notify(RX_QUEUE as u16);
    }

    fn alloc_tx(&mut self, len: usize) -> u64 {
        if self.tx_next + len as u64 > 0x70_0000 {
            self.tx_next = 0x10_0000;
        }
        let a = self.tx_next;
        self.tx_next += (len as u64 + 0xfff) & !0xfff;
        a
    }

    /// Queues a packet (header and payload in separate descriptors) without kicking.
    fn queue_packet(&mut self, h: Header, data: &[u8]) {
        let ha = self.alloc_tx(HDR_LEN);
        self.mem.write_slice(&h.encode(), GuestAddress(ha)).unwrap();
        if data.is_empty() {
            self.tx.add(&[(ha, HDR_LEN as u32, false)]);
        } else {
            let da = self.alloc_tx(data.len());
            self.mem.write_slice(data, GuestAddress(da)).unwrap();
            self.tx
                .add(&[(ha, HDR_LEN as u32, false), (da, data.len() as u32, false)]);
        }
    }

    /// Queues a packet, kicks, and waits until the worker has taken it (it handles transmit
    /// packets, not the thread that kicks) and finished that round.
    fn send(&mut self, h: Header, data: &[u8]) {
        self.queue_packet(h, data);
        self.dev.queue_notify(TX_QUEUE as u16);
        self.tx.wait_used(1);
        let _ = self.dev.connection_count();
    }

    /// Waits for the next received packet.
    fn recv(&mut self) -> (Header, Vec<u8>) {
        self.try_recv(Duration::from_secs(10))
            .expect("no packet from the device within 10 s")
    }

    fn try_recv(&mut self, wait: Duration) -> Option<(Header, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            let fresh = self.rx.used();
            self.rx_pending.extend(fresh);
            if let Some((head, len)) = self.rx_pending.pop_front() {
                let addr = self.rx_bufs[head as usize];
                assert!(
                    len as usize >= HDR_LEN,
                    "used length {len} below a header (head {head}, {:?})",
                    self.dev.stats()
                );
                let mut raw = [0u8; HDR_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let h = Header::decode(&raw);
                assert_eq!(len as usize, HDR_LEN + h.len as usize, "{h:?}");
                let mut data = vec![0u8; h.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                    .unwrap();
                return Some((h, data));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A header from the guest's side.
fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

fn accept(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("no connection from the device: {e}"),
        }
    }
}

fn listen(g: &Guest, port: u32) -> UnixListener {
    let mut p = g.uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    UnixListener::bind(PathBuf::from(p)).unwrap()
}

#[test]
fn config_space_is_the_guest_cid() {
    let mem = memory();
    let g = Guest::new(&mem);
    assert_eq!(g.dev.device_type(), crate::types::VSOCK);
    assert_eq!(g.dev.queue_max_sizes().len(), 3);
    let mut cfg = [0u8; 8];
    g.dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), GUEST_CID);
}

#[test]
fn constructor_errors_name_the_problem() {
    let dir = temp_dir();
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        let e = Vsock::new(cid, dir.0.join("a.sock")).err().unwrap();
        assert!(e.to_string().contains(&cid.to_string()), "{e}");
    }
    let file = dir.0.join("plain");
    std::fs::write(&file, b"x").unwrap();
    let e = Vsock::new(3, file.clone()).err().unwrap();
    assert!(e.to_string().contains("not a socket"), "{e}");
    let e = Vsock::new(3, dir.0.join("no/such/dir/v.sock"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("no/such/dir/v.sock"), "{e}");
    // A stale socket from an earlier run is replaced, and the socket goes away on drop.
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let v = Vsock::new(3, stale.clone()).unwrap();
    assert!(UnixStream::connect(&stale).is_ok());
    drop(v);
    assert!(!stale.exists());
}

#[test]
fn a_live_listener_is_refused_and_left_alone() {
    let dir = temp_dir();
    // Another program listening there.
    let path = dir.0.join("live.sock");
    let theirs = UnixListener::bind(&path).unwrap();
    let e = Vsock::new(3, path.clone())
        .err()
        .expect("a live socket is taken");
    assert!(matches!(e, VsockError::InUse { .. }), "{e}");
    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    // Still theirs: a client reaches their listener.
    let _c = UnixStream::connect(&path).unwrap();
    theirs.set_nonblocking(true).unwrap();
    assert!(
        theirs.accept().is_ok(),
        "the client did not reach the original listener"
    );

    // Another VM's device on the same path: the second is refused, the first keeps serving.
    let vm = dir.0.join("vm.sock");
    let first = Vsock::new(3, vm.clone()).unwrap();
    let e = Vsock::new(4, vm.clone()).err().expect("the path is in use");
    assert!(matches!(e, VsockError::InUse { .. }), "{e}");
    assert!(UnixStream::connect(&vm).is_ok());
    drop(first);
    assert!(!vm.exists());
}

#[test]
fn drop_leaves_a_socket_that_replaced_ours() {
    let dir = temp_dir();
    let path = dir.0.join("v.sock");
    let v = Vsock::new(3, path.clone()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let _theirs = UnixListener::bind(&path).unwrap();
    drop(v);
    assert!(
        UnixStream::connect(&path).is_ok(),
        "drop removed someone else's socket"
    );
}

#[test]
fn guest_connects_and_data_flows_both_ways_with_credit() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let listener = listen(&g, 1234);
    g.give_rx(32);
    // The guest offers only 64 bytes of receive buffer.
    let mut req = guest_hdr(OP_REQUEST, 5000, 1234);
    req.buf_alloc = 64;
    g.send(req, &[]);
    let mut host = accept(&listener);
    let (h, _) = g.recv();
    assert_eq!(h.op, OP_RESPONSE, "{h:?}");
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (HOST_CID, GUEST_CID, 1234, 5000)
    );
    assert_eq!((h.kind, h.buf_alloc), (TYPE_STREAM, CONN_BUF_ALLOC));

    // Guest to host.
    let mut rw = guest_hdr(OP_RW, 5000, 1234);
    rw.buf_alloc = 64;
    rw.len = 5;
    g.send(rw, b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    // Host to guest, held to the guest's 64-byte credit.
    let msg: Vec<u8> = (0..100u8).collect();
    host.write_all(&msg).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 64 {
        let (h, data) = g.recv();
        assert_eq!(h.op, OP_RW, "{h:?}");
        seen.extend(data);
    }
    assert_eq!(seen, &msg[..64]);
    assert!(
        g.try_recv(Duration::from_millis(100)).is_none(),
        "the device overran the guest's credit"
    );
    // The guest frees its buffer: the rest follows.
    let mut cu = guest_hdr(OP_CREDIT_UPDATE, 5000, 1234);
    cu.buf_alloc = 64;
    cu.fwd_cnt = 64;
    g.send(cu, &[]);
    while seen.len() < 100 {
        let (h, data) = g.recv();
        assert_eq!(h.op, OP_RW, "{h:?}");
        seen.extend(data);
    }
    assert_eq!(seen, msg);

    // A quarter of the host buffer forwarded earns a CREDIT_UPDATE.
    let chunk = vec![0x5au8; 4096];
    let total = CONN_BUF_ALLOC as usize / 4 + 4096;
    let reader = {
        let mut host = host.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; total];
            host.read_exact(&mut buf).unwrap();
            buf.iter().all(|&b| b == 0x5a)
        })
    };
    let mut sent = 0;
    while sent < total {
        let mut rw = guest_hdr(OP_RW, 5000, 1234);
        rw.buf_alloc = 64;
        rw.fwd_cnt = 100;
        rw.len = 4096;
        g.send(rw, &chunk);
        sent += 4096;
    }
    assert!(reader.join().unwrap());
    let mut fwd = 0;
    while fwd < CONN_BUF_ALLOC / 4 {
        let (h, _) = g.recv();
        assert_eq!(h.op, OP_CREDIT_UPDATE, "{h:?}");
        fwd = h.fwd_cnt;
    }
    // CREDIT_REQUEST is answered with the current count.
    let mut cr = guest_hdr(OP_CREDIT_REQUEST, 5000, 1234);
    cr.buf_alloc = 64;
    cr.fwd_cnt = 100;
    g.send(cr, &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.fwd_cnt), (OP_CREDIT_UPDATE, 5 + total as u32));

    // The host closes: SHUTDOWN to the guest, whose RST ends the connection.
    drop(host);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH), "{h:?}");
    assert_eq!(g.dev.connection_count(), 1);
    g.send(guest_hdr(OP_RST, 5000, 1234), &[]);
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn guest_request_to_a_silent_port_gets_rst() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.give_rx(4);
    g.send(guest_hdr(OP_REQUEST, 6000, 4321), &[]);
    let (h, _) = g.recv();
    assert_eq!(h.op, OP_RST);
    assert_eq!((h.src_port, h.dst_port, h.dst_cid), (4321, 6000, GUEST_CID));
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn host_connects_to_a_guest_port() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.give_rx(8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"CONNECT 52\nearly").unwrap();
    let (req, _) = g.recv();
    assert_eq!(req.op, OP_REQUEST, "{req:?}");
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, GUEST_CID, 52)
    );
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    let local = req.src_port;

    let mut resp = guest_hdr(OP_RESPONSE, 52, local);
    resp.buf_alloc = 4096;
    g.send(resp, &[]);
    let mut line = String::new();
    BufReader::new(client.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, format!("OK {local}\n"));

    // Bytes written after the CONNECT line are the first data for the guest.
    let (h, data) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RW, local, 52));
    assert_eq!(data, b"early");
    let mut rw = guest_hdr(OP_RW, 52, local);
    rw.len = 4;
    g.send(rw, b"pong");
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");

    // The guest closes both ways: the device answers RST and the client sees end of file.
    let mut sd = guest_hdr(OP_SHUTDOWN, 52, local);
    sd.flags = SHUTDOWN_BOTH;
    g.send(sd, &[]);
    let (h, _) = g.recv();
    assert_eq!(h.op, OP_RST);
    assert_eq!(client.read(&mut got).unwrap(), 0);
}

#[test]
fn guest_refusal_closes_the_host_client() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.give_rx(4);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"CONNECT 99\n").unwrap();
    let (req, _) = g.recv();
    assert_eq!(req.op, OP_REQUEST);
    g.send(guest_hdr(OP_RST, 99, req.src_port), &[]);
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);
    // A malformed line is closed without troubling the guest.
    let mut bad = UnixStream::connect(&g.uds).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    assert_eq!(bad.read(&mut [0u8; 8]).unwrap(), 0);
    assert!(g.try_recv(Duration::from_millis(100)).is_none());
}

#[test]
fn hostile_headers_get_rst_or_are_dropped() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let _listener = listen(&g, 7);
    g.give_rx(32);

    // A length beyond the buffer.
    let mut h = guest_hdr(OP_RW, 1, 7);
    h.len = 1000;
    g.send(h, &[1, 2, 3]);
    assert_eq!(g.recv().0.op, OP_RST);
    // A length above the packet limit, with the bytes really there.
    let mut h = guest_hdr(OP_RW, 1, 7);
    h.len = (MAX_PKT_DATA + 1) as u32;
    g.send(h, &vec![0; MAX_PKT_DATA + 1]);
    assert_eq!(g.recv().0.op, OP_RST);
    // Unknown op, wrong type, another destination.
    g.send(guest_hdr(99, 1, 7), &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    let mut h = guest_hdr(OP_REQUEST, 1, 7);
    h.kind = 2; // SEQPACKET
    g.send(h, &[]);
    let (r, _) = g.recv();
    assert_eq!((r.op, r.kind), (OP_RST, 2));
    let mut h = guest_hdr(OP_REQUEST, 1, 7);
    h.dst_cid = 77;
    g.send(h, &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    // Data for a connection that does not exist.
    let mut h = guest_hdr(OP_RW, 1, 7);
    h.len = 1;
    g.send(h, &[0]);
    assert_eq!(g.recv().0.op, OP_RST);
    // An RST for nothing is not answered.
    g.send(guest_hdr(OP_RST, 1, 7), &[]);
    // Dropped silently: a spoofed source, a short header, memory outside the guest, a loop.
    let mut h = guest_hdr(OP_REQUEST, 1, 7);
    h.src_cid = 9;
    g.send(h, &[]);
    g.tx.add(&[(0x10_0000, 20, false)]);
    g.tx.add(&[(MEM_SIZE as u64 - 8, 44, false)]);
    g.tx.add_loop(0x10_0000, false);
    g.dev.queue_notify(TX_QUEUE as u16);
    assert!(g.try_recv(Duration::from_millis(100)).is_none());
    assert_eq!(g.dev.stats().tx_dropped, 4);

    // Service goes on: a real connection works, and overrunning its credit resets it. The
    // host service never reads, so the socket and then vireo's buffer fill up.
    g.send(guest_hdr(OP_REQUEST, 2, 7), &[]);
    assert_eq!(g.recv().0.op, OP_RESPONSE);
    let big = vec![0u8; MAX_PKT_DATA];
    let mut sent = 0;
    let mut credit_seen = 0;
    let reset = 'outer: loop {
        let mut h = guest_hdr(OP_RW, 2, 7);
        h.len = MAX_PKT_DATA as u32;
        g.send(h, &big);
        sent += MAX_PKT_DATA;
        while let Some((h, _)) = g.try_recv(Duration::from_millis(20)) {
            if h.op != OP_CREDIT_UPDATE {
                break 'outer h;
            }
            credit_seen = h.fwd_cnt as usize;
        }
        assert!(sent <= 64 * CONN_BUF_ALLOC as usize, "never reset");
    };
    assert_eq!(reset.op, OP_RST, "{reset:?}");
    assert!(
        sent > credit_seen + CONN_BUF_ALLOC as usize,
        "reset within credit: sent {sent}, forwarded {credit_seen}"
    );
    assert_eq!(g.dev.connection_count(), 0);
}

#[test]
fn replies_are_bounded_when_the_guest_posts_no_receive_buffers() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    // More refused requests than MAX_REPLIES, no receive buffers.
    let n = MAX_REPLIES + 100;
    let mut taken = 0;
    for i in 0..n {
        g.queue_packet(guest_hdr(OP_REQUEST, 10_000 + i as u32, 1), &[]);
        if i % 200 == 199 {
            // The worker takes them; a ring is not refilled over what it has not taken.
            g.dev.queue_notify(TX_QUEUE as u16);
            taken += g.tx.wait_used(200).len();
        }
    }
    g.dev.queue_notify(TX_QUEUE as u16);
    taken += g.tx.wait_used(MAX_REPLIES.saturating_sub(taken)).len();
    std::thread::sleep(Duration::from_millis(100));
    taken += g.tx.used().len();
    assert_eq!(taken, MAX_REPLIES, "the tx queue must stall");
    // Buffers arrive: the replies drain and the rest of the tx queue is processed.
    let mut rsts = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut consumed = MAX_REPLIES;
    let mut outstanding = 0;
    while rsts < n {
        assert!(Instant::now() < deadline, "only {rsts} of {n} RSTs");
        let more = 64usize.min(QUEUE_SIZE as usize - outstanding);
        g.give_rx(more);
        outstanding += more;
        while let Some((h, _)) = g.try_recv(Duration::from_millis(50)) {
            assert_eq!(h.op, OP_RST);
            rsts += 1;
            outstanding -= 1;
        }
        consumed += g.tx.used().len();
    }
    assert_eq!(consumed, n);
}

#[test]
fn hostile_receive_buffers_are_returned_and_service_continues() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let outside = g.rx.add(&[(MEM_SIZE as u64 - 10, RX_BUF, true)]);
    let tiny = g.rx.add(&[(0x80_0000, 20, true)]);
    let read_only = g.rx.add(&[(0x80_0000, RX_BUF, false)]);
    g.send(guest_hdr(OP_REQUEST, 1, 4321), &[]);
    let used = g.rx.wait_used(3);
    assert_eq!(used, vec![(outside, 0), (tiny, 0), (read_only, 0)]);
    assert_eq!(g.dev.stats().rx_bad_buffers, 3);
    g.give_rx(1);
    assert_eq!(g.recv().0.op, OP_RST);
}

#[test]
fn reset_closes_every_host_connection() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let listener = listen(&g, 80);
    g.give_rx(4);
    g.send(guest_hdr(OP_REQUEST, 1, 80), &[]);
    let mut host = accept(&listener);
    assert_eq!(g.recv().0.op, OP_RESPONSE);
    g.dev.reset();
    assert_eq!(g.dev.connection_count(), 0);
    assert_eq!(host.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn connections_without_credit_or_buffers_leave_the_worker_asleep() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let listener = listen(&g, 9);
    g.give_rx(2);
    // A guest socket with no receive space at all.
    let mut req = guest_hdr(OP_REQUEST, 3000, 9);
    req.buf_alloc = 0;
    g.send(req, &[]);
    let mut host = accept(&listener);
    assert_eq!(g.recv().0.op, OP_RESPONSE);
    host.write_all(b"waiting").unwrap();
    // A second connection with credit, but the guest's buffers run out.
    g.send(guest_hdr(OP_REQUEST, 3001, 9), &[]);
    let mut host2 = accept(&listener);
    assert_eq!(g.recv().0.op, OP_RESPONSE);
    host2.write_all(b"also waiting").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let before = g.dev.worker_rounds();
    std::thread::sleep(Duration::from_millis(200));
    let idle = g.dev.worker_rounds() - before;
    assert!(
        idle <= 2,
        "the worker ran {idle} rounds with nothing it could do"
    );
    // Buffers and credit arrive: both connections deliver.
    g.give_rx(4);
    let (h, data) = g.recv();
    assert_eq!(
        (h.op, h.src_port, data.as_slice()),
        (OP_RW, 9, &b"also waiting"[..])
    );
    let mut cu = guest_hdr(OP_CREDIT_UPDATE, 3000, 9);
    cu.buf_alloc = 4096;
    g.send(cu, &[]);
    let (h, data) = g.recv();
    assert_eq!(
        (h.op, h.dst_port, data.as_slice()),
        (OP_RW, 3000, &b"waiting"[..])
    );
}

/// A guest that opens connection after connection gets at most MAX_CONNECTIONS of them: the
/// rest are refused (RST) and hold nothing on the host; closing one makes room again.
#[test]
fn a_guest_opening_ever_more_connections_is_held_to_the_limit() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let l = listen(&g, 5000);
    l.set_nonblocking(true).unwrap();
    // The host side accepts everything, so no backlog stands in for the limit.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            held.len()
        })
    };
    let tries = MAX_CONNECTIONS + 20;
    let (mut responses, mut resets) = (0, 0);
    for i in 0..tries {
        g.give_rx(1);
        g.send(guest_hdr(OP_REQUEST, 20_000 + i as u32, 5000), &[]);
        match g.recv().0.op {
            OP_RESPONSE => responses += 1,
            OP_RST => resets += 1,
            op => panic!("answer {op} to a REQUEST"),
        }
    }
    assert_eq!((responses, resets), (MAX_CONNECTIONS, 20));
    assert_eq!(g.dev.connection_count(), MAX_CONNECTIONS);
    // One closes: a new one is taken.
    g.send(guest_hdr(OP_RST, 20_000, 5000), &[]);
    g.give_rx(1);
    g.send(guest_hdr(OP_REQUEST, 30_000, 5000), &[]);
    assert_eq!(g.recv().0.op, OP_RESPONSE);
    assert_eq!(g.dev.connection_count(), MAX_CONNECTIONS);
    stop.store(true, Ordering::Relaxed);
    assert!(acceptor.join().unwrap() <= MAX_CONNECTIONS + 1);
}
