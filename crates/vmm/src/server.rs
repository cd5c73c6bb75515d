//! The `vireo vmm` process: one VM, served on two Unix sockets in its run directory. The
//! daemon (`vireo daemon`) starts one per VM, so a crash or a hostile guest takes down one VM,
//! never the daemon or its neighbours.
//!
//! # The VMM process interface, version 1
//!
//! **Start.** The daemon creates a run directory DIR (mode 0700), writes `DIR/spec.json` — the
//! definition, [`VmSpec`] as JSON with absolute paths — and runs `vireo vmm --name NAME --dir
//! DIR` in a new session (so it outlives the daemon), stdin `/dev/null`, stdout and stderr
//! appended to `DIR/vmm.log`. The VMM:
//! 1. takes an exclusive `flock` on `DIR/lock` for its whole life (whoever can take that lock
//!    knows the VMM is gone, whatever `DIR/pid` says) and writes its pid to `DIR/pid`;
//! 2. builds the VM; on failure it writes `DIR/exit.json` (reason `error`) and exits 125;
//! 3. binds `DIR/control.sock` and `DIR/console.sock` (mode 0600) and boots the guest — or,
//!    with `--restore SNAP [--paused] [--force] [--clock pause|catch-up]`, continues the
//!    snapshot in SNAP (read and checked in step 2, so a bad snapshot is a start failure).
//!
//! **Exit.** Before exiting for any reason it can see, the VMM writes `DIR/exit.json`
//! atomically (temporary file, rename):
//! `{"reason": "poweroff"|"failure"|"reset"|"killed"|"error"|"panic", "status": N, "message": "..."}`
//! — poweroff: the guest powered off (status 0); failure: the guest reported a failure (its
//! status); reset: a reboot with `reboot = "exit"`, or a kernel panic (the message is the
//! panic line); killed: stopped by `kill`, or by `shutdown` when the guest did not power off
//! in time; error: vireo failed; panic: a bug in vireo. The exit code is 0 for poweroff, else
//! non-zero. A VMM killed by a signal leaves no exit.json. Files left in DIR: `console.log`
//! (and `console.log.1`: the console output, rotated at 1 MiB), `vmm.log`, `exit.json`; the
//! sockets are removed.
//!
//! **Control socket** (`DIR/control.sock`): line-delimited JSON; one request per line, one
//! answer line each, in order; many clients at once. Requests `{"op": ...}`; answers
//! `{"ok": true, ...}` or `{"ok": false, "error": CODE, "message": TEXT}`, CODE one of
//! `conflict` (wrong state; the message names it), `bad_request`, `internal`.
//! - `hello` → `{"protocol": 1, "name", "pid", "accel"}`
//! - `state` → `{"state": "starting"|"running"|"paused"|"stopping", "accel": "emu"|"kvm",
//!   "guest_ready", "ip" (the guest's IPv4 address once its /init said it, else null),
//!   "started_at"}`
//!   (`guest_ready`: vireo's /init said it is up: `started` on `vireo.ctl`, or its console
//!   marker for an interactive guest)
//! - `pause`, `resume` → `{"state"}`; pausing a paused VM or resuming a running one: conflict
//! - `shutdown` `{"timeout_secs": N}` (default 30) → asks the guest to power off (through
//!   vireo's /init on `vireo.ctl`); it is stopped by force after N seconds
//! - `kill` → stops the guest at once; the VMM exits
//! - `stats` → `{"stats": {"accel", "state", "vcpus", "guest_ram_bytes", "vmm_rss_bytes",
//!   "vcpu_seconds", "uptime_seconds", "console_bytes", "console_dropped_bytes",
//!   "counters": {NAME: N}, "devices": [{"kind", "id", "counters": {NAME: N}}]}}`
//! - `snapshot` `{"dir": ABS, "parent": ABS?}` → `{"snapshot": {"id", "dir", "kind", "memory_pages",
//!   "memory_bytes", "disk_bytes", "paused_ms", "total_ms"}}`: writes the snapshot directory `dir`
//!   (see [`crate::snapshot`]; a diff of the snapshot in `parent`), pausing a running VM for it;
//!   a VM not running or paused, or a `dir` that exists: conflict. A failed snapshot leaves no
//!   files and the VM as it was.
//! - `watch` → `{"ok": true}`, then `{"event": "state", "state"}` per change,
//!   `{"event": "guest_ready"}` and `{"event": "guest_ip", "ip"}` once a boot, until the VMM
//!   exits (EOF: read exit.json).
//!
//! **Console socket** (`DIR/console.sock`): the client sends `rw\n` or `ro\n`; the VMM sends
//! the last 64 KiB of console output, then live output. An `rw` client's bytes go to the
//! guest console's input; one writer at a time (a second `rw` client is told so and is
//! read-only). Closing the connection detaches; the VM runs on. A client that reads too slowly
//! loses output (counted in `console_dropped_bytes`), never slows the guest.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vireo_devices::ConsoleOutput;
use vireo_machine::GuestExit;
use vireo_spec::{Accel, VmSpec};

use crate::{fail, Error, RunError, Vm, VmControl};

/// The protocol version this VMM speaks.
pub const PROTOCOL: u32 = 1;
/// Console output a new console client gets first.
const BACKLOG: usize = 64 << 10;
/// `console.log` is rotated to `console.log.1` beyond this.
const LOG_MAX: u64 = 1 << 20;
/// Chunks queued for one slow console client before its output is dropped.
const CLIENT_QUEUE: usize = 256;
/// Longest request line on the control socket.
const MAX_REQUEST: usize = 64 << 10;
/// Shutdown's default time for the guest to power off.
const DEFAULT_GRACE: u64 = 30;

