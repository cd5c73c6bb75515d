//! One stream connection between a guest port and a host Unix socket.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::CONN_BUF_ALLOC;

/// A connection's identity: the host-side port and the guest-side port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Host-initiated: the REQUEST is queued or sent; the guest has not answered.
    AwaitingResponse,
    Established,
}

pub(crate) struct Conn {
    pub stream: UnixStream,
    pub state: ConnState,
    /// The client connected to the host listener and is owed `OK <port>\n` on RESPONSE.
    pub host_initiated: bool,
    // Control packets owed to the guest.
    pub send_request: bool,
    pub send_response: bool,
    pub send_credit_update: bool,
    pub send_shutdown: bool,
    /// Guest data the host socket has not taken yet (at most [`CONN_BUF_ALLOC`]).
    pub to_host: VecDeque<u8>,
    /// Guest bytes written to the host socket (wrapping), and the value last told the guest.
    pub fwd_cnt: u32,
    pub fwd_cnt_reported: u32,
    /// Bytes sent to the guest (wrapping).
    pub rx_cnt: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// The host side closed (read returned end of file).
    pub host_eof: bool,
    /// The write side of the host socket was shut after the guest's SHUTDOWN(SEND).
    pub host_write_shut: bool,
}

impl Conn {
    pub(crate) fn new(stream: UnixStream, state: ConnState) -> Conn {
        Conn {
            stream,
            state,
            host_initiated: false,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            send_shutdown: false,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_reported: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            peer_shutdown: 0,
            host_eof: false,
            host_write_shut: false,
        }
    }

    /// Every packet from the guest carries its current receive-buffer state.
    pub(crate) fn update_peer(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// How many more bytes the guest can take on this connection. A guest that claims to
    /// have consumed more than it was sent gets nothing (the wrapped difference is huge).
    pub(crate) fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host data may be read and sent to the guest now.
    pub(crate) fn wants_host_data(&self) -> bool {
        self.state == ConnState::Established
            && !self.send_response
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the guest may still send data.
    pub(crate) fn accepts_guest_data(&self) -> bool {
        self.state == ConnState::Established && self.peer_shutdown & SHUTDOWN_SEND == 0
    }

    /// Takes guest data: straight to the socket while nothing is queued, the rest queued.
    pub(crate) fn push_to_host(&mut self, data: &[u8]) -> io::Result<()> {
        let mut written = 0;
        if self.to_host.is_empty() {
            written = write_some(&mut self.stream, data)?;
            self.forwarded(written);
        }
        self.to_host.extend(&data[written..]);
        Ok(())
    }

    /// Writes queued guest data until the socket is full.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.to_host.drain(..n);
            self.forwarded(n);
        }
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        // Tell the guest about freed space once a quarter of the buffer is unreported: often
        // enough that a sender never waits on a buffer that is really empty, rarely enough not
        // to double the packet count.
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_reported) >= CONN_BUF_ALLOC / 4 {
            self.send_credit_update = true;
        }
    }

    /// A header from the host side of this connection, with the current credit.
    pub(crate) fn header(&mut self, key: ConnKey, guest_cid: u64, op: u16) -> Header {
        self.fwd_cnt_reported = self.fwd_cnt;
        self.send_credit_update = false;
        Header {
            src_cid: super::packet::HOST_CID,
            dst_cid: guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len: 0,
            kind: super::packet::TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

/// One non-blocking write: the count taken, 0 when the socket is full.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Connects to the Unix socket at `path` without blocking: a listener whose backlog is full
/// refuses (EAGAIN) instead of stalling the vCPU thread.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} is too long", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain system call with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call and `len` does not exceed
    // its size (checked above); `sock` is an open socket.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(sock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn connects_without_blocking_and_refuses_cleanly() {
        let dir = std::env::temp_dir().join(format!("vireo-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        assert!(connect_nonblocking(&path).is_err(), "nothing listens yet");
        let l = UnixListener::bind(&path).unwrap();
        let mut c = connect_nonblocking(&path).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        let long = dir.join("a".repeat(200));
        let e = connect_nonblocking(&long).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn credit_never_goes_negative() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, ConnState::Established);
        c.peer_buf_alloc = 100;
        c.rx_cnt = 60;
        c.peer_fwd_cnt = 10;
        assert_eq!(c.peer_credit(), 50);
        c.peer_fwd_cnt = 70; // claims more than it got
        assert_eq!(c.peer_credit(), 0);
        c.rx_cnt = 5u32.wrapping_sub(10); // wrapped counters still work
        c.peer_fwd_cnt = 0u32.wrapping_sub(20);
        assert_eq!(c.peer_credit(), 85);
    }
}
