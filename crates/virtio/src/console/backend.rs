//! The host side of virtio-console input: a handle another thread pushes bytes through, a
//! bounded buffer for bytes the guest has no room for yet, and their delivery into receiveq.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vireo_machine::GuestMemoryMmap;
use virtio_queue::Queue;

use super::PENDING_INPUT_MAX;
use crate::Interrupt;

/// Input state shared by the device and every [`ConsoleInput`].
#[derive(Default)]
pub(crate) struct Receive {
    /// Bytes pushed but not yet in a guest buffer, oldest first.
    pending: VecDeque<u8>,
    /// receiveq, once the driver has activated the device.
    queue: Option<ReceiveQueue>,
    /// The VM is paused: pushed bytes wait here.
    pub(crate) paused: bool,
}

pub(crate) struct ReceiveQueue {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) queue: Queue,
    pub(crate) interrupt: Interrupt,
}

pub(crate) type SharedReceive = Arc<Mutex<Receive>>;

/// Locks the input state; a panic elsewhere while holding it leaves plain data, still usable.
pub(crate) fn lock(shared: &SharedReceive) -> MutexGuard<'_, Receive> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Receive {
    pub(crate) fn attach(&mut self, queue: ReceiveQueue) {
        self.queue = Some(queue);
    }

    pub(crate) fn detach(&mut self) {
        self.queue = None;
    }

    /// Moves pending bytes into the driver's receive buffers, as far as they go.
    pub(crate) fn deliver(&mut self) {
        if self.paused {
            return;
        }
        let Some(ReceiveQueue {
            mem,
            queue,
            interrupt,
        }) = self.queue.as_mut()
        else {
            return;
        };
        if crate::fill_ring(queue, mem, &mut self.pending) {
            interrupt.notify_used(super::RECEIVEQ as u16, queue, mem);
        }
    }
}

/// Pushes host bytes (a terminal, a socket) to the guest's console. Cloneable; usable from any
/// thread.
#[derive(Clone)]
pub struct ConsoleInput {
    pub(crate) shared: SharedReceive,
}

impl ConsoleInput {
    /// Queues `bytes` for the guest and delivers what its posted buffers can take. Returns how
    /// many bytes were accepted: fewer than offered when the guest is not reading and
    /// [`PENDING_INPUT_MAX`] bytes are already waiting (the rest is the caller's to retry or
    /// drop).
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut rx = lock(&self.shared);
        let room = PENDING_INPUT_MAX.saturating_sub(rx.pending.len());
        let n = room.min(bytes.len());
        rx.pending.extend(&bytes[..n]);
        rx.deliver();
        n
    }

    /// Bytes waiting for the guest to post receive buffers.
    pub fn pending(&self) -> usize {
        lock(&self.shared).pending.len()
    }
}
