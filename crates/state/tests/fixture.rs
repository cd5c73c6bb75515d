//! The compatibility guard: `fixtures/v1-synthetic.vst` and `fixtures/v1-synthetic.memory.bin`
//! were written by format 1 of vireo-state and are checked in. Every later vireo must read
//! them, with the values asserted here.
//!
//! Never regenerate an existing fixture: that would defeat the guard. When the format gains a
//! version N, add a `vN-synthetic` fixture beside this one (and keep this one) with
//! `cargo test -p vireo-state --test fixture -- --ignored write_fixture`, which writes the
//! files of the current [`FORMAT_VERSION`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vireo_state::{
    Accel, Arch, DiskRef, Header, Kind, MemoryMap, SectionId, StateFile, FORMAT_VERSION,
};

/// Stand-ins for the device and vCPU state types, shaped like the real ones.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct MachineState {
    time_ns: u64,
    plic_pending: Vec<u32>,
    plic_enable: [u32; 4],
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct HartState {
    pc: u64,
    x: Vec<u64>,
    mode: u8,
    csrs: Vec<(u16, u64)>,
    waiting: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct UartState {
    regs: [u8; 8],
    fifo: Vec<u8>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const RAM_BASE: u64 = 0x8000_0000;

fn hart() -> HartState {
    HartState {
        pc: 0x8020_0000,
        x: (0..32).map(|i| i * 0x1111).collect(),
        mode: 1,
        csrs: vec![(0x180, 0x8000_0000_0008_0200), (0x105, 0x8020_0040)],
        waiting: false,
    }
}

#[test]
#[ignore = "writes a new fixture; see the module doc"]
fn write_fixture() {
    let dir = fixtures();
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("v{FORMAT_VERSION}-synthetic");
    let ram =
        vireo_machine::GuestRam::new(&[(RAM_BASE, 16 * 1024), (0x1_0000_0000, 8 * 1024)]).unwrap();
    ram.write(RAM_BASE, b"\x13\x05\x00\x00vireo fixture")
        .unwrap();
    ram.write(RAM_BASE + 3 * 4096 + 4000, &[0xa5; 96]).unwrap();
    ram.write(0x1_0000_0000 + 8 * 1024 - 1, &[0x7e]).unwrap();
    let map = vireo_state::write_memory(dir.join(format!("{name}.memory.bin")), ram.memory(), None)
        .unwrap();

    let mut state = StateFile::new(Header {
        format_version: FORMAT_VERSION,
        vireo_version: "0.1.0".into(),
        accel: Accel::Emu,
        arch: Arch::Riscv64,
        id: "5eed5eed5eed5eed5eed5eed5eed5eed".into(),
        parent: None,
        created_unix_ms: 1_750_000_000_000,
        kind: Kind::Full,
    });
    state
        .put(
            SectionId::Spec,
            1,
            "{\"name\":\"fixture\",\"memory_mib\":1}",
        )
        .unwrap();
    let machine = MachineState {
        time_ns: 123_456_789,
        plic_pending: vec![0, 1 << 10],
        plic_enable: [0, 0x400, 0, 0],
    };
    state.put(SectionId::Machine, 1, &machine).unwrap();
    state.put(SectionId::Vcpu(0), 1, &hart()).unwrap();
    let uart = UartState {
        regs: [0, 1, 0xc1, 3, 0xb, 0x60, 0, 0],
        fifo: b"login: ".to_vec(),
    };
    state
        .put(SectionId::Device("uart0".into()), 2, &uart)
        .unwrap();
    state.put(SectionId::MemoryMap, 1, &map).unwrap();
    let disks = vec![DiskRef {
        id: "root".into(),
        path: "/var/lib/vireo/pools/default/root.qcow2".into(),
        format: "qcow2".into(),
        read_only: false,
        size: 1 << 30,
        fingerprint: "00".repeat(32),
    }];
    state.put(SectionId::Disks, 1, &disks).unwrap();
    state.write_atomic(dir.join(format!("{name}.vst"))).unwrap();
}

#[test]
fn v1_fixture_is_still_read() {
    let dir = fixtures();
    let state = StateFile::read(dir.join("v1-synthetic.vst")).unwrap();
    let h = state.header();
    assert_eq!(h.format_version, 1);
    assert_eq!(h.vireo_version, "0.1.0");
    assert_eq!(
        (h.accel, h.arch, h.kind),
        (Accel::Emu, Arch::Riscv64, Kind::Full)
    );
    assert_eq!(h.id, "5eed5eed5eed5eed5eed5eed5eed5eed");
    assert_eq!(h.parent, None);
    assert_eq!(h.created_unix_ms, 1_750_000_000_000);
    state.check_compatible(Accel::Emu, Arch::Riscv64).unwrap();
    assert!(state.check_compatible(Accel::Kvm, Arch::X86_64).is_err());

    let ids: Vec<SectionId> = state.sections().cloned().collect();
    assert_eq!(
        ids,
        [
            SectionId::Spec,
            SectionId::Machine,
            SectionId::Vcpu(0),
            SectionId::Device("uart0".into()),
            SectionId::MemoryMap,
            SectionId::Disks,
        ]
    );
    let (v, spec) = state.require::<String>(&SectionId::Spec).unwrap();
    assert_eq!(
        (v, spec.as_str()),
        (1, "{\"name\":\"fixture\",\"memory_mib\":1}")
    );
    let (_, m) = state.require::<MachineState>(&SectionId::Machine).unwrap();
    assert_eq!(m.time_ns, 123_456_789);
    assert_eq!(m.plic_pending, [0, 1 << 10]);
    assert_eq!(m.plic_enable, [0, 0x400, 0, 0]);
    assert_eq!(
        state.require::<HartState>(&SectionId::Vcpu(0)).unwrap(),
        (1, hart())
    );
    let (v, uart) = state
        .require::<UartState>(&SectionId::Device("uart0".into()))
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(uart.regs, [0, 1, 0xc1, 3, 0xb, 0x60, 0, 0]);
    assert_eq!(uart.fifo, b"login: ");
    let (_, disks) = state.require::<Vec<DiskRef>>(&SectionId::Disks).unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].path, "/var/lib/vireo/pools/default/root.qcow2");
    assert_eq!(
        (disks[0].format.as_str(), disks[0].size),
        ("qcow2", 1 << 30)
    );

    let (_, map) = state.require::<MemoryMap>(&SectionId::MemoryMap).unwrap();
    assert_eq!(map.file_len, 24 * 1024);
    assert_eq!(
        map.layout(),
        [(RAM_BASE, 16 * 1024), (0x1_0000_0000, 8 * 1024)]
    );
    let ram = vireo_state::map_memory(dir.join("v1-synthetic.memory.bin"), &map).unwrap();
    let mut b = [0u8; 17];
    ram.read(RAM_BASE, &mut b).unwrap();
    assert_eq!(&b, b"\x13\x05\x00\x00vireo fixture");
    let mut page = [0u8; 4096];
    ram.read(RAM_BASE + 3 * 4096, &mut page).unwrap();
    assert!(page[..4000].iter().all(|&x| x == 0) && page[4000..].iter().all(|&x| x == 0xa5));
    ram.read(RAM_BASE + 4096, &mut page).unwrap();
    assert!(page.iter().all(|&x| x == 0));
    let mut last = [0u8; 1];
    ram.read(0x1_0000_0000 + 8 * 1024 - 1, &mut last).unwrap();
    assert_eq!(last, [0x7e]);
}
