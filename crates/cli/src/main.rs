//! `vireo`: the command-line front end.
//!
//! Exit status (README.md has the table): a guest command's own status (0–255) with
//! `vireo run ... -- CMD`; 0 when an interactive guest powers off; 125 for vireo's own errors,
//! usage errors included, in every subcommand.

mod console;
mod disk;
mod manage;
mod run;
mod signals;
mod stdio;
mod storage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vireo",
    version,
    about = "Run virtual machines",
    propagate_version = true
)]
struct Cli {
    /// The vireo daemon's API socket (default: $VIREO_SOCKET, else
    /// $XDG_RUNTIME_DIR/vireo/vireo.sock; /run/vireo/vireo.sock for root).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Command,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Boot a VM: an interactive shell on its console, or `-- CMD ARGS...` run in the guest.
    Run(RunArgs),
    /// Manage guest images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Create, inspect, convert, check, commit and rebase disk images (raw, qcow2).
    #[command(subcommand)]
    Disk(disk::DiskCmd),
    /// Internal: the process that runs one VM for the daemon (protocol: crates/vmm/src/server.rs).
    #[command(hide = true)]
    Vmm(VmmArgs),
    #[command(flatten)]
    Manage(manage::ManageCmd),
}

/// `vireo vmm`'s flags (the VMM process interface, crates/vmm/src/server.rs).
#[derive(Args)]
struct VmmArgs {
    /// The VM's name.
    #[arg(long)]
    name: String,
    /// Its run directory, holding spec.json.
    #[arg(long)]
    dir: PathBuf,
    /// Continue the snapshot in this directory instead of booting.
    #[arg(long)]
    restore: Option<PathBuf>,
    /// With --restore: start paused.
    #[arg(long, requires = "restore")]
    paused: bool,
    /// With --restore: accept disks that changed since the snapshot.
    #[arg(long, requires = "restore")]
    force: bool,
    /// What the guest's clock does about time it did not run: `pause` (it stands still)
    /// or `catch-up` (it jumps by the time that passed).
    #[arg(long, default_value = "pause", value_parser = parse_clock)]
    clock: vireo_riscv::state::ClockMode,
    /// System-call filters on the VMM's guest-facing threads: kill (a call outside a thread's
    /// list kills the VMM, the default), log (it fails with EPERM and is reported on stderr),
    /// or off.
    #[arg(long, default_value = "kill", value_name = "MODE")]
    seccomp: vireo_jail::Mode,
    /// Run in a jail rooted at DIR (absent or empty; see crates/vmm/src/jailing.rs).
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,
    /// With --jail: the user (and group) to run as, when started as root (default nobody).
    #[arg(long, value_name = "USER[:GROUP]", requires = "jail")]
    jail_user: Option<String>,
    /// Put the VMM in a cgroup of its own under PARENT (memory and CPU limits of the
    /// definition); failing that, it does not start.
    #[arg(long, value_name = "PARENT")]
    cgroup_parent: Option<String>,
}

fn parse_clock(s: &str) -> Result<vireo_riscv::state::ClockMode, String> {
    vireo_vmm::snapshot::clock_mode(s).map_err(|e| e.0)
}

impl From<VmmArgs> for vireo_vmm::server::Options {
    fn from(a: VmmArgs) -> Self {
        vireo_vmm::server::Options {
            name: a.name,
            dir: a.dir,
            restore: a.restore,
            paused: a.paused,
            force: a.force,
            clock: a.clock,
            seccomp: a.seccomp,
            jail: a.jail,
            jail_user: a.jail_user,
            cgroup_parent: a.cgroup_parent,
        }
    }
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Fetch a guest image from the Debian mirror the host's apt uses and build its initramfs
    /// (or, for debian-riscv64-rootfs, its systemd root disk: needs root, mmdebstrap and
    /// qemu-user-static).
    Pull {
        /// Image name (see `vireo image list --known`).
        name: String,
        /// Fetch again even if the image is already in the cache.
        #[arg(long)]
        force: bool,
    },
    /// List pulled images.
    List {
        /// List the images vireo knows how to pull instead.
        #[arg(long)]
        known: bool,
    },
}

