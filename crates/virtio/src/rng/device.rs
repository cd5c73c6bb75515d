//! What the guest sees of virtio-rng: one request queue whose device-writable buffers come back
//! full of host randomness.

use std::io::Write;

use vireo_machine::GuestMemoryMmap;
use virtio_queue::{Queue, Writer};

use super::{backend, MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
use crate::{types, ActivateError, Activation, Interrupt, VirtioDevice, F_VERSION_1};

/// Bytes drawn from the host per system call.
const CHUNK: usize = 4096;

/// An entropy source for the guest.
#[derive(Default)]
pub struct Rng {
    active: Option<Active>,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Interrupt,
}

impl Rng {
    pub fn new() -> Self {
        Rng { active: None }
    }

    fn process_queue(&mut self) {
        let Some(Active {
            mem,
            queue,
            interrupt,
        }) = self.active.as_mut()
        else {
            return;
        };
        let mem: &GuestMemoryMmap = mem;
        let mut chunk = [0u8; CHUNK];
        crate::serve_ring(0, queue, mem, interrupt, |chain| {
            // Only the device-writable buffers are filled; device-readable ones are skipped, and
            // a chain that points outside guest memory comes back empty.
            match Writer::new(mem, chain) {
                Ok(mut writer) => fill(&mut writer, &mut chunk),
                Err(_) => 0,
            }
        });
    }
}

/// Fills up to [`MAX_BYTES_PER_REQUEST`] of the writer; returns the bytes written.
fn fill<B: vm_memory::bitmap::BitmapSlice>(
    writer: &mut Writer<'_, B>,
    chunk: &mut [u8; CHUNK],
) -> u32 {
    let want = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
    let mut done = 0;
    while done < want {
        let n = (want - done).min(CHUNK);
        if backend::fill(&mut chunk[..n]).is_err() || writer.write_all(&chunk[..n]).is_err() {
            break;
        }
        done += n;
    }
    // Bounded by MAX_BYTES_PER_REQUEST, far below u32::MAX.
    done as u32
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        types::RNG
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    /// virtio-rng has no configuration space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, mut act: Activation) -> Result<(), ActivateError> {
        let queue = act.take_queue(0, "requestq")?;
        self.active = Some(Active {
            mem: act.mem,
            queue,
            interrupt: act.interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == 0 {
            self.process_queue();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
