//! Direct kernel boot: puts a Linux kernel, its command line and initrd in guest RAM and says
//! how to enter it.
//!
//! - An ELF `vmlinux` with a Xen PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`) is entered through PVH:
//!   32-bit protected mode, paging off, `ebx` = an `hvm_start_info` naming the command line,
//!   the memory map and the initrd as module 0.
//! - A bzImage, or an ELF without the note, is entered through the Linux x86 64-bit boot
//!   protocol: long mode on the VMM's identity map, `rsi` = the zero page (`boot_params`) with
//!   the setup header, e820 map, command line and initrd.
//!
//! The files are checked here before rust-vmm's linux-loader copies them, so a malformed one is
//! refused with its name and the defect rather than a generic loader error.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vireo_machine::GuestMemoryMmap;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::layout::{
    low_ram_end, memory_map, MemEntry, ACPI_RSDP_ADDR, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START,
    PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MEMMAP_MAX, PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};

/// Errors while loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel file could not be opened or read.
    #[error("{path}: cannot read the kernel: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is neither format vireo boots.
    #[error("{path}: not an x86-64 kernel: neither an ELF vmlinux (no \\x7fELF magic) nor a bzImage (no \"HdrS\" setup header at 0x202)")]
    UnknownFormat { path: PathBuf },
    /// The ELF file is malformed or not an x86-64 executable.
    #[error("{path}: malformed ELF kernel: {what}")]
    BadElf { path: PathBuf, what: String },
    /// The bzImage is malformed or lacks the 64-bit entry point.
    #[error("{path}: malformed bzImage: {what}")]
    BadBzImage { path: PathBuf, what: String },
    /// The kernel does not fit in guest RAM.
    #[error("{path}: the kernel needs RAM up to {need:#x} but guest RAM below 4 GiB ends at {have:#x}; give the guest more memory")]
    TooBig { path: PathBuf, need: u64, have: u64 },
    /// rust-vmm's loader refused the file.
    #[error("{path}: the kernel loader failed: {source}")]
    Loader {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The initrd does not fit between the kernel and the top of usable RAM.
    #[error("initrd of {size} bytes does not fit in guest RAM between {low:#x} and {high:#x}; give the guest more memory")]
    InitrdTooBig { size: u64, low: u64, high: u64 },
    /// Writing boot structures into guest RAM failed.
    #[error("cannot write boot structures into guest RAM: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// How the first vCPU enters the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode at `rip`, `rsi` = zero page.
    Linux64 { rip: u64, zero_page: u64 },
    /// PVH: 32-bit protected mode at `eip`, `ebx` = hvm_start_info.
    Pvh { eip: u64, start_info: u64 },
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const SETUP_HEADER_OFFSET: usize = 0x1f1;
const BOOT_FLAG: u16 = 0xaa55;
const LOADFLAGS_LOADED_HIGH: u8 = 1;
const XLF_KERNEL_64: u16 = 1;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// x86's COMMAND_LINE_SIZE, for kernels whose header does not say.
const DEFAULT_CMDLINE_MAX: usize = 2048;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Linux's own ELF notes (owner "Linux", `include/uapi/linux/elf.h`): the build salt every
/// vmlinux since 4.18 carries.
pub const LINUX_ELFNOTE_BUILD_SALT: u32 = 0x100;
/// Xen's note naming the guest OS (`xen/include/public/elfnote.h`); Linux's says "linux".
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Xen's note giving the PVH 32-bit entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// At most this many bytes of each PT_NOTE segment are read when telling kernels apart
/// (a vmlinux has about 0x200).
const NOTES_MAX: u64 = 64 << 10;
const E820_MAX: usize = 128;
const PAGE: u64 = 4096;

/// The kernel formats vireo recognises from a file's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Recognises the format from the start of the file (at least 0x206 bytes for a bzImage).
pub fn detect(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(ELF_MAGIC) {
        Some(KernelFormat::Elf)
    } else if head.len() >= 0x206 && head[0x202..0x206] == HDRS_MAGIC.to_le_bytes() {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// Whether a kernel is Linux, as far as its headers tell: what a host that cannot deliver
/// exceptions to a guest must know, since Linux takes them from its first instructions on
/// while a unikernel or a test kernel may never take one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// A bzImage: the x86 boot protocol is Linux's own.
    LinuxBzImage,
    /// An ELF vmlinux with Linux's notes: one owned by "Linux", or Xen's guest-OS note saying
    /// "linux".
    LinuxElf,
    /// An ELF without them: a unikernel, a test kernel. A PVH entry note alone does not make a
    /// kernel Linux (FreeBSD and unikernels have one too).
    OtherElf,
}

impl KernelKind {
    pub fn is_linux(self) -> bool {
        self != KernelKind::OtherElf
    }
}

/// Tells a Linux kernel from other kernels by the file's headers and, for an ELF, the notes in
/// its PT_NOTE segments. A file the loader would refuse is refused here with the same error.
pub fn kernel_kind(path: &Path) -> Result<KernelKind, LoadError> {
    let mut k = KernelFile::open(path)?;
    match detect(&k.head) {
        Some(KernelFormat::BzImage) => Ok(KernelKind::LinuxBzImage),
        Some(KernelFormat::Elf) => {
            let phdrs = k.program_headers()?;
            check_elf(&k.head, &phdrs, k.len).map_err(|what| LoadError::BadElf {
                path: k.path.clone(),
                what,
            })?;
            for ph in phdrs.chunks_exact(56) {
                if u32_at(ph, 0) != PT_NOTE {
                    continue;
                }
                let (offset, filesz) = (u64_at(ph, 8), u64_at(ph, 32));
                // check_elf vouched only for PT_LOAD segments.
                if offset.checked_add(filesz).is_none_or(|e| e > k.len) {
                    continue;
                }
                let notes = k.read_at(offset, filesz.min(NOTES_MAX) as usize)?;
                if has_linux_note(&notes) {
                    return Ok(KernelKind::LinuxElf);
                }
            }
            Ok(KernelKind::OtherElf)
        }
        None => Err(LoadError::UnknownFormat { path: k.path }),
    }
}

/// Whether an ELF note area (`Elf64_Nhdr` records: name size, descriptor size, type, then the
/// name and the descriptor, each padded to 4 bytes) holds one of Linux's notes. A truncated
/// record ends the walk.
pub fn has_linux_note(mut area: &[u8]) -> bool {
    let pad4 = |n: usize| n.checked_next_multiple_of(4);
    while area.len() >= 12 {
        let (namesz, descsz) = (u32_at(area, 0) as usize, u32_at(area, 4) as usize);
        let kind = u32_at(area, 8);
        let Some(desc_at) = pad4(namesz).and_then(|n| n.checked_add(12)) else {
            return false;
        };
        let Some(next) = pad4(descsz).and_then(|d| d.checked_add(desc_at)) else {
            return false;
        };
        if desc_at
            .checked_add(descsz)
            .is_none_or(|end| end > area.len())
        {
            return false;
        }
        let name = area[12..12 + namesz].split(|&b| b == 0).next();
        let desc = &area[desc_at..desc_at + descsz];
        match name {
            Some(b"Linux") => return true,
            Some(b"Xen")
                if kind == XEN_ELFNOTE_GUEST_OS
                    && desc.split(|&b| b == 0).next() == Some(b"linux") =>
            {
                return true
            }
            _ => {}
        }
        area = &area[next.min(area.len())..];
    }
    false
}

/// What the ELF checks learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfInfo {
    pub entry: u64,
    /// Lowest and highest (exclusive) guest-physical address a PT_LOAD segment occupies.
    pub start: u64,
    pub end: u64,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default())
}

