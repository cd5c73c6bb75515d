//! Full Debian x86-64: the `debian-x86_64` image's kernel and initramfs, booted with a command
//! that prints the machine name. Needs `vireo image pull debian-x86_64` (or `VIREO_X86_KERNEL`
//! and optionally `VIREO_X86_INITRD`), and a host KVM that delivers exceptions to the guest,
//! which a nested PVM host does not: so it is ignored by default, and run with
//! `cargo test -p vireo-kvm --test debian -- --ignored` on such a host, where it fails (saying
//! why) rather than skips when anything it needs is missing.

use std::path::PathBuf;
use std::time::Duration;

use vireo_devices::ConsoleOutput;
use vireo_kvm::KvmVm;
use vireo_machine::{BootConfig, GuestExit};

mod common;

fn locate() -> Result<(PathBuf, Option<Vec<u8>>, String), String> {
    let default_cmdline = "console=ttyS0 quiet loglevel=1".to_string();
    if let Some(k) = std::env::var_os("VIREO_X86_KERNEL") {
        let initrd = match std::env::var_os("VIREO_X86_INITRD") {
            Some(p) => Some(std::fs::read(&p).map_err(|e| format!("VIREO_X86_INITRD: {e}"))?),
            None => None,
        };
        return Ok((k.into(), initrd, default_cmdline));
    }
    let image = vireo_image::open("debian-x86_64").map_err(|e| e.to_string())?;
    let initrd = std::fs::read(&image.initrd).map_err(|e| e.to_string())?;
    Ok((image.kernel, Some(initrd), image.default_cmdline))
}

/// The command archive vireo's /init runs (`/vireo/cmd`), appended to the initramfs at a
/// 4-byte boundary as the CLI does.
fn with_command(initrd: Option<Vec<u8>>, command: &str) -> Vec<u8> {
    let mut data = initrd.unwrap_or_default();
    data.resize(data.len().div_ceil(4) * 4, 0);
    let mut w = vireo_image::cpio::Writer::new();
    w.dir("vireo", 0o755)
        .and_then(|w| w.file("vireo/cmd", 0o644, command.as_bytes()))
        .expect("command archive");
    data.extend(w.finish());
    data
}

#[test]
#[ignore = "boots x86-64 Linux: needs a host KVM that delivers exceptions to guests (not nested PVM) and the debian-x86_64 image; run with --ignored there"]
fn full_debian_x86_64_prints_its_machine_name() {
    let _kvm = common::kvm();
    let works = vireo_kvm::exceptions_work().expect("the exception probe guest ran");
    assert!(
        works,
        "this host's KVM cannot deliver exceptions to a guest (nested PVM?): x86-64 Linux cannot boot here"
    );
    let (kernel, initrd, cmdline) = locate().unwrap_or_else(|why| {
        panic!("no x86-64 kernel ({why}): run `vireo image pull debian-x86_64` or set VIREO_X86_KERNEL")
    });
    let cfg = BootConfig {
        kernel,
        initrd: Some(with_command(initrd, "uname -m\n")),
        cmdline: format!("{cmdline} panic=-1"),
        cpus: 2,
        memory: 512 << 20,
        firmware: None,
        virtio_transport: Default::default(),
    };
    let out = ConsoleOutput::new();
    let mut vm = KvmVm::new(&cfg, out.clone()).expect("build the VM");
    let result = vm.run_timeout(Duration::from_secs(300));
    let console = String::from_utf8_lossy(&out.take()).into_owned();
    assert!(
        console.contains("x86_64"),
        "result {result:?}, console:\n{console}"
    );
    assert_eq!(
        result.expect("guest stopped"),
        GuestExit::PowerOff,
        "{console}"
    );
}
