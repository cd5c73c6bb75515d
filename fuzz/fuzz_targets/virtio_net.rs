//! virtio-net behind virtio-mmio: transmit chains (the 12-byte virtio_net_hdr, flags, GSO and
//! checksum fields, and the frame after it), receive buffers, and what the host side sends on
//! the backend's framed stream (passt's framing: a 32-bit big-endian length, then the frame).
//! The backend is a socket pair whose other end the target holds: no passt, no tap.
//!
//! Input: two bytes give the length of a host part, a list of chunks (`u16` length, then the
//! bytes the host writes to the stream as they are, prefix included, so lengths can lie; a
//! length with its top bit set closes the host end instead); the rest is the usual device
//! input (see `vireo_fuzz`). In the script, a notification of queue 2 makes the host write its
//! next chunk, and of queue 3 read everything the device sent (until then the device's small
//! socket buffer fills and transmit blocks); the device has queues 0 (receive) and 1
//! (transmit) only.
#![no_main]
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vireo_fuzz::{bring_up_mmio, memory, mmio_reg, ops, play_mmio, Op};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Splits off the host part: its chunks, `None` for "close".
fn host_part(data: &[u8]) -> (Vec<Option<&[u8]>>, &[u8]) {
    let [a, b, rest @ ..] = data else {
        return (Vec::new(), data);
    };
    let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
    let (mut host, device) = rest.split_at(n);
    let mut chunks = Vec::new();
    while let [a, b, rest @ ..] = host {
        let len = u16::from_le_bytes([*a, *b]);
        if len & 0x8000 != 0 {
            chunks.push(None);
            host = rest;
            continue;
        }
        let (c, rest) = rest.split_at(usize::from(len).min(rest.len()));
        chunks.push(Some(c));
        host = rest;
    }
    (chunks, device)
}

fn drain(peer: &mut UnixStream) {
    let mut buf = [0u8; 16 << 10];
    while matches!(peer.read(&mut buf), Ok(n) if n > 0) {}
}

fn quiesce(t: &vireo_virtio::mmio::MmioTransport) {
    assert!(
        t.quiesce(Duration::from_secs(5)),
        "the receive worker did not run a round within 5 s"
    );
}

fuzz_target!(|data: &[u8]| {
    let (chunks, device) = host_part(data);
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return;
    };
    // A small send buffer, so a few frames fill it and the partial-send path runs.
    let _ = nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SndBuf, &4096);
    let Ok(dev) = vireo_virtio::net::Net::with_stream(ours, MAC) else {
        return;
    };
    let mut peer = Some(theirs);
    if let Some(p) = &peer {
        let _ = p.set_nonblocking(true);
    }
    let mut chunks = chunks.into_iter();
    let (mem, rest) = memory(device);
    let mut t = vireo_virtio::mmio::MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        std::sync::Arc::new(vireo_machine::NoIrq),
    );
    bring_up_mmio(&mut t, 2);
    for op in ops(rest) {
        match op {
            Op::Notify { queue: 2 } => {
                match (chunks.next(), peer.as_mut()) {
                    // What does not fit the socket is lost, as a peer's write would block.
                    (Some(Some(c)), Some(p)) => {
                        let _ = p.write(c);
                    }
                    (Some(None), _) => peer = None,
                    _ => {}
                }
                quiesce(&t);
            }
            Op::Notify { queue: 3 } => {
                if let Some(p) = peer.as_mut() {
                    drain(p);
                }
                quiesce(&t);
            }
            op => {
                let notified = match &op {
                    Op::Notify { .. } => true,
                    Op::Write { offset, .. } => offset & 0x1ff == mmio_reg::QUEUE_NOTIFY,
                    _ => false,
                };
                play_mmio(&mut t, &mem, std::slice::from_ref(&op));
                if notified {
                    quiesce(&t);
                }
            }
        }
    }
});