/// What `vireo vmm` is given.
pub struct Options {
    pub name: String,
    pub dir: PathBuf,
    /// Continue the snapshot in this directory instead of booting (`--restore SNAP`): the
    /// machine is the snapshot's, the devices are built from `DIR/spec.json` (the daemon
    /// points its disks at the VM's own overlays on the snapshot's copies and gives a clone
    /// its own MAC address and vsock CID).
    pub restore: Option<PathBuf>,
    /// With `restore`: start paused.
    pub paused: bool,
    /// With `restore`: accept disks changed since the snapshot.
    pub force: bool,
    /// What the guest's clock does about time it did not run.
    pub clock: vireo_riscv::state::ClockMode,
    /// The guest-facing threads' system-call filters (`vireo_jail::seccomp`).
    pub seccomp: vireo_jail::Mode,
    /// Run in a jail rooted here (`--jail ROOT`; [`crate::jailing`]), as `jail_user`
    /// (`--jail-user USER[:GROUP]`; as root, nobody by default).
    pub jail: Option<PathBuf>,
    pub jail_user: Option<String>,
    /// Put the VMM in a cgroup of its own under this parent first (`--cgroup-parent`), with
    /// the definition's memory and CPU limits; failing that is a start failure.
    pub cgroup_parent: Option<String>,
}

/// `DIR/exit.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub reason: String,
    pub status: i32,
    pub message: String,
}

/// Runs the VM described in `DIR/spec.json` until it ends; returns the process exit code.
pub fn serve(mut opts: Options) -> u8 {
    // A jailed VMM's working directory changes: its run directory by an absolute path.
    if let Ok(d) = std::path::absolute(&opts.dir) {
        opts.dir = d;
    }
    let lock = match take_lock(&opts.dir) {
        Ok(f) => f,
        Err(e) => {
            // Another VMM owns DIR: leave its files alone.
            eprintln!("vireo vmm: {e}");
            return 125;
        }
    };
    let _ = std::fs::write(opts.dir.join("pid"), format!("{}\n", std::process::id()));
    // The filters are armed after `start`: its KVM exception probe runs a guest of vireo's
    // own, on a vCPU thread that need not pay for a filter on the start's critical path.
    let record = match Server::start(&opts)
        .and_then(|server| {
            vireo_jail::install(opts.seccomp)
                .map_err(fail)
                .map(|()| server)
        })
        .and_then(|server| server.confine(&opts))
    {
        Ok(server) => server.run(),
        Err(e) => ExitRecord {
            reason: "error".into(),
            status: 125,
            message: e.to_string(),
        },
    };
    if record.reason == "error" {
        eprintln!("vireo vmm: {}", record.message);
    }
    write_exit(&opts.dir, &record);
    let _ = std::fs::remove_file(opts.dir.join("control.sock"));
    let _ = std::fs::remove_file(opts.dir.join("console.sock"));
    drop(lock);
    match record.reason.as_str() {
        "poweroff" => 0,
        "error" => 125,
        _ => record.status.clamp(1, 255) as u8,
    }
}

/// Writes `DIR/exit.json` atomically; a bug's panic message goes there too.
pub fn write_exit(dir: &Path, record: &ExitRecord) {
    let tmp = dir.join("exit.json.tmp");
    let body = serde_json::to_vec(record).unwrap_or_default();
    if std::fs::write(&tmp, body).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("exit.json"));
    }
}

fn take_lock(dir: &Path) -> Result<File, Error> {
    let path = dir.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(fail(format!(
            "{} is locked: another VMM runs from {}",
            path.display(),
            dir.display()
        )));
    }
    Ok(f)
}

/// The VM's state as clients see it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Starting,
    Running,
    Paused,
    Stopping,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
        }
    }
}

/// Where console input goes.
type Sink = Box<dyn FnMut(&[u8]) -> usize + Send>;

struct Shared {
    name: String,
    accel: &'static str,
    cpus: u32,
    guest_ram: u64,
    started_at: f64,
    started: Instant,
    state: Mutex<State>,
    guest_ready: AtomicBool,
    /// The guest's IPv4 address, once its /init said it (`ip ADDR` on vireo.ctl).
    guest_ip: Mutex<Option<String>>,
    /// The running boot's control.
    vm: Mutex<Option<VmControl>>,
    /// The running boot's command channel (interactive guests with vireo's /init).
    channel: Mutex<Option<crate::channel::Channel>>,
    /// The definition runs its own command on the channel's ports: no `exec`.
    command_vm: bool,
    /// The `exec` in progress, if any.
    exec: Mutex<Option<Exec>>,
    exec_cv: Condvar,
    devices: Mutex<Vec<crate::DeviceHandle>>,
    /// The definition, saved with each snapshot.
    spec: VmSpec,
    /// One snapshot at a time.
    snapshotting: Mutex<()>,
    /// Stopped by `kill`, or by a shutdown that ran out of time.
    forced: AtomicBool,
    /// Why, when it is not the plain reason.
    forced_why: Mutex<Option<String>>,
    /// A stop was asked for: a reboot must not boot again.
    stopping: AtomicBool,
    /// Counts boots, so a shutdown timer of one boot cannot stop the next.
    boot: AtomicU64,
    watchers: Mutex<Vec<SyncSender<String>>>,
    console: Mutex<ConsoleState>,
    sink: Mutex<Option<Sink>>,
    writer_taken: AtomicBool,
    panic: Mutex<Option<String>>,
    ended: (Mutex<bool>, Condvar),
}

