//! The guest-physical map of vireo's x86-64 PC.
//!
//! ```text
//! 0x0000_0500  GDT (null, code32 0x08, code64 0x10, data 0x18, TSS 0x20)
//! 0x0000_0600  IDT the VMM loads (empty: the kernel installs its own)
//! 0x0000_6000  PVH hvm_start_info, then the module list and the memory map
//! 0x0000_7000  zero page (boot_params) for the Linux 64-bit boot protocol
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  page tables: PML4, PDPT, 4 page directories (identity map of 4 GiB, 2 MiB pages)
//! 0x0001_0000  first address a micro-guest may load code at
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP floating pointer and MP configuration table (e820-reserved up to 1 MiB)
//! 0x000e_0000  ACPI: RSDP, then XSDT 0xe0040, FADT 0xe0100, MCFG 0xe0300, MADT 0xe0400,
//!              DSDT 0xe8000
//! 0x0010_0000  kernel (bzImage protected-mode part, or the ELF's own physical addresses)
//!   ...        initrd at the top of RAM below 4 GiB (and below the kernel's initrd_addr_max)
//! 0xc000_0000  start of the 32-bit MMIO gap when RAM is larger than 3 GiB; PCI BARs
//!              (0xc000_0000..0xe000_0000)
//! 0xe000_0000  PCI ECAM for bus 0 (1 MiB, e820-reserved, in ACPI MCFG)
//! 0xfeb0_0000  vireo exit register (sifive,test0-compatible TestFinisher, 4 KiB window)
//! 0xfeb0_1000  VM generation ID (16 bytes in a 4 KiB window, e820-reserved; ACPI \_SB.VGEN,
//!              its change announced on GSI 5 through the ACPI generic event device \_SB.GED)
//! 0xfec0_0000  IOAPIC (in-kernel)
//! 0xfee0_0000  local APICs (in-kernel)
//! 0xfffb_c000  KVM's identity-map page and TSS pages (Intel VMX real-mode support)
//! 0x1_0000_0000  RAM above 3 GiB continues here
//! ```
//!
//! Port I/O: i8042 0x60/0x64, CMOS RTC 0x70/0x71, QEMU-style isa-debug-exit 0xf4, COM1 0x3f8
//! (IRQ 4). The PIC (0x20, 0xa0) and PIT (0x40) are KVM's in-kernel models.

/// Guest-physical address of the exit register the board maps (and names on the kernel command
/// line as `vireo.exit=0xfeb00000`).
pub const EXIT_REGISTER_ADDR: u64 = 0xfeb0_0000;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x600;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Room for PVH memory-map entries (24 bytes each) before the zero page.
pub const PVH_MEMMAP_MAX: usize = ((ZERO_PAGE_ADDR - PVH_MEMMAP_ADDR) / 24) as usize;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Micro-guest code must load at or above this address (the boot structures live below it).
pub const MICRO_LOAD_MIN: u64 = 0x1_0000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The most command-line bytes the board places (the kernel's own limit may be smaller).
pub const CMDLINE_MAX: usize = 0x1_0000;
pub const MPTABLE_ADDR: u64 = 0x9_fc00;
pub const ACPI_RSDP_ADDR: u64 = 0xe_0000;
pub const ACPI_XSDT_ADDR: u64 = 0xe_0040;
pub const ACPI_FADT_ADDR: u64 = 0xe_0100;
pub const ACPI_MCFG_ADDR: u64 = 0xe_0300;
pub const ACPI_DSDT_ADDR: u64 = 0xe_8000;
pub const ACPI_MADT_ADDR: u64 = 0xe_0400;
/// Start of RAM the kernel may use above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap: RAM never overlaps it.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// Where PCI BARs are placed (the guest may move them within the gap).
pub const PCI_MMIO_BASE: u64 = 0xc000_0000;
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
pub const PCI_ECAM_BASE: u64 = 0xe000_0000;
/// IOAPIC pins for INTA# of PCI slots 1..=8, one pin each (16..23, the pins above the ISA
/// range), so no two functions share a level-triggered line.
pub const PCI_GSIS: [u32; 8] = [16, 17, 18, 19, 20, 21, 22, 23];

/// The VM generation ID's window ([`vireo_devices::vmgenid`]), and the GSI its change is
/// announced on.
pub const VMGENID_ADDR: u64 = 0xfeb0_1000;
pub const VMGENID_GSI: u32 = 5;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const I8042_IRQ: u32 = 1;
pub const CMOS_PORT: u16 = 0x70;
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The smallest guest RAM vireo's PC accepts: boot structures, a kernel and its page tables.
pub const MIN_MEMORY: u64 = 2 << 20;

/// Guest RAM as (base, size) ranges: one range up to 3 GiB, and the rest above 4 GiB.
pub fn ram_ranges(memory: u64) -> Vec<(u64, u64)> {
    if memory <= MMIO_GAP_START {
        vec![(0, memory)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, memory - MMIO_GAP_START)]
    }
}

