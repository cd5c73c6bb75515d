//! Direct kernel boot through `KvmVm::new` (the CLI's path): tiny kernels in each format that
//! print the command line and initrd they were handed and power off through the exit register
//! the board named on the command line; and malformed kernel files, which must be refused with
//! errors that name the file and the defect.

use std::path::PathBuf;
use std::time::Duration;

use vireo_devices::ConsoleOutput;
use vireo_kvm::asm::{Asm, Base, Mode};
use vireo_kvm::testkernel::{self, bzimage, ElfNote};
use vireo_kvm::{KvmError, KvmVm, LoadError, EXIT_REGISTER_ADDR};
use vireo_machine::{BootConfig, GuestExit};

const COM1: u16 = 0x3f8;
mod common;
use common::kvm;

fn write_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-kvm-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// An ELF with one PT_LOAD of `code` at `addr` (the entry) and, when `pvh_entry` is given, the
/// Xen PVH entry note.
fn elf(code: &[u8], addr: u64, pvh_entry: Option<u32>) -> Vec<u8> {
    let notes: Vec<ElfNote> = pvh_entry.into_iter().map(ElfNote::pvh_entry).collect();
    testkernel::elf(code, addr, &notes)
}

/// Code that prints the string at `[base + cmdline_at]`, a newline, the initrd (a
/// NUL-terminated string) found through `initrd_at`, and powers off.
fn report_boot_info(a: &mut Asm, base: Base, cmdline_at: u32, initrd: &[(Base, u32)]) {
    // ebx/rbx is kept pointing at the boot structure.
    if base == Base::Esi {
        a.bytes(&[0x89, 0xf3]); // mov ebx, esi (89 /r, ModRM 0xf3)
    }
    a.load_esi(Base::Ebx, cmdline_at).print_si(COM1);
    a.mov_al(b'\n').out_dx_al();
    let (first, rest) = initrd.split_first().unwrap();
    a.load_esi(first.0, first.1);
    for &(b, d) in rest {
        a.load_esi(b, d);
    }
    a.print_si(COM1);
    a.mov_ebx(EXIT_REGISTER_ADDR as u32)
        .store32_at_rbx(0x5555)
        .spin();
}

fn boot(kernel: PathBuf, cmdline: &str) -> (Result<GuestExit, KvmError>, String) {
    let cfg = BootConfig {
        kernel,
        initrd: Some(b"initrd-bytes\0".to_vec()),
        cmdline: cmdline.into(),
        cpus: 2,
        memory: 64 << 20,
        firmware: None,
        virtio_transport: Default::default(),
    };
    let out = ConsoleOutput::new();
    let mut vm = KvmVm::new(&cfg, out.clone()).expect("build VM");
    let r = vm.run_timeout(Duration::from_secs(20));
    (r, String::from_utf8_lossy(&out.take()).into_owned())
}

const EXPECTED: &str = "console=ttyS0 vireo.exit=0xfeb00000\ninitrd-bytes";

#[test]
fn pvh_elf_gets_start_info_in_ebx() {
    let _kvm = kvm();
    // 32-bit protected mode; hvm_start_info: modlist_paddr at 0x10, cmdline_paddr at 0x18;
    // a module entry starts with its paddr.
    let mut a = Asm::new(Mode::Long, 0x100_0000);
    report_boot_info(
        &mut a,
        Base::Ebx,
        0x18,
        &[(Base::Ebx, 0x10), (Base::Esi, 0)],
    );
    let code = a.finish().unwrap();
    let k = write_file("pvh.elf", &elf(&code, 0x100_0000, Some(0x100_0000)));
    let (r, out) = boot(k, "console=ttyS0");
    assert_eq!(out, EXPECTED);
    assert_eq!(r.unwrap(), GuestExit::PowerOff);
}

#[test]
fn elf_without_pvh_note_gets_the_zero_page_in_rsi() {
    let _kvm = kvm();
    // 64-bit mode; boot_params: hdr.cmd_line_ptr at 0x228, hdr.ramdisk_image at 0x218.
    let mut a = Asm::new(Mode::Long, 0x100_0000);
    report_boot_info(&mut a, Base::Esi, 0x228, &[(Base::Ebx, 0x218)]);
    let code = a.finish().unwrap();
    let k = write_file("plain.elf", &elf(&code, 0x100_0000, None));
    let (r, out) = boot(k, " console=ttyS0 ");
    assert_eq!(out, EXPECTED);
    assert_eq!(r.unwrap(), GuestExit::PowerOff);
}

