//! vCPU state the VMM sets before the first instruction: descriptor tables and page tables in
//! guest RAM, segment and control registers for each entry mode, the MSRs a Linux kernel
//! expects at entry, the FPU, and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vireo_machine::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// Errors while setting a vCPU's initial state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT or page tables into guest RAM failed.
    #[error("cannot write boot page tables/GDT into guest RAM: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// A KVM vCPU ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some of the boot MSRs.
    #[error("KVM accepted {set} of {wanted} boot MSRs (first refused: {first_refused:#x})")]
    Msrs {
        set: usize,
        wanted: usize,
        first_refused: u32,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Ioctl { what, source }
}

/// GDT selectors (the Linux 64-bit boot protocol wants __BOOT_CS = 0x10, __BOOT_DS = 0x18).
pub const SEL_CODE32: u16 = 0x08;
pub const SEL_CODE64: u16 = 0x10;
pub const SEL_DATA: u16 = 0x18;
pub const SEL_TSS: u16 = 0x20;

/// A segment descriptor from its flag bits (type, S, DPL, P in the low byte; AVL, L, D/B, G in
/// the high nibble), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The GDT: null, flat 32-bit code, flat 64-bit code, flat data, and a 64-bit TSS (two slots).
pub const GDT: [u64; 6] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff), // code32: G, D, P, S, execute/read, accessed
    gdt_entry(0xa09b, 0, 0xfffff), // code64: G, L, P, S, execute/read, accessed
    gdt_entry(0xc093, 0, 0xfffff), // data: G, B, P, S, read/write, accessed
    gdt_entry(0x008b, 0, 0x67),    // TSS: P, busy 64-bit TSS
    0,                             // TSS base bits 63:32
];

