//! The virtio-net device: features, configuration space and queue processing.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vireo_machine::GuestMemoryMmap;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::backend::{Backend, FramedStream, NetBackendConfig, OpenBackend, Recv};
use super::worker::Worker;
use super::{NetError, MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::{ActivateError, Activation, DeviceCounters, Interrupt, VirtioDevice, F_VERSION_1};

const FEATURES: u64 = F_VERSION_1 | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS);

/// What the device has carried and refused since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Transmit requests refused: unusable chain, header short, frame empty or too long, or the
    /// backend gone.
    pub tx_dropped: u64,
    /// Frames written into guest buffers.
    pub rx_frames: u64,
    /// Received frames larger than the guest's buffer.
    pub rx_dropped: u64,
    /// Receive buffers returned unused: outside guest memory or too small for the header.
    pub rx_bad_buffers: u64,
}

/// [`Net`]'s counters for the host, by index into these names.
pub const COUNTERS: &[&str] = &["tx_frames", "tx_bytes", "rx_frames", "rx_bytes"];
const C_TX_FRAMES: usize = 0;
const C_TX_BYTES: usize = 1;
const C_RX_FRAMES: usize = 2;
const C_RX_BYTES: usize = 3;

/// A virtio-net device with its backend.
pub struct Net {
    mac: [u8; 6],
    state: Arc<Mutex<NetState>>,
    worker: Option<Worker>,
    /// Where the backend goes back when the device is dropped.
    home: OpenBackend,
}

impl Net {
    /// Opens the backend (starting passt for [`NetBackendConfig::User`]) and builds the device
    /// with MAC address `mac`.
    pub fn new(backend: NetBackendConfig, mac: [u8; 6]) -> Result<Net, NetError> {
        Net::on(&OpenBackend::open(backend)?, mac)
    }

    /// A device on a backend opened before (it gives the backend back when dropped).
    pub fn on(backend: &OpenBackend, mac: [u8; 6]) -> Result<Net, NetError> {
        let b = backend.take().ok_or(NetError::BackendInUse)?;
        Ok(Net::with_backend(b, mac, backend.clone()))
    }

    /// A device whose backend is a stream speaking passt's framing (each frame behind its
    /// 32-bit big-endian length), with no passt behind it: for tests and the fuzzer, which hold
    /// the other end of a socket pair.
    pub fn with_stream(
        stream: std::os::unix::net::UnixStream,
        mac: [u8; 6],
    ) -> std::io::Result<Net> {
        let framed = FramedStream::new(stream)?;
        let home = OpenBackend::of(Backend::Gone, None);
        Ok(Net::with_backend(Backend::Framed(framed), mac, home))
    }

