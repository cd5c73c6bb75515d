//! `vireo run`: from flags and config to a running guest and an exit status.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use vireo_devices::ConsoleOutput;
use vireo_kvm::KernelKind;
use vireo_machine::{BootConfig, GuestExit, VirtioTransport};
use vireo_spec::{Accel, MemSize, VmSpec};

use std::sync::Arc;

use crate::console::{self, Console, Show, TermGuard, Terminal};
use crate::stdio;
use crate::supervise::{Stopper, Supervisor};
use crate::RunArgs;

/// vireo's own failures, usage errors included, exit with this status (as `docker run` does),
/// so a script can tell them from the guest command's own status.
pub const VIREO_ERROR: u8 = 125;

/// Why vireo itself could not do what was asked (the request is wrong, or something failed
/// while running); every such failure exits [`VIREO_ERROR`].
pub struct Failure(pub String);

pub fn fail(msg: impl std::fmt::Display) -> Failure {
    Failure(msg.to_string())
}

pub fn run(args: RunArgs) -> u8 {
    match run_inner(args) {
        Ok(status) => status,
        Err(Failure(message)) => {
            eprintln!("vireo: {message}");
            VIREO_ERROR
        }
    }
}

/// Merges the config file (if any) with flags; flags win.
pub fn build_spec(args: &RunArgs) -> Result<VmSpec, Failure> {
    let mut spec = match &args.config {
        Some(p) => VmSpec::from_file(p).map_err(fail)?,
        None => VmSpec::default(),
    };
    if let Some(a) = &args.accel {
        spec.accel = a.parse().map_err(fail)?;
    }
    if let Some(i) = &args.image {
        spec.image = Some(i.clone());
    }
    if let Some(k) = &args.kernel {
        spec.kernel = Some(k.clone());
    }
    if let Some(i) = &args.initrd {
        spec.initrd = Some(i.clone());
    }
    if let Some(c) = &args.cmdline {
        spec.cmdline = Some(c.clone());
    }
    if let Some(f) = &args.firmware {
        spec.firmware = Some(f.clone());
    }
    if let Some(c) = &args.cpus {
        spec.cpus = c.parse().map_err(|_| {
            fail(format!(
                "invalid --cpus '{c}': expected a whole number from 1 to {}",
                vireo_spec::MAX_CPUS
            ))
        })?;
    }
    if let Some(m) = &args.memory {
        spec.memory = m.parse::<MemSize>().map_err(fail)?;
    }
    spec.verbose |= args.verbose;
    if let Some(l) = &args.console_log {
        spec.console_log = Some(l.clone());
    }
    if !args.command.is_empty() {
        spec.command = args.command.clone();
    }
    spec.disk.extend(args.disk.iter().cloned());
    spec.net.extend(args.net.iter().cloned());
    spec.rng |= args.rng;
    if let Some(v) = &args.vsock {
        spec.set_vsock_flag(v.clone());
    }
    if let Some(c) = &args.console {
        spec.console = c.clone();
    }
    if let Some(t) = &args.virtio_transport {
        spec.virtio_transport = t.clone();
    }
    if let Some(r) = &args.reboot {
        spec.reboot = r.clone();
    }
    if let Some(c) = &args.cpu {
        spec.cpu = c.clone();
    }
    let flagged: Vec<&str> = [
        ("kernel", args.kernel.is_some()),
        ("initrd", args.initrd.is_some()),
        ("firmware", args.firmware.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, given)| given.then_some(key))
    .collect();
    spec.check_file_paths(&flagged).map_err(fail)?;
    spec.validate().map_err(fail)?;
    Ok(spec)
}