/// Every flag here has a config-file key of the same name (with `-` written `_`).
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// A TOML file with the VM's settings (keys and defaults: docs/config.md; its relative paths are relative to it); flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Accelerator: auto, kvm or emu.
    #[arg(long)]
    pub accel: Option<String>,
    /// A pulled image to boot (kernel and initramfs).
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// Kernel to boot (RISC-V Image or ELF).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initramfs for the kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (replaces the image's default).
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// M-mode firmware to run first (e.g. OpenSBI fw_jump.bin) instead of the built-in SBI.
    #[arg(long, value_name = "FILE")]
    pub firmware: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Guest RAM, e.g. 512M or 1G.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Show the whole guest console, kernel log included.
    #[arg(long, short)]
    pub verbose: bool,
    /// Copy everything the guest console prints to FILE.
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// A virtio disk: PATH[,readonly][,overlay][,serial=ID][,format=raw|qcow2][,queues=N]
    /// (raw or qcow2 images, with backing chains, detected by content; other formats are
    /// refused, and a disk is locked while in use; queues: request queues, each with its own
    /// I/O thread, one per vCPU by default). With create, PATH may be a volume, vol:NAME or
    /// vol:POOL/NAME, and an overlay lasts as long as the VM. Repeat for more disks.
    #[arg(long, value_name = "SPEC")]
    pub disk: Vec<String>,
    /// A virtio NIC: user[,hostfwd=tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT]... (through passt;
    /// ADDR defaults to 127.0.0.1) or tap=NAME.
    #[arg(long, value_name = "SPEC")]
    pub net: Vec<String>,
    /// A virtio-rng device fed from the host's random source.
    #[arg(long)]
    pub rng: bool,
    /// A virtio-vsock device: cid=N,uds=PATH.
    #[arg(long, value_name = "SPEC")]
    pub vsock: Option<String>,
    /// The guest console: serial (16550, ttyS0) or virtio (virtio-console, hvc0).
    #[arg(long, value_name = "KIND")]
    pub console: Option<String>,
    /// How virtio devices attach: mmio (virtio-mmio), pci (virtio-pci), or auto (the
    /// default: mmio on emu, pci on kvm).
    #[arg(long, value_name = "KIND")]
    pub virtio_transport: Option<String>,
    /// Boot on kvm without first checking that the host's KVM can deliver exceptions to a guest
    /// (nested PVM hosts cannot; vireo then refuses a Linux kernel, which would crash, and warns
    /// before running any other kernel).
    #[arg(long)]
    pub skip_kvm_probe: bool,
    /// System-call filters on the VM's guest-facing threads: kill (a call outside a thread's
    /// list ends the VM, the default), log (it fails with EPERM and is reported), or off.
    #[arg(long, default_value = "kill", value_name = "MODE")]
    pub seccomp: vireo_jail::Mode,
    /// Run the VM in a jail rooted at DIR (absent or empty): its own namespaces, only its
    /// kernel, disks, vsock socket directory and console log visible, an unprivileged user
    /// (as root; without root, a user namespace), no capabilities. Not a config-file key.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// With --jail, started as root: the user (and group) to run as (default nobody).
    #[arg(long, value_name = "USER[:GROUP]", requires = "jail")]
    pub jail_user: Option<String>,
    /// The emulated RISC-V CPU (emu only): max (every extension vireo implements, the
    /// default) or rv64gc, then ,+EXT / ,-EXT edits (e.g. max,-sstc,-zbb).
    #[arg(long, value_name = "MODEL")]
    pub cpu: Option<String>,
    /// What a guest reboot does: restart (boot the VM again, the default) or exit (vireo
    /// exits 0, as a power-off). A command's run always ends.
    #[arg(long, value_name = "ACTION")]
    pub reboot: Option<String>,
    /// Command to run in the guest; vireo exits with its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn main() -> ExitCode {
    // A bug in vireo must not leave the terminal raw or print a backtrace at the user.
    std::panic::set_hook(Box::new(|info| {
        console::restore_terminal();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("vireo: internal error: {msg}{at} (this is a bug in vireo)");
        std::process::exit(1);
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (status 0); a usage error is vireo's own.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { run::VIREO_ERROR } else { 0 });
        }
    };
    let server = matches!(
        cli.cmd,
        Command::Run(_) | Command::Vmm(_) | Command::Manage(manage::ManageCmd::Daemon(_))
    );
    if !server {
        // A listing piped into `head` ends as `cat` would (killed by SIGPIPE, status 141),
        // not with a panic. `run` handles a closed stdout itself; the daemon and the VMM
        // write to sockets whose peers may go at any time, and must not die of it.
        // SAFETY: resets one signal's disposition before any thread exists; no memory involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let code = match cli.cmd {
        Command::Run(args) => run::run(args),
        Command::Image(ImageCmd::Pull { name, force }) => image_pull(&name, force),
        Command::Image(ImageCmd::List { known }) => image_list(known),
        Command::Vmm(args) => vmm(args.into()),
        Command::Disk(cmd) => disk::run(cmd),
        Command::Manage(cmd) => manage::dispatch(cmd, cli.socket),
    };
    ExitCode::from(code)
}

