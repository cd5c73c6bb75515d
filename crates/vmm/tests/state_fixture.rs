//! A snapshot taken by this version of vireo (state format 1, emu section version 1) of a
//! small emulated machine, checked in at `tests/fixtures/emu-v1`. The versioning rule
//! (vireo_state's crate doc) says every later vireo restores it: this test does, and checks
//! the machine goes on from where it was saved.
//!
//! The machine: 32 MiB of RAM, one hart running [`STORE_LOOP`] from RAM in M-mode — x1 counts
//! and every count is stored at RAM + 512 KiB. Its memory file is checked in gzipped (git keeps
//! no holes; it is nearly all zeros); the test unpacks it beside the state file.
//! `cargo test -p vireo-vmm --test state_fixture -- --ignored write_the_fixture` writes it
//! anew into `target/emu-v1`; replace the checked-in one only with a new format version (and
//! keep the old one, with its test).

use std::path::{Path, PathBuf};
use std::time::Duration;
use vireo_vmm::snapshot::{Accel, MachineSnap};

use vireo_devices::ConsoleOutput;
use vireo_machine::{BootConfig, GuestExit};
use vireo_riscv::state::ClockMode;
use vireo_riscv::{EmuVm, Isa};

const RAM_BASE: u64 = 0x8000_0000;
const TARGET: u64 = RAM_BASE + 0x8_0000;

/// x2 = RAM_BASE + 512 KiB; then for ever: x1 += 1, sd x1, 0(x2).
const STORE_LOOP: [u32; 6] = [
    0x0000_0117, // auipc x2, 0
    0x0008_01b7, // lui x3, 0x80
    0x0031_0133, // add x2, x2, x3
    0x0010_8093, // addi x1, x1, 1
    0x0011_3023, // sd x1, 0(x2)
    0xff9f_f06f, // j -8
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/emu-v1")
}

fn cfg(firmware: PathBuf) -> BootConfig {
    BootConfig {
        kernel: PathBuf::new(),
        firmware: Some(firmware),
        initrd: None,
        cmdline: String::new(),
        cpus: 1,
        memory: 32 << 20,
        virtio_transport: Default::default(),
    }
}

fn read_u64(vm: &EmuVm, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    vm.guest_memory().read(addr, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Runs `vm` for a moment on a thread, then pauses it and returns it stopped.
fn run_a_little(vm: EmuVm) -> EmuVm {
    let control = vm.control();
    let t = std::thread::spawn(move || {
        let mut vm = vm;
        let exit = vm.run().unwrap();
        (vm, exit)
    });
    std::thread::sleep(Duration::from_millis(50));
    control.stop(GuestExit::PowerOff);
    let (vm, exit) = t.join().unwrap();
    assert_eq!(exit, GuestExit::PowerOff);
    vm
}

/// The fixture unpacked into a scratch directory.
fn unpack() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-state-fixture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["state.vst", "spec.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    let gz = std::fs::File::open(fixture().join("memory.bin.gz")).unwrap();
    let mut out = std::fs::File::create(dir.join("memory.bin")).unwrap();
    std::io::copy(&mut flate2::read::GzDecoder::new(gz), &mut out).unwrap();
    dir
}

#[test]
fn the_checked_in_v1_snapshot_restores_and_runs_on() {
    let dir = unpack();
    let loaded = vireo_vmm::snapshot::load(&dir, false, Accel::Emu).unwrap();
    let MachineSnap::Emu(state) = &loaded.state else {
        panic!("the fixture is an emu snapshot");
    };
    let saved_count = state.harts[0].x[1];
    assert!(
        saved_count > 1000,
        "the fixture's guest had counted: {saved_count}"
    );
    let vm = EmuVm::restore(
        // Nothing is loaded on a restore: the firmware file need not exist.
        &cfg(dir.join("no-firmware-needed.bin")),
        ConsoleOutput::new(),
        Vec::new(),
        loaded.ram,
        state,
        ClockMode::Pause,
    )
    .unwrap();
    // The memory came back: the last count stored is the saved x1 (or one behind it, when
    // the hart was saved between its add and its store).
    let stored = read_u64(&vm, TARGET);
    assert!(
        stored == saved_count || stored + 1 == saved_count,
        "RAM holds {stored}, the hart {saved_count}"
    );
    let vm = run_a_little(vm);
    let now = read_u64(&vm, TARGET);
    assert!(
        now > saved_count + 1000,
        "the restored guest did not count on from {saved_count}: {now}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes the fixture into `target/emu-v1` (see the module doc).
#[test]
#[ignore = "writes a new fixture; run by hand when the format version changes"]
fn write_the_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let work = root.join("emu-v1-work");
    let out = root.join("emu-v1");
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&work).unwrap();
    let firmware = work.join("store-loop.bin");
    let bytes: Vec<u8> = STORE_LOOP.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&firmware, bytes).unwrap();
    let emu = EmuVm::build(&cfg(firmware), ConsoleOutput::new(), Vec::new(), Isa::max()).unwrap();
    let mut vm = vireo_vmm::Vm::Emu(emu);
    let control = vm.control();
    let t = std::thread::spawn(move || vm.run().map(|_| ()).map_err(|e| format!("{e:?}")));
    std::thread::sleep(Duration::from_millis(50));
    let spec = vireo_spec::VmSpec::default();
    let taken = vireo_vmm::snapshot::take(&control, &spec, &[], &out, None).unwrap();
    control.stop(GuestExit::PowerOff);
    t.join().unwrap().unwrap();
    let mem = std::fs::read(out.join("memory.bin")).unwrap();
    let gz = std::fs::File::create(out.join("memory.bin.gz")).unwrap();
    let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &mem).unwrap();
    enc.finish().unwrap();
    std::fs::remove_file(out.join("memory.bin")).unwrap();
    eprintln!(
        "wrote {} ({} memory pages)",
        out.display(),
        taken.memory_pages
    );
}
