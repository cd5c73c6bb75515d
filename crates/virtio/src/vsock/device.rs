//! The virtio-vsock device: configuration, queue processing and the connection table.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vireo_machine::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::conn::{connect_nonblocking, Conn, ConnKey, ConnState};
use super::packet::*;
use super::worker::Worker;
use super::{
    VsockError, CONN_BUF_ALLOC, EVENT_QUEUE, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_HANDSHAKES,
    MAX_PKT_DATA, MAX_REPLIES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::{ActivateError, Activation, Interrupt, VirtioDevice, F_VERSION_1};

/// Host-side ports for host-initiated connections start here, well above the ports host
/// services listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long accepting pauses after the listener failed for lack of resources (EMFILE...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Counters of what the device refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockStats {
    /// Transmit packets dropped without a reply: unreadable, shorter than the header, or from
    /// a CID other than the guest's.
    pub tx_dropped: u64,
    /// RST packets sent.
    pub rst_sent: u64,
    /// Receive buffers returned unused (outside memory, smaller than a header).
    pub rx_bad_buffers: u64,
}

/// A virtio-vsock device whose host side is Unix sockets under `uds_path`.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    /// The socket file's device and inode, so drop removes this socket and no later one.
    socket_id: (u64, u64),
    state: Arc<Mutex<VsockState>>,
    worker: Option<Worker>,
}