struct ConsoleState {
    backlog: VecDeque<u8>,
    clients: Vec<SyncSender<Arc<[u8]>>>,
    total: u64,
    dropped: u64,
    log: Option<File>,
    log_len: u64,
    log_path: PathBuf,
    watch: crate::watch::ConsoleWatch,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Server {
    dir: PathBuf,
    shared: Arc<Shared>,
    spec: VmSpec,
    plan: crate::Plan,
    configs: Vec<crate::DeviceConfig>,
    /// The NICs' backends, opened once for the VM's life.
    backends: crate::devices::Backends,
    /// The jail to enter (`--jail`), its user looked up.
    jail: Option<crate::jailing::JailOptions>,
    out: ConsoleOutput,
    /// The snapshot the first boot continues, loaded and checked.
    restore: Mutex<Option<crate::snapshot::Loaded>>,
    paused: bool,
    clock: vireo_riscv::state::ClockMode,
}

impl Server {
    fn start(opts: &Options) -> Result<Server, Error> {
        // Bad jail flags are refused before anything is started.
        let jail = opts
            .jail
            .as_ref()
            .map(|root| crate::jailing::JailOptions::new(root.clone(), opts.jail_user.as_deref()))
            .transpose()?;
        let spec_path = opts.dir.join("spec.json");
        let text = std::fs::read_to_string(&spec_path)
            .map_err(|e| fail(format!("cannot read {}: {e}", spec_path.display())))?;
        let spec: VmSpec = serde_json::from_str(&text)
            .map_err(|e| fail(format!("{}: {e}", spec_path.display())))?;
        spec.validate().map_err(fail)?;
        let payload = crate::resolve(&spec, None)?;
        let plan = crate::plan(&spec, payload)?;
        if plan.accel == Accel::Kvm {
            crate::check_kvm(&plan.boot.kernel, false)?;
        }
        let configs = crate::devices::parse(&spec)?;
        let backends = crate::devices::open_backends(&configs)?;
        // Everything a restore needs is read and checked before anything runs.
        let restore = match &opts.restore {
            Some(snap) => {
                let accel = match plan.accel {
                    Accel::Kvm => crate::snapshot::Accel::Kvm,
                    _ => crate::snapshot::Accel::Emu,
                };
                let loaded = crate::snapshot::load(snap, opts.force, accel)?;
                tracing::info!(
                    "snapshot {} loaded and mapped in {:.2} ms",
                    snap.display(),
                    loaded.load_ms
                );
                Some(loaded)
            }
            None => None,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let log_path = opts.dir.join("console.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", log_path.display())))?;
        let log_len = log.metadata().map(|m| m.len()).unwrap_or(0);
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            accel: if plan.accel == Accel::Kvm {
                "kvm"
            } else {
                "emu"
            },
            cpus: spec.cpus,
            guest_ram: spec.memory.bytes(),
            started_at: now,
            started: Instant::now(),
            state: Mutex::new(State::Starting),
            guest_ready: AtomicBool::new(false),
            guest_ip: Mutex::new(None),
            vm: Mutex::new(None),
            channel: Mutex::new(None),
            command_vm: !spec.command.is_empty(),
            exec: Mutex::new(None),
            exec_cv: Condvar::new(),
            devices: Mutex::new(Vec::new()),
            spec: spec.clone(),
            snapshotting: Mutex::new(()),
            forced: AtomicBool::new(false),
            forced_why: Mutex::new(None),
            stopping: AtomicBool::new(false),
            boot: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            console: Mutex::new(ConsoleState {
                backlog: VecDeque::new(),
                clients: Vec::new(),
                total: 0,
                dropped: 0,
                log: Some(log),
                log_len,
                log_path,
                watch: Default::default(),
            }),
            sink: Mutex::new(None),
            writer_taken: AtomicBool::new(false),
            panic: Mutex::new(None),
            ended: (Mutex::new(false), Condvar::new()),
        });
        let server = Server {
            dir: opts.dir.clone(),
            shared,
            spec,
            plan,
            configs,
            backends,
            jail,
            out: ConsoleOutput::new(),
            restore: Mutex::new(restore),
            paused: opts.paused,
            clock: opts.clock,
        };
        Ok(server)
    }

    /// The cgroup and the jail, when asked for: after everything that needs the host's view
    /// (the definition, a snapshot's memory, the network backends), before the first device
    /// is built or a thread started.
    fn confine(self, opts: &Options) -> Result<Server, Error> {
        if let Some(parent) = &opts.cgroup_parent {
            let cg = vireo_jail::cgroup::Hierarchy::default()
                .place(
                    parent,
                    &opts.name,
                    std::process::id(),
                    self.spec.memory.bytes(),
                    self.spec.cpus,
                )
                .map_err(|e| fail(format!("cannot put the VMM in its cgroup: {e}")))?;
            tracing::info!("in cgroup {:?}", cg.dirs);
        }
        if let Some(j) = &self.jail {
            // The run directory is the VMM's to write (sockets, logs, exit.json): the jail's
            // user gets it and the files the VMM appends to. (`serve` made it absolute.)
            let dir = &opts.dir;
            for p in [dir.clone(), dir.join("console.log"), dir.join("vmm.log")] {
                if p.exists() {
                    j.give(&p)?;
                }
            }
            let spec = crate::jailing::spec(
                j,
                &self.plan,
                &self.configs,
                vec![vireo_jail::Show::writable(dir)],
            )?;
            crate::jailing::enter(&spec)?;
            tracing::info!("jailed in {}", j.root.display());
        }
        vireo_machine::sandbox::start_spawner()
            .map_err(|e| fail(format!("cannot start the thread spawner: {e}")))?;
        // From here on this thread builds machines from the definition and snapshots, and
        // every thread it starts carries its filter.
        vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Main);
        Ok(self)
    }

    fn run(self) -> ExitRecord {
        let dir_of = |name: &str| self.dir.join(name);
        // The first boot's devices are built before the sockets exist, so a bad disk
        // or a missing backend is a start failure the daemon reports, not a crash.
        let first = match self.boot() {
            Ok(b) => b,
            Err(e) => {
                return ExitRecord {
                    reason: "error".into(),
                    status: 125,
                    message: e.to_string(),
                }
            }
        };
        let control = match bind(&dir_of("control.sock")) {
            Ok(l) => l,
            Err(e) => return error_record(e),
        };
        let console = match bind(&dir_of("console.sock")) {
            Ok(l) => l,
            Err(e) => return error_record(e),
        };
        // The sockets' threads and the console relay run under the control kind's filter,
        // and so does every thread they start (a filter is inherited).
        {
            let s = self.shared.clone();
            if let Err(r) = control_thread("vmm-control", move || {
                accept_loop(control, s, serve_control)
            }) {
                return r;
            }
        }
        {
            let s = self.shared.clone();
            if let Err(r) = control_thread("vmm-console", move || {
                accept_loop(console, s, serve_console)
            }) {
                return r;
            }
        }
        {
            let s = self.shared.clone();
            let out = self.out.clone();
            if let Err(r) = control_thread("console-relay", move || console_loop(out, s)) {
                return r;
            }
        }
        let mut vm = Some(first);
        let record = loop {
            let Some((mut machine, pumps)) = vm.take() else {
                break error_record(fail("no machine to run"));
            };
            let st = if machine.control().is_paused() {
                State::Paused
            } else {
                State::Running
            };
            self.set_state(st);
            let result = machine.run_on_own_thread();
            drop(pumps);
            // What the guest printed last is in the log before the record is written.
            std::thread::sleep(Duration::from_millis(20));
            drain_console(&self.out, &self.shared);
            drop(machine);
            let panic = lock(&self.shared.panic).clone();
            let forced = self.shared.forced.load(Ordering::Acquire);
            let exit = match result {
                _ if forced => {
                    break ExitRecord {
                        reason: "killed".into(),
                        status: 137,
                        message: lock(&self.shared.forced_why)
                            .clone()
                            .unwrap_or_else(|| "stopped by force".into()),
                    }
                }
                Ok(e) => e,
                Err(RunError::Stopped) if panic.is_some() => GuestExit::Reset,
                Err(e) => break error_record(fail(e)),
            };
            match exit {
                GuestExit::PowerOff => {
                    break ExitRecord {
                        reason: "poweroff".into(),
                        status: 0,
                        message: "the guest powered off".into(),
                    }
                }
                GuestExit::Failure(_) => {
                    break ExitRecord {
                        reason: "failure".into(),
                        status: exit.status(),
                        message: format!("the guest stopped with status {}", exit.status()),
                    }
                }
                GuestExit::Reset => {
                    if let Some(line) = panic {
                        break ExitRecord {
                            reason: "reset".into(),
                            status: 1,
                            message: format!("guest kernel panicked: {line}"),
                        };
                    }
                    let again = self.spec.reboot_restarts()
                        && self.spec.command.is_empty()
                        && !self.shared.stopping.load(Ordering::Acquire);
                    if !again {
                        break ExitRecord {
                            reason: "reset".into(),
                            status: 1,
                            message: "the guest rebooted".into(),
                        };
                    }
                    tracing::info!("the guest rebooted: booting it again");
                    self.set_state(State::Starting);
                    self.shared.guest_ready.store(false, Ordering::Release);
                    *lock(&self.shared.guest_ip) = None;
                    match self.boot() {
                        Ok(b) => vm = Some(b),
                        Err(e) => break error_record(e),
                    }
                }
            }
        };
        *lock(&self.shared.vm) = None;
        *lock(&self.shared.channel) = None;
        let (m, cv) = &self.shared.ended;
        *lock(m) = true;
        cv.notify_all();
        self.shared.exec_cv.notify_all();
        // Watchers hear EOF when their threads see the end.
        lock(&self.shared.watchers).clear();
        record
    }

    /// Builds a fresh machine with fresh devices (the first boot, or after a reboot).
    fn boot(&self) -> Result<(Vm, Option<CtlReader>), Error> {
        let mut devices = crate::devices::build(&self.configs, &self.out, &self.backends)?;
        let channel = self.plan.vireo_init.then(|| {
            let (dev, ch) = crate::channel::channel();
            devices.push("serial", "vireo", Box::new(dev));
            ch
        });
        let console_input = devices.console_input.take();
        let handles = devices.handles.clone();
        let restored = lock(&self.restore).take();
        let from_snapshot = restored.is_some();
        let saved_macs = restored.as_ref().map(|l| l.macs.clone());
        let vm = match restored {
            Some(loaded) => {
                let t0 = Instant::now();
                let vm = Vm::restore(&self.plan.boot, &self.out, devices.list, loaded, self.clock)?;
                tracing::info!(
                    "machine restored in {:.2} ms",
                    t0.elapsed().as_secs_f64() * 1e3
                );
                if self.paused {
                    // Parks before its first instruction.
                    vm.control().start_paused().map_err(fail)?;
                }
                vm
            }
            None => Vm::create(
                self.plan.accel,
                &self.plan.boot,
                &self.out,
                devices.list,
                self.plan.isa,
            )?,
        };
        if from_snapshot {
            // A restored guest's /init said it was up long ago.
            self.shared.guest_ready.store(true, Ordering::Release);
        }
        let sink: Sink = match console_input {
            Some(c) => Box::new(move |b: &[u8]| c.push(b)),
            None => {
                let uart = vm.uart();
                Box::new(move |b: &[u8]| lock(&uart).enqueue_input(b))
            }
        };
        *lock(&self.shared.sink) = Some(sink);
        *lock(&self.shared.devices) = handles;
        *lock(&self.shared.panic) = None;
        lock(&self.shared.console).watch.rearm();
        self.shared.boot.fetch_add(1, Ordering::AcqRel);
        *lock(&self.shared.vm) = Some(vm.control());
        *lock(&self.shared.channel) = channel.clone();
        // A stop asked for between boots applies to this one.
        if self.shared.stopping.load(Ordering::Acquire) {
            vm.control().stop(GuestExit::PowerOff);
        }
        if let (Some(saved), Some(ch)) = (&saved_macs, &channel) {
            // A guest with NICs is on a new network: its /init (or the image's agent) reports
            // its address to this VMM, and when the MAC addresses changed (a clone) it binds
            // the NICs again first, so the guest takes the ones its definition gives. Queued
            // until the guest reads it; a guest restored paused reads it on resume.
            let macs = crate::devices::nic_macs(&self.spec)?;
            if !macs.is_empty() {
                ch.ctl.write(if &macs != saved {
                    b"generation nics\n".as_slice()
                } else {
                    b"generation\n".as_slice()
                });
            }
        }
        let reader = channel.map(|ch| CtlReader::start(ch, self.shared.clone(), self.out.clone()));
        Ok((vm, reader))
    }

    fn set_state(&self, st: State) {
        set_state(&self.shared, st);
    }
}

