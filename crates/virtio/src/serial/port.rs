//! The state the device and the host handles share, and the handle itself.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vireo_machine::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::{
    event, port_queues, CONTROL_PENDING_MAX, CONTROL_RX, MAX_TRANSMIT_PER_CHAIN, PORT_INPUT_MAX,
    PORT_OUTPUT_MAX,
};
use crate::Interrupt;

/// One port's host-side state.
pub(crate) struct Port {
    pub(crate) name: String,
    pub(crate) rx: Option<Queue>,
    pub(crate) tx: Option<Queue>,
    /// The driver announced the port ready (PORT_READY 1).
    pub(crate) ready: bool,
    /// A guest program has the port open.
    pub(crate) guest_open: bool,
    /// What the driver was last told about the host end (PORT_OPEN).
    pub(crate) host_open_sent: bool,
    /// Host bytes not yet in a guest buffer.
    input: VecDeque<u8>,
    /// The host closed its input: once `input` is empty, the guest reads end of file.
    input_closed: bool,
    /// Guest bytes not yet taken by the host.
    output: VecDeque<u8>,
    /// The host reader is gone: guest output is taken and dropped.
    output_closed: bool,
}

impl Port {
    pub(crate) fn new(name: String) -> Self {
        Port {
            name,
            rx: None,
            tx: None,
            ready: false,
            guest_open: false,
            host_open_sent: false,
            input: VecDeque::new(),
            input_closed: false,
            output: VecDeque::new(),
            output_closed: false,
        }
    }

    /// Whether the host end counts as connected for the driver.
    pub(crate) fn host_open(&self) -> bool {
        !(self.input_closed && self.input.is_empty())
    }
}

/// Guest memory, the interrupt and the control queues, from activation to reset.
pub(crate) struct Active {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) interrupt: Interrupt,
    pub(crate) control_rx: Option<Queue>,
    pub(crate) control_tx: Option<Queue>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) active: Option<Active>,
    pub(crate) ports: Vec<Port>,
    /// Encoded control messages for the driver, oldest first.
    pub(crate) control: VecDeque<Vec<u8>>,
    /// The guest has stopped for good: reads return [`ReadOutcome::Ended`] once drained.
    ended: bool,
    /// The VM is paused: host reads and writes queue up, nothing touches guest memory.
    pub(crate) paused: bool,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Woken whenever input was delivered or output arrived.
    pub(crate) changed: Condvar,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn control_message(id: u32, event: u16, value: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + payload.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

impl State {
    pub(crate) fn queue_control(&mut self, msg: Vec<u8>) {
        if self.control.len() < CONTROL_PENDING_MAX {
            self.control.push_back(msg);
        }
    }

    /// Moves every byte that can move: input into guest buffers, guest output into host
    /// buffers, pending control messages to the driver, and end-of-input notices.
    pub(crate) fn pump(&mut self) {
        if self.paused {
            return;
        }
        for p in 0..self.ports.len() {
            self.deliver_input(p);
            self.take_output(p);
            let port = &mut self.ports[p];
            if port.ready && port.host_open_sent != port.host_open() {
                // The end of input, or its reopening (a new stream on the same port).
                port.host_open_sent = port.host_open();
                let value = u16::from(port.host_open_sent);
                let msg = control_message(p as u32, event::PORT_OPEN, value, &[]);
                self.queue_control(msg);
            }
        }
        self.flush_control();
    }

    fn deliver_input(&mut self, p: usize) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let port = &mut self.ports[p];
        if !port.guest_open || port.input.is_empty() {
            return;
        }
        let Some(queue) = port.rx.as_mut() else {
            return;
        };
        if crate::fill_ring(queue, &active.mem, &mut port.input) {
            active
                .interrupt
                .notify_used(port_queues(p).0 as u16, queue, &active.mem);
        }
    }

    fn take_output(&mut self, p: usize) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let port = &mut self.ports[p];
        let Some(queue) = port.tx.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut used_any = false;
        for _ in 0..queue.size() {
            if !port.output_closed && port.output.len() >= PORT_OUTPUT_MAX {
                break;
            }
            let Ok(Some(chain)) = queue.iter(mem).map(|mut chains| chains.next()) else {
                break;
            };
            let head = chain.head_index();
            if !port.output_closed {
                if let Ok(r) = Reader::new(mem, chain) {
                    // Straight into the buffer; a chain that cannot be read whole adds nothing.
                    let before = port.output.len();
                    let mut r = r.take(MAX_TRANSMIT_PER_CHAIN as u64);
                    if std::io::copy(&mut r, &mut port.output).is_err() {
                        port.output.truncate(before);
                    }
                }
            }
            used_any |= queue.add_used(mem, head, 0).is_ok();
        }
        if used_any {
            active
                .interrupt
                .notify_used(port_queues(p).1 as u16, queue, mem);
        }
    }

    pub(crate) fn flush_control(&mut self) {
        if self.paused {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.control_rx.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut used_any = false;
        while let Some(msg) = self.control.front() {
            let Ok(Some(chain)) = queue.iter(mem).map(|mut chains| chains.next()) else {
                break;
            };
            let head = chain.head_index();
            // A buffer too small for the message gets nothing: the driver would misread a
            // truncated one.
            let written = Writer::new(mem, chain)
                .ok()
                .filter(|w| w.available_bytes() >= msg.len())
                .and_then(|mut w| w.write_all(msg).ok())
                .map_or(0, |()| msg.len());
            self.control.pop_front();
            used_any |= queue.add_used(mem, head, written as u32).is_ok();
        }
        if used_any {
            active.interrupt.notify_used(CONTROL_RX as u16, queue, mem);
        }
    }

    /// Whether guest output is waiting anywhere for port `p`: in the host buffer or as
    /// chains the guest made available.
    fn output_waiting(&self, p: usize) -> bool {
        let port = &self.ports[p];
        if !port.output.is_empty() {
            return true;
        }
        match (&self.active, &port.tx) {
            (Some(a), Some(q)) => q
                .avail_idx(&a.mem, Ordering::Acquire)
                .map(|idx| idx != Wrapping(q.next_avail()))
                .unwrap_or(false),
            _ => false,
        }
    }
}

