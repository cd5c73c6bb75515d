//! Guest-physical RAM.
//!
//! All guest memory access goes through vm-memory: bulk copies through `Bytes`, and the
//! emulator's per-instruction loads and stores through [`RamView`], a bounds-checked view of one
//! contiguous region that uses vm-memory's atomic accessors for aligned accesses (a plain move
//! on the host) and its byte copies otherwise.

use std::sync::atomic::Ordering;

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, VolatileSlice,
};

/// Errors from guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host could not map the guest's RAM.
    #[error("cannot allocate {size} bytes of guest RAM at {base:#x}: {message}")]
    Allocate {
        base: u64,
        size: u64,
        message: String,
    },
    /// An access fell outside guest RAM.
    #[error("guest-physical range {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfRange { addr: u64, len: usize },
}

/// Guest RAM: one or more regions of host anonymous memory.
pub struct GuestRam {
    mem: GuestMemoryMmap,
}

impl GuestRam {
    /// Maps RAM at the given guest-physical ranges (base, size).
    pub fn new(ranges: &[(u64, u64)]) -> Result<Self, MemoryError> {
        let r: Vec<(GuestAddress, usize)> = ranges
            .iter()
            .map(|&(b, s)| (GuestAddress(b), s as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&r).map_err(|e| MemoryError::Allocate {
            base: ranges.first().map_or(0, |r| r.0),
            size: ranges.iter().map(|r| r.1).sum(),
            message: e.to_string(),
        })?;
        Ok(GuestRam { mem })
    }

    /// The vm-memory object, for crates (loaders, virtio queues) that take one.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Total RAM bytes.
    pub fn size(&self) -> u64 {
        self.mem.iter().map(|r| r.len()).sum()
    }

    /// Copies `data` into guest RAM at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        // Refuse before copying: vm-memory writes the part that fits before failing.
        if !self.mem.check_range(GuestAddress(addr), data.len()) {
            return Err(MemoryError::OutOfRange {
                addr,
                len: data.len(),
            });
        }
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: data.len(),
            })
    }

    /// Copies guest RAM at `addr` into `data`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), MemoryError> {
        self.mem
            .read_slice(data, GuestAddress(addr))
            .map_err(|_| MemoryError::OutOfRange {
                addr,
                len: data.len(),
            })
    }

    /// A fast view of the region holding `addr` (the emulator keeps one per run).
    pub fn view_at(&self, addr: u64) -> Option<RamView<'_>> {
        let region = self.mem.find_region(GuestAddress(addr))?;
        let slice = region
            .get_slice(vm_memory::MemoryRegionAddress(0), region.len() as usize)
            .ok()?;
        Some(RamView {
            base: region.start_addr().0,
            len: region.len(),
            slice,
        })
    }
}

/// A bounds-checked view of one contiguous RAM region.
#[derive(Clone, Copy)]
pub struct RamView<'a> {
    base: u64,
    len: u64,
    slice: VolatileSlice<'a, ()>,
}

macro_rules! access {
    ($load:ident, $store:ident, $t:ty) => {
        /// Loads from region offset `off`; `None` when out of bounds.
        #[inline]
        pub fn $load(&self, off: u64) -> Option<$t> {
            self.offset(
                self.base.wrapping_add(off),
                std::mem::size_of::<$t>() as u64,
            )?;
            let off = off as usize;
            if off % std::mem::size_of::<$t>() == 0 {
                self.slice.load::<$t>(off, Ordering::Relaxed).ok()
            } else {
                self.slice.read_obj::<$t>(off).ok()
            }
        }
        /// Stores at region offset `off`; false when out of bounds.
        #[inline]
        pub fn $store(&self, off: u64, v: $t) -> bool {
            // vm-memory's byte copy writes what fits before failing: refuse up front.
            if self
                .offset(
                    self.base.wrapping_add(off),
                    std::mem::size_of::<$t>() as u64,
                )
                .is_none()
            {
                return false;
            }
            let off = off as usize;
            if off % std::mem::size_of::<$t>() == 0 {
                self.slice.store::<$t>(v, off, Ordering::Relaxed).is_ok()
            } else {
                self.slice.write_obj::<$t>(v, off).is_ok()
            }
        }
    };
}

impl<'a> RamView<'a> {
    /// Guest-physical start of the region.
    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Region offset of the `width`-byte access at guest-physical `addr`, if wholly inside.
    #[inline]
    pub fn offset(&self, addr: u64, width: u64) -> Option<u64> {
        let off = addr.wrapping_sub(self.base);
        (off < self.len && width <= self.len - off).then_some(off)
    }

    access!(load_u8, store_u8, u8);
    access!(load_u16, store_u16, u16);
    access!(load_u32, store_u32, u32);
    access!(load_u64, store_u64, u64);

    /// Copies bytes out of the region; false when out of bounds.
    pub fn read_bytes(&self, off: u64, buf: &mut [u8]) -> bool {
        self.offset(self.base.wrapping_add(off), buf.len() as u64)
            .is_some()
            && self.slice.read_slice(buf, off as usize).is_ok()
    }

    /// Copies bytes into the region; false when out of bounds.
    pub fn write_bytes(&self, off: u64, buf: &[u8]) -> bool {
        self.offset(self.base.wrapping_add(off), buf.len() as u64)
            .is_some()
            && self.slice.write_slice(buf, off as usize).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_bounds_and_alignment() {
        let ram = GuestRam::new(&[(0x8000_0000, 0x10000)]).unwrap();
        let v = ram.view_at(0x8000_0000).unwrap();
        assert_eq!(v.offset(0x8000_0000, 8), Some(0));
        assert_eq!(v.offset(0x8000_fff8, 8), Some(0xfff8));
        assert_eq!(v.offset(0x8000_fffc, 8), None);
        assert_eq!(v.offset(0x7fff_ffff, 1), None);
        assert!(v.store_u64(8, 0x0102_0304_0506_0708));
        assert_eq!(v.load_u32(9), Some(0x0405_0607)); // misaligned
        assert!(v.store_u16(0xffff - 1, 0xabcd));
        assert!(!v.store_u16(0xffff, 0xabcd));
        assert_eq!(v.load_u64(0xfff9), None);
        let mut b = [0u8; 2];
        ram.read(0x8000_fffe, &mut b).unwrap();
        assert_eq!(b, [0xcd, 0xab]);
        assert!(ram.write(0x8001_0000, &[1]).is_err());
    }
}
