//! The Intel MultiProcessor Specification 1.4 tables that tell a kernel without ACPI how many
//! CPUs there are and how ISA interrupts reach the IOAPIC: a floating pointer structure in the
//! last KiB of base memory, then a configuration table with one processor entry per vCPU, an
//! ISA bus and PCI bus 0, the IOAPIC, and the interrupt routing KVM's in-kernel irqchip
//! implements (ISA IRQ n on IOAPIC pin n, except the PIT's IRQ 0 on pin 2; INTA# of PCI slots
//! 1..8 on pins 16..23).

use vireo_machine::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{HIMEM_START, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR, PCI_GSIS};

/// Errors while building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than 8-bit APIC ids (leaving one for the IOAPIC) can number.
    #[error("{0} vCPUs do not fit the MP table (at most {MAX_CPUS})")]
    TooManyCpus(u32),
    /// Writing the table into guest RAM failed.
    #[error("cannot write the MP table into guest RAM: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// APIC ids are 8-bit; the IOAPIC takes the id after the last CPU.
pub const MAX_CPUS: u32 = 254;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS: u8 = 0;
/// MP bus ID of PCI bus 0.
const PCI_BUS: u8 = 1;
/// Interrupt entry flags: polarity active-low (bits 1:0 = 3), trigger level (bits 3:2 = 3).
const PCI_LEVEL_LOW: u8 = 0x0f;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn io_interrupt(t: &mut Vec<u8>, kind: u8, bus_irq: u8, ioapic: u8, pin: u8) {
    // type, interrupt type, flags (conforming polarity/trigger), source bus, bus irq,
    // destination IOAPIC, destination pin.
    t.extend_from_slice(&[ENTRY_IO_INTERRUPT, kind, 0, 0, 0, bus_irq, ioapic, pin]);
}

/// The floating pointer followed by the configuration table, as placed at `base`.
pub fn build(cpus: u32, base: u32) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus as u8;
    let mut t = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        t.extend_from_slice(&[ENTRY_PROCESSOR, cpu as u8, APIC_VERSION, flags]);
        t.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        t.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        t.extend_from_slice(&[0; 8]);
    }
    t.extend_from_slice(&[ENTRY_BUS, ISA_BUS]);
    t.extend_from_slice(b"ISA   ");
    t.extend_from_slice(&[ENTRY_BUS, PCI_BUS]);
    t.extend_from_slice(b"PCI   ");
    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    // Pin 0 is the 8259's ExtINT output; the PIT (IRQ 0) is on pin 2; the rest are 1:1.
    io_interrupt(&mut t, INT_TYPE_EXTINT, 0, ioapic_id, 0);
    io_interrupt(&mut t, INT_TYPE_INT, 0, ioapic_id, 2);
    for irq in (1..16u8).filter(|&i| i != 2) {
        io_interrupt(&mut t, INT_TYPE_INT, irq, ioapic_id, irq);
    }
    // INTA# of PCI slot n (bus irq = device << 2 | pin - 1) on its own pin, level-triggered
    // and active-low as PCI interrupts are.
    for (slot, &gsi) in (1u8..).zip(PCI_GSIS.iter()) {
        t.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, PCI_LEVEL_LOW, 0, PCI_BUS]);
        t.extend_from_slice(&[slot << 2, ioapic_id, gsi as u8]);
    }
    // Every local APIC: LINT0 = ExtINT, LINT1 = NMI.
    t.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    t.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entries = cpus as u16 + 2 + 1 + 16 + PCI_GSIS.len() as u16 + 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + t.len()) as u16).to_le_bytes());
    header.extend_from_slice(&[4, 0]); // spec revision 1.4, checksum placeholder
    header.extend_from_slice(b"VIREO   ");
    header.extend_from_slice(b"PC          ");
    header.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&entries.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // no extended table
    header.extend_from_slice(&t);
    header[7] = checksum(&header);

    let mut fp = Vec::with_capacity(16 + header.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(base + 16).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 1 paragraph, rev 1.4, no default config
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&header);
    Ok(fp)
}

/// Writes the tables at [`MPTABLE_ADDR`] (inside the e820-reserved legacy hole).
pub fn write(mem: &GuestMemoryMmap, cpus: u32) -> Result<(), MpTableError> {
    let bytes = build(cpus, MPTABLE_ADDR as u32)?;
    debug_assert!(MPTABLE_ADDR + bytes.len() as u64 <= HIMEM_START);
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        let t = build(4, 0x9fc00).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0x9fc10);
        let cfg = &t[16..];
        assert_eq!(&cfg[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([cfg[4], cfg[5]]));
        assert_eq!(len, cfg.len());
        assert_eq!(sum(cfg), 0);
        let count = u16::from_le_bytes([cfg[34], cfg[35]]);
        assert_eq!(count, 4 + 2 + 1 + 16 + 8 + 2);
        // The PCI bus and slot 1's INTA# on pin 16, level and active-low.
        assert!(cfg
            .windows(8)
            .any(|e| e == [1, 1, b'P', b'C', b'I', b' ', b' ', b' ']));
        assert!(cfg
            .windows(8)
            .any(|e| e == [3, 0, 0x0f, 0, 1, 1 << 2, 4, 16]));
        // Four enabled processors, the first one the BSP.
        let procs: Vec<&[u8]> = cfg[44..44 + 80].chunks(20).collect();
        for (i, p) in procs.iter().enumerate() {
            assert_eq!((p[0], p[1]), (0, i as u8));
            assert_eq!(p[3] & 1, 1);
            assert_eq!(p[3] & 2 != 0, i == 0);
        }
        assert!(16 + len <= (HIMEM_START - MPTABLE_ADDR) as usize);
    }

    #[test]
    fn cpu_limits() {
        assert!(build(0, 0).is_err());
        assert!(build(MAX_CPUS + 1, 0).is_err());
        let big = build(MAX_CPUS, MPTABLE_ADDR as u32).unwrap();
        assert!(MPTABLE_ADDR + big.len() as u64 <= HIMEM_START);
    }
}