fn set_state(shared: &Shared, st: State) {
    let mut s = lock(&shared.state);
    // A stop in progress is not undone by the run loop's bookkeeping.
    if *s == State::Stopping && st == State::Running {
        return;
    }
    if *s != st {
        *s = st;
        drop(s);
        notify(shared, json!({"event": "state", "state": st.name()}));
    }
}

fn notify(shared: &Shared, event: Value) {
    let line = event.to_string();
    lock(&shared.watchers)
        .retain(|w| !matches!(w.try_send(line.clone()), Err(TrySendError::Disconnected(_))));
}

/// Starts one of the VMM's own threads, named, in the control kind's sandbox.
fn control_thread(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), ExitRecord> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Control);
            body()
        })
        .map(drop)
        .map_err(|e| error_record(fail(format!("cannot start the {name} thread: {e}"))))
}

fn error_record(e: Error) -> ExitRecord {
    ExitRecord {
        reason: "error".into(),
        status: 125,
        message: e.to_string(),
    }
}

fn bind(path: &Path) -> Result<UnixListener, Error> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| fail(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(format!("cannot set the mode of {}: {e}", path.display())))?;
    Ok(l)
}

fn accept_loop(l: UnixListener, shared: Arc<Shared>, serve: fn(UnixStream, Arc<Shared>)) {
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let s = shared.clone();
        std::thread::spawn(move || serve(conn, s));
    }
}

