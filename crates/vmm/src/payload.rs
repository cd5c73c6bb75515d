//! From a VM definition to what boots: the kernel, initramfs and command line on disk
//! ([`resolve`]), the accelerator that runs them and the board's settings ([`plan`]), and the
//! checks a host must pass first ([`check_kvm`]).

use std::path::{Path, PathBuf};

use vireo_kvm::KernelKind;
use vireo_machine::{BootConfig, VirtioTransport};
use vireo_spec::{Accel, VmSpec};

use crate::{fail, Error};

/// What the spec resolves to on disk.
pub struct Payload {
    pub kernel: PathBuf,
    pub initrd: Option<Vec<u8>>,
    pub firmware: Option<PathBuf>,
    pub cmdline: String,
    pub arch: Arch,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    Riscv64,
    X86_64,
}

fn read(what: &str, p: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(p).map_err(|e| fail(format!("cannot read {what} {}: {e}", p.display())))
}

/// Guesses a kernel's architecture from its headers.
pub fn kernel_arch(p: &Path) -> Result<Arch, Error> {
    use std::io::Read;
    let mut head = [0u8; 0x240];
    let n = std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| fail(format!("cannot read kernel {}: {e}", p.display())))?;
    let h = &head[..n];
    if h.len() >= 20 && h.starts_with(b"\x7fELF") {
        return match u16::from_le_bytes([h[18], h[19]]) {
            243 => Ok(Arch::Riscv64),
            62 => Ok(Arch::X86_64),
            m => Err(fail(format!(
                "{} is an ELF file for machine {m}: expected RISC-V (243) or x86-64 (62)",
                p.display()
            ))),
        };
    }
    if h.len() >= 0x3c && (&h[0x38..0x3c] == b"RSC\x05" || &h[0x30..0x36] == b"RISCV\0") {
        return Ok(Arch::Riscv64);
    }
    if h.len() >= 0x206 && &h[0x202..0x206] == b"HdrS" {
        return Ok(Arch::X86_64);
    }
    Err(fail(format!(
        "{} is not a kernel vireo can boot: expected a RISC-V Image, an x86 bzImage or an ELF vmlinux",
        p.display()
    )))
}

/// The command's pseudo-terminal in the guest: rows, columns and `TERM`.
pub struct GuestTty {
    pub rows: u16,
    pub cols: u16,
    pub term: String,
}

/// Opens what `spec` boots; with `tty`, the command runs on a guest pseudo-terminal of that size.
pub fn resolve(spec: &VmSpec, tty: Option<&GuestTty>) -> Result<Payload, Error> {
    let image = match &spec.image {
        Some(name) => Some(vireo_image::open(name).map_err(fail)?),
        None => None,
    };
    let kernel = match (&spec.kernel, &image, &spec.firmware) {
        (Some(k), _, _) => k.clone(),
        (None, Some(i), _) => i.kernel.clone(),
        // A bare-metal program alone, as QEMU's -bios without -kernel: it runs in M-mode
        // from its ELF entry point or, raw, from the start of RAM.
        (None, None, Some(_)) => PathBuf::new(),
        (None, None, None) => {
            return Err(fail(
                "nothing to boot: give --image NAME, --kernel PATH or --firmware PROG",
            ))
        }
    };
    if kernel.as_os_str().is_empty() {
        if !spec.command.is_empty() {
            return Err(fail(
                "a command needs a Linux guest: give --image or --kernel with --firmware",
            ));
        }
        if spec.initrd.is_some() {
            return Err(fail(
                "--initrd needs a kernel to unpack it (--kernel or --image)",
            ));
        }
        return Ok(Payload {
            kernel,
            initrd: None,
            firmware: spec.firmware.clone(),
            cmdline: spec.cmdline.clone().unwrap_or_default(),
            arch: Arch::Riscv64,
        });
    }
    let arch = kernel_arch(&kernel)?;
    let initrd_path = spec
        .initrd
        .clone()
        .or_else(|| image.as_ref().map(|i| i.initrd.clone()));
    let mut initrd = match &initrd_path {
        Some(p) => Some(read("initrd", p)?),
        None => None,
    };
    if !spec.command.is_empty() {
        // The command travels as a second archive appended to the initramfs; the kernel
        // unpacks concatenated archives in order.
        let body = vireo_image::shell_quote(&spec.command) + "\n";
        let mut w = vireo_image::cpio::Writer::new();
        w.dir("vireo", 0o755)
            .and_then(|w| w.file(vireo_image::COMMAND_FILE, 0o644, body.as_bytes()))
            .map_err(fail)?;
        if let Some(t) = tty {
            // TERM is the host's, reduced to what a shell word can hold safely.
            let term: String = t
                .term
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-_.+".contains(*c))
                .collect();
            let term = if term.is_empty() {
                "vt100".into()
            } else {
                term
            };
            let line = format!("{} {} {term}\n", t.rows, t.cols);
            w.file(vireo_image::TTY_FILE, 0o644, line.as_bytes())
                .map_err(fail)?;
        }
        let extra = w.finish();
        let mut data = initrd.unwrap_or_default();
        while data.len() % 4 != 0 {
            data.push(0);
        }
        data.extend_from_slice(&extra);
        initrd = Some(data);
    }
    let default_cmdline = image
        .as_ref()
        .map(|i| i.default_cmdline.clone())
        .unwrap_or_else(|| "console=ttyS0".to_string());
    let mut cmdline = spec.cmdline.clone().unwrap_or(default_cmdline);
    if spec.console == "virtio" && spec.cmdline.is_none() {
        // The last console= is /dev/console; ttyS0 stays for messages before virtio is up.
        cmdline.push_str(" console=hvc0");
    }
    if spec.verbose && spec.cmdline.is_none() {
        cmdline = cmdline
            .split_whitespace()
            .filter(|w| *w != "quiet" && !w.starts_with("loglevel="))
            .collect::<Vec<_>>()
            .join(" ");
        // The SBI console prints from the kernel's first instructions, so a boot that dies
        // before the serial driver is up still says why.
        if arch == Arch::Riscv64 {
            cmdline.push_str(" earlycon=sbi");
        }
    }
    // The image's OpenSBI is there for --firmware; the built-in SBI is the default.
    let firmware = spec.firmware.clone();
    Ok(Payload {
        kernel,
        initrd,
        firmware,
        cmdline,
        arch,
    })
}

