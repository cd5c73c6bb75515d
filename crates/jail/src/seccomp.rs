//! seccomp-bpf filters for the VMM's guest-facing threads and for the daemon's threads, built
//! with rust-vmm's seccompiler.
//!
//! # What is filtered
//! Every thread that touches guest-controlled data enters `vireo_machine::sandbox` first
//! thing, with its kind; [`install`] makes that install the kind's filter on the thread:
//! - `EmuHarts`: the emulator's run loop (all harts, and the device registers they reach);
//! - `KvmWait`: the kvm accelerator's run loop (waits for vCPU outcomes, kicks vCPUs);
//! - `Vcpu`: each KVM vCPU thread;
//! - `Device`: each virtio device worker (block I/O, net receive, vsock), and the VMM's
//!   readers of the guest's command channel (they parse the lines the guest writes);
//! - `Control`: the `vireo vmm` process's own threads that serve its control socket (pause,
//!   stats, snapshots: the files of a snapshot directory and the VM-wide KVM state it reads)
//!   and its console socket, and the console relay — and every thread they start; in `vireo
//!   run`, the console's threads and the command's stream pumps.
//!
//! - `Main`: the VMM's main thread, from just before it builds the first machine (after any
//!   jail and the spawner); every thread it starts from then on (the run loops, vCPUs, `vireo
//!   run`'s signal thread, the sockets' threads) carries its filter beside its own, so its list
//!   is every other kind's plus what building a machine takes (`main_rules`).
//!
//! The one thread left unfiltered is the spawner (`vireo_machine::sandbox::spawn`): the
//! workers it starts must not inherit a filter, and it runs nothing but thread starts asked
//! for by the process's own threads.
//!
//! `vireo daemon`'s threads have a list of their own ([`confine_daemon`]): installed on its
//! main thread before its runtime starts, so all its threads inherit it, except the one that
//! starts VMMs, which is started before (a VMM must not begin under the daemon's filter).
//!
//! # How the lists were made, and why they are alike
//! The lists are what these threads were seen to call across vireo's end-to-end tests (`perf
//! trace -s`, per thread name), plus what a path the tests cannot reach here needs (MSI routing
//! and ioeventfds on a vCPU, which only a Linux guest on a real KVM programs). A device's
//! workers are started by the thread that activates it — the run loop or a vCPU, when the
//! driver sets DRIVER_OK — and a thread inherits its creator's filter, which then applies
//! together with its own (the kernel runs every filter and takes the strictest answer). So a
//! run loop's and a vCPU's lists must hold a worker's, and the kinds differ mainly in their
//! `ioctl`s: KVM's for vCPUs, none for the kvm run loop.
//!
//! That was so while the run loop or a vCPU started the workers itself. Now a worker is
//! started by the sandbox's spawner thread (`vireo_machine::sandbox::spawn`, unconfined, started
//! after any jail), so it inherits nothing, and the run loops' and vCPUs' lists drop what only
//! workers do: making and connecting sockets, syncing and resizing files, starting threads.
//!
//! Argument filters where they matter: `ioctl` by request number; `socket` for AF_UNIX only
//! (vsock connects to host Unix sockets; every other socket is made before the guest runs);
//! `mmap` and `mprotect` never with PROT_EXEC; `clone` only for threads (CLONE_THREAD), and
//! `clone3`, whose flags a filter cannot see, answers ENOSYS so that the C library falls back
//! to `clone` (in the kinds that start threads; in the others it is outside the list). No
//! `execve`, no `fork`, no `ptrace`, no mounts, no privilege changes.
//!
//! # What a thread pays at its start
//! The kernel checks and JIT-compiles a program as a thread installs it; on this host's nested
//! KVM that costs about 0.5 µs per BPF instruction plus 50 µs per program, on the start's
//! critical path for the run loop and each vCPU. So each kind is one program: the `clone3`
//! answer is three instructions put in front of seccompiler's output (seccompiler gives one
//! action to all of a filter's rules, and this one differs), not a second filter. And the
//! arguments the kernel reads as 32-bit values (an ioctl's request, socket's domain, prctl's
//! and seccomp's operation) are compared as 32-bit values, half the instructions of a 64-bit
//! compare, exactly what the kernel acts on.
//!
//! # Modes
//! [`Mode::Kill`] (the default) kills the whole process on a call outside the list
//! (SECCOMP_RET_KILL_PROCESS: the exit is by SIGSYS). [`Mode::Log`] traps instead: a SIGSYS
//! handler writes the call's number to stderr and makes it fail with EPERM, for finding what a
//! list lacks. [`Mode::Off`] installs nothing and says so.
//!
//! The lists are written for x86-64 hosts; on any other host [`install`] refuses every mode
//! but `off`, saying why.

