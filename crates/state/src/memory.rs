//! The memory file (`memory.bin`): guest RAM, page-aligned and sparse.
//!
//! Every RAM region is laid out at a page-aligned offset of the file, in ascending
//! guest-physical order; the [`MemoryMap`] section says where. Pages that are all zero are not
//! written: the file is sized with `set_len`, so they are holes, take no disk space, and read
//! back as zero. A 1 GiB guest that touched 100 MiB takes about 100 MiB.
//!
//! Pages are numbered across the regions: page `i` is the `i`-th page of RAM counting the
//! regions in ascending guest-physical order. [`PageSet`]s (dirty pages, a diff's pages) use
//! that numbering.
//!
//! A full memory file is restored by mapping it copy-on-write ([`map_memory`]); a diff holds
//! only the pages of its [`PageSet`] (an included page that is now zero is a hole, so it reads
//! back as zero) and is copied over its parent ([`apply_diff`], [`restore_chain`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vireo_machine::GuestMemoryMmap;
use vireo_machine::GuestRam;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Result, StateError};

/// The page size of the memory file and of [`PageSet`]s.
pub const PAGE_SIZE: u32 = 4096;
const PS: u64 = PAGE_SIZE as u64;
/// Bytes copied out of guest RAM (or a diff file) at a time.
const CHUNK: u64 = 2 << 20;

/// Where one region of guest RAM is in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub guest_base: u64,
    pub size: u64,
    /// Page-aligned.
    pub file_offset: u64,
}

/// The `MemoryMap` section: the layout of a memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryMap {
    /// Always [`PAGE_SIZE`] (4096) in format 1.
    pub page_size: u32,
    /// In ascending guest-physical order.
    pub regions: Vec<MemoryRegion>,
    /// The memory file's length.
    pub file_len: u64,
    /// For a diff, the pages it holds; `None` for a full memory file.
    pub diff: Option<PageSet>,
}

impl MemoryMap {
    /// Pages of RAM over all regions.
    pub fn total_pages(&self) -> u64 {
        self.regions.iter().map(|r| r.size / PS).sum()
    }

    /// Checks what a hostile or damaged map could get wrong: page size, alignment, order,
    /// overlap, regions inside the file, and a diff set over exactly this RAM.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(StateError::MemoryMap { reason });
        if self.page_size != PAGE_SIZE {
            return bad(format!(
                "page size {} (only {PAGE_SIZE} is defined)",
                self.page_size
            ));
        }
        if host_page_size() > PS {
            return bad(format!(
                "this host's pages ({} bytes) are larger than the file's ({PAGE_SIZE})",
                host_page_size()
            ));
        }
        if self.regions.is_empty() {
            return bad("no regions".into());
        }
        let mut prev_end = 0u64;
        for (i, r) in self.regions.iter().enumerate() {
            if r.size == 0 || r.size % PS != 0 || r.guest_base % PS != 0 || r.file_offset % PS != 0
            {
                return bad(format!("region {i} ({r:?}) is not page-aligned"));
            }
            let Some(end) = r.guest_base.checked_add(r.size) else {
                return bad(format!("region {i} ends past the address space"));
            };
            if i > 0 && r.guest_base < prev_end {
                return bad(format!("region {i} overlaps or precedes region {}", i - 1));
            }
            prev_end = end;
            if r.file_offset
                .checked_add(r.size)
                .is_none_or(|e| e > self.file_len)
            {
                return bad(format!(
                    "region {i} ends past the file's {} bytes",
                    self.file_len
                ));
            }
            for (j, o) in self.regions[..i].iter().enumerate() {
                if r.file_offset < o.file_offset + o.size && o.file_offset < r.file_offset + r.size
                {
                    return bad(format!("regions {j} and {i} overlap in the file"));
                }
            }
        }
        if let Some(set) = &self.diff {
            if set.total_pages() != self.total_pages() {
                return bad(format!(
                    "the diff's page set covers {} pages, the RAM has {}",
                    set.total_pages(),
                    self.total_pages()
                ));
            }
        }
        Ok(())
    }

    /// The regions as `(guest_base, size)`.
    pub fn layout(&self) -> Vec<(u64, u64)> {
        self.regions
            .iter()
            .map(|r| (r.guest_base, r.size))
            .collect()
    }
}