/// What [`SerialPort::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were copied.
    Data(usize),
    /// Nothing arrived before the deadline.
    Timeout,
    /// Nothing is left and nothing more will come ([`SerialPort::end`]).
    Ended,
}

/// The host end of one port. Cloneable; usable from any thread.
#[derive(Clone)]
pub struct SerialPort {
    pub(crate) shared: Arc<Shared>,
    pub(crate) index: usize,
}

impl SerialPort {
    /// The port's name, as the guest sees it.
    pub fn name(&self) -> String {
        self.shared.lock().ports[self.index].name.clone()
    }

    /// Queues host bytes for the guest; returns how many were taken (fewer than offered when
    /// [`PORT_INPUT_MAX`] bytes already wait). Bytes after [`close_input`](Self::close_input)
    /// are refused.
    pub fn write(&self, bytes: &[u8]) -> usize {
        self.push(&mut self.shared.lock(), bytes)
    }

    fn push(&self, st: &mut State, bytes: &[u8]) -> usize {
        let port = &mut st.ports[self.index];
        if port.input_closed {
            return 0;
        }
        let n = PORT_INPUT_MAX
            .saturating_sub(port.input.len())
            .min(bytes.len());
        port.input.extend(&bytes[..n]);
        st.pump();
        n
    }

    /// Waits for the device or another handle to change something, until `deadline` if any;
    /// `None` once the deadline has passed.
    fn wait<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, State>> {
        let changed = &self.shared.changed;
        Some(match deadline {
            None => changed.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let left = d.checked_duration_since(Instant::now())?;
                changed
                    .wait_timeout(st, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        })
    }

    /// Writes all of `bytes`, waiting while the guest is not reading; gives up at `deadline`
    /// (if any), when the input is closed, or when the guest has stopped ([`end`](Self::end)),
    /// and returns how many bytes were taken.
    pub fn write_all(&self, mut bytes: &[u8], deadline: Option<Instant>) -> usize {
        let total = bytes.len();
        let mut st = self.shared.lock();
        loop {
            let n = self.push(&mut st, bytes);
            bytes = &bytes[n..];
            if bytes.is_empty() || st.ended || st.ports[self.index].input_closed {
                break;
            }
            match self.wait(st, deadline) {
                Some(g) => st = g,
                None => break,
            }
        }
        total - bytes.len()
    }

    /// Ends the host's input: once every queued byte reached the guest, its reads return end
    /// of file.
    pub fn close_input(&self) {
        let mut st = self.shared.lock();
        st.ports[self.index].input_closed = true;
        st.pump();
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Opens the host's input again after [`close_input`](Self::close_input): the driver is
    /// told the host end is connected, and a guest program opening the port reads a new
    /// stream (as a pipe reopened). Used for one command after another on the same port.
    pub fn open_input(&self) {
        let mut st = self.shared.lock();
        st.ports[self.index].input_closed = false;
        st.pump();
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Host input not yet delivered to the guest.
    pub fn input_pending(&self) -> usize {
        self.shared.lock().ports[self.index].input.len()
    }

    /// Copies guest output into `buf`, waiting for some to arrive: at most `timeout` if given,
    /// else until the device is [`end`](Self::end)ed with nothing left to read.
    pub fn read(&self, buf: &mut [u8], timeout: Option<Duration>) -> ReadOutcome {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            st.pump();
            let port = &mut st.ports[self.index];
            if !port.output.is_empty() && !buf.is_empty() {
                let n = buf.len().min(port.output.len());
                for (dst, src) in buf.iter_mut().zip(port.output.drain(..n)) {
                    *dst = src;
                }
                // Room again: take chains the guest is waiting on.
                st.pump();
                return ReadOutcome::Data(n);
            }
            if st.ended && !st.output_waiting(self.index) {
                return ReadOutcome::Ended;
            }
            match self.wait(st, deadline) {
                Some(g) => st = g,
                None => return ReadOutcome::Timeout,
            }
        }
    }

    /// The guest has stopped and will run no more (its memory stays readable): every port's
    /// reads end once what it wrote is read, and writes stop waiting for it.
    pub fn end(&self) {
        self.shared.lock().ended = true;
        self.shared.changed.notify_all();
    }

    /// Whether guest output is still waiting to be read (buffered, or in the ring).
    pub fn output_waiting(&self) -> bool {
        self.shared.lock().output_waiting(self.index)
    }

    /// The host will read no more: guest output is taken and dropped from now on, so a guest
    /// writing to the port never blocks on it.
    pub fn close_output(&self) {
        let mut st = self.shared.lock();
        let port = &mut st.ports[self.index];
        port.output_closed = true;
        port.output.clear();
        st.pump();
    }

    /// Whether a guest program has the port open.
    pub fn guest_connected(&self) -> bool {
        self.shared.lock().ports[self.index].guest_open
    }
}
