//! ACPI tables for kernels that find CPUs only through ACPI (Debian's cloud kernel is built
//! without MP-table parsing): RSDP → XSDT → FADT (hardware-reduced, pointing at a DSDT that
//! holds the PCI host bridge), MADT (one local APIC per vCPU, the IOAPIC, IRQ 0 → GSI 2, LINT1 =
//! NMI) and MCFG (the PCI ECAM window). The DSDT's AML comes from rust-vmm's acpi_tables. Layouts and
//! offsets per the ACPI 6.0 specification, sections 5.2.5 to 5.2.12.
//!
//! A hardware-reduced FADT needs no PM timer, SCI or GPE blocks; its reset register is the
//! i8042 command port, so an ACPI reboot ends the guest as `reboot=k` does.
//!
//! The VM generation ID (Microsoft's "Virtual Machine Generation ID" specification, as
//! Linux's `vmgenid` driver reads it) is `\_SB.VGEN`: `_CID` "VM_Gen_Counter", and `ADDR`,
//! a package of the low and high halves of the 16 bytes' guest-physical address. The spec
//! has the platform notify the device (0x80) when the ID changes; a hardware-reduced machine
//! has no GPE block, so the notification comes from a generic event device (`ACPI0013`,
//! `\_SB.GED`) whose `_EVT` method, run by the OS when its interrupt fires, notifies VGEN.

use vireo_machine::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    ACPI_DSDT_ADDR, ACPI_FADT_ADDR, ACPI_MADT_ADDR, ACPI_MCFG_ADDR, ACPI_RSDP_ADDR, ACPI_XSDT_ADDR,
    IOAPIC_ADDR, LAPIC_ADDR, PCI_ECAM_BASE, PCI_GSIS, PCI_MMIO_BASE, PCI_MMIO_SIZE, VMGENID_ADDR,
    VMGENID_GSI,
};

/// Errors while writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// More vCPUs than the MADT region has room for.
    #[error("{0} vCPUs do not fit the MADT")]
    TooManyCpus(u32),
    /// Writing a table into guest RAM failed.
    #[error("cannot write the ACPI tables into guest RAM: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const OEM_ID: &[u8; 6] = b"VIREO ";
const OEM_TABLE_ID: &[u8; 8] = b"VIREOPC ";

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A system description table: the 36-byte header, then `body`, with length and checksum.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"VIRO"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// RSDP revision 2 (36 bytes) pointing at the XSDT.
pub fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0; 4]); // extended checksum, reserved
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|t| t.to_le_bytes()).collect();
    sdt(b"XSDT", 1, &body)
}

/// A Generic Address Structure for one byte of port I/O.
fn gas_io8(port: u64) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = 8; // register bit width
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&port.to_le_bytes());
    g
}

const FADT_LEN: usize = 276;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// FADT revision 6.0, hardware-reduced.
pub fn fadt(dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; FADT_LEN - 36];
    let at = |off: usize| off - 36; // offsets below are from the table start
    b[at(40)..at(44)].copy_from_slice(&(dsdt as u32).to_le_bytes());
    b[at(108)] = 0x32; // CMOS century register
    b[at(109)..at(111)]
        .copy_from_slice(&(BOOT_ARCH_8042 | BOOT_ARCH_VGA_NOT_PRESENT).to_le_bytes());
    b[at(112)..at(116)].copy_from_slice(&(FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP).to_le_bytes());
    b[at(116)..at(128)].copy_from_slice(&gas_io8(0x64)); // reset register: i8042 command port
    b[at(128)] = 0xfe; // reset value: pulse the CPU reset line
    b[at(131)] = 0; // FADT minor version (6.0)
    b[at(140)..at(148)].copy_from_slice(&dsdt.to_le_bytes());
    b[at(268)..at(276)].copy_from_slice(b"VIREOKVM");
    sdt(b"FACP", 6, &b)
}

