//! Address-range dispatch to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers loads and stores in a window of an address space.
///
/// `offset` is relative to the start of the window the device was inserted at; `data` holds the
/// bytes of the access in little-endian order and its length is the access width (1, 2, 4 or 8).
/// A device must accept any offset and width inside its window: guests are hostile, and an
/// access the device does not implement reads as zero and is otherwise ignored.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (a console thread feeding input).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A device that does its own locking, so the bus takes none and vCPUs may be inside it at
/// the same time (the PCI memory window: each function behind it has its own lock).
pub trait SyncBusDevice: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

/// Errors when laying out a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new window overlaps one already on the bus.
    #[error("bus window {base:#x}+{len:#x} overlaps an existing device window")]
    Overlap { base: u64, len: u64 },
    /// A window of zero length or one that wraps around the address space.
    #[error("bus window {base:#x}+{len:#x} is empty or wraps")]
    BadWindow { base: u64, len: u64 },
}

enum Dev {
    Locked(SharedDevice),
    Sync(Arc<dyn SyncBusDevice>),
}

struct Entry {
    len: u64,
    dev: Dev,
}

/// A set of non-overlapping device windows (an MMIO or a port-I/O space).
#[derive(Default)]
pub struct Bus {
    windows: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `dev` at `[base, base+len)`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        self.place(base, len, Dev::Locked(dev))
    }

    /// Places a device that locks for itself at `[base, base+len)`.
    pub fn insert_sync(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<dyn SyncBusDevice>,
    ) -> Result<(), BusError> {
        self.place(base, len, Dev::Sync(dev))
    }

    fn place(&mut self, base: u64, len: u64, dev: Dev) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadWindow { base, len })?;
        if let Some((&b, e)) = self.windows.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.windows.insert(base, Entry { len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, width: usize) -> Option<(u64, &Dev)> {
        let (&base, e) = self.windows.range(..=addr).next_back()?;
        let off = addr - base;
        // The whole access must fall inside the window.
        (off.checked_add(width as u64)? <= e.len).then_some((off, &e.dev))
    }

    /// Whether some device window covers `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.find(addr, 1).is_some()
    }

    /// Dispatches a load; returns false (and leaves `data` untouched) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, Dev::Locked(dev))) => {
                lock(dev).read(off, data);
                true
            }
            Some((off, Dev::Sync(dev))) => {
                dev.read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a store; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, Dev::Locked(dev))) => {
                lock(dev).write(off, data);
                true
            }
            Some((off, Dev::Sync(dev))) => {
                dev.write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if a previous holder panicked: device state stays usable, and a panic in
/// one device must not take every later access down with it.
pub fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

/// Little-endian value of an access's bytes (widths up to 8).
pub fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// Fills an access's bytes with the little-endian value `v`.
pub fn set_le_value(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u64);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            set_le_value(data, self.0 >> (offset * 8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = le_value(data);
        }
    }

    #[test]
    fn dispatch_and_bounds() {
        let mut bus = Bus::new();
        let dev: SharedDevice = Arc::new(Mutex::new(Reg(0)));
        bus.insert(0x1000, 8, dev.clone()).unwrap();
        assert!(bus.write(0x1000, &0x1122_3344_5566_7788u64.to_le_bytes()));
        let mut b = [0u8; 2];
        assert!(bus.read(0x1002, &mut b));
        assert_eq!(u16::from_le_bytes(b), 0x5566);
        // Straddling the end of a window, or outside any, is unassigned.
        assert!(!bus.read(0x1006, &mut [0u8; 4]));
        assert!(!bus.read(0xfff, &mut [0u8; 1]));
        assert!(!bus.write(0x1008, &[0]));
        assert_eq!(
            bus.insert(0x1004, 8, dev.clone()),
            Err(BusError::Overlap {
                base: 0x1004,
                len: 8
            })
        );
        assert_eq!(
            bus.insert(0xffc, 8, dev.clone()),
            Err(BusError::Overlap {
                base: 0xffc,
                len: 8
            })
        );
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        bus.insert(0x1008, 8, dev).unwrap();
    }
}
