//! Where the guest's Ethernet frames go: passt's framed stream socket or a tap device.
//!
//! Both ends are non-blocking. Sending never blocks the vCPU: a frame the socket only partly
//! took is kept (one frame at most) and finished before the next one is accepted; until then
//! the device leaves transmit requests in the guest's ring. Receiving hands back one whole frame
//! at a time.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use super::passt::Passt;
use super::tap::Tap;
use super::{HostFwd, NetError, MAX_FRAME_LEN};

/// The host side of a virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// User-mode networking through a `passt` child process: DHCP, DNS, outbound TCP/UDP/ICMP
    /// and the host's loopback at the gateway address, without privileges. `hostfwd` lists the
    /// host TCP ports forwarded into the guest.
    User { hostfwd: Vec<HostFwd> },
    /// A pre-created tap device (`ip tuntap add NAME mode tap`), opened without packet info.
    Tap { name: String },
}

/// What a receive attempt found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recv {
    /// One frame of this many bytes is at the start of the caller's buffer.
    Frame(usize),
    /// Nothing is waiting.
    Empty,
}

/// An open backend.
pub(crate) enum Backend {
    Framed(FramedStream),
    Tap(Tap),
    /// Given back to its [`OpenBackend`] (the device is being dropped).
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the backend was given back")
}

impl Backend {
    /// The descriptor to poll for readability and writability.
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Backend::Framed(s) => s.stream.as_raw_fd(),
            Backend::Tap(t) => t.raw_fd(),
            // poll(2) skips a negative descriptor.
            Backend::Gone => -1,
        }
    }

    /// Finishes a partly sent frame. `Ok(true)` when nothing is left pending.
    pub(crate) fn flush(&mut self) -> io::Result<bool> {
        match self {
            Backend::Framed(s) => s.flush_pending(),
            Backend::Tap(_) => Ok(true),
            Backend::Gone => Err(gone()),
        }
    }

    /// Sends one frame; call only after [`Backend::flush`] returned `Ok(true)`.
    pub(crate) fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Backend::Framed(s) => s.send(frame),
            Backend::Tap(t) => t.send(frame),
            Backend::Gone => Err(gone()),
        }
    }

    /// Receives one frame into `buf` (at least [`MAX_FRAME_LEN`] bytes long).
    pub(crate) fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        match self {
            Backend::Framed(s) => s.recv(buf),
            Backend::Tap(t) => t.recv(buf),
            Backend::Gone => Err(gone()),
        }
    }
}

/// A backend opened once for the VM's life, which each boot's device borrows and gives back
/// when dropped — with a half-sent or half-received frame kept, so passt's stream stays in
/// step across a guest reboot. Opening it is what needs the host (starting passt, opening a
/// tap by name), so a jailed VMM opens it before it enters the jail; a reboot then needs
/// nothing the jail forbids, and passt keeps its forwarded ports bound.
#[derive(Clone)]
pub struct OpenBackend {
    pub(crate) slot: Arc<Mutex<Option<Backend>>>,
    pub(crate) passt: Option<Arc<Passt>>,
}

impl OpenBackend {
    /// Starts passt for [`NetBackendConfig::User`], opens the tap for [`NetBackendConfig::Tap`].
    pub fn open(config: NetBackendConfig) -> Result<OpenBackend, NetError> {
        let (backend, passt) = match config {
            NetBackendConfig::User { hostfwd } => {
                let (passt, stream) = Passt::start(&hostfwd)?;
                let framed = FramedStream::new(stream).map_err(|source| NetError::PasstSocket {
                    socket: passt.socket().to_owned(),
                    source,
                })?;
                (Backend::Framed(framed), Some(Arc::new(passt)))
            }
            NetBackendConfig::Tap { name } => (Backend::Tap(Tap::open(&name)?), None),
        };
        Ok(OpenBackend::of(backend, passt))
    }

    pub(crate) fn of(backend: Backend, passt: Option<Arc<Passt>>) -> OpenBackend {
        OpenBackend {
            slot: Arc::new(Mutex::new(Some(backend))),
            passt,
        }
    }

    /// passt's pid, for user-mode networking.
    pub fn passt_pid(&self) -> Option<u32> {
        self.passt.as_ref().map(|p| p.pid())
    }

    /// Takes the backend for a device; `None` while another device has it.
    pub(crate) fn take(&self) -> Option<Backend> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Length of the frame-length prefix on passt's stream (QEMU's `-netdev stream` framing).
const LEN_PREFIX: usize = 4;

/// A stream socket carrying Ethernet frames, each preceded by its length as a 32-bit
/// big-endian number: the framing of QEMU's stream netdev, which passt speaks on its
/// `--socket`.
pub(crate) struct FramedStream {
    stream: UnixStream,
    /// The unsent tail of the frame being sent (prefix included).
    out: Vec<u8>,
    /// Bytes received but not yet handed out: at most one prefix and one frame.
    inbuf: Box<[u8]>,
    in_len: usize,
}