/// The KVM view of the descriptor at `selector` in [`GDT`].
pub fn segment(selector: u16) -> kvm_segment {
    let e = GDT[usize::from(selector >> 3)];
    let g = ((e >> 55) & 1) as u8;
    let raw_limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

const PTE_PRESENT_RW: u64 = 0x3;
const PDE_2M: u64 = 0x83; // present, writable, page size

/// Writes the GDT, an empty IDT and page tables mapping the first 4 GiB 1:1 with 2 MiB pages
/// (1 GiB pages triple-fault on some nested hosts).
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    mem.write_obj(PDPT_ADDR | PTE_PRESENT_RW, GuestAddress(PML4_ADDR))?;
    let mut pd_page = vec![0u8; 4096];
    for dir in 0..4u64 {
        mem.write_obj(
            (PD_ADDR + dir * 4096) | PTE_PRESENT_RW,
            GuestAddress(PDPT_ADDR + dir * 8),
        )?;
        for (i, slot) in pd_page.chunks_exact_mut(8).enumerate() {
            let phys = ((dir << 9) + i as u64) << 21;
            slot.copy_from_slice(&(phys | PDE_2M).to_le_bytes());
        }
        mem.write_slice(&pd_page, GuestAddress(PD_ADDR + dir * 4096))?;
    }
    Ok(())
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn load_descriptor_tables(s: &mut kvm_sregs) {
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (GDT.len() * 8 - 1) as u16;
    s.idt.base = IDT_ADDR;
    s.idt.limit = 0;
    s.tr = segment(SEL_TSS);
    s.ldt = kvm_segment {
        type_: 2,
        present: 1,
        limit: 0xffff,
        ..Default::default()
    };
}

fn flat_data(s: &mut kvm_sregs) {
    let d = segment(SEL_DATA);
    s.ds = d;
    s.es = d;
    s.fs = d;
    s.gs = d;
    s.ss = d;
}

/// 64-bit mode with paging on the identity map (Linux 64-bit boot protocol entry state).
pub fn long_mode(s: &mut kvm_sregs) {
    load_descriptor_tables(s);
    s.cs = segment(SEL_CODE64);
    flat_data(s);
    s.cr3 = PML4_ADDR;
    s.cr4 = CR4_PAE;
    s.efer = EFER_LME | EFER_LMA;
    s.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
}

/// 32-bit protected mode, paging off (the PVH entry state).
pub fn protected_mode(s: &mut kvm_sregs) {
    load_descriptor_tables(s);
    s.cs = segment(SEL_CODE32);
    flat_data(s);
    s.cr0 = CR0_PE | CR0_ET | CR0_NE;
    s.cr4 = 0;
    s.efer = 0;
}

/// Real mode with every segment register holding `seg` (data relative to the code).
pub fn real_mode(s: &mut kvm_sregs, seg: u16) {
    let rm = kvm_segment {
        base: u64::from(seg) << 4,
        limit: 0xffff,
        selector: seg,
        type_: 3,
        present: 1,
        s: 1,
        ..Default::default()
    };
    s.cs = kvm_segment { type_: 0xb, ..rm };
    s.ds = rm;
    s.es = rm;
    s.fs = rm;
    s.gs = rm;
    s.ss = rm;
    s.cr0 = CR0_ET;
    s.cr4 = 0;
    s.efer = 0;
}

/// General registers with interrupts off and everything else zero, but `rip`.
pub fn base_regs(rip: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rflags: 0x2,
        ..Default::default()
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The MSR values a Linux kernel expects at entry: syscall MSRs cleared, the TSC at zero, fast
/// string operations enabled, and MTRRs on with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, 1), // fast strings
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// Sets the boot MSRs, the FPU's reset control words and (with the in-kernel irqchip) the
/// local APIC's LINT0 as ExtINT and LINT1 as NMI, the virtual-wire wiring the PIC needs.
pub fn setup_cpu_state(vcpu: &VcpuFd, lapic: bool) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = kvm_bindings::Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
        first_refused: entries[0].index,
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
            first_refused: entries[set].index,
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;
    if lapic {
        let mut state = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
        set_lint_pins(&mut state);
        vcpu.set_lapic(&state).map_err(ioctl("KVM_SET_LAPIC"))?;
    }
    Ok(())
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, off: usize) -> u32 {
    let b = &state.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        state.regs[off + i] = *b as _;
    }
}

/// LINT0 = ExtINT, LINT1 = NMI (delivery mode is bits 10:8 of the LVT entry).
pub fn set_lint_pins(state: &mut kvm_lapic_state) {
    for (off, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let v = lapic_reg(state, off);
        set_lapic_reg(state, off, (v & !0x700) | (mode << 8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_decode() {
        let cs = segment(SEL_CODE64);
        assert_eq!((cs.base, cs.limit, cs.type_), (0, 0xffff_ffff, 0xb));
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.s), (1, 0, 1, 1, 1));
        let cs32 = segment(SEL_CODE32);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(SEL_DATA);
        assert_eq!((ds.type_, ds.db, ds.limit), (3, 1, 0xffff_ffff));
        let tr = segment(SEL_TSS);
        assert_eq!((tr.type_, tr.s, tr.limit, tr.g), (0xb, 0, 0x67, 0));
        // Known encodings.
        assert_eq!(GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[3], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        for dir in 0..4u64 {
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + dir * 8)).unwrap();
            assert_eq!(pdpte & !0xfff, PD_ADDR + dir * 4096);
        }
        // The entry for 0xfeb00000 (the exit register) maps itself.
        let addr = 0xfeb0_0000u64;
        let pde_addr = PD_ADDR + (addr >> 30) * 4096 + ((addr >> 21) & 511) * 8;
        let pde: u64 = mem.read_obj(GuestAddress(pde_addr)).unwrap();
        assert_eq!(pde, (addr & !0x1f_ffff) | 0x83);
    }

    #[test]
    fn lint_pins() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT_LINT0, 0x1_0000); // masked
        set_lint_pins(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT1), 0x400);
    }
}