use std::collections::{BTreeMap, HashMap};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use vireo_machine::sandbox::ThreadKind;

/// What a call outside a thread's list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The process dies by SIGSYS.
    #[default]
    Kill,
    /// The call fails with EPERM and its number is written to stderr.
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(Mode::Kill),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            _ => Err(format!(
                "--seccomp '{s}': expected kill (a call outside a thread's list kills the VMM), log (it fails with EPERM and is reported) or off"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {kind} threads' seccomp filter: {reason}")]
    Build { kind: &'static str, reason: String },
    #[error("cannot install the daemon's seccomp filter: {0}")]
    Install(String),
    #[error("seccomp filters are written for x86-64 hosts only so far (this host is {0}); run with --seccomp off")]
    Arch(&'static str),
    #[error("cannot install the SIGSYS handler for --seccomp log: {0}")]
    Handler(std::io::Error),
}

/// Set (to a thread kind's name: emu, kvm, vcpu, device, control) by tests only: that kind's threads
/// make a call outside their list right after entering their sandbox, which must end the
/// process by SIGSYS (or, in log mode, be reported and fail).
pub const SELFTEST_ENV: &str = "VIREO_SECCOMP_SELFTEST";

/// Builds every kind's filter (so that a bad list fails here, before any guest runs) and has
/// `vireo_machine::sandbox::enter` install them. Call once, before the machine is built.
pub fn install(mode: Mode) -> Result<(), SeccompError> {
    if !armed(mode, "vireo", "the VMM's guest-facing threads")? {
        return Ok(());
    }
    let programs = build(mode)?;
    let selftest = std::env::var(SELFTEST_ENV).ok();
    vireo_machine::sandbox::set_hook(move |kind| {
        let Some(progs) = programs.get(&kind) else {
            return;
        };
        if let Err(e) = seccompiler::apply_filter(progs) {
            // A thread that should be confined never runs unconfined.
            eprintln!("vireo: cannot install the seccomp filter of a {kind:?} thread: {e}");
            std::process::exit(125);
        }
        if selftest.as_deref() == Some(kind_name(kind)) {
            // SAFETY: getppid takes no arguments and touches no memory; it is in no list, so
            // the filter just installed answers it.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
    });
    Ok(())
}

/// Whether `mode` filters anything: off says so (as `program`, of `whom`) and is false; log
/// installs the SIGSYS handler that reports a refused call.
fn armed(mode: Mode, program: &str, whom: &str) -> Result<bool, SeccompError> {
    match mode {
        Mode::Off => {
            eprintln!("{program}: warning: --seccomp off: {whom} run without system-call filters");
            Ok(false)
        }
        Mode::Log => log_handler::install()
            .map_err(SeccompError::Handler)
            .map(|()| true),
        Mode::Kill => Ok(true),
    }
}

fn kind_name(kind: ThreadKind) -> &'static str {
    match kind {
        ThreadKind::EmuHarts => "emu",
        ThreadKind::KvmWait => "kvm",
        ThreadKind::Vcpu => "vcpu",
        ThreadKind::Device => "device",
        ThreadKind::Control => "control",
        ThreadKind::Main => "main",
    }
}

const KINDS: [ThreadKind; 6] = [
    ThreadKind::EmuHarts,
    ThreadKind::KvmWait,
    ThreadKind::Vcpu,
    ThreadKind::Device,
    ThreadKind::Control,
    ThreadKind::Main,
];

/// Each kind's program.
fn build(mode: Mode) -> Result<HashMap<ThreadKind, BpfProgram>, SeccompError> {
    let mut out = HashMap::new();
    for kind in KINDS {
        let name = kind_name(kind);
        let r = rules(kind).map_err(|reason| SeccompError::Build { kind: name, reason })?;
        out.insert(kind, program(name, r, mode)?);
    }
    Ok(out)
}

/// One list's program: `rules` allowed, anything else refused as `mode` says.
fn program(kind: &'static str, rules: Rules, mode: Mode) -> Result<BpfProgram, SeccompError> {
    let arch = std::env::consts::ARCH;
    if arch != "x86_64" {
        return Err(SeccompError::Arch(arch));
    }
    let bad = |reason: String| SeccompError::Build { kind, reason };
    let target = seccompiler::TargetArch::try_from(arch).map_err(|e| bad(e.to_string()))?;
    let mismatch = match mode {
        Mode::Log => SeccompAction::Trap,
        _ => SeccompAction::KillProcess,
    };
    let starts_threads = rules.contains_key(&libc::SYS_clone);
    let allow = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, target)
        .map_err(|e| bad(e.to_string()))?;
    let mut prog: BpfProgram = allow
        .try_into()
        .map_err(|e: seccompiler::BackendError| bad(e.to_string()))?;
    if starts_threads {
        prog.splice(0..0, clone3_enosys());
    }
    Ok(prog)
}

/// `clone3` fails with ENOSYS: in front of the allowlist, ahead of its architecture check (a
/// call of another architecture numbered so is refused as well, never allowed). cBPF jumps
/// are relative, so the program after it is unchanged.
fn clone3_enosys() -> [seccompiler::sock_filter; 3] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        // The call's number: seccomp_data.nr, at offset 0.
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            libc::SYS_clone3 as u32,
        ),
        op(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
    ]
}

