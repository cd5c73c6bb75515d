//! The smallest kernel files the loader accepts, for tests: an x86-64 ELF executable with any
//! ELF notes, and a bzImage. Both wrap machine code built with [`crate::asm`]. And one kernel
//! worth running for a while: [`counting_elf`].

use crate::boot::{LINUX_ELFNOTE_BUILD_SALT, XEN_ELFNOTE_GUEST_OS, XEN_ELFNOTE_PHYS32_ENTRY};

/// One ELF note: its owner's name, its type and its descriptor bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfNote {
    pub owner: &'static str,
    pub kind: u32,
    pub desc: Vec<u8>,
}

impl ElfNote {
    /// Linux's build-salt note, as every vmlinux since 4.18 has.
    pub fn linux() -> Self {
        ElfNote {
            owner: "Linux",
            kind: LINUX_ELFNOTE_BUILD_SALT,
            desc: vec![0; 4],
        }
    }

    /// Xen's guest-OS note as Linux writes it.
    pub fn xen_guest_os_linux() -> Self {
        ElfNote {
            owner: "Xen",
            kind: XEN_ELFNOTE_GUEST_OS,
            desc: b"linux\0".to_vec(),
        }
    }

    /// The PVH entry note: enter in 32-bit protected mode at `entry`.
    pub fn pvh_entry(entry: u32) -> Self {
        ElfNote {
            owner: "Xen",
            kind: XEN_ELFNOTE_PHYS32_ENTRY,
            desc: entry.to_le_bytes().to_vec(),
        }
    }
}

/// An x86-64 ELF executable: the header, a PT_LOAD of `code` at physical `addr` (the entry
/// point) as the first program header, a PT_NOTE holding `notes` when there are any, and the
/// code last in the file.
pub fn elf(code: &[u8], addr: u64, notes: &[ElfNote]) -> Vec<u8> {
    let mut note_area = Vec::new();
    for n in notes {
        let name = [n.owner.as_bytes(), b"\0"].concat();
        for v in [name.len() as u32, n.desc.len() as u32, n.kind] {
            note_area.extend_from_slice(&v.to_le_bytes());
        }
        for part in [&name[..], &n.desc[..]] {
            note_area.extend_from_slice(part);
            note_area.resize(note_area.len().next_multiple_of(4), 0);
        }
    }
    let phnum: u16 = if notes.is_empty() { 1 } else { 2 };
    let note_off = 64 + 56 * u64::from(phnum);
    let code_off = note_off + note_area.len() as u64;
    let mut f = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    f.extend_from_slice(&addr.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&[0; 12]); // e_shoff, e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&phnum.to_le_bytes());
    f.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    let mut ph = |ty: u32, off: u64, paddr: u64, size: u64| {
        for v in [ty, 7] {
            f.extend_from_slice(&v.to_le_bytes()); // p_type, p_flags (rwx)
        }
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        for v in [off, paddr, paddr, size, size, 4] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    };
    ph(1, code_off, addr, code.len() as u64); // PT_LOAD
    if !notes.is_empty() {
        ph(4, note_off, 0, note_area.len() as u64); // PT_NOTE
    }
    f.extend_from_slice(&note_area);
    f.extend_from_slice(code);
    f
}

/// A bzImage (boot protocol 2.15, loaded high, with the 64-bit entry point): a boot sector and
/// one setup sector, then `kernel`, the protected-mode part loaded at 1 MiB and entered 0x200
/// into it.
pub fn bzimage(kernel: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1; // setup_sects
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes()); // boot_flag
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    f[0x211] = 1; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    f[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
    f.extend_from_slice(kernel);
    f
}

/// Where [`counting_elf`] is loaded and entered, and where its count is (the page after the
/// code).
pub const COUNTING_BASE: u64 = 0x100_0000;
pub const COUNTING_COUNTER: u64 = COUNTING_BASE + 0x1000;

/// An ELF (no notes: not Linux, so it runs where KVM cannot deliver exceptions) that counts
/// for ever: increments a 32-bit count in RAM, prints it on COM1 as eight hex digits written
/// `a`..`p` (so that no branch is needed for 10..15) and a newline, then spins `delay`
/// iterations. It takes no interrupt and no exception; its state is its registers, the count
/// and COM1: what a snapshot test needs to see continue.
pub fn counting_elf(delay: u32) -> Result<Vec<u8>, crate::asm::AsmError> {
    use crate::asm::{Asm, Mode};
    const COM1: u16 = 0x3f8;
    let mut a = Asm::new(Mode::Long, COUNTING_BASE);
    let again = a.label();
    a.bind(again);
    // Short jumps only: rbx and dx are set once per round, not per digit.
    a.lock_inc_mem(COUNTING_COUNTER as u32)
        .mov_ebx(COUNTING_COUNTER as u32)
        .mov_dx(COM1);
    for k in (0..8u8).rev() {
        a.load32_from_rbx()
            .shr_eax(4 * k)
            .and_al(0xf)
            .add_al(b'a')
            .out_dx_al();
    }
    a.mov_al(b'\n').out_dx_al();
    let spin = a.label();
    a.mov_eax(delay);
    a.bind(spin);
    a.dec_eax().jnz(spin);
    a.jmp(again);
    a.pad_to((COUNTING_COUNTER - COUNTING_BASE) as usize + 4);
    Ok(elf(&a.finish()?, COUNTING_BASE, &[]))
}

/// The counts [`counting_elf`] printed in `text`, in order.
pub fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.len() == 8 && l.bytes().all(|b| (b'a'..=b'p').contains(&b)))
        .map(|l| l.bytes().fold(0, |n, b| n * 16 + u64::from(b - b'a')))
        .collect()
}

/// An ELF (no notes) that prints "tiny kernel" and a newline on COM1 and exits with `status`
/// through the exit register: the smallest whole run of a VM.
pub fn greeting_elf(status: u8) -> Result<Vec<u8>, crate::asm::AsmError> {
    use crate::asm::{Asm, Mode};
    let mut a = Asm::new(Mode::Long, COUNTING_BASE);
    let text = a.label();
    a.print(0x3f8, text)
        .mov_ebx(crate::layout::EXIT_REGISTER_ADDR as u32)
        // The finisher's "pass" (0x5555), or "fail" (0x3333) with the status above it.
        .store32_at_rbx(match status {
            0 => 0x5555,
            n => (u32::from(n) << 16) | 0x3333,
        })
        .spin();
    a.bind(text);
    a.bytes(b"tiny kernel\n").bytes(&[0]);
    Ok(elf(&a.finish()?, COUNTING_BASE, &[]))
}
