//! Device-level tests: real descriptor chains in guest memory built with virtio-queue's mock
//! driver, the backend a socket pair speaking passt's framing, and one test with real passt.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vireo_machine::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::backend::{Backend, FramedStream};
use super::*;
use crate::test_util::{CountIrq, Driver};
use crate::{Activation, Interrupt, VirtioDevice};

const MEM_SIZE: usize = 16 << 20;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;

/// A device over a socket pair, activated with both queues. Returns the device, the peer end
/// of the backend, the driver sides of RX and TX, and the interrupt counter.
fn setup(mem: &GuestMemoryMmap) -> (Net, UnixStream, Driver<'_>, Driver<'_>, Arc<CountIrq>) {
    let (a, b) = UnixStream::pair().unwrap();
    let mut net = Net::with_stream(a, MAC).unwrap();
    let (rx, tx, irq) = activate(&mut net, mem, 0);
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (net, b, rx, tx, irq)
}

/// Where one-descriptor receive buffer `head` lives when `activate` posts buffers.
fn rx_addr(head: u16) -> u64 {
    0x50_0000 + u64::from(head) * 0x1000
}

/// Activates `net` with both queues, `rx_buffers` full-frame receive buffers posted first
/// (heads 0, 1, 2... at `rx_addr(head)`). Returns the driver sides and the interrupt counter.
fn activate<'m>(
    net: &mut Net,
    mem: &'m GuestMemoryMmap,
    rx_buffers: u16,
) -> (Driver<'m>, Driver<'m>, Arc<CountIrq>) {
    let mut rx = Driver::new(mem, RXQ, QUEUE_SIZE);
    let tx = Driver::new(mem, TXQ, QUEUE_SIZE);
    for i in 0..rx_buffers {
        rx.add(&[(rx_addr(i), 1526, true)]);
    }
    let irq = Arc::new(CountIrq::default());
    net.activate(Activation {
        mem: mem.clone(),
        queues: vec![Some(rx.queue()), Some(tx.queue())],
        interrupt: Interrupt::new(irq.clone()),
        features: net.features(),
    })
    .unwrap();
    (rx, tx, irq)
}

fn read_framed(peer: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    peer.read_exact(&mut len).unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut frame).unwrap();
    frame
}