impl Vsock {
    /// Creates the device and listens on `uds_path` for host clients. A socket that a live
    /// process listens on (another VM's) is refused, never replaced; a stale one (nobody
    /// listening: its VM died without cleaning up) is replaced; anything else there is an error.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid { cid: guest_cid });
        }
        let bind_err = |source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        };
        // Two vireos finding the same stale socket must not both replace it (the second would
        // unlink the first one's live listener): the look, the unlink and the bind happen
        // under an exclusive lock on the directory, which only vireo takes, for a moment.
        let _dir_lock = lock_parent(&uds_path).map_err(bind_err)?;
        if let Ok(meta) = std::fs::symlink_metadata(&uds_path) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::PathTaken { path: uds_path });
            }
            match connect_nonblocking(&uds_path) {
                // EAGAIN: a listener with a full backlog is just as alive.
                Ok(_) => return Err(VsockError::InUse { path: uds_path }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(VsockError::InUse { path: uds_path })
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(&uds_path).map_err(bind_err)?;
                }
                Err(source) => {
                    return Err(VsockError::Probe {
                        path: uds_path,
                        source,
                    })
                }
            }
        }
        let listener = UnixListener::bind(&uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let socket_id = std::fs::symlink_metadata(&uds_path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(bind_err)?;
        let state = VsockState {
            guest_cid,
            uds_path: uds_path.clone(),
            listener,
            accept_paused_until: None,
            active: None,
            conns: BTreeMap::new(),
            handshakes: VecDeque::new(),
            replies: VecDeque::new(),
            rx_starved: false,
            tx_stalled: false,
            tx_pending: false,
            next_local_port: FIRST_LOCAL_PORT,
            rr_cursor: None,
            tx_data: Vec::new(),
            rx_data: vec![0; MAX_PKT_DATA].into_boxed_slice(),
            stats: VsockStats::default(),
            rounds: 0,
            paused: false,
            reset_guest: false,
        };
        Ok(Vsock {
            guest_cid,
            uds_path,
            socket_id,
            state: Arc::new(Mutex::new(state)),
            worker: None,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn stats(&self) -> VsockStats {
        lock(&self.state).stats
    }

    /// Open connections (established or waiting for the guest's RESPONSE).
    pub fn connection_count(&self) -> usize {
        lock(&self.state).conns.len()
    }

    #[cfg(test)]
    pub(crate) fn worker_rounds(&self) -> u64 {
        lock(&self.state).rounds
    }

    fn kick(&self) {
        if let Some(w) = &self.worker {
            w.kick();
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.worker = None;
        // Someone may have removed ours and listened there since; theirs stays.
        let ours = std::fs::symlink_metadata(&self.uds_path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.socket_id);
        if ours {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

/// Takes an exclusive `flock` on the directory holding `path`, released when dropped.
fn lock_parent(path: &Path) -> io::Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let f = std::fs::File::open(dir)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        crate::types::VSOCK
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, mut act: Activation) -> Result<(), ActivateError> {
        self.reset();
        let rx = act.take_queue(RX_QUEUE, "rx")?;
        let tx = act.take_queue(TX_QUEUE, "tx")?;
        let event = act.take_queue(EVENT_QUEUE, "event").ok();
        {
            let mut st = lock(&self.state);
            st.active = Some(Active {
                mem: act.mem,
                rx,
                tx,
                event,
                interrupt: act.interrupt,
            });
            st.rx_starved = false;
            st.tx_stalled = false;
            st.tx_pending = false;
        }
        match super::worker::start(self.state.clone()) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => {
                lock(&self.state).active = None;
                Err(ActivateError::Backend(format!(
                    "virtio-vsock: cannot start the worker: {e}"
                )))
            }
        }
    }

    fn queue_notify(&mut self, index: u16) {
        match usize::from(index) {
            // The worker takes the packets: a guest's connect is a host connect(2), and the
            // vCPU (or emulator) thread that rang makes no host socket calls for the guest.
            TX_QUEUE => lock(&self.state).tx_pending = true,
            RX_QUEUE => lock(&self.state).rx_starved = false,
            _ => return,
        }
        // New connections, queued data or fresh buffers change what the worker waits for.
        self.kick();
    }

    fn pause(&self, timeout: std::time::Duration) -> bool {
        // Packets the driver rang for are the worker's to take first (a stalled queue waits
        // for receive buffers, and stays as it is); the lock waits out a round in progress.
        let deadline = Instant::now() + timeout;
        loop {
            let mut st = lock(&self.state);
            let waits_for_buffers = st.replies.len() >= MAX_REPLIES;
            if !st.tx_pending || waits_for_buffers || st.active.is_none() || self.worker.is_none() {
                st.paused = true;
                return true;
            }
            drop(st);
            if Instant::now() >= deadline {
                return false;
            }
            self.kick();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn resume(&self) {
        lock(&self.state).paused = false;
        self.kick();
    }

    /// Nothing of a connection survives a snapshot (its host socket is gone); the state is a
    /// marker that the guest must be told so.
    fn save_state(&self) -> Vec<u8> {
        vec![1]
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        if state != [1] {
            return Err(format!(
                "virtio-vsock: unknown saved state {state:?} (expected [1])"
            ));
        }
        lock(&self.state).reset_guest = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        let mut st = lock(&self.state);
        st.active = None;
        // Closing the host sockets tells every host peer the connection is gone.
        st.conns.clear();
        st.handshakes.clear();
        st.replies.clear();
        st.rr_cursor = None;
    }
}

pub(crate) fn lock(state: &Mutex<VsockState>) -> MutexGuard<'_, VsockState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Option<Queue>,
    interrupt: Interrupt,
}

/// A host client that has not finished its `CONNECT <port>\n` line.
pub(crate) struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Everything the vCPU thread and the worker share.
pub(crate) struct VsockState {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    accept_paused_until: Option<Instant>,
    active: Option<Active>,
    conns: BTreeMap<ConnKey, Conn>,
    handshakes: VecDeque<Handshake>,
    /// Stateless replies (RST) waiting for a receive buffer.
    replies: VecDeque<Header>,
    /// The guest had no receive buffer last time; cleared by its next rx kick.
    rx_starved: bool,
    /// Transmit processing stopped because `replies` is full.
    /// The driver rang the transmit queue: the worker's next round takes its packets.
    tx_pending: bool,
    tx_stalled: bool,
    next_local_port: u32,
    /// The connection served last, for round-robin between connections with data.
    rr_cursor: Option<ConnKey>,
    /// The payload of the transmit packet being handled.
    tx_data: Vec<u8>,
    /// Host data on its way into a receive buffer.
    rx_data: Box<[u8]>,
    stats: VsockStats,
    /// Worker rounds so far (tests check an idle device sleeps).
    rounds: u64,
    /// Set by [`VirtioDevice::pause`]: the worker leaves the queues and sockets alone.
    paused: bool,
    /// Restored from a snapshot: the guest's connections have no host side any more, so the
    /// first thing the device does is a transport reset event (virtio 1.2 §5.10.6.5), after
    /// which the driver drops every connection and reads the guest CID again — a clone's
    /// new CID included.
    reset_guest: bool,
}

/// Why a transmit packet could not be used.
enum Refusal {
    /// Nothing trustworthy to answer: drop it.
    Drop,
    /// The header is readable but the packet is not: answer with RST.
    Reset(Header),
}

/// The event id of a transport reset (virtio 1.2 §5.10.6.5).
const EVENT_TRANSPORT_RESET: u32 = 0;

impl VsockState {
    /// Puts a transport reset event in the driver's first event buffer. Without one (the
    /// driver did not set up the event queue, or gave no buffer yet) the marker stays and
    /// the next round tries again.
    fn send_transport_reset(&mut self) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let Some(q) = act.event.as_mut() else {
            self.reset_guest = false;
            return;
        };
        let mem = &act.mem;
        let Ok(Some(chain)) = q.iter(mem).map(|mut c| c.next()) else {
            return;
        };
        let head = chain.head_index();
        let written = match Writer::new(mem, chain) {
            Ok(mut w) if w.available_bytes() >= 4 => {
                use std::io::Write;
                w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                    .map(|_| 4)
                    .unwrap_or(0)
            }
            _ => 0,
        };
        if q.add_used(mem, head, written).is_ok() {
            act.interrupt.notify_used(EVENT_QUEUE as u16, q, mem);
        }
        self.reset_guest = false;
    }

    /// One round of the worker.
    pub(crate) fn service(&mut self) {
        self.rounds += 1;
        if self.active.is_none() || self.paused {
            return;
        }
        if self.reset_guest {
            self.send_transport_reset();
        }
        self.accept_clients();
        self.advance_handshakes();
        self.flush_to_host();
        self.deliver_rx();
        if (self.tx_pending || self.tx_stalled) && self.replies.len() < MAX_REPLIES {
            self.tx_pending = false;
            self.process_tx();
            self.deliver_rx();
        }
    }

    /// The descriptors the worker waits on (besides its eventfd), and a timeout in ms (-1: none).
    pub(crate) fn poll_set(&self, fds: &mut Vec<libc::pollfd>) -> i32 {
        if self.active.is_none() || self.paused {
            return -1;
        }
        let pfd = |fd, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let mut timeout = -1;
        match self.accept_paused_until {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                timeout = left.as_millis().min(1000) as i32 + 1;
            }
            None => fds.push(pfd(self.listener.as_raw_fd(), libc::POLLIN)),
        }
        for h in &self.handshakes {
            fds.push(pfd(h.stream.as_raw_fd(), libc::POLLIN));
        }
        for c in self.conns.values() {
            let mut events = 0;
            if !self.rx_starved && c.wants_host_data() {
                events |= libc::POLLIN;
            }
            if !c.to_host.is_empty() {
                events |= libc::POLLOUT;
            }
            if events != 0 {
                fds.push(pfd(c.stream.as_raw_fd(), events));
            }
        }
        timeout
    }

    // ---- guest to host ----

    /// Handles every packet the driver queued, until the ring is empty or replies back up.
    pub(crate) fn process_tx(&mut self) {
        self.tx_stalled = false;
        let Some(mut act) = self.active.take() else {
            return;
        };
        let mut used = false;
        loop {
            if self.replies.len() >= MAX_REPLIES {
                self.tx_stalled = true;
                break;
            }
            let Some(chain) = act.tx.pop_descriptor_chain(&act.mem) else {
                break;
            };
            let head = chain.head_index();
            let packet = read_packet(&act.mem, chain, &mut self.tx_data);
            let ring_ok = act.tx.add_used(&act.mem, head, 0).is_ok();
            used |= ring_ok;
            match packet {
                Ok(h) => self.handle_packet(h),
                Err(Refusal::Drop) => self.stats.tx_dropped += 1,
                Err(Refusal::Reset(h)) => self.reply_rst(&h),
            }
            if !ring_ok {
                // The used ring is outside guest memory: nothing more can be returned.
                break;
            }
        }
        if used {
            act.interrupt
                .notify_used(TX_QUEUE as u16, &mut act.tx, &act.mem);
        }
        self.active = Some(act);
    }

    fn handle_packet(&mut self, h: Header) {
        if h.src_cid != self.guest_cid {
            // Spoofed source: answering would only address someone else.
            self.stats.tx_dropped += 1;
            return;
        }
        if h.dst_cid != HOST_CID || h.kind != TYPE_STREAM {
            self.reply_rst(&h);
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        match h.op {
            OP_REQUEST => self.guest_connect(key, &h),
            OP_RST => {
                self.conns.remove(&key);
            }
            OP_RESPONSE | OP_RW | OP_SHUTDOWN | OP_CREDIT_UPDATE | OP_CREDIT_REQUEST => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    self.reply_rst(&h);
                    return;
                };
                conn.update_peer(&h);
                let ok = match h.op {
                    OP_RESPONSE => guest_accepted(conn, key),
                    OP_RW => {
                        let data = &self.tx_data[..h.len as usize];
                        conn.accepts_guest_data()
                            && conn.to_host.len() + data.len() <= CONN_BUF_ALLOC as usize
                            && conn.push_to_host(data).is_ok()
                    }
                    OP_SHUTDOWN => {
                        conn.peer_shutdown |= h.flags & SHUTDOWN_BOTH;
                        true
                    }
                    OP_CREDIT_REQUEST => {
                        conn.send_credit_update = true;
                        true
                    }
                    _ => true,
                };
                if ok {
                    self.settle(key);
                } else {
                    self.reset_conn(key);
                }
            }
            _ => self.reply_rst(&h),
        }
    }

    fn guest_connect(&mut self, key: ConnKey, h: &Header) {
        if self.conns.remove(&key).is_some() || self.conns.len() >= MAX_CONNECTIONS {
            // A REQUEST for a live connection, or too many: refuse (and drop the stale one).
            self.reply_rst(h);
            return;
        }
        let path = port_path(&self.uds_path, h.dst_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let mut conn = Conn::new(stream, ConnState::Established);
                conn.update_peer(h);
                conn.send_response = true;
                self.conns.insert(key, conn);
            }
            Err(_) => self.reply_rst(h),
        }
    }

    /// Applies what the guest's SHUTDOWN flags mean once its buffered data is out.
    fn settle(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.to_host.is_empty() {
            return;
        }
        if conn.peer_shutdown & SHUTDOWN_SEND != 0 && !conn.host_write_shut {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            conn.host_write_shut = true;
        }
        if conn.peer_shutdown == SHUTDOWN_BOTH {
            // The guest closed its socket and waits for our RST to finish.
            self.reset_conn(key);
        }
    }

    /// Drops a connection and tells the guest.
    fn reset_conn(&mut self, key: ConnKey) {
        if let Some(mut conn) = self.conns.remove(&key) {
            let h = conn.header(key, self.guest_cid, OP_RST);
            self.replies.push_back(h);
            self.stats.rst_sent += 1;
        }
    }

    /// Answers a packet with RST (never an RST with an RST).
    fn reply_rst(&mut self, h: &Header) {
        if h.op == OP_RST {
            return;
        }
        self.replies.push_back(Header {
            src_cid: h.dst_cid,
            dst_cid: h.src_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            kind: h.kind,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
        self.stats.rst_sent += 1;
    }

    // ---- host side ----

    fn accept_clients(&mut self) {
        if let Some(t) = self.accept_paused_until {
            if Instant::now() < t {
                return;
            }
            self.accept_paused_until = None;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.handshakes.len() >= MAX_HANDSHAKES {
                        // Idle clients must not lock everyone out: the oldest goes.
                        self.handshakes.pop_front();
                    }
                    self.handshakes.push_back(Handshake {
                        stream,
                        line: Vec::new(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(_) => {
                    // Out of descriptors or memory: the listener stays readable, so polling
                    // it now would spin. Try again shortly.
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn advance_handshakes(&mut self) {
        let mut i = 0;
        while i < self.handshakes.len() {
            match read_line(&mut self.handshakes[i]) {
                LineRead::Pending => i += 1,
                LineRead::Closed => {
                    self.handshakes.remove(i);
                }
                LineRead::Line => {
                    if let Some(h) = self.handshakes.remove(i) {
                        self.host_connect(h);
                    }
                }
            }
        }
    }

    /// A host client asked for a guest port: queue a REQUEST to the guest.
    fn host_connect(&mut self, h: Handshake) {
        let Some(port) = parse_connect(&h.line) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let local_port = self.allocate_local_port();
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let mut conn = Conn::new(h.stream, ConnState::AwaitingResponse);
        conn.host_initiated = true;
        conn.send_request = true;
        self.conns.insert(key, conn);
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // At most MAX_CONNECTIONS ports are taken, so this ends quickly.
            if !self.conns.keys().any(|k| k.local_port == p) {
                return p;
            }
        }
    }

    /// Writes buffered guest data to host sockets that can take it.
    fn flush_to_host(&mut self) {
        let keys: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.to_host.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let ok = self.conns.get_mut(&key).is_some_and(|c| c.flush().is_ok());
            if ok {
                self.settle(key);
            } else {
                self.reset_conn(key);
            }
        }
    }

    // ---- host to guest ----

    /// Fills guest receive buffers with replies, control packets and host data until either
    /// runs out.
    pub(crate) fn deliver_rx(&mut self) {
        let Some(mut act) = self.active.take() else {
            return;
        };
        let mut used = false;
        loop {
            let Some(chain) = act.rx.pop_descriptor_chain(&act.mem) else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let writer = if is_whole(&chain) {
                Writer::new(&act.mem, chain).ok()
            } else {
                None
            };
            let mut w = match writer {
                Some(w) if w.available_bytes() >= HDR_LEN => w,
                _ => {
                    self.stats.rx_bad_buffers += 1;
                    used = true;
                    if act.rx.add_used(&act.mem, head, 0).is_err() {
                        break;
                    }
                    continue;
                }
            };
            let room = (w.available_bytes() - HDR_LEN).min(MAX_PKT_DATA);
            let Some((h, n)) = self.next_packet(room) else {
                if room == 0 && self.has_readable_data_candidate() {
                    // A buffer that fits only a header cannot carry data: return it empty
                    // rather than holding everything behind it.
                    self.stats.rx_bad_buffers += 1;
                    used = true;
                    if act.rx.add_used(&act.mem, head, 0).is_err() {
                        break;
                    }
                    continue;
                }
                act.rx.go_to_previous_position();
                break;
            };
            let written = w
                .write_all(&h.encode())
                .and_then(|()| w.write_all(&self.rx_data[..n]))
                .map_or(0, |()| HDR_LEN + n);
            used = true;
            if act.rx.add_used(&act.mem, head, written as u32).is_err() {
                break;
            }
        }
        if used {
            act.interrupt
                .notify_used(RX_QUEUE as u16, &mut act.rx, &act.mem);
        }
        self.active = Some(act);
    }

    fn has_readable_data_candidate(&self) -> bool {
        self.conns.values().any(Conn::wants_host_data)
    }

    /// The next packet for the guest: its header and how many bytes of `rx_data` follow.
    fn next_packet(&mut self, room: usize) -> Option<(Header, usize)> {
        if let Some(h) = self.replies.pop_front() {
            return Some((h, 0));
        }
        let cid = self.guest_cid;
        for (key, c) in self.conns.iter_mut() {
            let op = if c.send_request {
                c.send_request = false;
                OP_REQUEST
            } else if c.send_response {
                c.send_response = false;
                OP_RESPONSE
            } else if c.send_shutdown {
                c.send_shutdown = false;
                let mut h = c.header(*key, cid, OP_SHUTDOWN);
                h.flags = SHUTDOWN_BOTH;
                return Some((h, 0));
            } else if c.send_credit_update {
                OP_CREDIT_UPDATE
            } else {
                continue;
            };
            return Some((c.header(*key, cid, op), 0));
        }
        if room == 0 {
            return None;
        }
        self.next_data(room)
    }

    /// Reads host data for the next connection in turn that has some and may send it.
    fn next_data(&mut self, room: usize) -> Option<(Header, usize)> {
        let keys: Vec<ConnKey> = match self.rr_cursor {
            Some(cur) => self
                .conns
                .range((Bound::Excluded(cur), Bound::Unbounded))
                .chain(self.conns.range(..=cur))
                .filter(|(_, c)| c.wants_host_data())
                .map(|(k, _)| *k)
                .collect(),
            None => self
                .conns
                .iter()
                .filter(|(_, c)| c.wants_host_data())
                .map(|(k, _)| *k)
                .collect(),
        };
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let want = room.min(c.peer_credit() as usize);
            match read_some(&mut c.stream, &mut self.rx_data[..want]) {
                Ok(Some(0)) => {
                    c.host_eof = true;
                    let mut h = c.header(key, self.guest_cid, OP_SHUTDOWN);
                    h.flags = SHUTDOWN_BOTH;
                    return Some((h, 0));
                }
                Ok(Some(n)) => {
                    c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                    let mut h = c.header(key, self.guest_cid, OP_RW);
                    h.len = n as u32;
                    self.rr_cursor = Some(key);
                    return Some((h, n));
                }
                Ok(None) => {}
                Err(_) => {
                    let mut c = self.conns.remove(&key)?;
                    self.stats.rst_sent += 1;
                    return Some((c.header(key, self.guest_cid, OP_RST), 0));
                }
            }
        }
        None
    }
}

/// The guest accepted a host-initiated connection: tell the host client which port it got.
fn guest_accepted(conn: &mut Conn, key: ConnKey) -> bool {
    if conn.state != ConnState::AwaitingResponse || conn.send_request {
        return false;
    }
    let line = format!("OK {}\n", key.local_port);
    // A fresh socket's buffer takes a dozen bytes; a client that is gone fails here.
    match conn.stream.write(line.as_bytes()) {
        Ok(n) if n == line.len() => {
            conn.state = ConnState::Established;
            true
        }
        _ => false,
    }
}

/// `<uds_path>_<port>`: where host services for guest connections to `port` listen.
fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

enum LineRead {
    Pending,
    Line,
    Closed,
}

/// Reads the `CONNECT` line a byte at a time, so nothing after the newline is consumed: it is
/// the first data for the guest.
fn read_line(h: &mut Handshake) -> LineRead {
    let mut b = [0u8; 1];
    loop {
        match h.stream.read(&mut b) {
            Ok(0) => return LineRead::Closed,
            Ok(_) if b[0] == b'\n' => return LineRead::Line,
            Ok(_) if h.line.len() >= MAX_CONNECT_LINE => return LineRead::Closed,
            Ok(_) => h.line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineRead::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return LineRead::Closed,
        }
    }
}

/// The port of `CONNECT <port>` (a trailing `\r` is tolerated).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line
        .strip_suffix('\r')
        .unwrap_or(line)
        .strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// One non-blocking read: `Some(0)` at end of file, `None` when nothing is waiting.
fn read_some(stream: &mut UnixStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads one transmit packet: the header, and its payload into `data` (resized to `len`).
fn read_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    data: &mut Vec<u8>,
) -> Result<Header, Refusal> {
    if !is_whole(&chain) {
        return Err(Refusal::Drop);
    }
    let mut r = Reader::new(mem, chain).map_err(|_| Refusal::Drop)?;
    let mut raw = [0u8; HDR_LEN];
    r.read_exact(&mut raw).map_err(|_| Refusal::Drop)?;
    let h = Header::decode(&raw);
    let len = h.len as usize;
    if len > MAX_PKT_DATA || len > r.available_bytes() {
        return Err(Refusal::Reset(h));
    }
    data.resize(len, 0);
    r.read_exact(data).map_err(|_| Refusal::Reset(h))?;
    Ok(h)
}

/// Whether the chain ends where the driver said (see the virtio-net device for why).
fn is_whole(chain: &DescriptorChain<&GuestMemoryMmap>) -> bool {
    !matches!(chain.clone().last(), Some(d) if d.has_next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"CONNECT +5"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(b"CONNECT 5 6"), None);
    }

    #[test]
    fn port_paths() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 1234),
            PathBuf::from("/run/v.sock_1234")
        );
    }
}