/// The DSDT: the PCI host bridge \\_SB.PCI0 (PCI Express root, so Linux uses the MCFG's ECAM;
/// CF8/CFC also work), with its bus, I/O and memory windows and the routing of each slot's
/// INTA# straight to an IOAPIC pin (`_PRT` entries with a GSI, no link devices). Other
/// devices are legacy (COM1, i8042, RTC) and found without ACPI; then the VM generation ID
/// and the event device that announces its changes (see the module doc).
pub fn dsdt() -> Vec<u8> {
    use acpi_tables::aml::{
        AddressSpace, AddressSpaceCacheable, Arg, Device, EISAName, Equal, If, Interrupt, Method,
        Name, Notify, Package, Path, ResourceTemplate, IO,
    };
    use acpi_tables::Aml;

    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cf8 = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_high = AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let mem = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_BASE as u32,
        (PCI_MMIO_BASE + PCI_MMIO_SIZE - 1) as u32,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cf8, &io_low, &io_high, &mem]);
    // _PRT entry: (address 0xSSSS_FFFF = any function of slot S, pin 0 = INTA#, source 0 =
    // the last field is a GSI).
    let routes: Vec<(u32, u32)> = (1u32..)
        .zip(PCI_GSIS.iter())
        .map(|(slot, &gsi)| ((slot << 16) | 0xffff, gsi))
        .collect();
    let zero = 0u8;
    let entries: Vec<Package> = routes
        .iter()
        .map(|(addr, gsi)| Package::new(vec![addr, &zero, &zero, gsi]))
        .collect();
    let prt = Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let names = [
        Name::new("_HID".into(), &hid),
        Name::new("_CID".into(), &cid),
        Name::new("_ADR".into(), &zero),
        Name::new("_SEG".into(), &zero),
        Name::new("_UID".into(), &zero),
        Name::new("_BBN".into(), &zero),
        Name::new("_CRS".into(), &crs),
        Name::new("_PRT".into(), &prt),
    ];
    let pci0 = Device::new(
        "\\_SB_.PCI0".into(),
        names.iter().map(|n| n as &dyn Aml).collect(),
    );
    // The generation ID. _HID is Linux's own ID for it; _CID and _DDN are the spec's.
    let (lo, hi) = (VMGENID_ADDR as u32, (VMGENID_ADDR >> 32) as u32);
    let addr = Package::new(vec![&lo, &hi]);
    let vgen_names = [
        Name::new("_HID".into(), &"VMGENCTR"),
        Name::new("_CID".into(), &"VM_Gen_Counter"),
        Name::new("_DDN".into(), &"VM_Gen_Counter"),
        Name::new("ADDR".into(), &addr),
    ];
    let vgen = Device::new(
        "\\_SB_.VGEN".into(),
        vgen_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    // The event device: an edge-triggered, active-high interrupt of its own; _EVT gets the
    // interrupt's number.
    let irq = Interrupt::new(true, true, false, false, VMGENID_GSI);
    let ged_crs = ResourceTemplate::new(vec![&irq]);
    let ged_hid = "ACPI0013";
    let vgen_path = Path::new("\\_SB_.VGEN");
    let code = 0x80u8;
    let notify = Notify::new(&vgen_path, &code);
    let is_ours = Equal::new(&Arg(0), &VMGENID_GSI);
    let on_ours = If::new(&is_ours, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&on_ours]);
    let ged_names = [
        Name::new("_HID".into(), &ged_hid),
        Name::new("_UID".into(), &zero),
        Name::new("_CRS".into(), &ged_crs),
    ];
    let mut ged_children: Vec<&dyn Aml> = ged_names.iter().map(|n| n as &dyn Aml).collect();
    ged_children.push(&evt);
    let ged = Device::new("\\_SB_.GED_".into(), ged_children);
    let mut aml = Vec::new();
    pci0.to_aml_bytes(&mut aml);
    vgen.to_aml_bytes(&mut aml);
    ged.to_aml_bytes(&mut aml);
    sdt(b"DSDT", 2, &aml)
}

/// The MCFG: ECAM for PCI segment 0, bus 0.
pub fn mcfg() -> Vec<u8> {
    let mut b = vec![0u8; 8]; // reserved
    b.extend_from_slice(&PCI_ECAM_BASE.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // segment
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // start bus, end bus, reserved
    sdt(b"MCFG", 1, &b)
}

/// MADT revision 5: local APICs 0..cpus, the IOAPIC (id `cpus`) with GSI base 0, the PIT's
/// IRQ 0 overridden to GSI 2 (how KVM's IOAPIC wires it), and LINT1 as NMI on every CPU.
pub fn madt(cpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // flags: no PC-AT PICs in hardware-reduced mode
    for cpu in 0..cpus {
        b.extend_from_slice(&[0, 8, cpu as u8, cpu as u8]); // processor local APIC
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, cpus as u8, 0]); // I/O APIC
    b.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    b.extend_from_slice(&[2, 10, 0, 0]); // interrupt source override: ISA bus, IRQ 0
    b.extend_from_slice(&2u32.to_le_bytes()); // → GSI 2
    b.extend_from_slice(&0u16.to_le_bytes()); // conforming polarity and trigger
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]); // local APIC NMI: all CPUs, LINT1
    sdt(b"APIC", 5, &b)
}