fn write_framed(peer: &mut UnixStream, frame: &[u8]) {
    peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    peer.write_all(frame).unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

#[test]
fn offers_mac_and_link_up() {
    let (a, _b) = UnixStream::pair().unwrap();
    let net = Net::with_stream(a, MAC).unwrap();
    assert_eq!(net.device_type(), crate::types::NET);
    assert_eq!(net.features(), crate::F_VERSION_1 | (1 << 5) | (1 << 16));
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let mut cfg = [0u8; 10];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    let mut past = [0xffu8; 4];
    net.read_config(10, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn transmit_strips_the_header() {
    let mem = memory();
    let (mut net, mut peer, _rx, mut tx, irq) = setup(&mem);
    // Header and frame in separate descriptors, then both in one.
    let frame1 = pattern(60, 1);
    mem.write_slice(&[0xee; VNET_HDR_LEN], GuestAddress(0x10_0000))
        .unwrap();
    mem.write_slice(&frame1, GuestAddress(0x10_1000)).unwrap();
    let h1 = tx.add(&[
        (0x10_0000, VNET_HDR_LEN as u32, false),
        (0x10_1000, 60, false),
    ]);
    let frame2 = pattern(1514, 2);
    let mut buf = vec![0u8; VNET_HDR_LEN];
    buf.extend_from_slice(&frame2);
    mem.write_slice(&buf, GuestAddress(0x11_0000)).unwrap();
    let h2 = tx.add(&[(0x11_0000, buf.len() as u32, false)]);
    net.queue_notify(TX_QUEUE as u16);
    assert_eq!(read_framed(&mut peer), frame1);
    assert_eq!(read_framed(&mut peer), frame2);
    assert_eq!(tx.used(), vec![(h1, 0), (h2, 0)]);
    assert!(irq.0.load(Ordering::SeqCst) >= 1);
    assert_eq!(net.stats().tx_frames, 2);
}

#[test]
fn receive_prepends_a_v1_header() {
    let mem = memory();
    let (mut net, mut peer, mut rx, _tx, irq) = setup(&mem);
    // The frame arrives before the guest has a buffer: it is held, not lost.
    let frame = pattern(342, 3);
    write_framed(&mut peer, &frame);
    std::thread::sleep(Duration::from_millis(50));
    assert!(rx.used().is_empty());
    mem.write_slice(&[0xaa; 2048], GuestAddress(0x20_0000))
        .unwrap();
    let head = rx.add(&[(0x20_0000, 1526, true)]);
    net.queue_notify(RX_QUEUE as u16);
    let used = rx.wait_used(1);
    assert_eq!(used, vec![(head, (VNET_HDR_LEN + frame.len()) as u32)]);
    let mut got = vec![0u8; VNET_HDR_LEN + frame.len()];
    mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(
        &got[..10],
        &[0; 10],
        "flags, gso and checksum fields are zero"
    );
    assert_eq!(&got[10..12], &[1, 0], "num_buffers is 1");
    assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);
    assert!(irq.0.load(Ordering::SeqCst) >= 1);

    // A buffer split in two descriptors, waiting before the frame arrives.
    let h = rx.add(&[(0x21_0000, 8, true), (0x21_1000, 2000, true)]);
    net.queue_notify(RX_QUEUE as u16);
    let frame = pattern(100, 4);
    write_framed(&mut peer, &frame);
    assert_eq!(rx.wait_used(1), vec![(h, 112)]);
    // The header's last 4 bytes open the second buffer, the frame follows.
    let mut second = vec![0u8; 104];
    mem.read_slice(&mut second, GuestAddress(0x21_1000))
        .unwrap();
    assert_eq!(&second[..4], &[0, 0, 1, 0]);
    assert_eq!(&second[4..], &frame[..]);
    assert_eq!(net.stats().rx_frames, 2);
}

#[test]
fn hostile_transmit_chains_are_dropped_and_service_continues() {
    let mem = memory();
    let (mut net, mut peer, _rx, mut tx, _irq) = setup(&mem);
    let outside = tx.add(&[(MEM_SIZE as u64 - 16, 64, false)]);
    let looped = tx.add_loop(0x10_0000, false);
    let short = tx.add(&[(0x10_0000, 8, false)]);
    let header_only = tx.add(&[(0x10_0000, VNET_HDR_LEN as u32, false)]);
    let oversized = tx.add(&[(0x10_0000, (VNET_HDR_LEN + MAX_FRAME_LEN + 1) as u32, false)]);
    let wrong_way = tx.add(&[(0x10_0000, 200, true)]);
    let frame = pattern(64, 5);
    let mut buf = vec![0u8; VNET_HDR_LEN];
    buf.extend_from_slice(&frame);
    mem.write_slice(&buf, GuestAddress(0x30_0000)).unwrap();
    let good = tx.add(&[(0x30_0000, buf.len() as u32, false)]);
    net.queue_notify(TX_QUEUE as u16);
    assert_eq!(
        read_framed(&mut peer),
        frame,
        "only the good frame goes out"
    );
    let heads: Vec<u16> = tx.used().iter().map(|u| u.0).collect();
    assert_eq!(
        heads,
        [
            outside,
            looped,
            short,
            header_only,
            oversized,
            wrong_way,
            good
        ]
    );
    let s = net.stats();
    assert_eq!((s.tx_frames, s.tx_dropped), (1, 6));
    // Nothing else reached the backend.
    peer.set_nonblocking(true).unwrap();
    assert!(peer.read(&mut [0u8; 1]).is_err());
}

#[test]
fn hostile_receive_buffers_are_returned_and_service_continues() {
    let mem = memory();
    let (mut net, mut peer, mut rx, _tx, _irq) = setup(&mem);
    let outside = rx.add(&[(MEM_SIZE as u64 - 100, 1526, true)]);
    let looped = rx.add_loop(0x20_0000, true);
    let tiny = rx.add(&[(0x20_0000, 8, true)]);
    let read_only = rx.add(&[(0x20_0000, 1526, false)]);
    // Big enough for a header, too small for the first frame: the frame is dropped and the
    // buffer carries the next one.
    let small = rx.add(&[(0x21_0000, 100, true)]);
    net.queue_notify(RX_QUEUE as u16);
    write_framed(&mut peer, &pattern(200, 6));
    let next = pattern(50, 7);
    write_framed(&mut peer, &next);
    let used = rx.wait_used(5);
    assert_eq!(
        used,
        vec![
            (outside, 0),
            (looped, 0),
            (tiny, 0),
            (read_only, 0),
            (small, 62)
        ]
    );
    let mut got = vec![0u8; 50];
    mem.read_slice(&mut got, GuestAddress(0x21_0000 + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, next);
    let s = net.stats();
    assert_eq!((s.rx_frames, s.rx_dropped, s.rx_bad_buffers), (1, 1, 4));
}

#[test]
fn a_full_backend_blocks_transmit_without_blocking_the_vcpu() {
    let mem = memory();
    let (mut net, mut peer, _rx, mut tx, _irq) = setup(&mem);
    let frame = pattern(60_000, 8);
    let mut buf = vec![0u8; VNET_HDR_LEN];
    buf.extend_from_slice(&frame);
    mem.write_slice(&buf, GuestAddress(0x40_0000)).unwrap();
    // Far more than a socket buffer holds, in one kick.
    const N: usize = 64;
    for _ in 0..N {
        tx.add(&[(0x40_0000, buf.len() as u32, false)]);
    }
    let start = Instant::now();
    net.queue_notify(TX_QUEUE as u16);
    assert!(start.elapsed() < Duration::from_secs(2), "notify blocked");
    let early = tx.used().len();
    assert!(early < N, "a socket pair cannot hold {N} x 60 kB");
    // The peer reads; the worker finishes the rest.
    for i in 0..N {
        assert_eq!(read_framed(&mut peer), frame, "frame {i}");
    }
    tx.wait_used(N - early);
    assert_eq!(net.stats().tx_frames, N as u64);
}

#[test]
fn backend_hangup_takes_the_link_down() {
    let mem = memory();
    let (mut net, peer, _rx, mut tx, irq) = setup(&mem);
    let before = irq.0.load(Ordering::SeqCst);
    drop(peer);
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.backend_error().is_none() {
        assert!(Instant::now() < deadline, "hangup not noticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut status = [0u8; 2];
    net.read_config(6, &mut status);
    assert_eq!(status, [0, 0], "link down");
    assert!(
        irq.0.load(Ordering::SeqCst) > before,
        "config change signalled"
    );
    // Transmit still completes (frames are dropped).
    mem.write_slice(&[0u8; 80], GuestAddress(0x10_0000))
        .unwrap();
    let h = tx.add(&[(0x10_0000, 80, false)]);
    net.queue_notify(TX_QUEUE as u16);
    assert_eq!(tx.used(), vec![(h, 0)]);
    assert_eq!(net.stats().tx_dropped, 1);
}

#[test]
fn reset_stops_the_worker_and_reactivation_serves_again() {
    let mem = memory();
    let (mut net, mut peer, mut rx, _tx, _irq) = setup(&mem);
    net.reset();
    // Inactive: frames wait in the socket.
    write_framed(&mut peer, &pattern(70, 9));
    rx.add(&[(0x20_0000, 1526, true)]);
    std::thread::sleep(Duration::from_millis(50));
    assert!(rx.used().is_empty());
    // A fresh activation on fresh queues delivers it.
    let mut rx = Driver::new(&mem, 0x8000, QUEUE_SIZE);
    let tx = Driver::new(&mem, 0xc000, QUEUE_SIZE);
    let h = rx.add(&[(0x22_0000, 1526, true)]);
    net.activate(Activation {
        mem: mem.clone(),
        queues: vec![Some(rx.queue()), Some(tx.queue())],
        interrupt: Interrupt::new(Arc::new(CountIrq::default())),
        features: net.features(),
    })
    .unwrap();
    assert_eq!(rx.wait_used(1), vec![(h, 82)]);
}

#[test]
fn a_reboot_s_device_continues_the_backend_s_stream_where_the_last_one_left_it() {
    let mem = memory();
    let (a, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let open = OpenBackend::of(Backend::Framed(FramedStream::new(a).unwrap()), None);
    let mut first = Net::on(&open, MAC).unwrap();
    assert!(
        matches!(Net::on(&open, MAC), Err(NetError::BackendInUse)),
        "one device at a time"
    );
    let (mut rx, _tx, _irq) = activate(&mut first, &mem, 0);
    let frame = pattern(200, 7);
    write_framed(&mut peer, &frame);
    let head = rx.add(&[(0x20_0000, 1526, true)]);
    first.queue_notify(RX_QUEUE as u16);
    assert_eq!(
        rx.wait_used(1),
        vec![(head, (VNET_HDR_LEN + frame.len()) as u32)]
    );
    // The guest reboots in the middle of a frame: half of one is on the socket.
    let next = pattern(300, 8);
    let mut framed = (next.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&next);
    peer.write_all(&framed[..150]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(first);
    let mut second = Net::on(&open, MAC).unwrap();
    peer.write_all(&framed[150..]).unwrap();
    let mem2 = memory();
    let (mut rx, _tx, _irq) = activate(&mut second, &mem2, 0);
    let head = rx.add(&[(0x20_0000, 1526, true)]);
    second.queue_notify(RX_QUEUE as u16);
    assert_eq!(
        rx.wait_used(1),
        vec![(head, (VNET_HDR_LEN + next.len()) as u32)]
    );
    let mut got = vec![0u8; next.len()];
    mem2.read_slice(&mut got, GuestAddress(0x20_0000 + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, next, "the frame split by the reboot arrives whole");
}

#[test]
fn activation_needs_both_queues() {
    let mem = memory();
    let (a, _b) = UnixStream::pair().unwrap();
    let mut net = Net::with_stream(a, MAC).unwrap();
    let rx = Driver::new(&mem, RXQ, QUEUE_SIZE);
    let e = net
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![Some(rx.queue()), None],
            interrupt: Interrupt::new(Arc::new(CountIrq::default())),
            features: net.features(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("queue 1"), "{e}");
}

// ---- real passt ----

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A DHCPDISCOVER from `mac`, broadcast, as an Ethernet frame.
fn dhcp_discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut bootp = vec![0u8; 236];
    bootp[0] = 1; // BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&xid.to_be_bytes());
    bootp[10] = 0x80; // reply by broadcast
    bootp[28..34].copy_from_slice(&mac);
    bootp.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
    bootp.extend_from_slice(&[53, 1, 1]); // DHCPDISCOVER
    bootp.extend_from_slice(&[55, 3, 1, 3, 6]); // subnet, router, DNS
    bootp.push(255);
    bootp.resize(300, 0);

    let udp_len = 8 + bootp.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&68u16.to_be_bytes());
    udp.extend_from_slice(&67u16.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no checksum (allowed for UDP over IPv4)
    udp.extend_from_slice(&bootp);

    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
    ];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());

    let mut eth = vec![0xff; 6];
    eth.extend_from_slice(&mac);
    eth.extend_from_slice(&[0x08, 0x00]);
    eth.extend_from_slice(&ip);
    eth.extend_from_slice(&udp);
    eth
}

/// The offered address, if `frame` is a DHCPOFFER for `xid`.
fn dhcp_offer(frame: &[u8], xid: u32) -> Option<[u8; 4]> {
    if frame.len() < 14 + 20 + 8 + 240 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 + 240 {
        return None;
    }
    let udp = &ip[ihl..];
    if udp[0..2] != 67u16.to_be_bytes() || udp[2..4] != 68u16.to_be_bytes() {
        return None;
    }
    let bootp = &udp[8..];
    if bootp[0] != 2 || bootp[4..8] != xid.to_be_bytes() {
        return None;
    }
    let mut opts = &bootp[240..];
    while opts.len() >= 2 && opts[0] != 255 {
        if opts[0] == 0 {
            opts = &opts[1..];
            continue;
        }
        let len = usize::from(opts[1]);
        if opts[0] == 53 && len == 1 && opts.get(2) == Some(&2) {
            return Some([bootp[16], bootp[17], bootp[18], bootp[19]]);
        }
        opts = opts.get(2 + len..)?;
    }
    None
}

/// Whether `frame` is a TCP SYN to `port`.
fn tcp_syn_to(frame: &[u8], port: u16) -> bool {
    if frame.len() < 14 + 20 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
        return false;
    }
    let ihl = usize::from(frame[14] & 0xf) * 4;
    let tcp = &frame[14 + ihl..];
    tcp.len() >= 20 && tcp[2..4] == port.to_be_bytes() && tcp[13] & 0x12 == 0x02
}

#[test]
fn real_passt_answers_dhcp_and_forwards_a_host_port() {
    if super::passt::find_passt(std::env::var_os("PATH").as_deref()).is_err() {
        panic!("passt is not installed: apt-get install passt");
    }
    // A free host port to forward (bound and released by the test).
    let host_port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fwd = HostFwd::tcp(host_port, 80);
    let mut net = Net::new(NetBackendConfig::User { hostfwd: vec![fwd] }, MAC).unwrap();
    let pid = net.passt_pid().unwrap();

    let mem = memory();
    let (mut rx, mut tx, _) = activate(&mut net, &mem, 64);

    let xid = 0x5652_4545;
    let discover = dhcp_discover(MAC, xid);
    let mut buf = vec![0u8; VNET_HDR_LEN];
    buf.extend_from_slice(&discover);
    mem.write_slice(&buf, GuestAddress(0x10_0000)).unwrap();
    tx.add(&[(0x10_0000, buf.len() as u32, false)]);
    net.queue_notify(TX_QUEUE as u16);

    let received = |rx: &mut Driver, want: &mut dyn FnMut(&[u8]) -> bool| -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for (head, len) in rx.used() {
                let mut f = vec![0u8; len as usize];
                mem.read_slice(&mut f, GuestAddress(rx_addr(head))).unwrap();
                if f.len() > VNET_HDR_LEN && want(&f[VNET_HDR_LEN..]) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    };
    let mut offered = None;
    assert!(
        received(&mut rx, &mut |f| {
            offered = offered.or(dhcp_offer(f, xid));
            offered.is_some()
        }),
        "passt sent no DHCPOFFER within 10 s"
    );

    // passt now knows the guest: a connection to the forwarded host port arrives as a SYN to
    // guest port 80.
    let _client = std::thread::spawn(move || {
        let _ = std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], host_port).into(),
            Duration::from_secs(5),
        );
    });
    assert!(
        received(&mut rx, &mut |f| tcp_syn_to(f, 80)),
        "no SYN for guest port 80 after connecting to host port {host_port}"
    );
    drop(net);
    // passt was killed and reaped.
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    assert!(!alive, "passt (pid {pid}) outlived the device");
}

#[test]
fn user_backend_reports_a_busy_host_port() {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let e = Net::new(
        NetBackendConfig::User {
            hostfwd: vec![HostFwd::tcp(port, 22)],
        },
        MAC,
    )
    .err()
    .expect("a busy port must be refused");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("port {port}")) && msg.contains("in use"),
        "{msg}"
    );
}

