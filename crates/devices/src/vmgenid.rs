//! VM Generation ID: 16 bytes that change whenever the VM starts again from a saved state
//! (a restore, a clone), and an interrupt that tells the guest to look.
//!
//! This is Microsoft's "Virtual Machine Generation ID" as Linux's `vmgenid` driver reads it
//! from the device tree (binding `microsoft,vmgenid`, Linux 6.10 and later): `reg` is a
//! window whose first 16 bytes are the generation ID (a GUID, handed over as raw bytes), and
//! `interrupts` one line. The driver maps the window, copies the 16 bytes at probe and in its
//! interrupt handler, and when they differ from its copy it mixes them into the random pool
//! and reseeds at once (`add_vmfork_randomness`) before any user space runs on the old seed,
//! then sends a `NEW_VMGENID=1` uevent. Two clones of one snapshot would otherwise draw the
//! same random numbers until their next scheduled reseed.
//!
//! The guest only reads: writes are ignored, and reads past the 16 bytes are zero. The line
//! is pulsed (the handler acknowledges nothing, so a held level would fire for ever).
//!
//! A generation is per run from a saved state, not per boot: a reboot keeps it, a restore or
//! clone takes a new one ([`VmGenId::new_generation`]), and a machine moved without going
//! back in time (live migration) keeps its own ([`VmGenId::set`]).

use std::sync::Arc;

use vireo_machine::{BusDevice, IrqLine};

/// Size of the register window (one page: the driver maps it whole).
pub const VMGENID_WINDOW: u64 = 0x1000;
/// Bytes of the generation ID.
pub const VMGENID_LEN: usize = 16;

pub struct VmGenId {
    id: [u8; VMGENID_LEN],
    irq: Arc<dyn IrqLine>,
}

/// The host could not supply random bytes for a generation ID.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw a VM generation ID from the host's random source: {0}")]
pub struct NoRandom(String);

fn random_id() -> Result<[u8; VMGENID_LEN], NoRandom> {
    let mut id = [0u8; VMGENID_LEN];
    getrandom::fill(&mut id).map_err(|e| NoRandom(e.to_string()))?;
    Ok(id)
}

impl VmGenId {
    /// A device with a fresh random generation ID (a machine booting).
    pub fn new(irq: Arc<dyn IrqLine>) -> Result<Self, NoRandom> {
        Ok(VmGenId {
            id: random_id()?,
            irq,
        })
    }

    /// The generation ID the guest reads.
    pub fn id(&self) -> [u8; VMGENID_LEN] {
        self.id
    }

    /// Puts back a saved generation ID, without telling the guest: the same machine continues.
    pub fn set(&mut self, id: [u8; VMGENID_LEN]) {
        self.id = id;
    }

    /// A new generation: a fresh random ID, and the interrupt. Returns the new ID.
    pub fn new_generation(&mut self) -> Result<[u8; VMGENID_LEN], NoRandom> {
        let mut id = random_id()?;
        // Equal to the old one only with probability 2^-128; even then the guest must see a
        // change, or it would not reseed.
        if id == self.id {
            id[0] ^= 1;
        }
        self.id = id;
        self.irq.pulse();
        Ok(id)
    }
}

impl BusDevice for VmGenId {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.id.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl IrqLine for Count {
        fn set_level(&self, high: bool) {
            if high {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn read(d: &mut VmGenId, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0xaa; len];
        d.read(offset, &mut b);
        b
    }

    #[test]
    fn the_guest_reads_the_id_at_any_width_and_zeros_after_it() {
        let irq = Arc::new(Count::default());
        let mut d = VmGenId::new(irq.clone()).unwrap();
        let id = d.id();
        let mut whole = Vec::new();
        for at in (0..16).step_by(8) {
            whole.extend(read(&mut d, at, 8));
        }
        assert_eq!(whole, id);
        assert_eq!(read(&mut d, 3, 1), [id[3]]);
        assert_eq!(
            read(&mut d, 12, 8),
            [id[12], id[13], id[14], id[15], 0, 0, 0, 0]
        );
        assert_eq!(read(&mut d, 0xff8, 8), [0; 8]);
        assert_eq!(read(&mut d, u64::MAX, 4), [0; 4]);
        d.write(0, &[0; 8]);
        assert_eq!(d.id(), id, "the guest cannot write the ID");
        assert_eq!(irq.0.load(Ordering::SeqCst), 0, "a boot raises nothing");
    }

    #[test]
    fn a_new_generation_changes_the_id_and_interrupts_and_set_does_neither() {
        let irq = Arc::new(Count::default());
        let mut a = VmGenId::new(irq.clone()).unwrap();
        let b = VmGenId::new(Arc::new(Count::default())).unwrap();
        assert_ne!(a.id(), b.id(), "two boots draw different IDs");
        let old = a.id();
        let new = a.new_generation().unwrap();
        assert_ne!(new, old);
        assert_eq!(read(&mut a, 0, 16), new);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        a.set(old);
        assert_eq!(a.id(), old);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    }
}