    fn with_backend(backend: Backend, mac: [u8; 6], home: OpenBackend) -> Net {
        Net {
            mac,
            state: Arc::new(Mutex::new(NetState {
                backend,
                backend_error: None,
                active: None,
                rx_buf: vec![0; MAX_FRAME_LEN].into_boxed_slice(),
                rx_held: None,
                tx_buf: Vec::new(),
                tx_blocked: false,
                stats: NetStats::default(),
                counters: DeviceCounters::new(COUNTERS),
                rounds: 0,
                paused: false,
            })),
            worker: None,
            home,
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn stats(&self) -> NetStats {
        lock(&self.state).stats
    }

    /// Why the backend stopped working, if it did (the link is then reported down).
    pub fn backend_error(&self) -> Option<String> {
        lock(&self.state).backend_error.clone()
    }

    #[cfg(test)]
    pub(crate) fn worker_rounds(&self) -> u64 {
        lock(&self.state).rounds
    }

    #[cfg(test)]
    pub(crate) fn passt_pid(&self) -> Option<u32> {
        self.home.passt_pid()
    }

    fn config(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.mac);
        let status = if lock(&self.state).backend_error.is_none() {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        // max_virtqueue_pairs: one pair (only meaningful with VIRTIO_NET_F_MQ).
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The worker is joined first: then nothing else uses the backend.
        self.worker = None;
        let backend = std::mem::replace(&mut lock(&self.state).backend, Backend::Gone);
        if !matches!(backend, Backend::Gone) {
            *self.home.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(backend);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        crate::types::NET
    }

    fn counters(&self) -> Option<Arc<DeviceCounters>> {
        Some(lock(&self.state).counters.clone())
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, mut act: Activation) -> Result<(), ActivateError> {
        self.reset();
        let rx = act.take_queue(RX_QUEUE, "receiveq")?;
        let tx = act.take_queue(TX_QUEUE, "transmitq")?;
        lock(&self.state).active = Some(Active {
            mem: act.mem,
            rx,
            tx,
            interrupt: act.interrupt,
        });
        match super::worker::start(self.state.clone()) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err(e) => {
                lock(&self.state).active = None;
                Err(ActivateError::Backend(format!(
                    "virtio-net: cannot start the receive worker: {e}"
                )))
            }
        }
    }

    fn queue_notify(&mut self, index: u16) {
        match usize::from(index) {
            TX_QUEUE => {
                let blocked = {
                    let mut st = lock(&self.state);
                    st.process_tx();
                    st.tx_blocked
                };
                if blocked {
                    self.kick();
                }
            }
            RX_QUEUE => self.kick(),
            _ => {}
        }
    }

    /// Transmit is served in `queue_notify`; what can still be pending is the receive
    /// worker's: done once it has served a whole round (frames the backend held moved into the
    /// buffers the guest posted, a blocked transmit resumed) that began after this was called.
    fn quiesce(&self, timeout: Duration) -> bool {
        let Some(w) = &self.worker else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        // Rounds are counted under the lock, at their start: one counted after this reading
        // began after it.
        let start = lock(&self.state).rounds;
        w.kick();
        while lock(&self.state).rounds == start {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        true
    }

    /// Taking the lock waits out a worker round in progress; with `paused` set the next ones
    /// touch nothing. A frame the backend already handed over stays in `rx_buf`.
    fn pause(&self, _timeout: Duration) -> bool {
        lock(&self.state).paused = true;
        true
    }

    fn resume(&self) {
        lock(&self.state).paused = false;
        self.kick();
    }

    fn reset(&mut self) {
        // Join the worker before dropping the queues it uses.
        self.worker = None;
        let mut st = lock(&self.state);
        st.active = None;
        st.rx_held = None;
        st.tx_blocked = false;
    }
}

impl Net {
    fn kick(&self) {
        if let Some(w) = &self.worker {
            w.kick();
        }
    }
}

/// Locks the device state; a panic elsewhere does not make the state unusable (every update
/// leaves it consistent).
pub(crate) fn lock(state: &Mutex<NetState>) -> MutexGuard<'_, NetState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queues and memory the driver handed over at activation.
pub(crate) struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
}

/// Everything the vCPU thread and the receive worker share.
pub(crate) struct NetState {
    backend: Backend,
    /// Set when the backend failed; the device then drops what the guest sends.
    backend_error: Option<String>,
    active: Option<Active>,
    /// The frame being received; `rx_held` says how much of it is a frame waiting for a buffer.
    rx_buf: Box<[u8]>,
    rx_held: Option<usize>,
    tx_buf: Vec<u8>,
    /// A transmit stopped because the backend's socket is full.
    tx_blocked: bool,
    stats: NetStats,
    counters: Arc<DeviceCounters>,
    /// Worker rounds so far: `quiesce` waits for one to begin; tests check an idle device
    /// sleeps.
    pub(crate) rounds: u64,
    /// Set by [`VirtioDevice::pause`]: the worker neither receives nor resumes transmits.
    paused: bool,
}

/// Why a transmit request was refused.
#[derive(Debug)]
enum TxRefusal {
    /// The chain points outside guest memory, loops, or is otherwise unreadable.
    Chain,
    /// Fewer readable bytes than the 12-byte header.
    ShortHeader,
    /// No frame after the header, or more than [`MAX_FRAME_LEN`].
    FrameLength,
}

impl NetState {
    /// One round of the worker: resume a blocked transmit, then receive.
    pub(crate) fn service(&mut self) {
        self.rounds += 1;
        if self.paused {
            return;
        }
        if self.tx_blocked {
            self.process_tx();
        }
        self.process_rx();
    }

    /// The descriptor and poll events the worker waits for (fd -1: none).
    pub(crate) fn poll_interest(&self) -> (RawFd, i16) {
        if self.active.is_none() || self.backend_error.is_some() || self.paused {
            return (-1, 0);
        }
        let mut events = 0;
        if self.rx_held.is_none() {
            events |= libc::POLLIN;
        }
        if self.tx_blocked {
            events |= libc::POLLOUT;
        }
        if events == 0 {
            (-1, 0)
        } else {
            (self.backend.raw_fd(), events)
        }
    }

    /// Sends every frame the driver queued, until the ring is empty or the backend is full.
    pub(crate) fn process_tx(&mut self) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        self.tx_blocked = false;
        let mut used = false;
        loop {
            if self.backend_error.is_none() {
                match self.backend.flush() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.tx_blocked = true;
                        break;
                    }
                    Err(e) => backend_failed(&mut self.backend_error, &act.interrupt, e),
                }
            }
            let Some(chain) = act.tx.pop_descriptor_chain(&act.mem) else {
                break;
            };
            let head = chain.head_index();
            match read_frame(&act.mem, chain, &mut self.tx_buf) {
                Ok(()) if self.backend_error.is_none() => match self.backend.send(&self.tx_buf) {
                    Ok(()) => {
                        self.stats.tx_frames += 1;
                        self.counters.add(C_TX_FRAMES, 1);
                        self.counters.add(C_TX_BYTES, self.tx_buf.len() as u64);
                    }
                    Err(e) => {
                        self.stats.tx_dropped += 1;
                        backend_failed(&mut self.backend_error, &act.interrupt, e);
                    }
                },
                Ok(()) | Err(_) => self.stats.tx_dropped += 1,
            }
            // Transmit buffers are only read: the used length is zero (§2.7.8.2 allows it).
            if act.tx.add_used(&act.mem, head, 0).is_err() {
                // The used ring is outside guest memory: nothing more can be returned.
                break;
            }
            used = true;
        }
        if used {
            act.interrupt
                .notify_used(TX_QUEUE as u16, &mut act.tx, &act.mem);
        }
    }

    /// Moves received frames into guest buffers until either runs out.
    pub(crate) fn process_rx(&mut self) {
        let Some(act) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        loop {
            let len = match self.rx_held {
                Some(n) => n,
                None => {
                    if self.backend_error.is_some() {
                        break;
                    }
                    match self.backend.recv(&mut self.rx_buf) {
                        Ok(Recv::Frame(n)) => {
                            self.rx_held = Some(n);
                            n
                        }
                        Ok(Recv::Empty) => break,
                        Err(e) => {
                            backend_failed(&mut self.backend_error, &act.interrupt, e);
                            break;
                        }
                    }
                }
            };
            let Some(chain) = act.rx.pop_descriptor_chain(&act.mem) else {
                // No buffer: hold the frame until the driver adds one and kicks.
                break;
            };
            let head = chain.head_index();
            let writer = if is_whole(&chain) {
                Writer::new(&act.mem, chain).ok()
            } else {
                None
            };
            let written = match writer {
                Some(mut w) if w.available_bytes() >= VNET_HDR_LEN + len => {
                    let frame = &self.rx_buf[..len];
                    match w.write_all(&rx_header()).and_then(|()| w.write_all(frame)) {
                        Ok(()) => Some(VNET_HDR_LEN + len),
                        Err(_) => None,
                    }
                }
                Some(w) if w.available_bytes() >= VNET_HDR_LEN => {
                    // A sane buffer, too small for this frame: drop the frame, keep the buffer.
                    act.rx.go_to_previous_position();
                    self.rx_held = None;
                    self.stats.rx_dropped += 1;
                    continue;
                }
                Some(_) | None => None,
            };
            match written {
                Some(n) => {
                    self.rx_held = None;
                    self.stats.rx_frames += 1;
                    self.counters.add(C_RX_FRAMES, 1);
                    self.counters.add(C_RX_BYTES, (n - VNET_HDR_LEN) as u64);
                    if act.rx.add_used(&act.mem, head, n as u32).is_err() {
                        break;
                    }
                }
                None => {
                    // Unusable buffer: give it back empty, keep the frame for the next one.
                    self.stats.rx_bad_buffers += 1;
                    if act.rx.add_used(&act.mem, head, 0).is_err() {
                        break;
                    }
                }
            }
            used = true;
        }
        if used {
            act.interrupt
                .notify_used(RX_QUEUE as u16, &mut act.rx, &act.mem);
        }
    }
}