/// Serves the command channel for one boot: reads `vireo.ctl` for /init's `started`, and
/// copies a command's stdout and stderr into the console stream (so `logs` shows them and
/// the guest never blocks on a port nobody reads). Ends the ports with the boot.
struct CtlReader {
    ch: crate::channel::Channel,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CtlReader {
    fn start(ch: crate::channel::Channel, shared: Arc<Shared>, out: ConsoleOutput) -> CtlReader {
        use vireo_virtio::serial::ReadOutcome;
        let mut threads = Vec::new();
        let ctl = ch.ctl.clone();
        // These threads read what the guest writes (its command channel's lines among it):
        // they enter the device workers' sandbox first.
        let mut spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            let started = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Device);
                    body()
                });
            match started {
                Ok(t) => threads.push(t),
                // The guest then blocks on that port once its buffer is full: said, not hidden.
                Err(e) => tracing::error!("cannot start the {name} thread: {e}"),
            }
        };
        {
            let shared = shared.clone();
            spawn(
                "guest-ctl",
                Box::new(move || {
                    let mut line = Vec::new();
                    let mut buf = [0u8; 256];
                    while let ReadOutcome::Data(n) = ctl.read(&mut buf, None) {
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                ctl_line(&shared, &String::from_utf8_lossy(&line));
                                line.clear();
                            } else if line.len() < 64 {
                                line.push(b);
                            }
                        }
                    }
                }),
            );
        }
        for (kind, port) in [
            (FRAME_STDOUT, ch.stdout.clone()),
            (FRAME_STDERR, ch.stderr.clone()),
        ] {
            let mut out = out.clone();
            let shared = shared.clone();
            let name = if kind == FRAME_STDOUT {
                "guest-stdout"
            } else {
                "guest-stderr"
            };
            spawn(
                name,
                Box::new(move || {
                    let mut buf = [0u8; 4096];
                    while let ReadOutcome::Data(n) = port.read(&mut buf, None) {
                        // An exec's output goes to its client (waiting while the client is slow,
                        // as a pipe does); otherwise to the console stream.
                        let to_exec = lock(&shared.exec).as_ref().map(|e| e.frames.clone());
                        match to_exec {
                            Some(tx) => {
                                let _ = tx.send((kind, buf[..n].to_vec()));
                            }
                            None => {
                                let _ = out.write_all(&buf[..n]);
                            }
                        }
                    }
                }),
            );
        }
        // Nothing feeds a command's stdin: it reads end of file, as under `nohup`.
        ch.stdin.close_input();
        CtlReader { ch, threads }
    }
}