/// Builds every kind's programs, as [`install`] does first; how many there are (for the
/// bench, which times it).
pub fn compile(mode: Mode) -> Result<usize, SeccompError> {
    Ok(build(mode)?.len())
}

/// Each kind's program length in BPF instructions (for the bench: the install cost follows
/// it).
pub fn program_lengths() -> Result<Vec<(&'static str, usize)>, SeccompError> {
    let built = build(Mode::Kill)?;
    let mut v: Vec<_> = KINDS
        .iter()
        .map(|k| (kind_name(*k), built.get(k).map_or(0, Vec::len)))
        .collect();
    v.push(("daemon", daemon_program(Mode::Kill)?.len()));
    Ok(v)
}

/// Installs the Device kind's programs on the calling thread (for the bench, which times it
/// on a thread of its own).
pub fn confine_this_thread_as_device() -> Result<(), SeccompError> {
    let prog = build(Mode::Kill)?
        .remove(&ThreadKind::Device)
        .unwrap_or_default();
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Build {
        kind: "device",
        reason: e.to_string(),
    })
}

/// The number of system calls in each kind's allowlist (for the figures in the docs).
pub fn list_sizes() -> Result<Vec<(&'static str, usize)>, String> {
    let mut v = KINDS
        .iter()
        .map(|&k| rules(k).map(|r| (kind_name(k), r.len())))
        .collect::<Result<Vec<_>, _>>()?;
    v.push(("daemon", daemon_rules()?.len()));
    Ok(v)
}

/// The daemon's program (see [`confine_daemon`]).
fn daemon_program(mode: Mode) -> Result<BpfProgram, SeccompError> {
    let r = daemon_rules().map_err(|reason| SeccompError::Build {
        kind: "daemon",
        reason,
    })?;
    program("daemon", r, mode)
}

