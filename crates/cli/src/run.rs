//! `vireo run`: from flags and config to a running guest and an exit status.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vireo_devices::ConsoleOutput;
use vireo_machine::GuestExit;
use vireo_spec::{Accel, MemSize, VmSpec};
use vireo_vmm::supervise::Supervisor;
use vireo_vmm::{GuestTty, RunError, Vm};

use crate::console::{self, Console, Show, TermGuard, Terminal};
use crate::stdio;
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
    let payload = vireo_vmm::resolve(&spec, guest_tty.as_ref()).map_err(fail)?;
    let plan = vireo_vmm::plan(&spec, payload).map_err(fail)?;
    if plan.accel == Accel::Kvm {
        vireo_vmm::check_kvm(&plan.boot.kernel, skip_kvm_probe(&args)).map_err(fail)?;
    }
    // After the probe: its vCPU runs a guest of vireo's own, which needs no filter (and the
    // start would wait for one to be installed).
    vireo_jail::install(args.seccomp).map_err(fail)?;
    let device_configs = vireo_vmm::devices::parse(&spec).map_err(fail)?;
    // What needs the host's view is opened before a jail: the network backends.
    let backends = vireo_vmm::devices::open_backends(&device_configs).map_err(fail)?;
    if let Some(root) = &args.jail {
        jail(
            root,
            args.jail_user.as_deref(),
            &spec,
            &plan,
            &device_configs,
        )?;
    }
    vireo_machine::sandbox::start_spawner()
        .map_err(|e| fail(format!("cannot start the thread spawner: {e}")))?;
    // This thread, and every thread it starts from here (the signal thread among them),
    // under the main thread's filter: what is left is building and running the machine.
    vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Main);
    let (accel, cfg, isa, vireo_init) = (plan.accel, plan.boot, plan.isa, plan.vireo_init);
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
        let mut devices =
            vireo_vmm::devices::build(&device_configs, &out, &backends).map_err(fail)?;
        let channel = vireo_init.then(|| {
            let (dev, ch) = stdio::channel();
            devices.push("serial", "vireo", Box::new(dev));
            ch
        });
        let console_input = devices.console_input.take();
        let mut vm = Vm::create(accel, &cfg, &out, devices.list, isa).map_err(fail)?;
        sup.attach(
            vm.control(),
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
        let result = vm.run_on_own_thread();
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

/// `--jail ROOT`: enters the jail before any thread starts (the keeper process never returns
/// from here; see `vireo_jail::jail`). The console log is made first, for the jail's user.
fn jail(
    root: &std::path::Path,
    user: Option<&str>,
    spec: &VmSpec,
    plan: &vireo_vmm::Plan,
    configs: &[vireo_vmm::DeviceConfig],
) -> Result<(), Failure> {
    let opts = vireo_vmm::jailing::JailOptions::new(root.to_path_buf(), user).map_err(fail)?;
    let mut extra = Vec::new();
    if let Some(log) = &spec.console_log {
        match std::fs::File::create_new(log) {
            Ok(_) => opts.give(log).map_err(fail)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(format!("--console-log {}: {e}", log.display()))),
        }
        extra.push(vireo_jail::Show::writable(log));
    }
    let jail = vireo_vmm::jailing::spec(&opts, plan, configs, extra).map_err(fail)?;
    vireo_vmm::jailing::enter(&jail).map_err(fail)
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