/// Checks an ELF kernel's headers: x86-64 little-endian executable, program headers inside the
/// file, every PT_LOAD segment inside the file and placed at or above 1 MiB, the entry inside
/// a segment. `phdrs` is the program header table's bytes (read from `e_phoff`).
pub fn check_elf(ehdr: &[u8], phdrs: &[u8], file_len: u64) -> Result<ElfInfo, String> {
    if ehdr.len() < 64 {
        return Err(format!(
            "file is {} bytes, shorter than an ELF header",
            ehdr.len()
        ));
    }
    if !ehdr.starts_with(ELF_MAGIC) {
        return Err("no ELF magic".into());
    }
    if ehdr[4] != 2 {
        return Err(format!("ELF class {} is not 64-bit", ehdr[4]));
    }
    if ehdr[5] != 1 {
        return Err("big-endian ELF".into());
    }
    let e_type = u16_at(ehdr, 16);
    if e_type != ET_EXEC {
        return Err(format!("ELF type {e_type} is not an executable (ET_EXEC)"));
    }
    let machine = u16_at(ehdr, 18);
    if machine != EM_X86_64 {
        return Err(format!("machine {machine} is not x86-64 ({EM_X86_64})"));
    }
    let entry = u64_at(ehdr, 24);
    let phoff = u64_at(ehdr, 32);
    let phentsize = u16_at(ehdr, 54);
    let phnum = u16_at(ehdr, 56);
    if phentsize != 56 {
        return Err(format!("program header size {phentsize} is not 56"));
    }
    let table_end = u64::from(phnum) * 56;
    if phnum == 0 || phoff.checked_add(table_end).is_none_or(|e| e > file_len) {
        return Err(format!(
            "program header table ({phnum} entries at {phoff:#x}) lies outside the {file_len}-byte file"
        ));
    }
    if (phdrs.len() as u64) < table_end {
        return Err("program header table truncated".into());
    }
    let mut start = u64::MAX;
    let mut end = 0u64;
    let mut entry_ok = false;
    for (i, ph) in phdrs.chunks_exact(56).take(usize::from(phnum)).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz {
            return Err(format!(
                "segment {i}: file size {filesz:#x} exceeds memory size {memsz:#x}"
            ));
        }
        if offset.checked_add(filesz).is_none_or(|e| e > file_len) {
            return Err(format!(
                "segment {i}: bytes {offset:#x}+{filesz:#x} lie outside the {file_len}-byte file"
            ));
        }
        let seg_end = paddr
            .checked_add(memsz)
            .ok_or_else(|| format!("segment {i}: address {paddr:#x}+{memsz:#x} wraps"))?;
        if paddr < HIMEM_START {
            return Err(format!(
                "segment {i}: physical address {paddr:#x} is below 1 MiB"
            ));
        }
        start = start.min(paddr);
        end = end.max(seg_end);
        entry_ok |= (paddr..seg_end).contains(&entry);
    }
    if end == 0 {
        return Err("no loadable (PT_LOAD) segment".into());
    }
    if !entry_ok {
        return Err(format!(
            "entry point {entry:#x} is outside every loadable segment"
        ));
    }
    Ok(ElfInfo { entry, start, end })
}