/// Confines the calling thread, and every thread it starts from now on, to the daemon's list:
/// `vireo daemon` calls it on its main thread before it starts its runtime, so that every
/// thread that parses a request (the runtime's workers, its blocking pool, which they start)
/// runs filtered. What the daemon must not do itself (start processes) is done by a thread
/// started before this call (its VMM launcher), which so stays unfiltered, as the VMMs it
/// starts must be: a filter passes to every thread and process its thread creates.
pub fn confine_daemon(mode: Mode) -> Result<(), SeccompError> {
    if !armed(mode, "vireo daemon", "the daemon's threads")? {
        return Ok(());
    }
    let prog = daemon_program(mode)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(e.to_string()))?;
    if std::env::var(SELFTEST_ENV).as_deref() == Ok("daemon") {
        // SAFETY: getppid takes no arguments and touches no memory; it is in no list, so
        // the filter just installed answers it.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

/// What the daemon's threads call: its runtime (threads, epoll, timers, signals), its API
/// sockets (Unix, and TCP with `--listen`) and the VMMs' control sockets, its state directory
/// (the SQLite store and its locks, run directories, pools, volumes, snapshot copies), the
/// per-VM cgroups (directories and files under /sys/fs/cgroup), and signals to its VMMs
/// (`kill`; their exits are reaped with `wait4`). Found as the VMM lists were (`perf trace -s`
/// over the daemon's tests, its API tests with a stand-in VMM and the end-to-end ones with
/// real VMMs, jailed and not), each entry a call those threads made once confined. Not:
/// execve, fork, ptrace, mounts, namespaces, privilege changes, KVM.
fn daemon_rules() -> Result<Rules, String> {
    let mut r = common()?;
    // The daemon serves no guest: it reaches no device's host side and no KVM.
    r.remove(&libc::SYS_ioctl);
    for n in [
        libc::SYS_bind,
        libc::SYS_listen,
        // tokio's signal driver wakes itself through a socket pair.
        libc::SYS_socketpair,
        libc::SYS_rt_sigaction,
        libc::SYS_wait4,
        libc::SYS_geteuid,
        libc::SYS_getcwd,
        libc::SYS_flock,
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_rename,
        libc::SYS_renameat2,
        // A volume's import hard-links its finished copy into place.
        libc::SYS_linkat,
        libc::SYS_readlink,
        libc::SYS_chmod,
        libc::SYS_fchmod,
        // A jailed VM's disks go to the jail's user; SQLite gives its journal the database's.
        libc::SYS_chown,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        // A pool's free space.
        libc::SYS_statfs,
        libc::SYS_fstatfs,
    ] {
        r.insert(n, vec![]);
    }
    // SIGKILL to a VMM that did not start in time or would not stop (the others are asked
    // over their control sockets).
    r.insert(
        libc::SYS_kill,
        vec![rule(vec![cond32(1, libc::SIGKILL as u32)?])?],
    );
    // Its listeners and its connections to the VMMs: Unix and IP sockets, nothing else (no
    // netlink, no raw or packet sockets).
    r.insert(
        libc::SYS_socket,
        [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]
            .iter()
            .map(|&f| rule(vec![cond32(0, f as u32)?]))
            .collect::<Result<_, _>>()?,
    );
    // Non-blocking and close-on-exec switches, and a terminal check (of stderr, for
    // colours).
    r.insert(
        libc::SYS_ioctl,
        ioctls(&[libc::FIONBIO, libc::FIOCLEX, libc::TCGETS])?,
    );
    Ok(r)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

/// A condition on an argument the kernel takes as a 32-bit `int`/`unsigned int`: only its low
/// half is compared, as only that half means anything to the call.
fn cond32(arg: u8, value: u32) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value.into())
        .map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// `ioctl(fd, request, ...)` for these requests only.
fn ioctls(requests: &[u64]) -> Result<Vec<SeccompRule>, String> {
    requests
        .iter()
        .map(|&r| rule(vec![cond32(1, r as u32)?]))
        .collect()
}

/// The calls every guest-facing thread makes: memory, threads, time, waiting, files and
/// sockets it already has open.
fn common() -> Result<Rules, String> {
    let plain = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_ftruncate,
        // The standard library reads /proc and /sys (available_parallelism, the cgroup's CPU
        // quota) when a thread pool sizes itself (in a jail they are not there: it falls back).
        libc::SYS_openat,
        libc::SYS_getdents64,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sigaltstack,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // No clone3: where clone is allowed, the program answers it ENOSYS before the list
        // (see `build`); elsewhere it is outside the list.
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_getrandom,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_connect,
        libc::SYS_accept4,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_tgkill,
    ];
    let mut r: Rules = plain.iter().map(|&n| (n, vec![])).collect();
    let no_exec = || cond(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);
    r.insert(libc::SYS_mmap, vec![rule(vec![no_exec()?])?]);
    r.insert(libc::SYS_mprotect, vec![rule(vec![no_exec()?])?]);
    let thread = libc::CLONE_THREAD as u64;
    r.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    r.insert(
        libc::SYS_socket,
        vec![rule(vec![cond32(0, libc::AF_UNIX as u32)?])?],
    );
    // A worker names itself (PR_SET_NAME) as it starts, and adds its own filter: only ever
    // a further restriction.
    r.insert(
        libc::SYS_prctl,
        vec![
            rule(vec![cond32(0, libc::PR_SET_NAME as u32)?])?,
            rule(vec![cond32(0, libc::PR_SET_NO_NEW_PRIVS as u32)?])?,
        ],
    );
    r.insert(
        libc::SYS_seccomp,
        vec![rule(vec![cond32(0, libc::SECCOMP_SET_MODE_FILTER)?])?],
    );
    Ok(r)
}

/// The ioctls of file descriptors a device serves from: non-blocking and close-on-exec
/// switches, a terminal check, and a tap's offload and header-size settings (set when the
/// driver acknowledges its features).
fn host_ioctls() -> Vec<u64> {
    vec![
        libc::FIONBIO,
        libc::FIOCLEX,
        libc::TCGETS,
        TUNSETOFFLOAD,
        TUNSETVNETHDRSZ,
    ]
}

// _IOW('T', 208, unsigned int) and _IOW('T', 216, int).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;