/// `vireo vmm`: logs go to stderr (the daemon points it at the VM's vmm.log), and a bug ends
/// this VM only, with its message in exit.json.
fn vmm(opts: vireo_vmm::server::Options) -> u8 {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Absolute: a jailed VMM's working directory changes.
    let panic_dir = std::path::absolute(&opts.dir).unwrap_or_else(|_| opts.dir.clone());
    std::panic::set_hook(Box::new(move |info| {
        let message = format!("internal error (a bug in vireo): {info}");
        eprintln!("vireo vmm: {message}");
        vireo_vmm::server::write_exit(
            &panic_dir,
            &vireo_vmm::server::ExitRecord {
                reason: "panic".into(),
                status: 101,
                message,
            },
        );
        std::process::exit(101);
    }));
    vireo_vmm::server::serve(opts)
}

fn image_pull(name: &str, force: bool) -> u8 {
    let opts = vireo_image::PullOptions {
        force,
        progress: true,
    };
    match vireo_image::pull(name, &opts) {
        Ok((img, outcome)) => {
            let what = match outcome {
                vireo_image::PullOutcome::AlreadyPresent => "already pulled",
                vireo_image::PullOutcome::Pulled => "pulled",
            };
            println!(
                "{name}: {what} (kernel {}) in {}",
                img.kernel_version,
                img.dir.display()
            );
            0
        }
        Err(e) => {
            eprintln!("vireo: {e}");
            run::VIREO_ERROR
        }
    }
}

fn image_list(known: bool) -> u8 {
    if known {
        for n in vireo_image::known_images() {
            println!("{n}");
        }
        return 0;
    }
    match vireo_image::list() {
        Ok(images) => {
            let width = images.iter().map(|i| i.name.len()).fold(16, usize::max);
            println!(
                "{:<width$} {:<8} {:<28} {:>8}  PULLED",
                "NAME", "ARCH", "KERNEL", "SIZE"
            );
            for i in images {
                println!(
                    "{:<width$} {:<8} {:<28} {:>7}M  {}",
                    i.name,
                    i.arch.to_string(),
                    i.kernel_version,
                    i.size.div_ceil(1 << 20),
                    run::format_age(i.created)
                );
            }
            0
        }
        Err(e) => {
            eprintln!("vireo: {e}");
            run::VIREO_ERROR
        }
    }
}