/// What the bzImage checks learned.
#[derive(Debug, Clone, Copy)]
pub struct BzInfo {
    pub header: setup_header,
    /// Bytes of the real-mode setup code that precede the protected-mode kernel.
    pub setup_size: u64,
    /// RAM the kernel occupies from its load address while it decompresses.
    pub footprint: u64,
}

/// Checks a bzImage's setup header: boot flag, "HdrS", boot protocol ≥ 2.12 with the 64-bit
/// entry point (XLF_KERNEL_64), loaded high, setup code inside the file.
pub fn check_bzimage(head: &[u8], file_len: u64) -> Result<BzInfo, String> {
    let hdr_len = std::mem::size_of::<setup_header>();
    if head.len() < SETUP_HEADER_OFFSET + hdr_len {
        return Err(format!(
            "file is {} bytes, shorter than the setup header",
            head.len()
        ));
    }
    let mut header = setup_header::default();
    header
        .as_mut_slice()
        .copy_from_slice(&head[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + hdr_len]);
    let h = header;
    if { h.header } != HDRS_MAGIC {
        return Err("no \"HdrS\" signature".into());
    }
    if { h.boot_flag } != BOOT_FLAG {
        return Err(format!("boot flag {:#x} is not 0xaa55", { h.boot_flag }));
    }
    let version = h.version;
    if version < 0x020c {
        return Err(format!(
            "boot protocol {}.{:02} is older than 2.12, which introduced the 64-bit entry point",
            version >> 8,
            version & 0xff
        ));
    }
    if h.xloadflags & XLF_KERNEL_64 == 0 {
        return Err("no 64-bit entry point (XLF_KERNEL_64 clear)".into());
    }
    if h.loadflags & LOADFLAGS_LOADED_HIGH == 0 {
        return Err("not a bzImage (LOADED_HIGH clear: a zImage loads below 1 MiB)".into());
    }
    let sects = if h.setup_sects == 0 { 4 } else { h.setup_sects };
    let setup_size = (u64::from(sects) + 1) * 512;
    if setup_size >= file_len {
        return Err(format!(
            "setup code ({setup_size} bytes) fills the whole {file_len}-byte file: no kernel"
        ));
    }
    let payload = file_len - setup_size;
    Ok(BzInfo {
        header,
        setup_size,
        footprint: payload.max(u64::from(h.init_size)),
    })
}