#[test]
fn a_starved_device_sleeps_until_the_guest_adds_buffers() {
    let mem = memory();
    let (mut net, mut peer, mut rx, _tx, _irq) = setup(&mem);
    // More than the device reads ahead, so the socket stays readable while it waits.
    const LEN: usize = 40_000;
    for i in 0..3 {
        write_framed(&mut peer, &pattern(LEN, i));
    }
    std::thread::sleep(Duration::from_millis(50));
    let before = net.worker_rounds();
    std::thread::sleep(Duration::from_millis(200));
    let idle = net.worker_rounds() - before;
    assert!(idle <= 2, "the worker ran {idle} rounds with nothing to do");
    for i in 0..3 {
        rx.add(&[(0x20_0000 + i * 0x1_0000, (VNET_HDR_LEN + LEN) as u32, true)]);
    }
    net.queue_notify(RX_QUEUE as u16);
    assert_eq!(rx.wait_used(3).len(), 3);
    assert_eq!(net.stats().rx_frames, 3);
}

/// An IPv4/UDP frame with a correct IP checksum and no UDP checksum.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 2, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src.0);
    ip.extend_from_slice(&dst.0);
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Creates a tap with `ip` inside a network namespace private to the calling thread, and
/// carries a UDP datagram each way between the namespace's stack and the "guest". No traffic
/// leaves the namespace.
#[test]
fn tap_backend_carries_frames_in_a_private_network_namespace() {
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) only moves this thread into a new, empty network
        // namespace; no memory is involved.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot create a network namespace for the tap test (needs root): {}",
                std::io::Error::last_os_error()
            );
        }
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("the tap test needs `ip` (apt-get install iproute2)");
            assert!(st.success(), "ip {args:?} failed");
        };
        const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
        ip(&["link", "set", "lo", "up"]);
        ip(&["tuntap", "add", "vtap0", "mode", "tap"]);
        ip(&["link", "set", "vtap0", "address", "02:00:00:00:00:01"]);
        ip(&["addr", "add", "10.99.0.1/24", "dev", "vtap0"]);
        ip(&["link", "set", "vtap0", "up"]);
        ip(&[
            "neigh",
            "add",
            "10.99.0.2",
            "lladdr",
            "52:54:00:12:34:56",
            "dev",
            "vtap0",
        ]);
        let mut net = Net::new(
            NetBackendConfig::Tap {
                name: "vtap0".into(),
            },
            MAC,
        )
        .unwrap();
        let mem = memory();
        let (mut rx, mut tx, _) = activate(&mut net, &mem, 64);

        // Namespace stack to guest.
        let sock = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let host_port = sock.local_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = false;
        let mut last_send = Instant::now() - Duration::from_secs(1);
        while !found && Instant::now() < deadline {
            // The kernel activates the tap's queue asynchronously once it has a carrier;
            // datagrams sent before that are dropped, so send again until one arrives.
            if last_send.elapsed() > Duration::from_millis(100) {
                sock.send_to(b"to-guest", "10.99.0.2:5555").unwrap();
                last_send = Instant::now();
            }
            for (head, len) in rx.used() {
                let mut f = vec![0u8; len as usize];
                mem.read_slice(&mut f, GuestAddress(rx_addr(head))).unwrap();
                found |= f.len() > VNET_HDR_LEN + 42
                    && f[VNET_HDR_LEN..VNET_HDR_LEN + 6] == MAC
                    && f.ends_with(b"to-guest");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            found,
            "the datagram sent to the guest never reached the rx queue"
        );

        // Guest to namespace stack.
        let frame = udp_frame(
            HOST_MAC,
            MAC,
            ([10, 99, 0, 2], 5555),
            ([10, 99, 0, 1], host_port),
            b"to-host",
        );
        let mut buf = vec![0u8; VNET_HDR_LEN];
        buf.extend_from_slice(&frame);
        mem.write_slice(&buf, GuestAddress(0x10_0000)).unwrap();
        tx.add(&[(0x10_0000, buf.len() as u32, false)]);
        net.queue_notify(TX_QUEUE as u16);
        let mut got = [0u8; 32];
        let (n, from) = sock.recv_from(&mut got).unwrap();
        assert_eq!(&got[..n], b"to-host");
        assert_eq!(from, "10.99.0.2:5555".parse().unwrap());
    })
    .join()
    .unwrap();
}

#[test]
fn quiesce_returns_after_the_worker_delivered_what_was_waiting() {
    let mem = memory();
    let (a, mut peer) = UnixStream::pair().unwrap();
    let mut net = Net::with_stream(a, MAC).unwrap();
    assert!(
        net.quiesce(Duration::from_secs(1)),
        "inactive: nothing to wait for"
    );
    let (mut rx, _tx, _irq) = activate(&mut net, &mem, 4);
    for round in 0..20u8 {
        // Checked at once, without polling: quiesce is what waits.
        let frame = pattern(60 + usize::from(round), round);
        write_framed(&mut peer, &frame);
        assert!(net.quiesce(Duration::from_secs(5)));
        let used = rx.used();
        assert_eq!(used.len(), 1, "round {round}: {used:?}");
        assert_eq!(used[0].1 as usize, VNET_HDR_LEN + frame.len());
        rx.add(&[(rx_addr(u16::from(round) % 4), 1526, true)]);
        net.queue_notify(RX_QUEUE as u16);
    }
}