pub(crate) fn host_page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; it takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        PS
    }
}

pub(crate) fn layout_of(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    v.sort_unstable();
    v
}

/// The set of `mem`'s pages at guest-physical page numbers `pages` (address / 4096, as
/// `vireo_machine::memory::take_dirty` gives them), numbered across the regions as a memory
/// file numbers them; numbers outside `mem` are left out.
pub fn page_set_of(mem: &GuestMemoryMmap, pages: &[u64]) -> PageSet {
    let layout = layout_of(mem);
    let total = layout.iter().map(|&(_, size)| size / PS).sum();
    let mut set = PageSet::new(total);
    for &p in pages {
        let mut first = 0u64;
        for &(base, size) in &layout {
            let (lo, n) = (base / PS, size / PS);
            if (lo..lo + n).contains(&p) {
                set.insert(first + p - lo);
                break;
            }
            first += n;
        }
    }
    set
}

/// A set of page indexes (numbered across the regions, see the [module](self)), as a bitmap
/// of `u64` words: bit `i % 64` of word `i / 64`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPageSet")]
pub struct PageSet {
    total: u64,
    words: Vec<u64>,
}

#[derive(Deserialize)]
struct RawPageSet {
    total: u64,
    words: Vec<u64>,
}

impl TryFrom<RawPageSet> for PageSet {
    type Error = String;
    fn try_from(raw: RawPageSet) -> Result<Self, String> {
        if raw.words.len() as u64 != raw.total.div_ceil(64) {
            return Err(format!(
                "a page set of {} pages has {} words",
                raw.total,
                raw.words.len()
            ));
        }
        let tail = raw.total % 64;
        if tail != 0 && raw.words.last().is_some_and(|w| w >> tail != 0) {
            return Err(format!(
                "a page set of {} pages has pages past its end",
                raw.total
            ));
        }
        Ok(PageSet {
            total: raw.total,
            words: raw.words,
        })
    }
}

impl PageSet {
    /// An empty set over `total_pages` pages.
    pub fn new(total_pages: u64) -> Self {
        PageSet {
            total: total_pages,
            words: vec![0; total_pages.div_ceil(64) as usize],
        }
    }

    /// The number of pages the set is over (not how many it holds: that is [`len`](Self::len)).
    pub fn total_pages(&self) -> u64 {
        self.total
    }

    /// Adds `page`; true if it was not in the set.
    ///
    /// # Panics
    ///
    /// If `page` is not below [`total_pages`](Self::total_pages), like an index out of bounds.
    pub fn insert(&mut self, page: u64) -> bool {
        assert!(
            page < self.total,
            "page {page} outside a set of {} pages",
            self.total
        );
        let (w, b) = ((page / 64) as usize, page % 64);
        let new = self.words[w] & (1 << b) == 0;
        self.words[w] |= 1 << b;
        new
    }

    pub fn contains(&self, page: u64) -> bool {
        page < self.total && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// How many pages are in the set.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The pages in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(i as u64 * 64 + b)
            })
        })
    }

    /// Both sets' pages, over the larger of their two sizes.
    pub fn union(&self, other: &PageSet) -> PageSet {
        let (big, small) = if self.total >= other.total {
            (self, other)
        } else {
            (other, self)
        };
        let mut out = big.clone();
        for (o, s) in out.words.iter_mut().zip(&small.words) {
            *o |= s;
        }
        out
    }

    /// Runs of consecutive pages in `[start, end)`, as `(first, count)`.
    fn runs(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut page = start;
        while page < end.min(self.total) {
            let w = self.words[(page / 64) as usize] >> (page % 64);
            if w == 0 {
                page = (page / 64 + 1) * 64;
                continue;
            }
            page += w.trailing_zeros() as u64;
            if page >= end {
                break;
            }
            match runs.last_mut() {
                Some((first, count)) if *first + *count == page => *count += 1,
                _ => runs.push((page, 1)),
            }
            page += 1;
        }
        runs
    }
}