/// The command line bytes, NUL-terminated, if they fit `max` (which counts the NUL).
pub fn cmdline_bytes(cmdline: &str, max: usize) -> Result<Vec<u8>, LoadError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineNul);
    }
    let max = max.min(CMDLINE_MAX);
    if cmdline.len() + 1 > max {
        return Err(LoadError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut b = cmdline.as_bytes().to_vec();
    b.push(0);
    Ok(b)
}

/// Where an initrd of `size` bytes goes: the highest page-aligned address whose last byte is
/// at or below `max_addr`, and not below `low`.
pub fn place_initrd(size: u64, low: u64, max_addr: u64) -> Result<u64, LoadError> {
    let err = LoadError::InitrdTooBig {
        size,
        low,
        high: max_addr.saturating_add(1),
    };
    let top = max_addr.checked_add(1).ok_or(LoadError::InitrdTooBig {
        size,
        low,
        high: max_addr,
    })?;
    let addr = top.checked_sub(size).ok_or(err)? & !(PAGE - 1);
    if addr < low.next_multiple_of(PAGE) {
        return Err(LoadError::InitrdTooBig {
            size,
            low,
            high: top,
        });
    }
    Ok(addr)
}

fn e820(map: &[MemEntry]) -> ([boot_e820_entry; E820_MAX], u8) {
    let mut table = [boot_e820_entry::default(); E820_MAX];
    for (slot, e) in table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    (table, map.len().min(E820_MAX) as u8)
}

/// A kernel file opened for loading.
struct KernelFile {
    path: PathBuf,
    file: File,
    len: u64,
    head: Vec<u8>,
}

impl KernelFile {
    fn open(path: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut head = Vec::with_capacity(4096);
        (&mut file).take(4096).read_to_end(&mut head).map_err(io)?;
        Ok(KernelFile {
            path: path.to_path_buf(),
            file,
            len,
            head,
        })
    }

    /// The ELF program header table, or nothing when the header places it outside the file
    /// ([`check_elf`] then says what is wrong).
    fn program_headers(&mut self) -> Result<Vec<u8>, LoadError> {
        if self.head.len() < 64 {
            return Ok(Vec::new());
        }
        let phoff = u64_at(&self.head, 32);
        let table = u64::from(u16_at(&self.head, 56)) * 56;
        if phoff.checked_add(table).is_some_and(|e| e <= self.len) && u16_at(&self.head, 54) == 56 {
            self.read_at(phoff, table as usize)
        } else {
            Ok(Vec::new())
        }
    }

    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, LoadError> {
        let io = |source| LoadError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0u8; len];
        self.file.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }
}

