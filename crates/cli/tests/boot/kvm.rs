//! x86-64 guests on the kvm accelerator through the `vireo` binary: tiny kernels built here
//! (a bzImage, ELFs with and without Linux's notes) that print a line on COM1 and exit with a
//! status through the exit register, and the full Debian x86-64 image.
//!
//! Every test here needs a usable /dev/kvm and fails, saying why, without one;
//! `VIREO_TESTS_WITHOUT_KVM=1 scripts/test.sh` leaves them (every `kvm::` test) out and lists
//! them as not run. Whether this host's KVM delivers exceptions to a guest (nested PVM does
//! not) decides what vireo must do with each kernel, and the tests check that behaviour on
//! either kind of host.

use std::path::PathBuf;

use vireo_kvm::asm::{Asm, Mode};
use vireo_kvm::testkernel::{self, ElfNote};
use vireo_kvm::{KvmVm, EXIT_REGISTER_ADDR};

use super::common::{run, run_in, run_raw, vireo, Run, VIREO_ERROR};
use super::tempdir;

const COM1: u16 = 0x3f8;
/// What every tiny kernel prints, and the status it exits with.
const GREETING: &str = "tiny kernel\n";
const STATUS: i32 = 42;

/// Fails the test, saying why and how to leave the KVM tests out, without a usable /dev/kvm.
fn require_kvm() {
    if let Err(e) = KvmVm::probe() {
        panic!(
            "this test needs a usable /dev/kvm: {e}. On a host without KVM, run \
             `VIREO_TESTS_WITHOUT_KVM=1 scripts/test.sh`, which leaves the KVM tests out and \
             lists them as not run"
        );
    }
}

fn exceptions_work() -> bool {
    vireo_kvm::exceptions_work().expect("the exception probe guest ran")
}

/// Long-mode code at `base` (its entry) that prints [`GREETING`] and exits with [`STATUS`].
fn greeter(a: &mut Asm) {
    let text = a.label();
    a.print(COM1, text)
        .mov_ebx(EXIT_REGISTER_ADDR as u32)
        .store32_at_rbx(((STATUS as u32) << 16) | 0x3333)
        .spin();
    a.bind(text);
    a.bytes(GREETING.as_bytes()).bytes(&[0]);
}

/// An ELF entered in long mode at 16 MiB (no PVH note: the Linux 64-bit boot protocol).
fn elf(notes: &[ElfNote]) -> Vec<u8> {
    let mut a = Asm::new(Mode::Long, 0x100_0000);
    greeter(&mut a);
    testkernel::elf(&a.finish().unwrap(), 0x100_0000, notes)
}

/// A bzImage whose 64-bit entry (0x200 into the kernel at 1 MiB) greets.
fn bzimage() -> Vec<u8> {
    let mut a = Asm::new(Mode::Long, 0x10_0000);
    a.pad_to(0x200);
    greeter(&mut a);
    testkernel::bzimage(&a.finish().unwrap())
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Fails unless the run printed [`GREETING`] and exited with [`STATUS`].
fn assert_greeted(r: &Run) {
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (STATUS, GREETING),
        "{}",
        r.stderr
    );
}

/// Fails unless `stderr` (of the run of kernel `name`) contains every one of `wants`.
fn assert_says(name: &str, stderr: &str, wants: &[&str]) {
    for want in wants {
        assert!(stderr.contains(want), "{name}: no {want:?} in {stderr}");
    }
}