/// Whether a page is all zero, a machine word at a time (64 bytes between branches).
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(64).all(|block| {
        block.chunks_exact(8).fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes(w.try_into().unwrap_or([1; 8]))
        }) == 0
    }) && page.chunks_exact(64).remainder().iter().all(|&b| b == 0)
}

/// Writes the non-zero pages of `buf` (a copy of guest RAM) that `keep` selects (by index in
/// `buf`) at `offset` of `file`, one write per run of consecutive such pages.
fn write_pages(
    file: &File,
    tmp: &Path,
    buf: &[u8],
    offset: u64,
    keep: &dyn Fn(usize) -> bool,
) -> Result<()> {
    let pages = buf.len() / PS as usize;
    let mut run_start: Option<usize> = None;
    for p in 0..=pages {
        let write = p < pages && keep(p) && !is_zero(&buf[p * PS as usize..][..PS as usize]);
        match (write, run_start) {
            (true, None) => run_start = Some(p),
            (false, Some(s)) => {
                let bytes = &buf[s * PS as usize..p * PS as usize];
                file.write_all_at(bytes, offset + s as u64 * PS)
                    .map_err(|e| StateError::io(tmp, e))?;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Which pages a memory file holds.
enum Select<'a> {
    /// Every non-zero page: a full memory file.
    All,
    /// The pages of a set: a diff whose pages are known.
    Only(&'a PageSet),
    /// The pages that differ from `base` (the memory a parent snapshot restores to): a diff
    /// found by contents, in the same pass over guest RAM that writes it.
    ChangedFrom(&'a GuestMemoryMmap),
}

/// Writes guest RAM to the memory file at `path` (whole or not at all: a temporary file,
/// synced and renamed) and returns its map.
///
/// With `only` = `None` every non-zero page is written (a full memory file); with a set, only
/// the pages in it (a diff: an included page that is zero is recorded as included and left a
/// hole). Every region must be page-aligned.
pub fn write_memory(
    path: impl AsRef<Path>,
    mem: &GuestMemoryMmap,
    only: Option<&PageSet>,
) -> Result<MemoryMap> {
    let select = match only {
        Some(set) => Select::Only(set),
        None => Select::All,
    };
    write_selected(path.as_ref(), mem, select)
}

/// Writes a diff memory file at `path` holding the pages of `mem` that differ from `base`
/// (the memory the parent snapshot restores to, e.g. mapped by [`restore_chain`]), and
/// returns its map, whose `diff` set names them. Every writer is covered — harts, device
/// threads, DMA — because it compares contents, not who wrote; a page written back with what
/// it held is left out, which is still exact. Guest RAM is read once. The two must have the
/// same layout.
pub fn write_memory_changed(
    path: impl AsRef<Path>,
    mem: &GuestMemoryMmap,
    base: &GuestMemoryMmap,
) -> Result<MemoryMap> {
    if layout_of(mem) != layout_of(base) {
        return Err(StateError::MemoryMap {
            reason: format!(
                "the parent snapshot's RAM layout {:?} differs from the VM's {:?}",
                layout_of(base),
                layout_of(mem)
            ),
        });
    }
    write_selected(path.as_ref(), mem, Select::ChangedFrom(base))
}

fn write_selected(path: &Path, mem: &GuestMemoryMmap, select: Select<'_>) -> Result<MemoryMap> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (base, size) in layout_of(mem) {
        if base % PS != 0 || size % PS != 0 {
            return Err(StateError::MemoryMap {
                reason: format!("RAM region {base:#x}+{size:#x} is not page-aligned"),
            });
        }
        regions.push(MemoryRegion {
            guest_base: base,
            size,
            file_offset: offset,
        });
        offset += size;
    }
    let total = offset / PS;
    let mut map = MemoryMap {
        page_size: PAGE_SIZE,
        regions,
        file_len: offset,
        diff: match select {
            Select::All => None,
            Select::Only(set) => Some(set.clone()),
            Select::ChangedFrom(_) => Some(PageSet::new(total)),
        },
    };
    map.validate()?;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut parent = match select {
        Select::ChangedFrom(_) => vec![0u8; CHUNK as usize],
        _ => Vec::new(),
    };
    let mut changed = PageSet::new(total);
    crate::atomic::write_with(path, |file, tmp| {
        file.set_len(map.file_len)
            .map_err(|e| StateError::io(tmp, e))?;
        let mut first_page = 0u64;
        for r in &map.regions {
            let pages = r.size / PS;
            // (first page, count) runs relative to the region.
            let runs = match select {
                Select::All | Select::ChangedFrom(_) => vec![(0, pages)],
                Select::Only(set) => set
                    .runs(first_page, first_page + pages)
                    .into_iter()
                    .map(|(p, n)| (p - first_page, n))
                    .collect(),
            };
            for (p, n) in runs {
                let (mut off, end) = (p * PS, (p + n) * PS);
                while off < end {
                    let len = (end - off).min(CHUNK) as usize;
                    let at = GuestAddress(r.guest_base + off);
                    let read = |m: &GuestMemoryMmap, buf: &mut [u8]| {
                        m.read_slice(buf, at).map_err(|e| StateError::MemoryMap {
                            reason: format!("reading guest RAM at {:#x}: {e}", at.0),
                        })
                    };
                    read(mem, &mut buf[..len])?;
                    let chunk_page = first_page + off / PS;
                    match select {
                        Select::ChangedFrom(base) => {
                            read(base, &mut parent[..len])?;
                            let page = |i: usize| i * PS as usize..(i + 1) * PS as usize;
                            for i in 0..len / PS as usize {
                                if buf[page(i)] != parent[page(i)] {
                                    changed.insert(chunk_page + i as u64);
                                }
                            }
                            let keep = |i: usize| changed.contains(chunk_page + i as u64);
                            write_pages(file, tmp, &buf[..len], r.file_offset + off, &keep)?;
                        }
                        _ => write_pages(file, tmp, &buf[..len], r.file_offset + off, &|_| true)?,
                    }
                    off += len as u64;
                }
            }
            first_page += pages;
        }
        Ok(())
    })?;
    if let Select::ChangedFrom(_) = select {
        map.diff = Some(changed);
    }
    Ok(map)
}

/// The memory file of a snapshot: `dir_or_path` itself, or `memory.bin` in it when it is a
/// directory.
fn memory_path(dir_or_path: &Path) -> PathBuf {
    if dir_or_path.is_dir() {
        dir_or_path.join("memory.bin")
    } else {
        dir_or_path.to_path_buf()
    }
}

/// Opens a memory file and checks its length against its map.
fn open_checked(path: &Path, map: &MemoryMap) -> Result<File> {
    map.validate()?;
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StateError::MissingFile {
            path: path.to_path_buf(),
            what: "memory file".into(),
        },
        _ => StateError::io(path, e),
    })?;
    let len = file.metadata().map_err(|e| StateError::io(path, e))?.len();
    if len < map.file_len {
        return Err(StateError::Truncated {
            path: path.to_path_buf(),
            at: len,
            what: format!("the memory map needs {} bytes", map.file_len),
        });
    }
    if len > map.file_len {
        return Err(StateError::MemoryMap {
            reason: format!(
                "{} is {len} bytes, its map says {}: not the memory file of this state",
                path.display(),
                map.file_len
            ),
        });
    }
    Ok(file)
}

/// Maps a full memory file as guest RAM, copy-on-write (see
/// [`GuestRam::from_file_private`]): the restore reads only the pages the guest touches, the
/// file is never written, and clones of one snapshot share the pages they have not written.
pub fn map_memory(dir_or_path: impl AsRef<Path>, map: &MemoryMap) -> Result<GuestRam> {
    let path = memory_path(dir_or_path.as_ref());
    if map.diff.is_some() {
        return Err(StateError::MemoryMap {
            reason: format!(
                "{} is a diff: restore it on top of its parent (restore_chain)",
                path.display()
            ),
        });
    }
    let file = open_checked(&path, map)?;
    let regions: Vec<(u64, u64, u64)> = map
        .regions
        .iter()
        .map(|r| (r.guest_base, r.size, r.file_offset))
        .collect();
    Ok(GuestRam::from_file_private(&file, &regions)?)
}

/// Copies the pages of a diff memory file into `ram` (zero where the file has a hole). `ram`
/// must have the diff's layout.
pub fn apply_diff(ram: &GuestRam, path: impl AsRef<Path>, map: &MemoryMap) -> Result<()> {
    let path = memory_path(path.as_ref());
    let Some(set) = &map.diff else {
        return Err(StateError::MemoryMap {
            reason: format!("{} is a full memory file, not a diff", path.display()),
        });
    };
    let file = open_checked(&path, map)?;
    if layout_of(ram.memory()) != map.layout() {
        return Err(StateError::MemoryMap {
            reason: format!(
                "{}: the diff's RAM layout {:x?} is not the machine's {:x?}",
                path.display(),
                map.layout(),
                layout_of(ram.memory())
            ),
        });
    }
    let mut buf = vec![0u8; CHUNK as usize];
    let mut first_page = 0u64;
    for r in &map.regions {
        let pages = r.size / PS;
        for (p, n) in set.runs(first_page, first_page + pages) {
            let (mut off, end) = ((p - first_page) * PS, (p - first_page + n) * PS);
            while off < end {
                let len = (end - off).min(CHUNK) as usize;
                file.read_exact_at(&mut buf[..len], r.file_offset + off)
                    .map_err(|e| StateError::io(&path, e))?;
                ram.write(r.guest_base + off, &buf[..len])?;
                off += len as u64;
            }
        }
        first_page += pages;
    }
    Ok(())
}

/// Restores RAM from a chain of memory files: the first a full one (mapped copy-on-write),
/// each later one a diff on top of the one before, applied in order. The caller orders the
/// chain by the state headers' `parent` ids.
pub fn restore_chain<P: AsRef<Path>>(files: &[(P, MemoryMap)]) -> Result<GuestRam> {
    let Some(((base_path, base_map), diffs)) = files.split_first() else {
        return Err(StateError::MemoryMap {
            reason: "an empty chain of memory files".into(),
        });
    };
    let ram = map_memory(base_path, base_map)?;
    for (path, map) in diffs {
        apply_diff(&ram, path, map)?;
    }
    Ok(ram)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1 << 20;

    fn ram() -> GuestRam {
        // Two regions, as a board with a hole below 4 GiB has.
        GuestRam::new(&[(0x8000_0000, 4 * MIB), (0x1_0000_0000, MIB)]).unwrap()
    }

    fn snapshot_bytes(ram: &GuestRam) -> Vec<u8> {
        let mut out = Vec::new();
        for (base, size) in layout_of(ram.memory()) {
            let mut b = vec![0u8; size as usize];
            ram.read(base, &mut b).unwrap();
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn guest_page_numbers_become_file_page_indexes() {
        let ram = ram();
        let lo = 0x8000_0000 / PS;
        let hi = 0x1_0000_0000 / PS;
        // 1024 pages in the first region, 256 in the second; the last number is in neither.
        let set = page_set_of(ram.memory(), &[lo, lo + 1023, hi, hi + 255, hi + 256, 3]);
        assert_eq!(set.total_pages(), 1280);
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 1023, 1024, 1279]);
    }

    #[test]
    fn page_set() {
        let mut s = PageSet::new(130);
        assert!(s.is_empty());
        assert!(s.insert(0));
        assert!(!s.insert(0));
        s.insert(63);
        s.insert(64);
        s.insert(129);
        assert!(s.contains(64) && !s.contains(65) && !s.contains(1000));
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 63, 64, 129]);
        assert_eq!(s.runs(0, 130), [(0, 1), (63, 2), (129, 1)]);
        assert_eq!(s.runs(64, 129), [(64, 1)]);
        let mut t = PageSet::new(200);
        t.insert(1);
        t.insert(199);
        let u = s.union(&t);
        assert_eq!(u.total_pages(), 200);
        assert_eq!(u.iter().collect::<Vec<_>>(), [0, 1, 63, 64, 129, 199]);
        let back: PageSet = crate::decode(&crate::encode(&u)).unwrap();
        assert_eq!(back, u);
        // A damaged set is refused when decoded (postcard keeps no message of ours).
        let bad = crate::encode(&(130u64, vec![0u64; 2]));
        assert!(crate::decode::<PageSet>(&bad).is_err());
        let bad = crate::encode(&(130u64, vec![0u64, 0, 1 << 5]));
        assert!(crate::decode::<PageSet>(&bad).is_err());
    }

    #[test]
    fn zero_check() {
        let mut p = vec![0u8; 4096];
        assert!(is_zero(&p));
        for i in [0, 7, 8, 63, 64, 4095] {
            p[i] = 1;
            assert!(!is_zero(&p), "{i}");
            p[i] = 0;
        }
    }

    #[test]
    fn full_write_is_sparse_and_maps_back() {
        let dir = tempfile::tempdir().unwrap();
        let ram = ram();
        ram.write(0x8000_0000, b"first page").unwrap();
        ram.write(0x8000_0000 + 3 * MIB + 5, &[0xaa; 8192]).unwrap();
        ram.write(0x1_0000_0000 + MIB - 1, &[0x55]).unwrap(); // the last byte of RAM
        let map = write_memory(dir.path().join("memory.bin"), ram.memory(), None).unwrap();
        assert_eq!(map.page_size, 4096);
        assert_eq!(map.file_len, 5 * MIB);
        assert_eq!(
            map.regions,
            [
                MemoryRegion {
                    guest_base: 0x8000_0000,
                    size: 4 * MIB,
                    file_offset: 0
                },
                MemoryRegion {
                    guest_base: 0x1_0000_0000,
                    size: MIB,
                    file_offset: 4 * MIB
                },
            ]
        );
        assert_eq!(map.diff, None);
        let meta = std::fs::metadata(dir.path().join("memory.bin")).unwrap();
        assert_eq!(meta.len(), 5 * MIB);
        // 1 + 3 + 1 pages of data: far less than 5 MiB on disk.
        assert!(
            meta.blocks() * 512 <= 256 * 1024,
            "{} bytes allocated",
            meta.blocks() * 512
        );
        // Map it back (by directory), copy-on-write.
        let restored = map_memory(dir.path(), &map).unwrap();
        assert_eq!(snapshot_bytes(&restored), snapshot_bytes(&ram));
        restored.write(0x8000_0000, b"changed").unwrap();
        let again = map_memory(dir.path().join("memory.bin"), &map).unwrap();
        let mut b = [0u8; 10];
        again.read(0x8000_0000, &mut b).unwrap();
        assert_eq!(&b, b"first page");
    }

    #[test]
    fn diff_chain_restores_the_final_memory() {
        let dir = tempfile::tempdir().unwrap();
        let ram = ram();
        for p in 0..40u64 {
            ram.write(0x8000_0000 + p * 4096 * 7, &[p as u8 + 1; 100])
                .unwrap();
        }
        let full = write_memory(dir.path().join("full.bin"), ram.memory(), None).unwrap();
        let total = full.total_pages();
        let mut dirty = PageSet::new(total);
        let mut touch = |addr: u64, data: &[u8]| {
            ram.write(addr, data).unwrap();
            let page_of = |a: u64| -> u64 {
                if a >= 0x1_0000_0000 {
                    1024 + (a - 0x1_0000_0000) / 4096
                } else {
                    (a - 0x8000_0000) / 4096
                }
            };
            dirty.insert(page_of(addr));
        };
        touch(0x8000_0000 + 7 * 4096, &[0xee; 4096]); // rewrite a whole page
        touch(0x8000_0000 + 14 * 4096, &[0; 100]); // zero a page that had data
        touch(0x8000_0000 + 4 * MIB - 4096, &[0x11; 4096]); // the last page of region 0
        touch(0x1_0000_0000 + MIB - 4096, &[0x22; 16]); // the last page of region 1
        touch(0x8000_0000 + 100 * 4096 + 3, b"new"); // a page that was zero
        let d1 = write_memory(dir.path().join("d1.bin"), ram.memory(), Some(&dirty)).unwrap();
        assert_eq!(d1.diff.as_ref().unwrap().len(), 5);
        // A second diff on top of the first.
        let mut dirty2 = PageSet::new(total);
        ram.write(0x8000_0000 + 7 * 4096, &[0; 4096]).unwrap();
        dirty2.insert(7);
        ram.write(0x8000_0000 + 2 * MIB, b"later").unwrap();
        dirty2.insert(512);
        let d2 = write_memory(dir.path().join("d2.bin"), ram.memory(), Some(&dirty2)).unwrap();
        // A diff's file holds only its non-zero pages.
        let meta = std::fs::metadata(dir.path().join("d2.bin")).unwrap();
        assert!(meta.blocks() * 512 <= 64 * 1024);

        let chain = [
            (dir.path().join("full.bin"), full.clone()),
            (dir.path().join("d1.bin"), d1.clone()),
            (dir.path().join("d2.bin"), d2),
        ];
        let restored = restore_chain(&chain).unwrap();
        let want = write_memory(dir.path().join("final.bin"), ram.memory(), None).unwrap();
        let final_ram = map_memory(dir.path().join("final.bin"), &want).unwrap();
        assert_eq!(snapshot_bytes(&restored), snapshot_bytes(&ram));
        assert_eq!(snapshot_bytes(&final_ram), snapshot_bytes(&ram));

        // A diff alone is not a machine's memory; a full file is not a diff.
        let e = map_memory(dir.path().join("d1.bin"), &d1).err().unwrap();
        assert!(e.to_string().contains("is a diff"), "{e}");
        let e = apply_diff(&restored, dir.path().join("full.bin"), &full).unwrap_err();
        assert!(e.to_string().contains("not a diff"), "{e}");
        // A diff of another layout is refused.
        let other = GuestRam::new(&[(0x8000_0000, 5 * MIB)]).unwrap();
        let e = apply_diff(&other, dir.path().join("d1.bin"), &d1).unwrap_err();
        assert!(e.to_string().contains("layout"), "{e}");
        assert!(restore_chain::<PathBuf>(&[]).is_err());
    }

    #[test]
    fn memory_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ram = ram();
        let path = dir.path().join("memory.bin");
        let map = write_memory(&path, ram.memory(), None).unwrap();
        let e = map_memory(dir.path().join("gone.bin"), &map).err().unwrap();
        assert!(matches!(e, StateError::MissingFile { .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("gone.bin: the memory file is missing"),
            "{e}"
        );
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(MIB)
            .unwrap();
        let e = map_memory(&path, &map).err().unwrap();
        assert!(
            matches!(e, StateError::Truncated { at, .. } if at == MIB),
            "{e}"
        );
        assert!(
            e.to_string().contains("the memory map needs 5242880 bytes"),
            "{e}"
        );
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(6 * MIB)
            .unwrap();
        assert!(map_memory(&path, &map)
            .err()
            .unwrap()
            .to_string()
            .contains("its map says"));
        // Hostile maps.
        let mut m = map.clone();
        m.regions[1].file_offset = 4 * MIB + 1;
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not page-aligned"));
        let mut m = map.clone();
        m.regions[1].file_offset = 0;
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("overlap in the file"));
        let mut m = map.clone();
        m.regions[1].size = u64::MAX - 4095;
        assert!(m.validate().is_err());
        let mut m = map.clone();
        m.page_size = 65536;
        assert!(m.validate().is_err());
        let mut m = map.clone();
        m.diff = Some(PageSet::new(3));
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("covers 3 pages"));
        let mut m = map;
        m.regions.swap(0, 1);
        assert!(m.validate().is_err());
    }

    /// A 1 GiB guest that touched little is written in well under a second (opt-level 3 even
    /// in test builds, see the workspace's Cargo.toml); the bound here is loose for a busy host.
    #[test]
    fn large_mostly_zero_guest_is_fast() {
        let dir = tempfile::tempdir().unwrap();
        let ram = GuestRam::new(&[(0x8000_0000, 1 << 30)]).unwrap();
        for i in 0..64u64 {
            ram.write(
                0x8000_0000 + i * (16 * MIB) + 4096,
                &[i as u8 + 1; 4096 * 4],
            )
            .unwrap();
        }
        let t = std::time::Instant::now();
        let map = write_memory(dir.path().join("memory.bin"), ram.memory(), None).unwrap();
        let took = t.elapsed();
        eprintln!("wrote a 1 GiB guest in {took:?}");
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        let meta = std::fs::metadata(dir.path().join("memory.bin")).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(
            meta.blocks() * 512 <= 4 * MIB,
            "{} bytes on disk",
            meta.blocks() * 512
        );
        let back = map_memory(dir.path(), &map).unwrap();
        let mut b = [0u8; 4];
        back.read(0x8000_0000 + 63 * 16 * MIB + 4096, &mut b)
            .unwrap();
        assert_eq!(b, [64; 4]);
    }
}

