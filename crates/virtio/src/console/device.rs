//! What the guest sees of virtio-console: one port, its receive and transmit queues, and a
//! configuration space of zeroes.

use std::io::{Read, Write};
use std::sync::Arc;

use vireo_machine::GuestMemoryMmap;
use virtio_queue::{Queue, Reader};

use super::backend::{lock, ConsoleInput, ReceiveQueue, SharedReceive};
use super::{CONFIG_LEN, MAX_TRANSMIT_PER_CHAIN, QUEUE_SIZE, RECEIVEQ, TRANSMITQ};
use crate::{types, ActivateError, Activation, Interrupt, VirtioDevice, F_VERSION_1};

/// Bytes copied from the guest per write to the sink.
const CHUNK: usize = 4096;

/// A virtio console with one port, the guest's `hvc0`.
pub struct Console {
    output: Box<dyn Write + Send>,
    receive: SharedReceive,
    transmit: Option<TransmitQueue>,
}

struct TransmitQueue {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Interrupt,
}

impl Console {
    /// A console whose guest output goes to `output` (for instance a
    /// `vireo_devices::serial::ConsoleOutput`, or stdout).
    pub fn new(output: Box<dyn Write + Send>) -> Self {
        Console {
            output,
            receive: Arc::default(),
            transmit: None,
        }
    }

    /// The handle through which host input reaches the guest.
    pub fn input_handle(&self) -> ConsoleInput {
        ConsoleInput {
            shared: self.receive.clone(),
        }
    }

    fn process_transmit(&mut self) {
        let Some(TransmitQueue {
            mem,
            queue,
            interrupt,
        }) = self.transmit.as_mut()
        else {
            return;
        };
        let mem: &GuestMemoryMmap = mem;
        let mut chunk = [0u8; CHUNK];
        let output = &mut self.output;
        crate::serve_ring(TRANSMITQ as u16, queue, mem, interrupt, |chain| {
            // Only device-readable buffers carry output; a chain outside guest memory is
            // returned without being read.
            if let Ok(mut reader) = Reader::new(mem, chain) {
                let mut left = reader.available_bytes().min(MAX_TRANSMIT_PER_CHAIN);
                while left > 0 {
                    let n = left.min(CHUNK);
                    if reader.read_exact(&mut chunk[..n]).is_err() {
                        break;
                    }
                    // A sink that fails loses the output; the guest must not stall on it.
                    let _ = output.write_all(&chunk[..n]);
                    left -= n;
                }
            }
            // The device writes nothing into transmit buffers.
            0
        });
        let _ = self.output.flush();
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        types::CONSOLE
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    /// cols, rows and max_nr_ports, all zero: no size (F_SIZE) and no ports (F_MULTIPORT).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&[0u8; CONFIG_LEN], offset, data);
    }

    fn activate(&mut self, mut act: Activation) -> Result<(), ActivateError> {
        let rx = act.take_queue(RECEIVEQ, "receiveq")?;
        let tx = act.take_queue(TRANSMITQ, "transmitq")?;
        self.transmit = Some(TransmitQueue {
            mem: act.mem.clone(),
            queue: tx,
            interrupt: act.interrupt.clone(),
        });
        let mut receive = lock(&self.receive);
        receive.attach(ReceiveQueue {
            mem: act.mem,
            queue: rx,
            interrupt: act.interrupt,
        });
        // Input typed before the driver was ready goes into whatever buffers it has posted.
        receive.deliver();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match usize::from(index) {
            RECEIVEQ => lock(&self.receive).deliver(),
            TRANSMITQ => self.process_transmit(),
            _ => {}
        }
    }

    fn pause(&self, _timeout: std::time::Duration) -> bool {
        lock(&self.receive).paused = true;
        true
    }

    fn resume(&self) {
        let mut rx = lock(&self.receive);
        rx.paused = false;
        rx.deliver();
    }

    fn reset(&mut self) {
        self.transmit = None;
        // Pending input stays: it is the host's, and the next driver gets it.
        lock(&self.receive).detach();
    }
}