fn rules(kind: ThreadKind) -> Result<Rules, String> {
    if kind == ThreadKind::Main {
        return main_rules();
    }
    let mut r = common()?;
    let io = match kind {
        ThreadKind::KvmWait | ThreadKind::Main => Vec::new(),
        ThreadKind::EmuHarts | ThreadKind::Device => host_ioctls(),
        ThreadKind::Control => {
            let mut v = host_ioctls();
            v.extend(kvm::vm_ioctls());
            v
        }
        ThreadKind::Vcpu => {
            let mut v = host_ioctls();
            v.extend(kvm::vcpu_ioctls());
            v
        }
    };
    if !io.is_empty() {
        r.insert(libc::SYS_ioctl, ioctls(&io)?);
    }
    if matches!(
        kind,
        ThreadKind::EmuHarts | ThreadKind::KvmWait | ThreadKind::Vcpu
    ) {
        // Their device workers are started by the sandbox's spawner, not by them (so they do
        // not pass these on), and a guest's vsock connect is the worker's: no sockets made or
        // connected, no file syncs or resizes, no threads.
        for n in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_shutdown,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_fallocate,
            libc::SYS_ftruncate,
            libc::SYS_clone,
        ] {
            r.remove(&n);
        }
    }
    if kind == ThreadKind::Control {
        // A snapshot writes its directory (made, filled, renamed into place, or removed when
        // it fails) and copies the disks sparsely; the console log is rotated by a rename.
        for n in [
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_rmdir,
            libc::SYS_readlink,
            libc::SYS_readlinkat,
            libc::SYS_copy_file_range,
            libc::SYS_sendfile,
            libc::SYS_fchmod,
            libc::SYS_fstatfs,
            libc::SYS_statfs,
        ] {
            r.insert(n, vec![]);
        }
    }
    Ok(r)
}

/// The main thread's: every other kind's (the threads it starts after it is confined carry
/// its filter beside their own, and the kernel answers a call with the strictest of them, so
/// its list must hold theirs), and what building a machine takes beyond them: the KVM calls
/// that make a VM and its vCPUs and load their state, the terminal's modes (a raw console
/// and back) and size, the file calls of a snapshot's restore and of the run directory.
fn main_rules() -> Result<Rules, String> {
    let mut r: Rules = BTreeMap::new();
    for kind in KINDS.into_iter().filter(|k| *k != ThreadKind::Main) {
        for (nr, rs) in rules(kind)? {
            if nr == libc::SYS_ioctl {
                continue;
            }
            match r.get_mut(&nr) {
                // No rules: the call is allowed whatever its arguments.
                Some(have) if have.is_empty() => {}
                Some(_) if rs.is_empty() => {
                    r.insert(nr, rs);
                }
                Some(have) => {
                    for rule in rs {
                        if !have.contains(&rule) {
                            have.push(rule);
                        }
                    }
                }
                None => {
                    r.insert(nr, rs);
                }
            }
        }
    }
    let mut io = host_ioctls();
    io.extend(kvm::vcpu_ioctls());
    io.extend(kvm::vm_ioctls());
    io.extend(kvm::setup_ioctls());
    io.extend([libc::TCSETS, libc::TCSETSW, libc::TCSETSF, libc::TIOCGWINSZ]);
    io.sort_unstable();
    io.dedup();
    r.insert(libc::SYS_ioctl, ioctls(&io)?);
    for n in MAIN_EXTRA {
        r.entry(n).or_default();
    }
    // passt, when this VMM started it (no jail): ended with SIGKILL and reaped at exit.
    r.insert(
        libc::SYS_kill,
        vec![rule(vec![cond32(1, libc::SIGKILL as u32)?])?],
    );
    Ok(r)
}

/// What the main thread calls beyond every other kind (see [`main_rules`]); from `perf
/// trace -s` of the VMM's main thread over the end-to-end tests, past the point where it is
/// confined.
const MAIN_EXTRA: [i64; 14] = [
    // `vireo vmm`'s control and console sockets, made once the machine is built.
    libc::SYS_bind,
    libc::SYS_listen,
    // The disks' image locks, taken as each boot opens them.
    libc::SYS_flock,
    // passt's exit, reaped.
    libc::SYS_wait4,
    libc::SYS_waitid,
    // `vireo run`'s signal handlers (signal-hook: the handlers, and the socket pair they
    // wake the signal thread by), installed after this thread is confined.
    libc::SYS_rt_sigaction,
    libc::SYS_socketpair,
    libc::SYS_pipe2,
    libc::SYS_getcwd,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_chmod,
];