/// End (exclusive) of the RAM range that starts at 0.
pub fn low_ram_end(memory: u64) -> u64 {
    memory.min(MMIO_GAP_START)
}

/// Kinds of memory-map entries (the e820 and PVH numbering agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemKind {
    Ram = 1,
    Reserved = 2,
}

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: MemKind,
}

/// The memory map a kernel is told about: usable RAM below 640 KiB (less the MP table), the
/// legacy hole reserved, RAM from 1 MiB, PCI ECAM, the exit register and the VM generation ID
/// reserved, and RAM
/// above 4 GiB.
pub fn memory_map(memory: u64) -> Vec<MemEntry> {
    let low_end = low_ram_end(memory);
    let mut map = vec![
        MemEntry {
            addr: 0,
            size: MPTABLE_ADDR,
            kind: MemKind::Ram,
        },
        MemEntry {
            addr: MPTABLE_ADDR,
            size: HIMEM_START - MPTABLE_ADDR,
            kind: MemKind::Reserved,
        },
    ];
    if low_end > HIMEM_START {
        map.push(MemEntry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: MemKind::Ram,
        });
    }
    map.push(MemEntry {
        addr: PCI_ECAM_BASE,
        size: vireo_pci::ECAM_BUS_SIZE,
        kind: MemKind::Reserved,
    });
    map.push(MemEntry {
        addr: EXIT_REGISTER_ADDR,
        size: vireo_devices::finisher::FINISHER_WINDOW,
        kind: MemKind::Reserved,
    });
    map.push(MemEntry {
        addr: VMGENID_ADDR,
        size: vireo_devices::vmgenid::VMGENID_WINDOW,
        kind: MemKind::Reserved,
    });
    if memory > MMIO_GAP_START {
        map.push(MemEntry {
            addr: MMIO_GAP_END,
            size: memory - MMIO_GAP_START,
            kind: MemKind::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
        let map = memory_map(256 << 20);
        assert_eq!(map[0].size, MPTABLE_ADDR);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 256 << 20);
        // Then the reserved ECAM, exit register and VM generation ID windows.
        assert_eq!(map.len(), 6);
        assert!(map[3..].iter().all(|e| e.kind == MemKind::Reserved));
    }

    #[test]
    fn large_ram_splits_around_the_mmio_gap() {
        let mem = 5u64 << 30;
        assert_eq!(ram_ranges(mem), vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
        let map = memory_map(mem);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == MemKind::Ram)
            .map(|e| e.size)
            .sum();
        // Only the legacy hole between the MP table and 1 MiB is withheld.
        assert_eq!(ram, mem - (HIMEM_START - MPTABLE_ADDR));
        let last = map.last().unwrap();
        assert_eq!((last.addr, last.size), (4 << 30, 2 << 30));
        // Nothing the kernel may use overlaps the gap.
        for e in map.iter().filter(|e| e.kind == MemKind::Ram) {
            assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
    }

    #[test]
    fn fixed_addresses_sit_in_the_gap() {
        for a in [
            EXIT_REGISTER_ADDR,
            VMGENID_ADDR,
            PCI_ECAM_BASE,
            PCI_MMIO_BASE + PCI_MMIO_SIZE - 1,
            u64::from(IOAPIC_ADDR),
            u64::from(LAPIC_ADDR),
            KVM_TSS_ADDR,
        ] {
            assert!((MMIO_GAP_START..MMIO_GAP_END).contains(&a));
        }
        const { assert!(PVH_MEMMAP_MAX >= 8) };
    }
}