#[test]
fn linux_kernels_are_refused_where_kvm_cannot_deliver_exceptions() {
    require_kvm();
    let works = exceptions_work();
    let dir = tempdir();
    for (name, bytes) in [
        ("tiny.bzImage", bzimage()),
        ("linux.elf", elf(&[ElfNote::linux()])),
        ("xen-linux.elf", elf(&[ElfNote::xen_guest_os_linux()])),
    ] {
        let kernel = write(&dir, name, &bytes);
        let r = run(&["run", "--kernel", kernel.to_str().unwrap()]);
        if works {
            assert_eq!(
                (r.status, r.stdout.as_str()),
                (STATUS, GREETING),
                "{name}: {}",
                r.stderr
            );
            assert!(!r.stderr.contains("warning"), "{name}: {}", r.stderr);
        } else {
            // Said at once, naming the kernel and the way out, rather than a slow death.
            assert_eq!(r.status, VIREO_ERROR, "{name}: {}{}", r.stdout, r.stderr);
            assert!(r.stdout.is_empty(), "{name} ran: {}", r.stdout);
            assert_says(
                name,
                &r.stderr,
                &["cannot deliver exceptions", name, "--skip-kvm-probe"],
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_kernel_that_is_not_linux_runs_and_is_warned_about_where_kvm_cannot_deliver_exceptions() {
    require_kvm();
    let works = exceptions_work();
    let dir = tempdir();
    let gnu = ElfNote {
        owner: "GNU",
        kind: 3, // NT_GNU_BUILD_ID
        desc: vec![0x5a; 20],
    };
    for (name, bytes) in [("plain.elf", elf(&[])), ("build-id.elf", elf(&[gnu]))] {
        let kernel = write(&dir, name, &bytes);
        let r = run(&["run", "--kernel", kernel.to_str().unwrap()]);
        assert_eq!(
            (r.status, r.stdout.as_str()),
            (STATUS, GREETING),
            "{name}: {}",
            r.stderr
        );
        if works {
            assert!(!r.stderr.contains("warning"), "{name}: {}", r.stderr);
        } else {
            assert_says(
                name,
                &r.stderr,
                &[
                    "warning",
                    "cannot deliver exceptions",
                    name,
                    "not Linux",
                    "may fail",
                ],
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `VIREO_SKIP_KVM_PROBE`, the old spelling of `--skip-kvm-probe`, still boots a Linux kernel
/// without the probe, and says to use the flag.
#[test]
fn the_old_skip_probe_variable_still_works_and_names_the_flag() {
    require_kvm();
    let dir = tempdir();
    let kernel = write(&dir, "tiny.bzImage", &bzimage());
    let mut cmd = vireo();
    cmd.env("VIREO_SKIP_KVM_PROBE", "1")
        .args(["run", "--kernel", kernel.to_str().unwrap()]);
    let r = run_raw(cmd, None);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
    );
    assert_eq!((r.status, &*stdout), (STATUS, GREETING), "{stderr}");
    assert!(
        stderr.contains("VIREO_SKIP_KVM_PROBE is deprecated: use --skip-kvm-probe"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cannot deliver"),
        "the probe ran: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn skip_kvm_probe_flag_boots_without_the_probe() {
    require_kvm();
    let dir = tempdir();
    let kernel = write(&dir, "tiny.bzImage", &bzimage());
    let r = run(&[
        "run",
        "--skip-kvm-probe",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert_greeted(&r);
    assert!(
        !r.stderr.contains("cannot deliver") && !r.stderr.contains("deprecated"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "boots x86-64 Linux: needs a host KVM that delivers exceptions to guests (not nested PVM) and the debian-x86_64 image; run with --ignored there"]
fn x86_64_image_on_kvm() {
    require_kvm();
    let out = vireo().args(["image", "list"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("debian-x86_64")),
        "the debian-x86_64 image is not pulled: run `vireo image pull debian-x86_64` (scripts/setup.sh does)"
    );
    assert!(
        exceptions_work(),
        "this host's KVM cannot deliver exceptions to a guest (nested PVM?): x86-64 Linux cannot boot here"
    );
    let r = run(&["run", "--image", "debian-x86_64", "--", "uname", "-m"]);
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "x86_64\n");
}

/// The kvm accelerator's guest-facing threads are filtered too (crates/jail): a vCPU, or the
/// run loop, that makes a call outside its list kills the VMM by SIGSYS.
#[test]
fn a_vcpu_or_the_run_loop_making_a_forbidden_call_kills_the_vmm() {
    use std::os::unix::process::ExitStatusExt;
    require_kvm();
    let dir = tempdir();
    let kernel = write(&dir, "plain.elf", &elf(&[]));
    for kind in ["vcpu", "kvm"] {
        let out = vireo()
            .env("VIREO_SECCOMP_SELFTEST", kind)
            .args(["run", "--kernel", kernel.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(31),
            "{kind}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without the hook the same kernel greets and exits: the filters let it run.
    let r = run(&["run", "--kernel", kernel.to_str().unwrap()]);
    assert_greeted(&r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A kvm guest runs in a jail: /dev/kvm is there for the jail's user (as root, a node of its
/// own), and the jail's directory is gone afterwards.
#[test]
fn a_kvm_guest_runs_in_a_jail() {
    require_kvm();
    let dir = tempdir();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = write(&dir, "plain.elf", &elf(&[]));
    let root = dir.join("jail");
    let r = run(&[
        "run",
        "--jail",
        root.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    assert_greeted(&r);
    assert!(!root.exists(), "the jail's directory is left");
    // Paths relative to the working directory mean the same inside the jail.
    let r = run_in(
        Some(&dir),
        &["run", "--jail", "jail", "--kernel", "plain.elf"],
    );
    assert_greeted(&r);
    assert!(!root.exists(), "the jail's directory is left");
    let _ = std::fs::remove_dir_all(&dir);
}