/// Loads `kernel` (ELF or bzImage) with `cmdline` and `initrd` into `mem`, a guest of `memory`
/// bytes laid out per [`crate::layout`], and returns how to enter it.
pub fn load(
    mem: &GuestMemoryMmap,
    memory: u64,
    kernel: &Path,
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<BootEntry, LoadError> {
    let mut k = KernelFile::open(kernel)?;
    let ram_end = low_ram_end(memory);
    match detect(&k.head) {
        Some(KernelFormat::Elf) => load_elf(mem, memory, &mut k, cmdline, initrd, ram_end),
        Some(KernelFormat::BzImage) => load_bzimage(mem, memory, &mut k, cmdline, initrd, ram_end),
        None => Err(LoadError::UnknownFormat { path: k.path }),
    }
}

fn load_elf(
    mem: &GuestMemoryMmap,
    memory: u64,
    k: &mut KernelFile,
    cmdline: &str,
    initrd: Option<&[u8]>,
    ram_end: u64,
) -> Result<BootEntry, LoadError> {
    let bad = |path: &Path, what: String| LoadError::BadElf {
        path: path.to_path_buf(),
        what,
    };
    if k.head.len() < 64 {
        return Err(bad(
            &k.path,
            format!("file is {} bytes, shorter than an ELF header", k.len),
        ));
    }
    let phdrs = k.program_headers()?;
    let info = check_elf(&k.head, &phdrs, k.len).map_err(|w| bad(&k.path, w))?;
    if info.end > ram_end {
        return Err(LoadError::TooBig {
            path: k.path.clone(),
            need: info.end,
            have: ram_end,
        });
    }
    let loaded =
        Elf::load(mem, None, &mut k.file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            LoadError::Loader {
                path: k.path.clone(),
                source,
            }
        })?;
    let kernel_end = info.end.max(loaded.kernel_end);
    let line = cmdline_bytes(cmdline, DEFAULT_CMDLINE_MAX)?;
    mem.write_slice(&line, GuestAddress(CMDLINE_ADDR))?;
    let initrd_at = match initrd {
        Some(rd) if !rd.is_empty() => {
            let at = place_initrd(rd.len() as u64, kernel_end, ram_end - 1)?;
            mem.write_slice(rd, GuestAddress(at))?;
            Some((at, rd.len() as u64))
        }
        _ => None,
    };
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => {
            write_pvh(mem, memory, initrd_at)?;
            Ok(BootEntry::Pvh {
                eip: entry.0,
                start_info: PVH_INFO_ADDR,
            })
        }
        _ => {
            // No setup header in an ELF: the fields the kernel reads are filled in as a
            // boot loader would.
            let mut params = boot_params::default();
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = 0x100_0000;
            write_zero_page(mem, memory, params, line.len() - 1, initrd_at)?;
            Ok(BootEntry::Linux64 {
                rip: info.entry,
                zero_page: ZERO_PAGE_ADDR,
            })
        }
    }
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    memory: u64,
    k: &mut KernelFile,
    cmdline: &str,
    initrd: Option<&[u8]>,
    ram_end: u64,
) -> Result<BootEntry, LoadError> {
    let info = check_bzimage(&k.head, k.len).map_err(|what| LoadError::BadBzImage {
        path: k.path.clone(),
        what,
    })?;
    let kernel_end = HIMEM_START + info.footprint;
    if kernel_end > ram_end {
        return Err(LoadError::TooBig {
            path: k.path.clone(),
            need: kernel_end,
            have: ram_end,
        });
    }
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(HIMEM_START)),
        &mut k.file,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|source| LoadError::Loader {
        path: k.path.clone(),
        source,
    })?;
    let mut hdr = loaded.setup_header.unwrap_or(info.header);
    let max = if { hdr.cmdline_size } == 0 {
        DEFAULT_CMDLINE_MAX
    } else {
        hdr.cmdline_size as usize + 1
    };
    let line = cmdline_bytes(cmdline, max)?;
    mem.write_slice(&line, GuestAddress(CMDLINE_ADDR))?;
    let initrd_at = match initrd {
        Some(rd) if !rd.is_empty() => {
            let max_addr = u64::from(hdr.initrd_addr_max).min(ram_end - 1);
            let at = place_initrd(rd.len() as u64, kernel_end, max_addr)?;
            mem.write_slice(rd, GuestAddress(at))?;
            Some((at, rd.len() as u64))
        }
        _ => None,
    };
    hdr.code32_start = HIMEM_START as u32;
    let params = boot_params {
        hdr,
        ..Default::default()
    };
    write_zero_page(mem, memory, params, line.len() - 1, initrd_at)?;
    Ok(BootEntry::Linux64 {
        // The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
        rip: loaded.kernel_load.0 + 0x200,
        zero_page: ZERO_PAGE_ADDR,
    })
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    memory: u64,
    mut params: boot_params,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), LoadError> {
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((at, size)) = initrd {
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    // Read by kernels that speak boot protocol 2.14+; older ones scan for it.
    params.acpi_rsdp_addr = ACPI_RSDP_ADDR;
    let (table, n) = e820(&memory_map(memory));
    params.e820_table = table;
    params.e820_entries = n;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;
    Ok(())
}

fn write_pvh(
    mem: &GuestMemoryMmap,
    memory: u64,
    initrd: Option<(u64, u64)>,
) -> Result<(), LoadError> {
    let map = memory_map(memory);
    for (i, e) in map.iter().take(PVH_MEMMAP_MAX).enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(PVH_MEMMAP_ADDR + i as u64 * 24))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len().min(PVH_MEMMAP_MAX) as u32,
        rsdp_paddr: ACPI_RSDP_ADDR,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testkernel::{self, ElfNote};

    /// An ELF with one PT_LOAD of `code` at 16 MiB, and a PVH note when `pvh_entry` is given.
    fn tiny_elf(code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
        let notes: Vec<ElfNote> = pvh_entry.into_iter().map(ElfNote::pvh_entry).collect();
        testkernel::elf(code, 0x100_0000, &notes)
    }

    fn tiny_bzimage(payload: &[u8]) -> Vec<u8> {
        testkernel::bzimage(payload)
    }

    fn ram(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vireo-kvm-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn detects_formats() {
        assert_eq!(detect(b"\x7fELF...."), Some(KernelFormat::Elf));
        assert_eq!(detect(&tiny_bzimage(&[])), Some(KernelFormat::BzImage));
        assert_eq!(detect(&[0u8; 1000]), None);
        assert_eq!(detect(b"MZ"), None);
    }

    #[test]
    fn tells_linux_from_other_kernels() {
        let code = [0xf4; 16];
        let kind = |name: &str, bytes: &[u8]| kernel_kind(&file(name, bytes));
        assert_eq!(
            kind("k.bzImage", &tiny_bzimage(&code)).unwrap(),
            KernelKind::LinuxBzImage
        );
        for (name, notes, want) in [
            ("plain.elf", vec![], KernelKind::OtherElf),
            // A PVH entry alone: FreeBSD and unikernels have one too.
            (
                "pvh.elf",
                vec![ElfNote::pvh_entry(0x100_0000)],
                KernelKind::OtherElf,
            ),
            (
                "gnu.elf",
                vec![ElfNote {
                    owner: "GNU",
                    kind: 3,
                    desc: vec![0xab; 20],
                }],
                KernelKind::OtherElf,
            ),
            (
                "other-os.elf",
                vec![ElfNote {
                    owner: "Xen",
                    kind: XEN_ELFNOTE_GUEST_OS,
                    desc: b"Nanos\0".to_vec(),
                }],
                KernelKind::OtherElf,
            ),
            ("linux.elf", vec![ElfNote::linux()], KernelKind::LinuxElf),
            (
                "xen-linux.elf",
                vec![
                    ElfNote::pvh_entry(0x100_0000),
                    ElfNote::xen_guest_os_linux(),
                ],
                KernelKind::LinuxElf,
            ),
        ] {
            let elf = testkernel::elf(&code, 0x100_0000, &notes);
            assert_eq!(kind(name, &elf).unwrap(), want, "{name}");
            assert_eq!(want.is_linux(), want != KernelKind::OtherElf);
        }
        // What the loader refuses is refused by name here too.
        let err = kind("garbage.img", &[0x42; 4096]).unwrap_err();
        assert!(matches!(err, LoadError::UnknownFormat { .. }), "{err}");
        let mut riscv = testkernel::elf(&code, 0x100_0000, &[ElfNote::linux()]);
        riscv[18] = 243;
        let err = kind("riscv.elf", &riscv).unwrap_err();
        assert!(err.to_string().contains("riscv.elf"), "{err}");
    }

    #[test]
    fn note_walk_survives_hostile_sizes() {
        let record = |namesz: u32, descsz: u32, rest: &[u8]| -> Vec<u8> {
            let mut v = Vec::new();
            for x in [namesz, descsz, XEN_ELFNOTE_GUEST_OS] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.extend_from_slice(rest);
            v
        };
        assert!(!has_linux_note(&[]));
        assert!(!has_linux_note(&record(u32::MAX, 0, b"Linux\0\0\0")));
        assert!(!has_linux_note(&record(6, u32::MAX, b"Linux\0\0\0")));
        assert!(!has_linux_note(&record(6, 0, b"Linu")), "truncated name");
        assert!(has_linux_note(&record(6, 0, b"Linux\0\0\0")));
        // Xen's guest-OS note counts only when it says "linux"; a later record is still found.
        let mut two = record(4, 8, b"Xen\0NetBSD\0\0");
        two.extend(record(4, 6, b"Xen\0linux\0\0\0"));
        assert!(has_linux_note(&two));
        assert!(!has_linux_note(&two[..two.len() - 4]));
    }

    #[test]
    fn elf_checks_name_the_defect() {
        let good = tiny_elf(&[0xf4; 16], None);
        let len = good.len() as u64;
        assert!(check_elf(&good, &good[64..], len).is_ok());
        let mut wrong_machine = good.clone();
        wrong_machine[18] = 0xf3; // RISC-V
        assert!(check_elf(&wrong_machine, &good[64..], len)
            .unwrap_err()
            .contains("not x86-64"));
        let mut class32 = good.clone();
        class32[4] = 1;
        assert!(check_elf(&class32, &good[64..], len)
            .unwrap_err()
            .contains("not 64-bit"));
        // Truncated: the segment's bytes run past the end of the file.
        assert!(check_elf(&good, &good[64..], len - 8)
            .unwrap_err()
            .contains("outside"));
        let mut low = good.clone();
        low[64 + 24..64 + 32].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(check_elf(&low, &low[64..], len)
            .unwrap_err()
            .contains("below 1 MiB"));
        let mut entry = good.clone();
        entry[24..32].copy_from_slice(&0x200_0000u64.to_le_bytes());
        assert!(check_elf(&entry, &entry[64..], len)
            .unwrap_err()
            .contains("entry point"));
        assert!(check_elf(&good[..40], &[], 40).is_err());
    }

    #[test]
    fn bzimage_checks_name_the_defect() {
        let good = tiny_bzimage(&[0x90; 512]);
        let len = good.len() as u64;
        let info = check_bzimage(&good, len).unwrap();
        assert_eq!(info.setup_size, 1024);
        assert_eq!(info.footprint, 0x10_0000);
        let mut old = good.clone();
        old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(check_bzimage(&old, len).unwrap_err().contains("2.12"));
        let mut no64 = good.clone();
        no64[0x236] = 0;
        assert!(check_bzimage(&no64, len).unwrap_err().contains("64-bit"));
        let mut flag = good.clone();
        flag[0x1fe] = 0;
        assert!(check_bzimage(&flag, len).unwrap_err().contains("boot flag"));
        assert!(check_bzimage(&good[..1024], 1024)
            .unwrap_err()
            .contains("no kernel"));
        assert!(check_bzimage(&good[..0x210], 0x210).is_err());
    }

    #[test]
    fn initrd_placement() {
        assert_eq!(
            place_initrd(0x1000, 0x20_0000, 0x3ff_ffff).unwrap(),
            0x3ff_f000
        );
        assert_eq!(
            place_initrd(0x1001, 0x20_0000, 0x3ff_ffff).unwrap(),
            0x3ff_e000
        );
        assert!(matches!(
            place_initrd(0x4000_0000, 0x20_0000, 0x3ff_ffff),
            Err(LoadError::InitrdTooBig { .. })
        ));
        assert!(place_initrd(0x10, 0x3ff_fff8, 0x3ff_ffff).is_err());
        assert!(place_initrd(1, 0, u64::MAX).is_err());
    }

    #[test]
    fn cmdline_limits() {
        assert_eq!(cmdline_bytes("a b", 10).unwrap(), b"a b\0");
        assert!(matches!(
            cmdline_bytes("abcd", 4),
            Err(LoadError::CmdlineTooLong { len: 4, max: 3 })
        ));
        assert!(matches!(
            cmdline_bytes("a\0b", 10),
            Err(LoadError::CmdlineNul)
        ));
    }

    #[test]
    fn loads_elf_with_and_without_pvh() {
        let mem = ram(64 << 20);
        let p = file("plain.elf", &tiny_elf(&[0xf4; 32], None));
        let e = load(&mem, 64 << 20, &p, "console=ttyS0", Some(&[7u8; 100])).unwrap();
        assert_eq!(
            e,
            BootEntry::Linux64 {
                rip: 0x100_0000,
                zero_page: ZERO_PAGE_ADDR
            }
        );
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ params.hdr.ramdisk_size }, 100);
        let rd = { params.hdr.ramdisk_image };
        assert_eq!(u64::from(rd), (64 << 20) - 4096);
        assert!(params.e820_entries >= 3);
        let mut b = [0u8; 14];
        mem.read_slice(&mut b, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&b, b"console=ttyS0\0");
        let code: u8 = mem.read_obj(GuestAddress(0x100_0000)).unwrap();
        assert_eq!(code, 0xf4);

        let p = file("pvh.elf", &tiny_elf(&[0xf4; 32], Some(0x100_0010)));
        let e = load(&mem, 64 << 20, &p, "x", Some(&[1u8; 10])).unwrap();
        assert_eq!(
            e,
            BootEntry::Pvh {
                eip: 0x100_0010,
                start_info: PVH_INFO_ADDR
            }
        );
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!(m.size, 10);
    }

    #[test]
    fn loads_bzimage() {
        let mem = ram(64 << 20);
        let p = file("tiny.bzImage", &tiny_bzimage(&[0xab; 600]));
        let e = load(&mem, 64 << 20, &p, "quiet", None).unwrap();
        assert_eq!(
            e,
            BootEntry::Linux64 {
                rip: 0x10_0200,
                zero_page: ZERO_PAGE_ADDR
            }
        );
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!(params.hdr.type_of_loader, 0xff);
        assert_eq!({ params.hdr.version }, 0x020f);
        let b: u8 = mem.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!(b, 0xab);
        // A kernel too big for the RAM given is refused by name.
        let small = ram(4 << 20);
        let big = file("big.bzImage", &tiny_bzimage(&vec![0; 4 << 20]));
        let err = load(&small, 4 << 20, &big, "", None).unwrap_err();
        assert!(matches!(err, LoadError::TooBig { .. }), "{err}");
        assert!(err.to_string().contains("big.bzImage"));
    }

    #[test]
    fn rejects_garbage_by_name() {
        let mem = ram(16 << 20);
        let p = file("garbage.bin", &[0x5a; 3000]);
        let err = load(&mem, 16 << 20, &p, "", None).unwrap_err();
        assert!(err.to_string().contains("garbage.bin"), "{err}");
        assert!(matches!(err, LoadError::UnknownFormat { .. }));
        let missing = load(&mem, 16 << 20, Path::new("/nonexistent/vmlinux"), "", None);
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/vmlinux"));
        // Every truncation of a valid ELF and bzImage fails cleanly (no panic).
        let elf = tiny_elf(&[0xf4; 64], Some(0x100_0000));
        let bz = tiny_bzimage(&[0xab; 64]);
        for (name, img) in [("t.elf", &elf), ("t.bz", &bz)] {
            let mut cuts = vec![0, 1, 4, 20, 63, 64, 100, 0x1f1, 0x210, 0x300, 1024];
            if name.ends_with("elf") {
                cuts.push(img.len() - 1);
            }
            for cut in cuts {
                let cut = cut.min(img.len() - 1);
                let p = file(name, &img[..cut]);
                assert!(
                    load(&mem, 16 << 20, &p, "", None).is_err(),
                    "{name} cut {cut}"
                );
            }
        }
    }
}