impl Drop for CtlReader {
    fn drop(&mut self) {
        // The guest has stopped: reads end once what it wrote is taken.
        self.ch.ctl.end();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A line from /init on `vireo.ctl`.
fn ctl_line(shared: &Shared, line: &str) {
    if line == "started" {
        guest_ready(shared);
    } else if let Some(ip) = line.strip_prefix("ip ") {
        // Only what parses as an address: the guest is not trusted with free text here.
        if let Ok(ip) = ip.trim().parse::<std::net::IpAddr>() {
            *lock(&shared.guest_ip) = Some(ip.to_string());
            notify(shared, json!({"event": "guest_ip", "ip": ip.to_string()}));
        }
    } else if let Some(status) = line.strip_prefix("exited ") {
        let status = status.trim().parse().unwrap_or(255);
        if let Some(e) = lock(&shared.exec).as_mut() {
            e.status = Some(status);
        }
        shared.exec_cv.notify_all();
    }
}

fn guest_ready(shared: &Shared) {
    if !shared.guest_ready.swap(true, Ordering::AcqRel) {
        notify(shared, json!({"event": "guest_ready"}));
    }
}

/// Copies the console's output to the log, the backlog and the attached clients; watches it
/// for vireo's /init marker and kernel panics.
fn console_loop(out: ConsoleOutput, shared: Arc<Shared>) {
    loop {
        if *lock(&shared.ended.0) {
            drain_console(&out, &shared);
            return;
        }
        if !drain_console(&out, &shared) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One round of [`console_loop`]; false when there was nothing.
fn drain_console(out: &ConsoleOutput, shared: &Shared) -> bool {
    let chunk = out.take();
    if chunk.is_empty() {
        return false;
    }
    let seen = lock(&shared.console).watch.feed(&chunk);
    if seen.marker {
        guest_ready(shared);
    }
    if let Some(line) = seen.panic {
        lock(&shared.panic).get_or_insert(line);
    }
    if seen.panic_ended {
        // Without panic=-1 the kernel would spin: stop it.
        if let Some(c) = lock(&shared.vm).as_ref() {
            c.stop(GuestExit::Reset);
        }
    }
    let mut c = lock(&shared.console);
    c.total += chunk.len() as u64;
    c.backlog.extend(chunk.iter().copied());
    let excess = c.backlog.len().saturating_sub(BACKLOG);
    c.backlog.drain(..excess);
    if c.log_len + chunk.len() as u64 > LOG_MAX {
        // Rotate: the log costs at most twice LOG_MAX on disk.
        let rotated = c.log_path.with_extension("log.1");
        let _ = std::fs::rename(&c.log_path, &rotated);
        c.log = File::create(&c.log_path).ok();
        c.log_len = 0;
    }
    if let Some(f) = c.log.as_mut() {
        if f.write_all(&chunk).is_ok() {
            c.log_len += chunk.len() as u64;
        }
    }
    let data: Arc<[u8]> = chunk.into();
    let mut dropped = 0;
    c.clients.retain(|tx| match tx.try_send(data.clone()) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            dropped += data.len() as u64;
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    });
    c.dropped += dropped;
    true
}

fn serve_console(conn: UnixStream, shared: Arc<Shared>) {
    let mut reader = match conn.try_clone() {
        Ok(r) => r,
        Err(_) => return,
    };
    let mut out = conn;
    // The mode line, byte by byte so that input after it is not swallowed.
    let mut mode = Vec::new();
    let mut b = [0u8; 1];
    while mode.len() < 8 {
        match reader.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => mode.push(b[0]),
            _ => return,
        }
    }
    let mut writer = match mode.as_slice() {
        b"rw" => !shared.writer_taken.swap(true, Ordering::AcqRel),
        b"ro" => false,
        _ => {
            let _ = out.write_all(b"vireo: expected \"rw\" or \"ro\" as the first line\r\n");
            return;
        }
    };
    if mode == b"rw" && !writer {
        let _ = out
            .write_all(b"vireo: another client holds the console input; this one is read-only\r\n");
    }
    let (tx, rx) = sync_channel::<Arc<[u8]>>(CLIENT_QUEUE);
    {
        let mut c = lock(&shared.console);
        let backlog: Vec<u8> = c.backlog.iter().copied().collect();
        if !backlog.is_empty() {
            let _ = tx.try_send(backlog.into());
        }
        c.clients.push(tx);
    }
    let sender = std::thread::spawn(move || {
        for chunk in rx {
            if out.write_all(&chunk).is_err() {
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        // The VMM is ending: the client sees EOF.
        let _ = out.shutdown(std::net::Shutdown::Both);
    });
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if writer => {
                let mut rest = &buf[..n];
                let deadline = Instant::now() + Duration::from_secs(5);
                while !rest.is_empty() && Instant::now() < deadline {
                    let took = lock(&shared.sink).as_mut().map_or(0, |s| s(rest));
                    rest = &rest[took..];
                    if !rest.is_empty() {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
            Ok(_) => {}
        }
    }
    if writer {
        shared.writer_taken.store(false, Ordering::Release);
        writer = false;
    }
    let _ = writer;
    let _ = reader.shutdown(std::net::Shutdown::Both);
    drop(sender);
}

/// One request on the control socket.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: String,
    timeout_secs: Option<u64>,
    /// For `exec`: the command and its arguments.
    command: Option<Vec<String>>,
    /// For `snapshot`: the directory to create, and the parent snapshot of a diff.
    dir: Option<PathBuf>,
    parent: Option<PathBuf>,
}

fn serve_control(conn: UnixStream, shared: Arc<Shared>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn).take(u64::MAX);
    loop {
        let mut line = Vec::new();
        reader.set_limit(MAX_REQUEST as u64 + 1);
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_REQUEST {
            let _ = writeln!(out, "{}", err("bad_request", "request line too long"));
            return;
        }
        let answer = match serde_json::from_slice::<Request>(&line) {
            Err(e) => err("bad_request", &format!("not a request: {e}")),
            Ok(r) if r.op == "watch" => {
                watch(&mut out, &shared);
                return;
            }
            Ok(r) if r.op == "exec" => match exec_start(&r, &shared) {
                Ok(start) => {
                    exec(out, reader.into_inner(), start, &shared);
                    return;
                }
                Err(e) => e,
            },
            Ok(r) => handle(&r, &shared),
        };
        if writeln!(out, "{answer}").is_err() {
            return;
        }
    }
}

fn err(code: &str, message: &str) -> Value {
    json!({"ok": false, "error": code, "message": message})
}

fn handle(r: &Request, shared: &Arc<Shared>) -> Value {
    let state = *lock(&shared.state);
    let control = lock(&shared.vm).clone();
    match r.op.as_str() {
        "hello" => json!({"ok": true, "protocol": PROTOCOL, "name": shared.name, "pid": std::process::id(), "accel": shared.accel}),
        "state" => json!({
            "ok": true,
            "state": state.name(),
            "accel": shared.accel,
            "guest_ready": shared.guest_ready.load(Ordering::Acquire),
            "ip": lock(&shared.guest_ip).clone(),
            "started_at": shared.started_at,
        }),
        "pause" | "resume" => {
            let want = if r.op == "pause" { State::Running } else { State::Paused };
            if state != want {
                return err("conflict", &format!("cannot {} a VM that is {}", r.op, state.name()));
            }
            let Some(c) = control else {
                return err("conflict", "the VM is between boots");
            };
            let done = if r.op == "pause" { c.pause() } else { c.resume() };
            match done {
                Ok(()) => {
                    let st = if r.op == "pause" { State::Paused } else { State::Running };
                    set_state(shared, st);
                    json!({"ok": true, "state": st.name()})
                }
                Err(e) => err("internal", &e),
            }
        }
        "shutdown" => {
            if state == State::Stopping {
                return err("conflict", "the VM is already stopping");
            }
            let grace = Duration::from_secs(r.timeout_secs.unwrap_or(DEFAULT_GRACE));
            shared.stopping.store(true, Ordering::Release);
            set_state(shared, State::Stopping);
            let ctl = lock(&shared.channel).as_ref().map(|ch| ch.ctl.clone());
            match (control, ctl) {
                (Some(c), Some(ctl)) => {
                    // A paused guest cannot power off.
                    if state == State::Paused {
                        let _ = c.resume();
                    }
                    ctl.write(b"poweroff\n");
                    let boot = shared.boot.load(Ordering::Acquire);
                    let s = shared.clone();
                    std::thread::spawn(move || {
                        let (m, cv) = &s.ended;
                        let g = lock(m);
                        let (g, _) = cv
                            .wait_timeout_while(g, grace, |ended| !*ended)
                            .unwrap_or_else(|p| p.into_inner());
                        if !*g && s.boot.load(Ordering::Acquire) == boot {
                            tracing::warn!("the guest did not power off in {grace:?}: stopping it");
                            *lock(&s.forced_why) = Some(format!(
                                "the guest did not power off within {} s: stopped by force",
                                grace.as_secs()
                            ));
                            s.forced.store(true, Ordering::Release);
                            c.stop(GuestExit::PowerOff);
                        }
                    });
                }
                (Some(c), None) => {
                    // Without vireo's /init there is no one to ask (the boards have no power
                    // button a stock kernel would pass to its userspace yet): stop now, and
                    // say so.
                    *lock(&shared.forced_why) = Some(
                        "stopped at once: the guest has no vireo /init to ask to power off \
                         (a custom initramfs or firmware), and vireo's boards have no power \
                         button yet"
                            .into(),
                    );
                    shared.forced.store(true, Ordering::Release);
                    c.stop(GuestExit::PowerOff);
                }
                (None, _) => {}
            }
            json!({"ok": true, "state": "stopping"})
        }
        "kill" => {
            shared.stopping.store(true, Ordering::Release);
            shared.forced.store(true, Ordering::Release);
            set_state(shared, State::Stopping);
            if let Some(c) = control {
                c.stop(GuestExit::PowerOff);
            }
            json!({"ok": true, "state": "stopping"})
        }
        "stats" => json!({"ok": true, "stats": stats(shared, state, control)}),
        "snapshot" => {
            if !matches!(state, State::Running | State::Paused) {
                return err(
                    "conflict",
                    &format!("cannot snapshot a VM that is {} (expected running or paused)", state.name()),
                );
            }
            let Some(c) = control else {
                return err("conflict", "the VM is between boots");
            };
            let Some(dir) = r.dir.as_ref().filter(|d| d.is_absolute()) else {
                return err("bad_request", "snapshot needs \"dir\": an absolute path to create");
            };
            let _one = lock(&shared.snapshotting);
            if dir.exists() {
                return err(
                    "conflict",
                    &format!("{} exists: a snapshot is never overwritten", dir.display()),
                );
            }
            let disks: Vec<(String, crate::devices::DiskSource)> = lock(&shared.devices)
                .iter()
                .filter_map(|h| h.disk.clone().map(|d| (h.id.clone(), d)))
                .collect();
            match crate::snapshot::take(&c, &shared.spec, &disks, dir, r.parent.as_deref()) {
                Ok(t) => {
                    tracing::info!(
                        "snapshot {} ({}) taken: paused {:.1} ms, {} memory pages",
                        t.dir.display(),
                        t.kind,
                        t.paused_ms,
                        t.memory_pages
                    );
                    json!({"ok": true, "snapshot": t})
                }
                Err(e) => err("internal", &e.0),
            }
        }
        other => err(
            "bad_request",
            &format!("unknown op '{other}' (expected hello, state, pause, resume, shutdown, kill, stats, watch, exec or snapshot)"),
        ),
    }
}

fn stats(shared: &Shared, state: State, control: Option<VmControl>) -> Value {
    let counters: serde_json::Map<String, Value> = control
        .map(|c| c.counters())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    let devices: Vec<Value> = lock(&shared.devices)
        .iter()
        .map(|d| {
            let c: serde_json::Map<String, Value> = d
                .counters
                .as_ref()
                .map(|c| c.snapshot())
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            json!({"kind": d.kind, "id": d.id, "counters": c})
        })
        .collect();
    let (total, dropped) = {
        let c = lock(&shared.console);
        (c.total, c.dropped)
    };
    let (rss, cpu) = self_usage();
    json!({
        "accel": shared.accel,
        "state": state.name(),
        "vcpus": shared.cpus,
        "guest_ram_bytes": shared.guest_ram,
        "vmm_rss_bytes": rss,
        "vcpu_seconds": cpu,
        "uptime_seconds": shared.started.elapsed().as_secs_f64(),
        "console_bytes": total,
        "console_dropped_bytes": dropped,
        "counters": counters,
        "devices": devices,
    })
}

/// This process's resident memory (bytes) and CPU time (seconds), from /proc (in a jail,
/// through the files it opened before).
fn self_usage() -> (u64, f64) {
    let rss = vireo_jail::jail::read_proc_self("status")
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = vireo_jail::jail::read_proc_self("stat")
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start past its ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / hz)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

fn watch(out: &mut UnixStream, shared: &Arc<Shared>) {
    let (tx, rx) = sync_channel::<String>(64);
    {
        let mut w = lock(&shared.watchers);
        if *lock(&shared.ended.0) {
            return;
        }
        w.push(tx);
    }
    if writeln!(out, "{}", json!({"ok": true})).is_err() {
        return;
    }
    for line in rx {
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
}

/// Frame kinds on an `exec` connection (see [`exec`]): client to VMM.
pub const FRAME_STDIN: u8 = 0;
pub const FRAME_STDIN_END: u8 = 1;
pub const FRAME_SIGNAL: u8 = 2;
/// VMM to client.
pub const FRAME_STDOUT: u8 = 1;
pub const FRAME_STDERR: u8 = 2;
pub const FRAME_EXIT: u8 = 3;
pub const FRAME_ERROR: u8 = 4;
/// Largest frame payload either side sends.
pub const FRAME_MAX: usize = 1 << 20;

/// One command run by `exec`: where its output goes, and its status once /init reports it.
struct Exec {
    frames: SyncSender<(u8, Vec<u8>)>,
    status: Option<i32>,
}

/// An `exec` that may start: the channel it runs on and the line that asks /init to run it.
struct ExecStart {
    ch: crate::channel::Channel,
    line: String,
}

/// Checks that an `exec` can run now and claims the channel for it; the error answer if not.
fn exec_start(r: &Request, shared: &Shared) -> Result<ExecStart, Value> {
    let command = r.command.as_deref().unwrap_or_default();
    if command.is_empty() {
        return Err(err(
            "bad_request",
            "exec needs a command (\"command\": [\"prog\", ...])",
        ));
    }
    let state = *lock(&shared.state);
    if state != State::Running {
        return Err(err(
            "conflict",
            &format!("cannot exec in a VM that is {}", state.name()),
        ));
    }
    if shared.command_vm {
        return Err(err(
            "conflict",
            "this VM runs its own command on the command channel; exec works in interactive VMs",
        ));
    }
    let Some(ch) = lock(&shared.channel).clone() else {
        return Err(err(
            "conflict",
            "the guest has no command channel (exec needs vireo's /init: an --image without --initrd)",
        ));
    };
    if !shared.guest_ready.load(Ordering::Acquire) {
        return Err(err("conflict", "the guest's /init is not up yet"));
    }
    // The line /init reads: every byte of the shell command as an octal escape, which its
    // printf turns back into the script, so no byte can break the line protocol.
    let script = vireo_image::shell_quote(command);
    let mut line = String::with_capacity(6 + 4 * script.len());
    line.push_str("exec ");
    for b in script.bytes() {
        line.push_str(&format!("\\{b:03o}"));
    }
    line.push('\n');
    let mut e = lock(&shared.exec);
    if e.is_some() {
        return Err(err("conflict", "another exec is running in this VM"));
    }
    // Output arriving before `exec` takes over goes nowhere (the receiver is dropped).
    let (frames, _) = sync_channel(1);
    *e = Some(Exec {
        frames,
        status: None,
    });
    Ok(ExecStart { ch, line })
}

/// Writes one `exec` frame: kind, 4-byte little-endian length, payload.
pub fn write_frame(w: &mut impl Write, kind: u8, data: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(data.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(data)
}

/// Reads one frame; `None` at end of stream or on a malformed (oversized) frame.
pub fn read_frame(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > FRAME_MAX {
        return None;
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).ok()?;
    Some((head[0], data))
}

/// Serves one `exec` on its control connection, after the `{"ok": true}` answer. Framing, both
/// directions: one byte kind, a 4-byte little-endian length, the payload. The client sends
/// stdin (0), end of stdin (1) and signals (2, one byte: the number); the VMM sends stdout (1),
/// stderr (2), then the exit status (3, i32 LE) as the last frame, or an error (4, UTF-8)
/// instead. A client that goes away hangs the command up (SIGHUP).
///
/// In the guest, /init's control loop runs `exec SCRIPT` lines (see init.sh) with the command's
/// streams on vireo.stdin/stdout/stderr, and answers `exited STATUS` on vireo.ctl.
fn exec(
    mut out: UnixStream,
    mut input: BufReader<UnixStream>,
    start: ExecStart,
    shared: &Arc<Shared>,
) {
    let ExecStart { ch, line } = start;
    let (tx, rx) = sync_channel::<(u8, Vec<u8>)>(64);
    if let Some(e) = lock(&shared.exec).as_mut() {
        e.frames = tx;
    }
    let finish = |shared: &Shared| {
        *lock(&shared.exec) = None;
        ch.stdin.close_input();
    };
    if writeln!(out, "{}", json!({"ok": true})).is_err() {
        finish(shared);
        return;
    }
    ch.stdin.open_input();
    let deadline = Instant::now() + Duration::from_secs(10);
    if ch.ctl.write_all(line.as_bytes(), Some(deadline)) < line.len() {
        let _ = write_frame(
            &mut out,
            FRAME_ERROR,
            b"the guest's /init did not take the command",
        );
        finish(shared);
        return;
    }
    // The client's frames: stdin, its end, signals. Its end of stream hangs the command up.
    let gone = Arc::new(AtomicBool::new(false));
    {
        let (stdin, ctl, gone) = (ch.stdin.clone(), ch.ctl.clone(), gone.clone());
        std::thread::spawn(move || {
            loop {
                match read_frame(&mut input) {
                    Some((FRAME_STDIN, data)) => {
                        stdin.write_all(&data, None);
                    }
                    Some((FRAME_STDIN_END, _)) => stdin.close_input(),
                    Some((FRAME_SIGNAL, data)) => {
                        if let Some(&n) = data.first().filter(|&&n| (1..=64).contains(&n)) {
                            ctl.write(format!("signal {n}\n").as_bytes());
                        }
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            gone.store(true, Ordering::Release);
            stdin.close_input();
        });
    }
    let mut hung_up = false;
    let status = loop {
        // Output first: the status is sent only once the command's streams are drained.
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((kind, data)) => {
                if write_frame(&mut out, kind, &data).is_err() {
                    gone.store(true, Ordering::Release);
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if gone.load(Ordering::Acquire) && !hung_up {
            hung_up = true;
            ch.ctl
                .write(format!("signal {}\n", libc::SIGHUP).as_bytes());
        }
        if *lock(&shared.ended.0) || lock(&shared.channel).is_none() {
            break None;
        }
        let st = lock(&shared.exec).as_ref().and_then(|e| e.status);
        if let Some(st) = st {
            // The command has exited; its output may still be on its way through the
            // ports. It is all in once the guest closed them and nothing waits.
            let t0 = Instant::now();
            while (ch.stdout.guest_connected()
                || ch.stderr.guest_connected()
                || ch.stdout.output_waiting()
                || ch.stderr.output_waiting())
                && t0.elapsed() < Duration::from_secs(2)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            // The pump threads hand over what they hold before the exec is cleared.
            std::thread::sleep(Duration::from_millis(20));
            while let Ok((kind, data)) = rx.try_recv() {
                let _ = write_frame(&mut out, kind, &data);
            }
            break Some(st);
        }
    };
    finish(shared);
    let _ = match status {
        Some(st) => write_frame(&mut out, FRAME_EXIT, &st.to_le_bytes()),
        None => write_frame(
            &mut out,
            FRAME_ERROR,
            b"the VM stopped before the command finished",
        ),
    };
    let _ = out.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FRAME_STDOUT, b"abc").unwrap();
        write_frame(&mut buf, FRAME_EXIT, &7i32.to_le_bytes()).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r), Some((FRAME_STDOUT, b"abc".to_vec())));
        assert_eq!(
            read_frame(&mut r),
            Some((FRAME_EXIT, 7i32.to_le_bytes().to_vec()))
        );
        assert_eq!(read_frame(&mut r), None);
        let mut huge = vec![FRAME_STDIN];
        huge.extend_from_slice(&((FRAME_MAX as u32) + 1).to_le_bytes());
        assert_eq!(read_frame(&mut &huge[..]), None);
    }
}