/// Writes every table; returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, cpus: u32) -> Result<u64, AcpiError> {
    let madt = madt(cpus);
    if ACPI_MADT_ADDR + madt.len() as u64 > ACPI_DSDT_ADDR {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    let tables: [(u64, Vec<u8>); 6] = [
        (ACPI_DSDT_ADDR, dsdt()),
        (ACPI_FADT_ADDR, fadt(ACPI_DSDT_ADDR)),
        (ACPI_MADT_ADDR, madt),
        (ACPI_MCFG_ADDR, mcfg()),
        (
            ACPI_XSDT_ADDR,
            xsdt(&[ACPI_FADT_ADDR, ACPI_MADT_ADDR, ACPI_MCFG_ADDR]),
        ),
        (ACPI_RSDP_ADDR, rsdp(ACPI_XSDT_ADDR)),
    ];
    for (addr, bytes) in tables {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(ACPI_RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::HIMEM_START;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_checksum_and_lengths() {
        let r = rsdp(0xe0040);
        assert_eq!(r.len(), 36);
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        for (t, sig, len) in [
            (fadt(0x1234), b"FACP", FADT_LEN),
            (mcfg(), b"MCFG", 60),
            (madt(4), b"APIC", 44 + 4 * 8 + 12 + 10 + 6),
            (xsdt(&[1, 2]), b"XSDT", 52),
        ] {
            assert_eq!(&t[..4], sig);
            assert_eq!(t.len(), len);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                len
            );
            assert_eq!(sum(&t), 0, "{}", String::from_utf8_lossy(sig));
        }
    }

    #[test]
    fn dsdt_is_valid_aml_for_the_pci_root() {
        let d = dsdt();
        assert_eq!(sum(&d), 0);
        assert_eq!(
            u32::from_le_bytes(d[4..8].try_into().unwrap()) as usize,
            d.len()
        );
        assert!(ACPI_DSDT_ADDR + d.len() as u64 <= HIMEM_START);
        // ACPICA's disassembler is the judge of the AML; what it prints must describe the
        // host bridge, its windows and every slot's interrupt route.
        let dir = std::env::temp_dir().join(format!("vireo-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("dsdt.dat");
        std::fs::write(&bin, &d).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&bin)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("iasl: {e}; apt-get install acpica-tools (scripts/setup.sh does)")
            });
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{out:?}");
        for want in [
            "Device (\\_SB.PCI0)",
            "EisaId (\"PNP0A08\")",
            "EisaId (\"PNP0A03\")",
            "WordBusNumber",
            "0x0CF8",
            "0xC0000000",
            "0xDFFFFFFF",
            "Name (_PRT, Package",
            "0x0001FFFF",
            "0x0008FFFF",
            "Device (\\_SB.VGEN)",
            "Name (_HID, \"VMGENCTR\")",
            "Name (_CID, \"VM_Gen_Counter\")",
            "Name (ADDR, Package",
            "0xFEB01000",
            "Device (\\_SB.GED)",
            "Name (_HID, \"ACPI0013\"",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
            "Method (_EVT, 1, Serialized)",
            "If ((Arg0 == 0x05))",
            "Notify (\\_SB.VGEN, 0x80)",
        ] {
            assert!(dsl.contains(want), "{want} missing from:\n{dsl}");
        }
        for gsi in PCI_GSIS {
            assert!(dsl.contains(&format!("0x{gsi:02X}")), "GSI {gsi}:\n{dsl}");
        }
    }

    #[test]
    fn fadt_fields() {
        let f = fadt(0xe0300);
        assert_eq!(u32::from_le_bytes(f[40..44].try_into().unwrap()), 0xe0300);
        assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), 0xe0300);
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & FADT_HW_REDUCED_ACPI, 0);
        assert_eq!(f[116], 1); // reset register in I/O space
        assert_eq!(u64::from_le_bytes(f[120..128].try_into().unwrap()), 0x64);
        assert_eq!(f[128], 0xfe);
        assert_eq!(f[8], 6);
    }

    #[test]
    fn madt_lists_every_cpu() {
        let m = madt(3);
        let mut ids = Vec::new();
        let mut off = 44;
        while off < m.len() {
            let (kind, len) = (m[off], usize::from(m[off + 1]));
            if kind == 0 {
                ids.push(m[off + 3]);
                assert_eq!(m[off + 4] & 1, 1);
            }
            if kind == 1 {
                assert_eq!(m[off + 2], 3, "IOAPIC id after the CPUs");
            }
            off += len;
        }
        assert_eq!(off, m.len());
        assert_eq!(ids, [0, 1, 2]);
    }

    #[test]
    fn written_where_linux_scans() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let at = write(&mem, 254).unwrap();
        // Linux scans 0xe0000..0xfffff on 16-byte boundaries for the RSDP signature.
        assert!((0xe0000..0x10_0000).contains(&at) && at.is_multiple_of(16));
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(at)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