/// The header in front of every received frame: no checksum or GSO information, one buffer.
fn rx_header() -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    // num_buffers, the last field, is 1 when VIRTIO_NET_F_MRG_RXBUF is not negotiated.
    h[10..12].copy_from_slice(&1u16.to_le_bytes());
    h
}

/// Copies one transmit request's frame (header skipped) into `out`.
fn read_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    out: &mut Vec<u8>,
) -> Result<(), TxRefusal> {
    if !is_whole(&chain) {
        return Err(TxRefusal::Chain);
    }
    let mut r = Reader::new(mem, chain).map_err(|_| TxRefusal::Chain)?;
    let total = r.available_bytes();
    if total < VNET_HDR_LEN {
        return Err(TxRefusal::ShortHeader);
    }
    let len = total - VNET_HDR_LEN;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(TxRefusal::FrameLength);
    }
    let mut hdr = [0u8; VNET_HDR_LEN];
    r.read_exact(&mut hdr).map_err(|_| TxRefusal::Chain)?;
    out.resize(len, 0);
    r.read_exact(out).map_err(|_| TxRefusal::Chain)
}

/// Whether the chain ends where the driver said it does. virtio-queue stops following a chain
/// after queue-size descriptors or at an out-of-range `next`; a chain cut that way (a loop, or
/// a broken link) is refused rather than used truncated.
fn is_whole(chain: &DescriptorChain<&GuestMemoryMmap>) -> bool {
    !matches!(chain.clone().last(), Some(d) if d.has_next())
}

fn backend_failed(error: &mut Option<String>, interrupt: &Interrupt, e: std::io::Error) {
    if error.is_none() {
        *error = Some(e.to_string());
        // The link status in the configuration space just went down.
        interrupt.signal_config();
    }
}
