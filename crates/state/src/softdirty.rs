//! Dirty pages as the host kernel tracks them: the soft-dirty bit of `/proc/self/pagemap`.
//!
//! [`clear`] writes `4` to `/proc/self/clear_refs`, which clears the soft-dirty bit of every
//! page **of the whole process**, not only guest RAM: fine, since a VMM process runs one VM and
//! nothing else in it reads the bits. From then on, each page written (by a vCPU, a device's
//! DMA, the VMM) has bit 55 of its pagemap entry set, and [`dirty_pages`] reads those bits for
//! every page of guest RAM, 8 bytes a page, in large reads.
//!
//! This needs a kernel built with `CONFIG_MEM_SOFT_DIRTY`; [`clear`] checks that it works (it
//! writes a probe page of its own after clearing and expects its bit set) and otherwise fails
//! with [`StateError::SoftDirtyUnsupported`]. The set may be coarser than the guest's writes:
//! the kernel tracks a transparent huge page as one, so a byte written to it marks all its
//! pages. Pages never touched are not present and never dirty.
//!
//! This is one of two sources of dirty pages: the emulator keeps its own bitmap. Both give a
//! [`PageSet`], which is all a diff snapshot takes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use vireo_machine::GuestRam;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Result, StateError};
use crate::memory::{PageSet, PAGE_SIZE};

const SOFT_DIRTY: u64 = 1 << 55;
const PAGEMAP: &str = "/proc/self/pagemap";
const CLEAR_REFS: &str = "/proc/self/clear_refs";
/// Pagemap entries read at a time (512 KiB of entries for 256 MiB of RAM).
const ENTRIES_PER_READ: usize = 65_536;

/// Clears the soft-dirty bits of the whole process and checks that the kernel tracks them.
pub fn clear() -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(CLEAR_REFS)
        .map_err(|e| StateError::io(CLEAR_REFS, e))?;
    f.write_all(b"4").map_err(|e| match e.raw_os_error() {
        // A kernel without CONFIG_MEM_SOFT_DIRTY refuses "4".
        Some(libc::EINVAL) => StateError::SoftDirtyUnsupported,
        _ => StateError::io(CLEAR_REFS, e),
    })?;
    // The probe: written after the clear, so its bit must be set.
    let probe = GuestRam::new(&[(0, u64::from(PAGE_SIZE))])?;
    probe.write(0, &[1])?;
    if !dirty_pages(&probe)?.contains(0) {
        return Err(StateError::SoftDirtyUnsupported);
    }
    Ok(())
}

/// The pages of `ram` written since the last [`clear`] (numbered across the regions, as in
/// the memory file).
pub fn dirty_pages(ram: &GuestRam) -> Result<PageSet> {
    let ps = u64::from(PAGE_SIZE);
    if crate::memory::host_page_size() != ps {
        return Err(StateError::MemoryMap {
            reason: format!(
                "soft-dirty tracking is per host page, and this host's pages are not {PAGE_SIZE} bytes"
            ),
        });
    }
    let pagemap = File::open(PAGEMAP).map_err(|e| StateError::io(PAGEMAP, e))?;
    let mut regions: Vec<(u64, u64, usize)> = ram
        .memory()
        .iter()
        // The host address is only a number here: it says which pagemap entries to read.
        .map(|r| (r.start_addr().0, r.len(), r.as_ptr() as usize))
        .collect();
    regions.sort_unstable();
    let total: u64 = regions.iter().map(|r| r.1 / ps).sum();
    let mut set = PageSet::new(total);
    let mut buf = vec![0u8; ENTRIES_PER_READ * 8];
    let mut first_page = 0u64;
    for (_, size, host) in regions {
        let pages = size / ps;
        let mut done = 0u64;
        while done < pages {
            let n = (pages - done).min(ENTRIES_PER_READ as u64) as usize;
            let entry = (host as u64 / ps + done) * 8;
            pagemap
                .read_exact_at(&mut buf[..n * 8], entry)
                .map_err(|e| StateError::io(PAGEMAP, e))?;
            for (i, e) in buf[..n * 8].chunks_exact(8).enumerate() {
                let e = u64::from_ne_bytes(e.try_into().unwrap_or_default());
                if e & SOFT_DIRTY != 0 {
                    set.insert(first_page + done + i as u64);
                }
            }
            done += n as u64;
        }
        first_page += pages;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_pages_after_clear() {
        // clear_refs is process-wide: this is the crate's only test that uses it.
        let ram = GuestRam::new(&[(0x8000_0000, 8 << 20), (0x1_0000_0000, 4 << 20)]).unwrap();
        ram.write(0x8000_0000, &[1]).unwrap();
        match clear() {
            Ok(()) => {}
            Err(StateError::SoftDirtyUnsupported) => {
                eprintln!("this kernel has no soft-dirty tracking; checked that it says so");
                let e = StateError::SoftDirtyUnsupported.to_string();
                assert!(e.contains("CONFIG_MEM_SOFT_DIRTY"));
                return;
            }
            Err(e) => panic!("{e}"),
        }
        let written = [5u64, 6, 2047, 2048 + 1023];
        for &p in &written {
            let addr = if p < 2048 {
                0x8000_0000 + p * 4096
            } else {
                0x1_0000_0000 + (p - 2048) * 4096
            };
            ram.write(addr, &[0xcc]).unwrap();
        }
        let set = dirty_pages(&ram).unwrap();
        assert_eq!(set.total_pages(), 3072);
        for p in written {
            assert!(set.contains(p), "page {p} was written");
        }
        // Page 0 was written before the clear; huge pages may make the set coarser than the
        // writes, but never by more than 2 MiB around one.
        for p in set.iter() {
            assert!(
                written.iter().any(|&w| p.abs_diff(w) < 512),
                "page {p} is dirty but was not written"
            );
        }
    }
}