/// KVM's ioctl numbers (linux/kvm.h; KVMIO is 0xAE), for the vCPU threads' list.
#[cfg(target_arch = "x86_64")]
mod kvm {
    use kvm_bindings::*;
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const KVMIO: u32 = 0xae;
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
    ioctl_iowr_nr!(KVM_IRQ_LINE_STATUS, KVMIO, 0x67, kvm_irq_level);
    ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
    ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
    ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
    ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
    ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
    ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
    ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
    ioctl_iowr_nr!(KVM_GET_SUPPORTED_CPUID, KVMIO, 0x05, kvm_cpuid2);
    ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
    ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
    ioctl_iow_nr!(KVM_SET_IDENTITY_MAP_ADDR, KVMIO, 0x48, u64);
    ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
    ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_pit_config);
    ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
    ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
    ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
    ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
    ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
    ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
    ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
    ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
    ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);

    /// KVM_RUN and the state reads a snapshot makes on the vCPU's own thread; the interrupt
    /// lines devices raise from a vCPU's exit; and the MSI routes and doorbell eventfds a
    /// driver's configuration writes set up.
    pub fn vcpu_ioctls() -> Vec<u64> {
        [
            KVM_RUN(),
            KVM_CHECK_EXTENSION(),
            KVM_GET_REGS(),
            KVM_SET_REGS(),
            KVM_GET_SREGS(),
            KVM_SET_SREGS(),
            KVM_GET_MSRS(),
            KVM_SET_MSRS(),
            KVM_GET_FPU(),
            KVM_GET_LAPIC(),
            KVM_GET_MP_STATE(),
            KVM_SET_MP_STATE(),
            KVM_GET_VCPU_EVENTS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_XSAVE(),
            KVM_GET_XSAVE2(),
            KVM_GET_XCRS(),
            KVM_IRQ_LINE(),
            KVM_IRQ_LINE_STATUS(),
            KVM_SET_GSI_ROUTING(),
            KVM_IRQFD(),
            KVM_IOEVENTFD(),
            KVM_SIGNAL_MSI(),
        ]
        .to_vec()
    }

    /// What making a VM and its vCPUs, and loading a restored one's state, asks of KVM (on
    /// the main thread, which builds the machine).
    pub fn setup_ioctls() -> Vec<u64> {
        [
            KVM_GET_API_VERSION(),
            KVM_CREATE_VM(),
            KVM_GET_VCPU_MMAP_SIZE(),
            KVM_GET_SUPPORTED_CPUID(),
            KVM_GET_MSR_INDEX_LIST(),
            KVM_CREATE_VCPU(),
            KVM_SET_TSS_ADDR(),
            KVM_SET_IDENTITY_MAP_ADDR(),
            KVM_CREATE_IRQCHIP(),
            KVM_CREATE_PIT2(),
            KVM_SET_CPUID2(),
            KVM_SET_FPU(),
            KVM_SET_LAPIC(),
            KVM_SET_XSAVE(),
            KVM_SET_XCRS(),
            KVM_SET_VCPU_EVENTS(),
            KVM_SET_DEBUGREGS(),
            KVM_SET_CLOCK(),
            KVM_SET_IRQCHIP(),
            KVM_SET_PIT2(),
        ]
        .to_vec()
    }

    /// What a snapshot asks of the VM (not a vCPU) from the thread serving the request: the
    /// dirty log (and the memory slots re-registered to start it), the clock, the interrupt
    /// controllers and the PIT; and the interrupt lines a device raises from there.
    pub fn vm_ioctls() -> Vec<u64> {
        [
            KVM_GET_DIRTY_LOG(),
            KVM_SET_USER_MEMORY_REGION(),
            KVM_GET_CLOCK(),
            KVM_GET_IRQCHIP(),
            KVM_GET_PIT2(),
            KVM_CHECK_EXTENSION(),
            KVM_IRQ_LINE(),
            KVM_IRQ_LINE_STATUS(),
            KVM_SIGNAL_MSI(),
        ]
        .to_vec()
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kvm {
    pub fn vcpu_ioctls() -> Vec<u64> {
        Vec::new()
    }

    pub fn setup_ioctls() -> Vec<u64> {
        Vec::new()
    }

    pub fn vm_ioctls() -> Vec<u64> {
        Vec::new()
    }
}

/// `--seccomp log`: a SIGSYS handler that reports the call and makes it fail with EPERM.
mod log_handler {
    use std::sync::Once;

    static ONCE: Once = Once::new();

    pub fn install() -> std::io::Result<()> {
        let mut result = Ok(());
        ONCE.call_once(|| {
            // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is an
            // `extern "C"` function of the SA_SIGINFO signature, and the call only changes
            // this process's disposition of SIGSYS.
            let r = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_sigsys as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
            };
            if r != 0 {
                result = Err(std::io::Error::last_os_error());
            }
        });
        result
    }

    /// Formats `n` into `buf` from the end; the digits written.
    fn decimal(mut n: u32, buf: &mut [u8; 12]) -> &[u8] {
        let mut at = buf.len();
        loop {
            at -= 1;
            buf[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 || at == 0 {
                break;
            }
        }
        &buf[at..]
    }

    extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // Only async-signal-safe work here: no allocation, no locks; write(2) and the
        // interrupted context.
        // SAFETY: the kernel hands a SIGSYS handler a siginfo whose union holds
        // (si_call_addr, si_syscall, si_arch) from byte 16 on x86-64: the call number is the
        // int at byte 24 of the live siginfo the pointer refers to.
        let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
        let mut digits = [0u8; 12];
        let parts: [&[u8]; 3] = [
            b"vireo: seccomp: system call ",
            decimal(nr as u32, &mut digits),
            b" is outside this thread's list; it fails with EPERM (--seccomp log)\n",
        ];
        for p in parts {
            // SAFETY: writes `p.len()` bytes from a live slice to stderr.
            unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `ctx` is the ucontext_t of the interrupted thread the kernel passes an
        // SA_SIGINFO handler; RAX is where the trapped call's return value goes when the
        // handler returns.
        unsafe {
            let uc = ctx.cast::<libc::ucontext_t>();
            (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -(libc::EPERM as i64);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = ctx;
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn decimal_digits() {
            let mut b = [0u8; 12];
            assert_eq!(super::decimal(0, &mut b), b"0");
            assert_eq!(super::decimal(435, &mut b), b"435");
            assert_eq!(super::decimal(u32::MAX, &mut b), b"4294967295");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_builds_and_the_lists_hold_no_process_control() {
        let built = build(Mode::Kill).unwrap();
        assert_eq!(built.len(), KINDS.len());
        for kind in KINDS {
            let r = rules(kind).unwrap();
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_setuid,
                libc::SYS_getppid,
            ] {
                assert!(!r.contains_key(&forbidden), "{kind:?} allows {forbidden}");
            }
            // Only the main thread signals (passt, with SIGKILL).
            assert_eq!(r.contains_key(&libc::SYS_kill), kind == ThreadKind::Main);
        }
        // The threads the main thread starts carry its filter too: its list holds theirs.
        let main = rules(ThreadKind::Main).unwrap();
        for kind in KINDS {
            for (nr, rs) in rules(kind).unwrap() {
                let m = main
                    .get(&nr)
                    .unwrap_or_else(|| panic!("main lacks {nr} of {kind:?}"));
                if nr != libc::SYS_ioctl && !m.is_empty() {
                    assert!(!rs.is_empty() && rs.iter().all(|x| m.contains(x)), "{nr}");
                }
            }
        }
        let io = |k| rules(k).unwrap()[&libc::SYS_ioctl].len();
        assert!(io(ThreadKind::Main) > io(ThreadKind::Vcpu));
        // Threads that run guest code make no sockets and start no threads; workers do.
        for kind in [ThreadKind::EmuHarts, ThreadKind::KvmWait, ThreadKind::Vcpu] {
            let r = rules(kind).unwrap();
            for n in [
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_clone,
                libc::SYS_clone3,
            ] {
                assert!(!r.contains_key(&n), "{kind:?} allows {n}");
            }
        }
        let dev = rules(ThreadKind::Device).unwrap();
        assert!(dev.contains_key(&libc::SYS_connect) && dev.contains_key(&libc::SYS_clone));
        // Only vCPUs (and a snapshot's VM-wide reads) may reach KVM.
        let vcpu = rules(ThreadKind::Vcpu).unwrap()[&libc::SYS_ioctl].len();
        let dev = rules(ThreadKind::Device).unwrap()[&libc::SYS_ioctl].len();
        assert!(vcpu > dev);
        assert!(!rules(ThreadKind::KvmWait)
            .unwrap()
            .contains_key(&libc::SYS_ioctl));
    }

    /// The threads that run guest code start none: clone3 is outside their list (refused
    /// and reported in log mode), not answered ENOSYS; and each kind is one program.
    #[test]
    fn guest_code_threads_may_not_clone3() {
        log_handler::install().unwrap();
        let mut built = build(Mode::Log).unwrap();
        let dev = built[&ThreadKind::Device].len();
        let emu = built.remove(&ThreadKind::EmuHarts).unwrap();
        assert!(emu.len() + 3 <= dev, "emu {} device {dev}", emu.len());
        let t = std::thread::spawn(move || {
            seccompiler::apply_filter(&emu).unwrap();
            // SAFETY: clone3 with no arguments structure starts nothing, filtered or not.
            let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
            (r, std::io::Error::last_os_error().raw_os_error())
        });
        assert_eq!(t.join().unwrap(), (-1, Some(libc::EPERM)));
    }

    /// The daemon signals and reaps its VMMs but starts none itself (its unfiltered launcher
    /// thread does), reaches no KVM, and makes no socket but Unix and IP ones.
    #[test]
    fn the_daemon_list_starts_no_process() {
        let r = daemon_rules().unwrap();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_pivot_root,
            libc::SYS_setuid,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_getppid,
            libc::SYS_pidfd_open,
        ] {
            assert!(!r.contains_key(&forbidden), "the daemon allows {forbidden}");
        }
        assert!(r.contains_key(&libc::SYS_kill) && r.contains_key(&libc::SYS_wait4));
        assert_eq!(r[&libc::SYS_socket].len(), 3);
        assert_eq!(r[&libc::SYS_ioctl].len(), 3);
        assert!(daemon_program(Mode::Kill).unwrap().len() > 100);
    }

    /// On a thread under the daemon's program (log mode: refusals fail with EPERM): SIGKILL
    /// to a child goes, any other signal does not; IP sockets are made, netlink ones are not;
    /// a fork is refused.
    #[test]
    fn a_daemon_thread_may_kill_but_not_fork() {
        log_handler::install().unwrap();
        let prog = daemon_program(Mode::Log).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let t = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            let errno = || std::io::Error::last_os_error().raw_os_error();
            // SAFETY: plain system calls with valid arguments on our own child; sockets made
            // are closed; the fork (refused) would only run `_exit` in the child.
            unsafe {
                let term = libc::kill(pid, libc::SIGTERM);
                assert_eq!((term, errno()), (-1, Some(libc::EPERM)));
                let inet = libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
                assert!(inet >= 0, "{:?}", errno());
                libc::close(inet);
                let nl = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0);
                assert_eq!((nl, errno()), (-1, Some(libc::EPERM)));
                let forked = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                if forked == 0 {
                    libc::_exit(0);
                }
                assert_eq!((forked, errno()), (-1, Some(libc::EPERM)));
                assert_eq!(libc::kill(pid, libc::SIGKILL), 0, "{:?}", errno());
            }
        });
        let r = t.join();
        let _ = child.kill();
        let st = child.wait().unwrap();
        r.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn modes_parse_and_name_the_choices() {
        assert_eq!("kill".parse::<Mode>(), Ok(Mode::Kill));
        assert_eq!("log".parse::<Mode>(), Ok(Mode::Log));
        assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
        let e = "strict".parse::<Mode>().unwrap_err();
        assert!(e.contains("'strict'") && e.contains("kill"), "{e}");
    }

    /// A thread with the Device filter: what it may do works; what it may not is refused
    /// (log mode, so the test process lives: EPERM, reported).
    #[test]
    fn a_filtered_thread_is_refused_what_its_list_lacks() {
        log_handler::install().unwrap();
        let prog = build(Mode::Log)
            .unwrap()
            .remove(&ThreadKind::Device)
            .unwrap();
        let t = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            // Allowed: a pipe-less write to stderr, an AF_UNIX socket; refused: getppid, an
            // INET socket, an executable mapping.
            // SAFETY: plain system calls with valid arguments; the socket is closed, the
            // mapping (if ever made) unmapped.
            unsafe {
                let ppid = libc::syscall(libc::SYS_getppid);
                assert_eq!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::EPERM)
                );
                // clone3 answers ENOSYS (unfiltered, these arguments give EINVAL), so the
                // C library would fall back to clone, whose flags the list can see.
                let c3 = libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize);
                assert_eq!(
                    (c3, std::io::Error::last_os_error().raw_os_error()),
                    (-1, Some(libc::ENOSYS))
                );
                let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let inet = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let inet_errno = std::io::Error::last_os_error().raw_os_error();
                let m = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if unix >= 0 {
                    libc::close(unix);
                }
                if m != libc::MAP_FAILED {
                    libc::munmap(m, 4096);
                }
                (ppid, unix >= 0, inet, inet_errno, m == libc::MAP_FAILED)
            }
        });
        let (ppid, unix_ok, inet, inet_errno, exec_refused) = t.join().unwrap();
        // The C library's syscall() turns the -EPERM the handler left into -1.
        assert_eq!(ppid, -1);
        assert!(unix_ok);
        assert_eq!((inet, inet_errno), (-1, Some(libc::EPERM)));
        assert!(exec_refused);
    }
}