impl FramedStream {
    pub(crate) fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(FramedStream {
            stream,
            out: Vec::new(),
            inbuf: vec![0; LEN_PREFIX + MAX_FRAME_LEN].into_boxed_slice(),
            in_len: 0,
        })
    }

    fn flush_pending(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if frame.len() > MAX_FRAME_LEN || !self.out.is_empty() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let prefix = (frame.len() as u32).to_be_bytes();
        let total = LEN_PREFIX + frame.len();
        let sent = loop {
            match self
                .stream
                .write_vectored(&[IoSlice::new(&prefix), IoSlice::new(frame)])
            {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if sent < total {
            // Keep the rest: a half-sent frame would desynchronise the stream for good.
            if sent < LEN_PREFIX {
                self.out.extend_from_slice(&prefix[sent..]);
                self.out.extend_from_slice(frame);
            } else {
                self.out.extend_from_slice(&frame[sent - LEN_PREFIX..]);
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        loop {
            if self.in_len >= LEN_PREFIX {
                let mut prefix = [0u8; LEN_PREFIX];
                prefix.copy_from_slice(&self.inbuf[..LEN_PREFIX]);
                let len = u32::from_be_bytes(prefix) as usize;
                if len > MAX_FRAME_LEN || len > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "peer announced a {len}-byte frame; expected at most {MAX_FRAME_LEN}"
                        ),
                    ));
                }
                let end = LEN_PREFIX + len;
                if self.in_len >= end {
                    buf[..len].copy_from_slice(&self.inbuf[LEN_PREFIX..end]);
                    self.inbuf.copy_within(end..self.in_len, 0);
                    self.in_len -= end;
                    if len == 0 {
                        continue;
                    }
                    return Ok(Recv::Frame(len));
                }
            }
            match self.stream.read(&mut self.inbuf[self.in_len..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the socket",
                    ))
                }
                Ok(n) => self.in_len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Recv::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed_pair() -> (Backend, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Backend::Framed(FramedStream::new(a).unwrap()), b)
    }

    #[test]
    fn sends_length_prefixed_frames() {
        let (mut be, mut peer) = framed_pair();
        assert!(be.flush().unwrap());
        be.send(&[1, 2, 3]).unwrap();
        be.send(&[0xaa; 300]).unwrap();
        let mut got = [0u8; 4 + 3 + 4 + 300];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..7], &[0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(&got[7..11], &[0, 0, 1, 44]);
        assert!(got[11..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn receives_frames_split_and_batched_arbitrarily() {
        let (mut be, mut peer) = framed_pair();
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        assert_eq!(be.recv(&mut buf).unwrap(), Recv::Empty);
        // A prefix split across writes, then two frames in one write.
        peer.write_all(&[0, 0]).unwrap();
        assert_eq!(be.recv(&mut buf).unwrap(), Recv::Empty);
        peer.write_all(&[0, 2, 7]).unwrap();
        assert_eq!(be.recv(&mut buf).unwrap(), Recv::Empty);
        peer.write_all(&[8, 0, 0, 0, 1, 9]).unwrap();
        assert_eq!(be.recv(&mut buf).unwrap(), Recv::Frame(2));
        assert_eq!(&buf[..2], &[7, 8]);
        assert_eq!(be.recv(&mut buf).unwrap(), Recv::Frame(1));
        assert_eq!(buf[0], 9);
        assert_eq!(be.recv(&mut buf).unwrap(), Recv::Empty);
        // The largest frame fits.
        let big = vec![0x5a; MAX_FRAME_LEN];
        let writer = {
            let mut peer = peer.try_clone().unwrap();
            std::thread::spawn(move || {
                peer.write_all(&(MAX_FRAME_LEN as u32).to_be_bytes())
                    .unwrap();
                peer.write_all(&big).unwrap();
            })
        };
        let n = loop {
            match be.recv(&mut buf).unwrap() {
                Recv::Frame(n) => break n,
                Recv::Empty => std::thread::yield_now(),
            }
        };
        writer.join().unwrap();
        assert_eq!(n, MAX_FRAME_LEN);
        assert!(buf.iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn refuses_oversized_announcements_and_reports_hangup() {
        let (mut be, mut peer) = framed_pair();
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        peer.write_all(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes())
            .unwrap();
        let e = be.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(&(MAX_FRAME_LEN + 1).to_string()));

        let (mut be, peer) = framed_pair();
        drop(peer);
        let e = be.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn keeps_a_partly_sent_frame_until_the_peer_reads() {
        let (mut be, mut peer) = framed_pair();
        // Fill the socket until a frame is only partly taken.
        let frame = vec![0x11u8; 60_000];
        let mut frames = 0usize;
        while be.flush().unwrap() {
            be.send(&frame).unwrap();
            frames += 1;
            assert!(frames < 10_000, "socket never filled");
        }
        assert!(be.send(&frame).is_err(), "a second frame must wait");
        // Drain everything on the peer side while flushing; framing must stay intact.
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            let mut prefix = [0u8; 4];
            let mut body = vec![0u8; 60_000];
            while n < frames {
                peer.read_exact(&mut prefix).unwrap();
                assert_eq!(u32::from_be_bytes(prefix), 60_000);
                peer.read_exact(&mut body).unwrap();
                assert!(body.iter().all(|&b| b == 0x11));
                n += 1;
            }
        });
        while !be.flush().unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        reader.join().unwrap();
    }
}
