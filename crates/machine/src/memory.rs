//! Guest-physical RAM.
//!
//! All guest memory access goes through vm-memory: bulk copies through `Bytes`, and the
//! emulator's per-instruction loads and stores through [`RamView`], a bounds-checked view of one
//! contiguous region that uses vm-memory's atomic accessors for aligned accesses (a plain move
//! on the host) and its byte copies otherwise.
//!
//! # Dirty pages
//! Every region carries vm-memory's `AtomicBitmap` (a bit per 4 KiB page), so everything
//! that writes through vm-memory — devices, loaders, restores — marks the pages it wrote.
//! [`RamView`]'s per-instruction stores do not (an atomic OR per guest store would cost the
//! emulator dearly); the emulator marks a page when it caches the page for writing and on
//! every uncached write instead ([`RamView::mark_dirty`]), and [`GuestRam::take_dirty`]'s
//! caller must make it drop its cached write translations at the same moment.

use std::fs::File;
use std::sync::atomic::Ordering;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileSlice,
};

/// Guest memory as every vireo crate sees it: vm-memory's mmap backend with a dirty bitmap.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;

/// Size of a page in the dirty bitmap.
pub const DIRTY_PAGE: u64 = 4096;

/// Pages written since the last [`GuestRam::take_dirty`], as guest-physical page numbers
/// (address / 4096), in order.
pub type DirtyPages = Vec<u64>;

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
    /// A file could not be mapped as guest RAM (restoring a snapshot's memory file).
    #[error(
        "cannot map {size} bytes of guest RAM at {base:#x} from file offset {offset:#x}: {message}"
    )]
    MapFile {
        base: u64,
        size: u64,
        offset: u64,
        message: String,
    },
    /// An access fell outside guest RAM.
    #[error("guest-physical range {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfRange { addr: u64, len: usize },
}

/// Guest RAM: one or more regions of host memory, anonymous or a private mapping of a file.
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

    /// Maps guest RAM from `file`, one region per `(guest_base, size, file_offset)`, privately
    /// (`MAP_PRIVATE | MAP_NORESERVE`): the guest reads the file's pages and its writes go to
    /// copy-on-write pages of this process, so the file is never written and several VMs
    /// restored from one file share the pages none of them wrote. Holes in the file read as
    /// zero.
    ///
    /// Each `file_offset` must be a multiple of the host page size, and the file must hold
    /// every region whole: a mapping past its end would fault on access (SIGBUS), so that is
    /// refused here.
    pub fn from_file_private(
        file: &File,
        regions: &[(u64, u64, u64)],
    ) -> Result<Self, MemoryError> {
        let file_len = file
            .metadata()
            .map_err(|e| map_error(regions.first().copied(), e.to_string()))?
            .len();
        let mut mapped = Vec::with_capacity(regions.len());
        for &(base, size, offset) in regions {
            let err = |message: String| map_error(Some((base, size, offset)), message);
            if offset.checked_add(size).is_none_or(|end| end > file_len) {
                return Err(err(format!("the file is only {file_len} bytes")));
            }
            let len = usize::try_from(size).map_err(|_| err("too large for this host".into()))?;
            let fd = file.try_clone().map_err(|e| err(e.to_string()))?;
            let region = MmapRegion::<AtomicBitmap>::build(
                Some(FileOffset::new(fd, offset)),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            )
            .map_err(|e| err(e.to_string()))?;
            let region = GuestRegionMmap::new(region, GuestAddress(base))
                .ok_or_else(|| err("the region ends past the guest address space".into()))?;
            mapped.push(region);
        }
        let mem = GuestMemoryMmap::from_regions(mapped)
            .map_err(|e| map_error(regions.first().copied(), e.to_string()))?;
        Ok(GuestRam { mem })
    }

    /// Wraps guest memory built elsewhere.
    pub fn from_mmap(mem: GuestMemoryMmap) -> Self {
        GuestRam { mem }
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
        let marked = region
            .get_slice(vm_memory::MemoryRegionAddress(0), region.len() as usize)
            .ok()?;
        let ptr = marked.ptr_guard_mut().as_ptr();
        // SAFETY: `ptr` and `marked.len()` are the whole of a mapped region of `self.mem`,
        // which the view's lifetime borrows, so the memory stays mapped for as long as the
        // slice exists; the slice differs from `marked` only in not marking the bitmap (the
        // emulator marks pages itself, see the module doc).
        let slice = unsafe { VolatileSlice::new(ptr, marked.len()) };
        Some(RamView {
            base: region.start_addr().0,
            len: region.len(),
            slice,
            bitmap: MmapRegion::bitmap(region),
        })
    }

    /// The pages written since the last call (or since the RAM was made), cleared. Pages
    /// the emulator has cached for writing are not marked again until it caches them again:
    /// call this only while nothing runs, and make the emulator drop its write
    /// translations at the same time.
    pub fn take_dirty(&self) -> DirtyPages {
        take_dirty(&self.mem)
    }

    /// Forgets what was written so far (a restored machine: the pages its restore wrote
    /// are the snapshot's, not the guest's).
    pub fn clear_dirty(&self) {
        for region in self.mem.iter() {
            MmapRegion::bitmap(region).reset();
        }
    }
}