/// How a resolved definition runs: on which accelerator, with which board settings.
pub struct Plan {
    pub accel: Accel,
    pub boot: BootConfig,
    pub isa: vireo_riscv::Isa,
    /// The guest runs vireo's /init, which serves the command channel (`vireo.ctl`).
    pub vireo_init: bool,
}

/// Picks the accelerator for the kernel's architecture and the board's settings; refuses
/// combinations that cannot work, saying what would.
pub fn plan(spec: &VmSpec, payload: Payload) -> Result<Plan, Error> {
    let accel = match (spec.accel, payload.arch) {
        (Accel::Auto | Accel::Emu, Arch::Riscv64) => Accel::Emu,
        (Accel::Kvm, Arch::Riscv64) => {
            return Err(fail(
                "--accel kvm runs x86-64 guests; this kernel is RISC-V: use --accel emu",
            ))
        }
        (Accel::Emu, Arch::X86_64) => {
            return Err(fail(
                "--accel emu emulates RISC-V; this kernel is x86-64: use --accel kvm",
            ))
        }
        (_, Arch::X86_64) => Accel::Kvm,
    };
    let boot = BootConfig {
        kernel: payload.kernel,
        initrd: payload.initrd,
        cmdline: payload.cmdline,
        cpus: spec.cpus,
        memory: spec.memory.bytes(),
        firmware: payload.firmware,
        virtio_transport: match (spec.virtio_transport.as_str(), accel) {
            ("pci", _) | ("auto", Accel::Kvm) => VirtioTransport::Pci,
            ("mmio", Accel::Kvm) => return Err(fail(
                "--virtio-transport mmio: the kvm accelerator's PC offers virtio over PCI only \
                     (x86 kernels find virtio-mmio devices only through ACPI or the command line); \
                     use pci or auto",
            )),
            _ => VirtioTransport::Mmio,
        },
    };
    let isa = cpu_model(spec, accel)?;
    // vireo's /init serves a command channel; a custom initramfs may not, but a command
    // needs one all the same.
    let vireo_init = !spec.command.is_empty() || (spec.image.is_some() && spec.initrd.is_none());
    Ok(Plan {
        accel,
        boot,
        isa,
        vireo_init,
    })
}

/// What the exception probe found on hosts like nested PVM.
const NO_EXCEPTIONS: &str = "this host's KVM cannot deliver exceptions to a guest (a probe \
     guest's int3 ended in a KVM internal error, as on nested PVM hosts)";

/// Checks that this host's KVM can run `kernel`, an x86-64 kernel. Without a usable /dev/kvm
/// nothing runs. A Linux kernel takes exceptions from its first instructions on, so where KVM
/// cannot deliver them (nested PVM) it is refused at once, with the reason, instead of
/// crawling and dying; any other kernel (a unikernel, a test kernel) may never take one, so it
/// runs after a warning. `skip_probe` boots without asking.
pub fn check_kvm(kernel: &Path, skip_probe: bool) -> Result<(), Error> {
    vireo_kvm::KvmVm::probe().map_err(|e| {
        fail(format!(
            "{e} (the emu accelerator runs RISC-V guests only, so this x86-64 kernel needs KVM)"
        ))
    })?;
    if skip_probe {
        return Ok(());
    }
    match vireo_kvm::exceptions_work() {
        Ok(true) => Ok(()),
        Ok(false) => {
            let kernel_name = kernel.display();
            match vireo_kvm::kernel_kind(kernel).map_err(fail)? {
                KernelKind::OtherElf => {
                    eprintln!(
                        "vireo: warning: {NO_EXCEPTIONS}; {kernel_name} is not Linux (an ELF \
                         without Linux's notes), so it runs, but it may fail: it stops with a \
                         KVM internal error at its first exception (an int instruction, a fault)"
                    );
                    Ok(())
                }
                kind => Err(fail(format!(
                    "{NO_EXCEPTIONS}, so {kernel_name}, {}, cannot boot here (Linux takes \
                     exceptions from its first instructions on); --skip-kvm-probe boots it \
                     anyway; RISC-V guests run with --accel emu",
                    match kind {
                        KernelKind::LinuxBzImage => "a Linux bzImage",
                        _ => "an ELF with Linux's notes",
                    }
                ))),
            }
        }
        Err(e) => Err(fail(format!(
            "KVM probe failed: {e} (--skip-kvm-probe boots without it)"
        ))),
    }
}

/// The emulated CPU `--cpu` asks for; kvm guests run on the host's CPU, so there only the
/// default is accepted.
pub fn cpu_model(spec: &VmSpec, accel: Accel) -> Result<vireo_riscv::Isa, Error> {
    if accel == Accel::Kvm {
        if spec.cpu != "max" {
            return Err(fail(format!(
                "--cpu '{}': the CPU model applies to the emu accelerator; kvm guests get the \
                 host's CPU",
                spec.cpu
            )));
        }
        return Ok(vireo_riscv::Isa::max());
    }
    vireo_riscv::Isa::parse(&spec.cpu).map_err(|e| fail(format!("--cpu '{}': {e}", spec.cpu)))
}