#[test]
fn bzimage_enters_startup_64_with_the_zero_page() {
    let _kvm = kvm();
    // The 64-bit entry point is 0x200 into the protected-mode kernel loaded at 1 MiB.
    let mut a = Asm::new(Mode::Long, 0x10_0000);
    a.pad_to(0x200);
    report_boot_info(&mut a, Base::Esi, 0x228, &[(Base::Ebx, 0x218)]);
    let k = write_file("tiny.bzImage", &bzimage(&a.finish().unwrap()));
    let (r, out) = boot(k, "console=ttyS0");
    assert_eq!(out, EXPECTED);
    assert_eq!(r.unwrap(), GuestExit::PowerOff);
}

fn refused(name: &str, bytes: &[u8]) -> String {
    let cfg = BootConfig {
        kernel: write_file(name, bytes),
        cmdline: "console=ttyS0".into(),
        cpus: 1,
        memory: 64 << 20,
        ..Default::default()
    };
    let err = KvmVm::new(&cfg, ConsoleOutput::new())
        .err()
        .expect("malformed kernel accepted");
    let msg = err.to_string();
    assert!(matches!(err, KvmError::Load(_)), "{msg}");
    assert!(msg.contains(name), "error does not name the file: {msg}");
    msg
}

#[test]
fn malformed_elf_files_are_refused_by_name() {
    let _kvm = kvm();
    let good = elf(&[0xf4; 64], 0x100_0000, Some(0x100_0000));
    let mut riscv = good.clone();
    riscv[18] = 243; // EM_RISCV
    assert!(refused("riscv.elf", &riscv).contains("not x86-64"));
    let mut bad_ph = good.clone();
    bad_ph[32..40].copy_from_slice(&0xffff_ff00u64.to_le_bytes()); // e_phoff past the end
    assert!(refused("phoff.elf", &bad_ph).contains("program header table"));
    let truncated = &good[..good.len() - 10];
    assert!(refused("truncated.elf", truncated).contains("outside the"));
    let mut low = good.clone();
    low[64 + 24..64 + 32].copy_from_slice(&0x8000u64.to_le_bytes()); // p_paddr
    assert!(refused("low.elf", &low).contains("below 1 MiB"));
    let mut huge = good.clone();
    huge[64 + 40..64 + 48].copy_from_slice(&(1u64 << 40).to_le_bytes()); // p_memsz
    assert!(refused("huge.elf", &huge).contains("give the guest more memory"));
    assert!(refused("header.elf", &good[..30]).contains("shorter than an ELF header"));
    let msg = refused("garbage.img", &[0x42; 4096]);
    assert!(msg.contains("neither an ELF vmlinux"), "{msg}");
    println!("{msg}");
}

#[test]
fn malformed_bzimages_are_refused_by_name() {
    let _kvm = kvm();
    let good = bzimage(&[0xf4; 0x400]);
    let mut old = good.clone();
    old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
    let msg = refused("old.bzImage", &old);
    assert!(msg.contains("2.12"), "{msg}");
    let mut no64 = good.clone();
    no64[0x236] = 0;
    assert!(refused("no64.bzImage", &no64).contains("XLF_KERNEL_64"));
    let mut flag = good.clone();
    flag[0x1fe] = 0x12;
    assert!(refused("flag.bzImage", &flag).contains("boot flag"));
    let mut zimage = good.clone();
    zimage[0x211] = 0;
    assert!(refused("zImage", &zimage).contains("LOADED_HIGH"));
    assert!(refused("setup-only.bzImage", &good[..1024]).contains("no kernel"));
    let mut init = good.clone();
    init[0x260..0x264].copy_from_slice(&0x8000_0000u32.to_le_bytes()); // init_size 2 GiB
    assert!(refused("init.bzImage", &init).contains("give the guest more memory"));
    // An initrd larger than RAM.
    let cfg = BootConfig {
        kernel: write_file("ok.bzImage", &good),
        initrd: Some(vec![0; 80 << 20]),
        cpus: 1,
        memory: 64 << 20,
        ..Default::default()
    };
    let err = KvmVm::new(&cfg, ConsoleOutput::new()).err().unwrap();
    assert!(
        matches!(err, KvmError::Load(LoadError::InitrdTooBig { .. })),
        "{err}"
    );
}

#[test]
fn missing_kernel_and_firmware_are_refused() {
    let _kvm = kvm();
    let cfg = BootConfig {
        kernel: "/nonexistent/bzImage".into(),
        cpus: 1,
        memory: 64 << 20,
        ..Default::default()
    };
    let err = KvmVm::new(&cfg, ConsoleOutput::new()).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/bzImage"), "{err}");
    let cfg = BootConfig {
        firmware: Some("/x/fw_jump.bin".into()),
        ..cfg
    };
    assert!(matches!(
        KvmVm::new(&cfg, ConsoleOutput::new()),
        Err(KvmError::Config(_))
    ));
}
