//! virtio-pci on the real /dev/kvm, driven from bare metal: `tests/guest/virtio_pci.c`, a
//! freestanding C micro-guest built with the host's gcc at test time, enumerates PCI bus 0
//! through the CF8/CFC ports, moves each virtio function's BAR 0, and drives virtio-rng over
//! MSI-X (checking the message lands in the LAPIC's IRR) and virtio-blk over INTx (reads,
//! writes, and the ISR's read-to-clear). The guest prints what it saw on COM1 and powers off
//! through the exit register; a failed check prints `FAIL: <reason>` and exits with a status.
//!
//! It needs a usable /dev/kvm, gcc and objcopy (binutils), and fails, saying which is missing,
//! without them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use vireo_devices::ConsoleOutput;
use vireo_kvm::{KvmError, KvmVm, MicroEntry, MicroGuest};
use vireo_machine::GuestExit;
use vireo_virtio::block::{Block, BlockConfig};
use vireo_virtio::rng::Rng;
use vireo_virtio::VirtioDevice;

/// Where the flat binary is loaded and entered (micro.ld links it there).
const LOAD_ADDR: u64 = 0x10_0000;
const LIMIT: Duration = Duration::from_secs(20);
const SECTOR: usize = 512;
/// The disk: 1 MiB, 2048 sectors.
const DISK_BYTES: usize = 1 << 20;

/// Flags for the guest (with `-T micro.ld -o <elf> virtio_pci.c`): a freestanding static
/// image without SSE (the micro-guest runs without CR4.OSFXSR), red zone, stack protector or
/// unwind tables, and no libc.
const GUEST_CFLAGS: &[&str] = &[
    "-m64",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-static",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-Wl,--build-id=none",
];

mod common;
use common::kvm;

/// A scratch directory for one test's build and disk, removed when the test passes (kept for
/// inspection when it fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vireo-kvm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)
            .unwrap_or_else(|e| panic!("create scratch directory {}: {e}", d.display()));
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs a build tool; a missing tool is a setup problem the test reports, not a reason to skip.
fn run_tool(tool: &str, cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{tool} is missing: this test builds its x86-64 guest with the host's gcc and \
             objcopy; install gcc and binutils (apt-get install gcc binutils; scripts/setup.sh \
             does)"
        ),
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