/// [`GuestRam::take_dirty`] of the RAM `mem` belongs to (a clone of its regions).
pub fn take_dirty(mem: &GuestMemoryMmap) -> DirtyPages {
    let mut pages = Vec::new();
    for region in mem.iter() {
        let first = region.start_addr().0 / DIRTY_PAGE;
        let n = region.len().div_ceil(DIRTY_PAGE);
        let bitmap = MmapRegion::bitmap(region);
        // vm-memory keeps a bit per host page: 4 KiB here, larger on some hosts, where
        // a bit stands for several of our pages.
        let per_bit = (region.len() / (bitmap.len().max(1) as u64) / DIRTY_PAGE).max(1);
        for (w, word) in bitmap.get_and_reset().into_iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let start = (w as u64 * 64 + b) * per_bit;
                pages.extend((start..(start + per_bit).min(n)).map(|p| first + p));
            }
        }
    }
    pages
}

fn map_error(region: Option<(u64, u64, u64)>, message: String) -> MemoryError {
    let (base, size, offset) = region.unwrap_or_default();
    MemoryError::MapFile {
        base,
        size,
        offset,
        message,
    }
}

/// A bounds-checked view of one contiguous RAM region.
#[derive(Clone, Copy)]
pub struct RamView<'a> {
    base: u64,
    len: u64,
    slice: VolatileSlice<'a, ()>,
    bitmap: &'a AtomicBitmap,
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

    /// Marks the bytes at region offset `off` as written (see the module doc: the view's
    /// stores do not).
    #[inline]
    pub fn mark_dirty(&self, off: u64, len: u64) {
        if off < self.len {
            self.bitmap
                .set_addr_range(off as usize, len.min(self.len - off) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_vm_memory_are_logged_and_view_stores_only_when_marked() {
        let ram = GuestRam::new(&[(0x8000_0000, 0x10000), (0x9000_0000, 0x4000)]).unwrap();
        assert!(ram.take_dirty().is_empty(), "a new RAM has nothing written");
        // A device's write (vm-memory), across a page boundary and in the second region.
        ram.write(0x8000_0ffc, &[1; 8]).unwrap();
        ram.write(0x9000_3000, &[2]).unwrap();
        // The emulator's stores are not logged until it marks them.
        let v = ram.view_at(0x8000_0000).unwrap();
        assert!(v.store_u64(0x5000, 7));
        assert_eq!(
            ram.take_dirty(),
            [0x8000_0000 / 4096, 0x8000_1000 / 4096, 0x9000_3000 / 4096]
        );
        assert!(ram.take_dirty().is_empty(), "taking the log clears it");
        v.mark_dirty(0x5000, 8);
        v.mark_dirty(0xfff8, 64); // clipped at the region's end
        v.mark_dirty(0x10000, 8); // past it: nothing
        assert_eq!(ram.take_dirty(), [0x8000_5000 / 4096, 0x8000_f000 / 4096]);
        ram.write(0x8000_2000, &[3]).unwrap();
        ram.clear_dirty();
        assert!(ram.take_dirty().is_empty());
    }

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

    #[test]
    fn private_file_mapping_is_copy_on_write() {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("vireo-machine-cow-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        let mut data = vec![0u8; 0x3000];
        data[0x1000] = 0xaa;
        data[0x2fff] = 0xbb;
        f.write_all(&data).unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        // Two regions from one file: file page 1 at guest 0x1000, file pages 1..3 at 0x10_0000.
        let ram = GuestRam::from_file_private(
            &f,
            &[(0x1000, 0x1000, 0x1000), (0x10_0000, 0x2000, 0x1000)],
        )
        .unwrap();
        assert_eq!(ram.size(), 0x3000);
        let mut b = [0u8; 1];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [0xaa]);
        ram.read(0x10_1fff, &mut b).unwrap();
        assert_eq!(b, [0xbb]);
        ram.write(0x1000, &[0x55]).unwrap();
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [0x55]);
        // The other mapping of the same file page and the file itself are untouched.
        ram.read(0x10_0000, &mut b).unwrap();
        assert_eq!(b, [0xaa]);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // A region past the end of the file is refused, not left to fault.
        let err = GuestRam::from_file_private(&f, &[(0, 0x2000, 0x2000)])
            .err()
            .unwrap();
        assert!(err.to_string().contains("only 12288 bytes"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