#[cfg(test)]
mod changed_tests {
    use super::*;

    #[test]
    fn a_changed_diff_holds_exactly_the_pages_that_differ() {
        let dir = std::env::temp_dir().join(format!("vireo-state-changed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x8000_0000), 64 << 12)]).unwrap();
        let b = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x8000_0000), 64 << 12)]).unwrap();
        b.write_slice(&[9], GuestAddress(0x8000_0000 + 5 * 4096))
            .unwrap();
        a.write_slice(&[1], GuestAddress(0x8000_0000 + 3 * 4096 + 17))
            .unwrap();
        a.write_slice(&[2], GuestAddress(0x8000_0000 + 63 * 4096 + 4095))
            .unwrap();
        // Written with what it held: not a change.
        a.write_slice(&[0], GuestAddress(0x8000_0000 + 9 * 4096))
            .unwrap();
        let path = dir.join("memory.bin");
        let map = write_memory_changed(&path, &a, &b).unwrap();
        // Page 5 is zero now and was not: it is in the diff, as a hole.
        let set = map.diff.clone().unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![3, 5, 63]);
        // Applied on the parent, the diff gives the memory it was taken of.
        let ram = GuestRam::from_mmap(b.clone());
        apply_diff(&ram, &path, &map).unwrap();
        let (mut x, mut y) = (vec![0u8; 64 << 12], vec![0u8; 64 << 12]);
        a.read_slice(&mut x, GuestAddress(0x8000_0000)).unwrap();
        ram.memory()
            .read_slice(&mut y, GuestAddress(0x8000_0000))
            .unwrap();
        assert!(
            x == y,
            "parent + diff differs from the memory the diff was taken of"
        );
        let c = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x8000_0000), 32 << 12)]).unwrap();
        assert!(write_memory_changed(dir.join("other.bin"), &a, &c).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