/// What the spec resolves to on disk.
struct Payload {
    kernel: PathBuf,
    initrd: Option<Vec<u8>>,
    firmware: Option<PathBuf>,
    cmdline: String,
    arch: Arch,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arch {
    Riscv64,
    X86_64,
}

fn read(what: &str, p: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(p).map_err(|e| fail(format!("cannot read {what} {}: {e}", p.display())))
}

/// Guesses a kernel's architecture from its headers.
fn kernel_arch(p: &Path) -> Result<Arch, Failure> {
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
struct GuestTty {
    rows: u16,
    cols: u16,
    term: String,
}

fn resolve(spec: &VmSpec, tty: Option<&GuestTty>) -> Result<Payload, Failure> {
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

fn run_inner(args: RunArgs) -> Result<u8, Failure> {
    let spec = build_spec(&args)?;
    let term = Terminal::inspect();
    let command_mode = !spec.command.is_empty();
    // A command gets a pseudo-terminal when vireo is used from one, in the foreground, as a
    // shell does it; with a redirected stdin or stdout it gets plain pipes, so its output is
    // byte-exact (no \r\n) for files and pipelines.
    let pty = command_mode && term.stdin_tty && term.stdout_tty && term.foreground;
    let guest_tty = pty.then(|| {
        let (rows, cols) = Terminal::size().unwrap_or((24, 80));
        GuestTty {
            rows,
            cols,
            term: std::env::var("TERM").unwrap_or_default(),
        }
    });
    let payload = resolve(&spec, guest_tty.as_ref())?;
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
    let cfg = BootConfig {
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
    if accel == Accel::Kvm {
        check_kvm(&cfg.kernel, skip_kvm_probe(&args))?;
    }
    let isa = cpu_model(&spec, accel)?;
    // vireo's /init serves a command channel; a custom initramfs may not, but a command
    // needs one all the same.
    let vireo_init = command_mode || (spec.image.is_some() && spec.initrd.is_none());
    let sup = Arc::new(Supervisor::default());
    let _signals = crate::signals::start(sup.clone(), pty).map_err(fail)?;
    let out = ConsoleOutput::new();
    let console = Console::start(
        out.clone(),
        console::Options {
            show: match (command_mode, spec.verbose) {
                (false, _) => Show::Stdout,
                (true, true) => Show::Stderr,
                (true, false) => Show::Nothing,
            },
            // vireo's own /init marks where an interactive guest's console starts; a custom
            // initramfs may not, so then everything is shown.
            gate_on_marker: spec.image.is_some() && spec.initrd.is_none() && !spec.verbose,
            log: spec.console_log.clone(),
        },
        sup.clone(),
    )
    .map_err(fail)?;
    // The terminal is the guest's (raw) for an interactive guest or a command on a
    // pseudo-terminal, and only when vireo owns it (foreground); otherwise signals from it
    // (Ctrl-C) reach vireo, which stops the guest gracefully.
    let _raw = if (!command_mode || pty) && term.stdin_tty && term.foreground {
        TermGuard::raw(false)
    } else {
        None
    };
    let mut stdin_started = false;
    let started = std::time::Instant::now();
    loop {
        let mut devices = crate::devices::build(&spec, &out)?;
        let channel = vireo_init.then(|| {
            let (dev, ch) = stdio::channel();
            devices.list.push(Box::new(dev));
            ch
        });
        let console_input = devices.console_input.take();
        let mut vm = create_vm(accel, &cfg, &out, devices.list, isa)?;
        sup.attach(
            vm.stopper(),
            channel.as_ref().map(|c| c.ctl.clone()),
            channel.as_ref().filter(|_| pty).map(|c| c.stdin.clone()),
        );
        // Where the terminal's keys go: the command's stdin with a pseudo-terminal, else the
        // guest console.
        let sink: console::InputSink = match (&channel, pty, console_input) {
            (Some(ch), true, _) => stdio::tty_sink(ch.stdin.clone()),
            (_, _, Some(c)) => Box::new(move |b: &[u8]| c.push(b)),
            _ => console::uart_sink(vm.uart()),
        };
        console.set_input(sink);
        if !stdin_started {
            stdin_started = true;
            match (&channel, command_mode && !pty) {
                // Pipes: stdin goes to the command as it is, and its end reaches it. In the
                // background, the terminal is not ours to read (it would stop vireo).
                (Some(ch), true) if term.stdin_tty && !term.foreground => ch.stdin.close_input(),
                (Some(ch), true) => {
                    let port = ch.stdin.clone();
                    let sink =
                        Arc::new(std::sync::Mutex::new(Some(stdio::stdin_sink(port.clone()))));
                    console::spawn_input(
                        sink,
                        false,
                        sup.clone(),
                        Some(Box::new(move || port.close_input())),
                    )
                    .map_err(fail)?
                }
                _ if term.stdin_tty && !term.foreground => {}
                _ => console::spawn_input(console.input(), term.stdin_tty, sup.clone(), None)
                    .map_err(fail)?,
            }
        }
        let pumps = match &channel {
            Some(ch) => Some(stdio::Pumps::start(ch, sup.clone(), pty).map_err(fail)?),
            None => None,
        };
        let result = vm.run();
        // The guest has stopped: what it wrote is still being copied out.
        let cmd_started = pumps.map(stdio::Pumps::finish).unwrap_or(false);
        if std::env::var_os("VIREO_STATS").is_some() {
            vm.print_stats(started.elapsed().as_secs_f64());
        }
        // Devices (disk files, sockets) close before a restart takes them again.
        drop(vm);
        if let Some(status) = sup.status() {
            let _ = console.finish();
            return Ok(status);
        }
        let report = console.report();
        let exit = match result {
            // The supervisor stopped a KVM guest for a panic.
            Err(RunError::Stopped) if report.panic.is_some() => GuestExit::Reset,
            Ok(e) => e,
            Err(e) => {
                let report = console.finish();
                return Err(fail(with_tail(e.to_string(), &report)));
            }
        };
        match exit {
            GuestExit::Reset
                if report.panic.is_none() && !command_mode && spec.reboot_restarts() =>
            {
                // The guest rebooted: boot it again, with fresh devices.
                console.rearm();
                continue;
            }
            _ => {}
        }
        let report = console.finish();
        return match exit {
            GuestExit::PowerOff if command_mode && !cmd_started => Err(fail(with_tail(
                "the guest powered off without running the command (no vireo /init?)".into(),
                &report,
            ))),
            GuestExit::PowerOff => Ok(0),
            GuestExit::Failure(code) if command_mode && !cmd_started => Err(fail(with_tail(
                format!(
                    "the guest stopped with status {} before running the command",
                    code & 0xff
                ),
                &report,
            ))),
            GuestExit::Failure(_) => Ok(exit.status() as u8),
            GuestExit::Reset => match &report.panic {
                Some(line) => Err(fail(with_tail(
                    format!("guest kernel panicked: {line}"),
                    &report,
                ))),
                None if command_mode => Err(fail(with_tail(
                    "the guest reset before the command finished".into(),
                    &report,
                ))),
                None => Ok(0),
            },
        };
    }
}

/// Whether the exception probe is skipped: `--skip-kvm-probe`, or `VIREO_SKIP_KVM_PROBE` (any
/// value), its deprecated spelling, which says so.
fn skip_kvm_probe(args: &RunArgs) -> bool {
    let deprecated = std::env::var_os("VIREO_SKIP_KVM_PROBE").is_some();
    if deprecated {
        eprintln!("vireo: warning: VIREO_SKIP_KVM_PROBE is deprecated: use --skip-kvm-probe");
    }
    args.skip_kvm_probe || deprecated
}

/// What the exception probe found on hosts like nested PVM.
const NO_EXCEPTIONS: &str = "this host's KVM cannot deliver exceptions to a guest (a probe \
     guest's int3 ended in a KVM internal error, as on nested PVM hosts)";

/// Checks that this host's KVM can run `kernel`, an x86-64 kernel. Without a usable /dev/kvm
/// nothing runs. A Linux kernel takes exceptions from its first instructions on, so where KVM
/// cannot deliver them (nested PVM) it is refused at once, with the reason, instead of
/// crawling and dying; any other kernel (a unikernel, a test kernel) may never take one, so it
/// runs after a warning. `skip_probe` boots without asking.
fn check_kvm(kernel: &Path, skip_probe: bool) -> Result<(), Failure> {
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
fn cpu_model(spec: &VmSpec, accel: Accel) -> Result<vireo_riscv::Isa, Failure> {
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

fn create_vm(
    accel: Accel,
    cfg: &BootConfig,
    out: &ConsoleOutput,
    devices: Vec<Box<dyn vireo_virtio::VirtioDevice>>,
    isa: vireo_riscv::Isa,
) -> Result<Vm, Failure> {
    Ok(match accel {
        Accel::Emu => {
            Vm::Emu(vireo_riscv::EmuVm::build(cfg, out.clone(), devices, isa).map_err(fail)?)
        }
        _ => Vm::Kvm(vireo_kvm::KvmVm::with_devices(cfg, out.clone(), devices).map_err(fail)?),
    })
}

fn with_tail(msg: String, report: &console::Report) -> String {
    if report.tail.trim().is_empty() {
        return msg;
    }
    format!(
        "{msg}\n--- last guest console output ---\n{}",
        report.tail.trim_end()
    )
}

/// "3 minutes ago"-style age of a Unix timestamp.
pub fn format_age(t: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(t);
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

/// The accelerator running this guest.
enum Vm {
    Emu(vireo_riscv::EmuVm),
    Kvm(vireo_kvm::KvmVm),
}

enum RunError {
    Stopped,
    Other(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Stopped => f.write_str("the VM was stopped"),
            RunError::Other(s) => f.write_str(s),
        }
    }
}

impl Vm {
    fn uart(&self) -> std::sync::Arc<std::sync::Mutex<vireo_devices::Uart>> {
        match self {
            Vm::Emu(v) => v.uart(),
            Vm::Kvm(v) => v.uart(),
        }
    }

    fn stopper(&self) -> Stopper {
        match self {
            Vm::Emu(v) => Stopper::Emu(v.exit_signal()),
            Vm::Kvm(v) => Stopper::Kvm(v.controller()),
        }
    }

    fn run(&mut self) -> Result<GuestExit, RunError> {
        match self {
            Vm::Emu(v) => v.run().map_err(|e| RunError::Other(e.to_string())),
            Vm::Kvm(v) => v.run().map_err(|e| match e {
                vireo_kvm::KvmError::Stopped => RunError::Stopped,
                e => RunError::Other(e.to_string()),
            }),
        }
    }

    fn print_stats(&self, secs: f64) {
        match self {
            Vm::Emu(vm) => {
                let idle = vm.idle_time().as_secs_f64();
                let n = vm.instructions();
                let (pages, evictions) = vm.code_cache_stats();
                eprintln!(
                    "vireo: stats: {n} instructions in {secs:.3} s, {idle:.3} s idle ({:.0} MIPS while running); decoded code: {pages} pages ({} MiB), dropped {evictions} times when full",
                    n as f64 / (secs - idle).max(1e-9) / 1e6,
                    pages * 16 / 1024
                );
                if let Some(p) = vm.profile() {
                    let mut v: Vec<_> = p.iter().collect();
                    v.sort_by(|a, b| b.1.cmp(a.1));
                    for (pc, n) in v {
                        eprintln!("vireo: profile: {pc:#018x} {n}");
                    }
                }
            }
            Vm::Kvm(vm) => {
                eprintln!(
                    "vireo: stats: {secs:.3} s; VM exits {:?}",
                    vm.controller().exit_counters()
                );
            }
        }
    }
}