/// Compiles tests/guest/virtio_pci.c with tests/guest/micro.ld into `out` and returns the flat
/// binary (objcopy -O binary), whose first byte is `_start`.
fn build_guest(out: &Path) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    let src = dir.join("virtio_pci.c");
    let elf = out.join("virtio_pci.elf");
    let bin = out.join("virtio_pci.bin");
    let o = run_tool(
        "gcc",
        Command::new("gcc")
            .args(GUEST_CFLAGS)
            .arg("-T")
            .arg(dir.join("micro.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&src),
    );
    assert!(
        o.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run_tool(
        "objcopy",
        Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&bin),
    );
    assert!(
        o.status.success(),
        "objcopy -O binary {} failed:\n{}",
        elf.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let image = std::fs::read(&bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    assert!(!image.is_empty(), "{} is empty", bin.display());
    image
}

/// What the host puts in sector 0 for the guest to read.
fn sector0_pattern(i: usize) -> u8 {
    (i * 13 + 1) as u8
}

/// What the guest writes to sector 1.
fn sector1_pattern(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first console line starting with `prefix`, without the prefix.
fn line_after<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}\nconsole:\n{console}"))
}

fn assert_line(console: &str, want: &str) {
    assert!(
        console.lines().any(|l| l == want),
        "no line {want:?}\nconsole:\n{console}"
    );
}

#[test]
fn c_guest_drives_virtio_rng_over_msix_and_virtio_blk_over_intx() {
    let scratch = Scratch::new("virtio-pci");
    // Built before the KVM check so a guest that no longer compiles fails everywhere.
    let image = build_guest(&scratch.0);
    println!("guest image: {} bytes", image.len());
    let _kvm = kvm();

    let disk = scratch.0.join("disk.img");
    let mut bytes = vec![0u8; DISK_BYTES];
    for (i, b) in bytes[..SECTOR].iter_mut().enumerate() {
        *b = sector0_pattern(i);
    }
    std::fs::write(&disk, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", disk.display()));
    let blk = Block::open(&BlockConfig {
        path: disk.clone(),
        readonly: false,
        serial: None,
        format: None,
        num_queues: 1,
    })
    .unwrap_or_else(|e| panic!("open the disk image: {e}"));
    let counters = blk.counters().expect("virtio-blk counts");
    // Slots 1 and 2, in this order.
    let devices: Vec<Box<dyn VirtioDevice>> = vec![Box::new(Rng::new()), Box::new(blk)];

    let guest = MicroGuest::new(image, LOAD_ADDR, MicroEntry::Long { rip: LOAD_ADDR });
    let out = ConsoleOutput::new();
    let mut vm = KvmVm::new_micro_with_devices(&guest, out.clone(), devices).expect("build the VM");
    let r: Result<GuestExit, KvmError> = vm.run_timeout(LIMIT);
    let msi_routes = vm.msi_routes();
    // The VM owns the disk; let it go before reading the image back.
    drop(vm);
    let console = String::from_utf8_lossy(&out.take()).into_owned();
    println!("{console}");

    match &r {
        Ok(GuestExit::PowerOff) => {}
        Ok(GuestExit::Failure(code)) => panic!(
            "the guest failed with status {code} (its FAIL line says why)\nconsole:\n{console}"
        ),
        Ok(other) => panic!("the guest exited with {other:?}\nconsole:\n{console}"),
        Err(e) => panic!("the run failed: {e}\nconsole:\n{console}"),
    }
    assert!(
        !console.contains("FAIL"),
        "the guest reported a failure\nconsole:\n{console}"
    );

    // Enumeration: the host bridge at 00.0, then the devices in the order they were given.
    assert!(
        console.contains("pci 00:00.0 1b36:0008"),
        "host bridge missing\nconsole:\n{console}"
    );
    for (slot, device) in [(1, "1044"), (2, "1042")] {
        let want = format!("pci 00:{slot:02x}.0 1af4:{device}");
        assert!(
            console.contains(&want),
            "{want:?} missing\nconsole:\n{console}"
        );
        // The guest moved BAR 0 to 0xd0000000 + slot * 1 MiB and used it there.
        let moved = format!("bar0=0x{:08x}", 0xd000_0000u32 + (slot << 20));
        assert!(
            console.contains(&moved),
            "{moved:?} missing\nconsole:\n{console}"
        );
    }

    // virtio-rng: 64 bytes that look random, and the MSI-X message pending in the IRR.
    let rng = line_after(&console, "rng: ").trim();
    assert!(
        rng.len() == 128 && rng.bytes().all(|b| b.is_ascii_hexdigit()),
        "expected 64 bytes in hex, got {rng:?}\nconsole:\n{console}"
    );
    let mut distinct: Vec<u8> = (0..64)
        .map(|i| u8::from_str_radix(&rng[2 * i..2 * i + 2], 16).expect("checked hex digits"))
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    // 64 random bytes have ~56 distinct values; fewer than 16 is not randomness.
    assert!(
        distinct.len() >= 16,
        "rng bytes look non-random ({} distinct): {rng}\nconsole:\n{console}",
        distinct.len()
    );
    assert_line(&console, "msix irr=1");
    assert!(
        msi_routes >= 1,
        "the MSI went out without an irqfd route\nconsole:\n{console}"
    );

    // virtio-blk.
    assert_line(&console, &format!("blk capacity={}", DISK_BYTES / SECTOR));
    let sector0: Vec<u8> = (0..16).map(sector0_pattern).collect();
    assert_line(&console, &format!("blk sector0={}", hex(&sector0)));
    assert_line(&console, "blk write-read ok");
    assert_line(&console, "isr ok");
    assert_line(&console, "virtio-pci guest done");
    // The guest's doorbells reached the I/O thread through KVM's ioeventfd, not vCPU exits.
    let c: std::collections::BTreeMap<_, _> = counters.snapshot().into_iter().collect();
    assert!(c["read_requests"] >= 1 && c["write_requests"] >= 1, "{c:?}");
    assert!(c["io_wakeups"] >= 1, "{c:?}");
    assert_eq!(c["notify_exits"], 0, "a doorbell exited to vireo: {c:?}");

    // The guest's write reached the image, and nothing else changed.
    let after = std::fs::read(&disk).unwrap_or_else(|e| panic!("read {}: {e}", disk.display()));
    assert_eq!(after.len(), DISK_BYTES, "the image changed size");
    let want: Vec<u8> = (0..SECTOR).map(sector1_pattern).collect();
    assert!(
        after[SECTOR..2 * SECTOR] == want[..],
        "sector 1 of the image is not the guest's pattern: starts {}\nconsole:\n{console}",
        hex(&after[SECTOR..SECTOR + 16])
    );
    assert!(
        after[..SECTOR] == bytes[..SECTOR],
        "sector 0 of the image changed"
    );
    assert!(
        after[2 * SECTOR..].iter().all(|&b| b == 0),
        "the guest wrote past sector 1"
    );
}
