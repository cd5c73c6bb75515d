//! The VMs' lives: definitions in the store, one `vireo vmm` process per running VM (spawned in
//! its own session, so it outlives the daemon), a `watch` connection per VMM that follows its
//! state, and what happens when it exits (exit.json → `defined`, nothing → `crashed`). At start
//! the daemon reattaches to the VMMs a previous daemon left running ([`Daemon::recover`]).

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use utoipa::ToSchema;
use vireo_spec::VmSpec;

use crate::capacity::{self, HostInfo, Policy, Usage};
use crate::cgroup::{Cgroup, Hierarchy};
use crate::config::DaemonConfig;
use crate::state::{self, Action, VmState};
use crate::storage::DiskInfo;
use crate::store::{Event, ExitInfo, Store, StoreError, VmRecord};
use crate::vmm::{self, VmmError, WatchEvent};
use crate::{names, now};

/// Why a request could not be done; each maps to one HTTP status (see `api`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No VM of that name.
    #[error("no VM named '{0}'")]
    NotFound(String),
    /// The name is taken, or the request makes no sense in the VM's state.
    #[error("{0}")]
    Conflict(String),
    /// The host has no room for the VM.
    #[error("{0}")]
    Capacity(String),
    /// The definition is not one vireo can run (name, values, paths, image).
    #[error("{0}")]
    Invalid(String),
    /// The VMM could not start the VM; its own message.
    #[error("{0}")]
    StartFailed(String),
    /// The VMM failed a request or cannot be reached.
    #[error("{0}")]
    Vmm(String),
    /// The daemon itself failed (database, file system).
    #[error("{0}")]
    Internal(String),
    /// A name or value no such request can have (a pool's or volume's name, a size).
    #[error("{0}")]
    BadRequest(String),
    /// No pool or volume of that name; the message names it.
    #[error("{0}")]
    Missing(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(_) | StoreError::PoolExists(_) | StoreError::SnapshotExists(_) => {
                Error::Conflict(e.to_string())
            }
            e => Error::Internal(e.to_string()),
        }
    }
}

impl From<VmmError> for Error {
    fn from(e: VmmError) -> Self {
        match e {
            VmmError::Refused { code, message } if code == "conflict" => Error::Conflict(message),
            e => Error::Vmm(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// What a start that restores a snapshot adds to `vireo vmm`: `--restore DIR [--paused]
/// [--force]`.
#[derive(Debug, Clone)]
pub struct Restore {
    pub dir: PathBuf,
    pub paused: bool,
    pub force: bool,
}

/// What the store keeps of a VMM's exit record, seen at `at`.
fn exit_info(e: vmm::ExitFile, at: f64) -> ExitInfo {
    ExitInfo {
        reason: e.reason,
        status: Some(e.status),
        message: e.message,
        at,
    }
}

/// A VM as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    /// Why it is in that state (how the last run ended, a start failure).
    pub detail: String,
    /// Unix seconds.
    pub created_at: f64,
    /// When the current (or last) run started, Unix seconds.
    pub started_at: Option<f64>,
    /// Seconds since `started_at`, while a VMM runs.
    pub uptime_seconds: Option<f64>,
    /// The accelerator: the one the VMM runs on while it runs, else the spec's (auto, kvm,
    /// emu).
    pub accel: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// The VMM's pid, while it runs.
    pub pid: Option<u32>,
    /// vireo's /init in the guest reported that it is up.
    pub guest_ready: bool,
    /// The guest's IPv4 address, once its /init said it (a VM with a NIC).
    pub ip: Option<String>,
    /// The VMM's run directory (console.log, vmm.log, exit.json).
    pub run_dir: String,
    /// The cgroup limits of the running VMM, or `not enforced: <reason>`.
    pub limits: Option<String>,
    /// How the last run ended.
    pub last_exit: Option<ExitInfo>,
    /// Its disks: the image each entry names (a volume resolved to its file) and the VM's
    /// persistent overlay on it.
    pub disks: Vec<DiskInfo>,
    /// The snapshot it was restored (or cloned) from; its disks are overlays on that
    /// snapshot's disk copies, so the snapshot stays while the VM exists.
    pub snapshot: Option<String>,
    /// The definition (`vireo_spec::VmSpec`).
    #[schema(value_type = Object)]
    pub spec: Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Active(VmState),
    /// The VMM is gone; the start failure's message when it never ran.
    Ended {
        state: VmState,
        start_failure: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Status {
    phase: Phase,
    guest_ready: bool,
}

/// A VMM the daemon is attached to.
pub(crate) struct Live {
    name: String,
    pub(crate) dir: PathBuf,
    pid: Option<u32>,
    /// Spawned by this daemon (so its wait status is ours to read).
    child: bool,
    child_status: watch::Sender<Option<ExitStatus>>,
    status: watch::Sender<Status>,
    reached_running: AtomicBool,
    finalized: AtomicBool,
    /// Set when the daemon gave up on a start, to say why.
    note: Mutex<Option<String>>,
    cgroup: Option<Cgroup>,
    limits: String,
    /// The accelerator the VMM chose (the spec may say auto).
    accel: Mutex<Option<String>>,
    /// The guest's IPv4 address, once its /init said it.
    ip: Mutex<Option<String>>,
}

impl Live {
    fn new(name: &str, dir: PathBuf, pid: Option<u32>, child: bool, state: VmState) -> Live {
        Live {
            name: name.into(),
            dir,
            pid,
            child,
            child_status: watch::channel(None).0,
            status: watch::channel(Status {
                phase: Phase::Active(state),
                guest_ready: false,
            })
            .0,
            reached_running: AtomicBool::new(false),
            finalized: AtomicBool::new(false),
            note: Mutex::new(None),
            cgroup: None,
            limits: String::new(),
            accel: Mutex::new(None),
            ip: Mutex::new(None),
        }
    }

    fn ended(&self) -> bool {
        matches!(self.status.borrow().phase, Phase::Ended { .. })
    }

    /// Whether the process is gone (its wait status is in, or its lock is free).
    fn process_gone(&self) -> bool {
        if self.child {
            self.child_status.borrow().is_some()
        } else {
            !vmm::lock_held(&self.dir)
        }
    }

    /// SIGKILL, while the VMM still holds its lock (so the pid is still the VMM's).
    fn sigkill(&self) {
        if let Some(pid) = self.pid.filter(|_| !self.process_gone()) {
            // SAFETY: kill has no memory effects; the pid is the VMM's while its lock is held.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data behind; go on with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Daemon {
    pub cfg: DaemonConfig,
    pub host: HostInfo,
    pub(crate) store: Mutex<Store>,
    /// Held by whatever creates or removes pools, volumes and VM overlays, or decides that a
    /// volume is unused (storage.rs), so that no VM comes to use a volume being removed.
    pub(crate) storage: Mutex<()>,
    events: broadcast::Sender<Event>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cgroups: Hierarchy,
    /// Held while a snapshot is taken, removed, or a VM is defined on one (snapshots.rs).
    pub(crate) snapshot_lock: tokio::sync::Mutex<()>,
    /// Held by a clone request while it picks identities and makes its VMs.
    pub(crate) clone_lock: tokio::sync::Mutex<()>,
}

impl Daemon {
    pub fn new(cfg: DaemonConfig, store: Store) -> Arc<Daemon> {
        Arc::new(Daemon {
            cfg,
            host: HostInfo::read(),
            store: Mutex::new(store),
            storage: Mutex::new(()),
            events: broadcast::channel(1024).0,
            live: Mutex::new(HashMap::new()),
            op_locks: Mutex::new(HashMap::new()),
            cgroups: Hierarchy::default(),
            snapshot_lock: tokio::sync::Mutex::new(()),
            clone_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn policy(&self) -> Policy {
        Policy {
            memory_reserve: self.cfg.memory_reserve,
            cpu_ratio: self.cfg.cpu_ratio,
        }
    }

    pub(crate) fn vm_dir(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join("vms").join(name)
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("run")
    }

    pub(crate) fn op_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.op_locks).entry(name.into()).or_default().clone()
    }

    pub(crate) fn live(&self, name: &str) -> Option<Arc<Live>> {
        lock(&self.live).get(name).cloned()
    }

    /// Appends an event to the log and sends it to followers.
    pub fn event(&self, vm: &str, kind: &str, detail: &str) {
        match lock(&self.store).add_event(vm, kind, detail, now()) {
            Ok(e) => {
                tracing::info!(vm, kind, detail, "event");
                let _ = self.events.send(e);
            }
            Err(e) => tracing::error!("cannot record event {kind} of {vm}: {e}"),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn events(&self, since: Option<i64>, vm: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        Ok(lock(&self.store).events(since, vm, limit)?)
    }

    pub fn last_event_id(&self) -> Result<i64> {
        Ok(lock(&self.store).last_event_id()?)
    }

    fn set_state(&self, name: &str, state: VmState, detail: &str, started_at: Option<Option<f64>>) {
        if let Err(e) = lock(&self.store).set_state(name, state, detail, started_at) {
            tracing::error!("cannot store the state of {name}: {e}");
        }
    }

    pub fn record(&self, name: &str) -> Result<VmRecord> {
        if names::validate(name).is_err() {
            return Err(Error::NotFound(name.into()));
        }
        lock(&self.store)
            .get_vm(name)?
            .ok_or_else(|| Error::NotFound(name.into()))
    }

    pub fn info(&self, rec: &VmRecord) -> VmInfo {
        let live = self.live(&rec.name);
        let active = rec.state.is_active();
        VmInfo {
            name: rec.name.clone(),
            state: rec.state,
            detail: rec.detail.clone(),
            created_at: rec.created_at,
            started_at: rec.started_at,
            uptime_seconds: rec
                .started_at
                .filter(|_| active)
                .map(|t| (now() - t).max(0.0)),
            accel: live
                .as_ref()
                .and_then(|l| lock(&l.accel).clone())
                .unwrap_or_else(|| rec.spec.accel.to_string()),
            cpus: rec.spec.cpus,
            memory_bytes: rec.spec.memory.bytes(),
            pid: live.as_ref().and_then(|l| l.pid),
            guest_ready: live.as_ref().is_some_and(|l| l.status.borrow().guest_ready),
            ip: live.as_ref().and_then(|l| lock(&l.ip).clone()),
            run_dir: self.run_dir(&rec.name).display().to_string(),
            limits: live.as_ref().map(|l| l.limits.clone()),
            last_exit: rec.last_exit.clone(),
            disks: self.disk_info(&rec.name, &rec.spec),
            snapshot: lock(&self.store).origin(&rec.name).ok().flatten(),
            spec: serde_json::to_value(&rec.spec).unwrap_or(Value::Null),
        }
    }

    pub fn get(&self, name: &str) -> Result<VmInfo> {
        Ok(self.info(&self.record(name)?))
    }

    pub fn list(&self) -> Result<Vec<VmInfo>> {
        let recs = lock(&self.store).list_vms()?;
        Ok(recs.iter().map(|r| self.info(r)).collect())
    }

    /// What running VMs have, leaving out `except`.
    pub fn usage(&self, except: Option<&str>) -> Result<Usage> {
        let mut u = Usage::default();
        for r in lock(&self.store).list_vms()? {
            if r.state.is_active() && Some(r.name.as_str()) != except {
                u.add(r.spec.cpus, r.spec.memory.bytes());
            }
        }
        Ok(u)
    }

    /// Defines a VM: its disks must resolve (a volume to its file), and an `overlay` disk gets
    /// its persistent overlay in the VM's directory (storage.rs).
    pub async fn create(self: &Arc<Self>, name: &str, spec: VmSpec) -> Result<VmInfo> {
        names::validate(name).map_err(Error::Invalid)?;
        check_spec(&spec).map_err(Error::Invalid)?;
        let op = self.op_lock(name);
        let _g = op.lock().await;
        let d = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || d.create_blocking(&name, spec))
            .await
            .map_err(|e| Error::Internal(format!("creating the VM: {e}")))?
    }

    pub(crate) fn create_blocking(&self, name: &str, spec: VmSpec) -> Result<VmInfo> {
        self.define_blocking(name, spec, None)?;
        self.get(name)
    }

    /// Defines a VM (overlays made, row stored), restored from `origin` when given (recorded
    /// in the same step, so the snapshot cannot go between the two).
    pub(crate) fn define_blocking(
        &self,
        name: &str,
        mut spec: VmSpec,
        origin: Option<&str>,
    ) -> Result<()> {
        let _storage = lock(&self.storage);
        if lock(&self.store).get_vm(name)?.is_some() {
            return Err(StoreError::Exists(name.into()).into());
        }
        let disks = self.resolve_disks(name, &spec).map_err(Error::Invalid)?;
        let root = self.resolve_root(name, &spec).map_err(Error::Invalid)?;
        crate::storage::pin_volume_formats(&mut spec, &disks);
        let vm_dir = self.vm_dir(name);
        let mut keyed: Vec<(String, &crate::storage::ResolvedDisk)> = disks
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("disk[{i}]"), d))
            .collect();
        if let Some(r) = &root {
            keyed.push(("root_disk".into(), r));
        }
        if keyed.iter().any(|(_, d)| d.overlay.is_some()) {
            // Left by a VM of this name whose removal could not finish: nothing uses it.
            if vm_dir.exists() {
                std::fs::remove_dir_all(&vm_dir).map_err(|e| {
                    Error::Internal(format!("cannot remove {}: {e}", vm_dir.display()))
                })?;
            }
            self.make_overlays(&keyed)?;
        }
        let stored = {
            let mut st = lock(&self.store);
            st.insert_vm(name, &spec, now())
                .and_then(|()| match origin {
                    Some(o) => st.set_origin(name, o).inspect_err(|_| {
                        let _ = st.delete_vm(name);
                    }),
                    None => Ok(()),
                })
        };
        if let Err(e) = stored {
            for (_, d) in &keyed {
                if let Some(o) = &d.overlay {
                    let _ = std::fs::remove_file(o);
                }
            }
            return Err(e.into());
        }
        self.event(
            name,
            "created",
            origin
                .map(|o| format!("from snapshot {o}"))
                .as_deref()
                .unwrap_or(""),
        );
        Ok(())
    }

    /// Deletes a VM (killing its VMM first with `force`).
    pub async fn delete(self: &Arc<Self>, name: &str, force: bool) -> Result<()> {
        let op = self.op_lock(name);
        let _g = op.lock().await;
        self.delete_inner(name, force, if force { "forced" } else { "" })
            .await?;
        lock(&self.op_locks).remove(name);
        Ok(())
    }

    /// Deletes a VM; the caller holds its op lock.
    pub(crate) async fn delete_inner(&self, name: &str, force: bool, why: &str) -> Result<()> {
        let rec = self.record(name)?;
        if rec.state.is_active() {
            if !force {
                state::check(name, rec.state, Action::Delete).map_err(Error::Conflict)?;
            }
            self.kill_inner(name).await?;
        }
        lock(&self.store).delete_vm(name)?;
        if let Err(e) = std::fs::remove_dir_all(self.vm_dir(name)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.vm_dir(name).display());
            }
        }
        self.event(name, "deleted", why);
        Ok(())
    }

    /// Starts a VM: returns once the VMM runs the guest (and, with `wait_ready`, once the
    /// guest's /init is up), or with the VMM's error when it could not start it.
    pub async fn start(self: &Arc<Self>, name: &str, wait_ready: bool) -> Result<VmInfo> {
        let op = self.op_lock(name);
        let _g = op.lock().await;
        self.start_inner(name, wait_ready, None).await
    }

    /// Starts a VM; with `restore`, its VMM continues that snapshot instead of booting. The
    /// caller holds the VM's op lock.
    pub(crate) async fn start_inner(
        self: &Arc<Self>,
        name: &str,
        wait_ready: bool,
        restore: Option<&Restore>,
    ) -> Result<VmInfo> {
        let rec = self.record(name)?;
        state::check(name, rec.state, Action::Start).map_err(Error::Conflict)?;
        // The definition may have been fine when made and not now (a kernel removed).
        check_spec(&rec.spec).map_err(Error::Invalid)?;
        // What the VMM gets: volumes resolved to their files, overlays in their places.
        let run_spec = self.vmm_spec(name, &rec.spec).map_err(Error::Invalid)?;
        let used = self.usage(Some(name))?;
        capacity::check(
            &self.host,
            &self.policy(),
            &used,
            name,
            rec.spec.cpus,
            rec.spec.memory.bytes(),
        )
        .map_err(Error::Capacity)?;

        let dir = self.prepare_run_dir(name, &run_spec)?;
        let started = now();
        self.set_state(name, VmState::Starting, "", Some(Some(started)));
        self.event(name, "starting", "");
        let live = match self.spawn(name, &dir, &run_spec, restore) {
            Ok(l) => l,
            Err(msg) => {
                self.set_state(
                    name,
                    VmState::Defined,
                    &format!("start failed: {msg}"),
                    None,
                );
                self.event(name, "start_failed", &msg);
                return Err(Error::StartFailed(msg));
            }
        };
        let mut rx = live.status.subscribe();
        let timeout = self.cfg.start_timeout;
        let _ = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.phase != Phase::Active(VmState::Starting)),
        )
        .await;
        if wait_ready {
            let _ = tokio::time::timeout(
                Duration::from_secs(300),
                rx.wait_for(|s| s.guest_ready || matches!(s.phase, Phase::Ended { .. })),
            )
            .await;
        }
        let status = live.status.borrow().clone();
        match status.phase {
            Phase::Ended {
                start_failure: Some(msg),
                ..
            } => Err(Error::StartFailed(msg)),
            Phase::Ended {
                state: VmState::Crashed,
                ..
            } => Err(Error::StartFailed(self.record(name)?.detail)),
            _ => self.get(name),
        }
    }

    /// A fresh run directory; the previous run's becomes `last`.
    fn prepare_run_dir(&self, name: &str, spec: &VmSpec) -> Result<PathBuf> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            Error::Internal(format!("cannot {what} {}: {e}", p.display()))
        };
        let vm_dir = self.vm_dir(name);
        let run = vm_dir.join("run");
        let last = vm_dir.join("last");
        std::fs::create_dir_all(&vm_dir).map_err(|e| io("create", &vm_dir, e))?;
        if run.exists() {
            if last.exists() {
                std::fs::remove_dir_all(&last).map_err(|e| io("remove", &last, e))?;
            }
            std::fs::rename(&run, &last).map_err(|e| io("move", &run, e))?;
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&run)
            .map_err(|e| io("create", &run, e))?;
        let json = serde_json::to_vec_pretty(spec).map_err(|e| Error::Internal(e.to_string()))?;
        let p = run.join("spec.json");
        std::fs::write(&p, json).map_err(|e| io("write", &p, e))?;
        Ok(run)
    }

    /// Before a jailed VMM starts: a jail directory left by one killed by force goes (no
    /// process uses it: the VM is not running), and the disks the VMM writes that are the
    /// daemon's own (overlays, volumes under the state directory) go to the jail's user. A
    /// disk elsewhere that user cannot write is refused by the jail, by name.
    fn prepare_jail(
        &self,
        dir: &Path,
        spec: &VmSpec,
        jail: &crate::config::JailConfig,
    ) -> std::result::Result<(), String> {
        let root = jail_root(dir);
        if root.exists() {
            tracing::warn!("removing {}, left by a VMM killed by force", root.display());
            std::fs::remove_dir_all(&root)
                .map_err(|e| format!("cannot remove {}: {e}", root.display()))?;
        }
        let Some(ids) = &jail.ids else {
            return Ok(());
        };
        let configs = vireo_vmm::devices::parse(spec).map_err(|e| e.to_string())?;
        for c in &configs {
            let vireo_vmm::DeviceConfig::Block(d) = c else {
                continue;
            };
            if d.readonly || d.overlay || !d.path.starts_with(&self.cfg.state_dir) {
                continue;
            }
            std::os::unix::fs::chown(&d.path, Some(ids.uid), Some(ids.gid))
                .map_err(|e| format!("cannot give {} to the jail's user: {e}", d.path.display()))?;
        }
        Ok(())
    }

    /// Spawns `<vmm program> vmm --name NAME --dir DIR [--restore SNAP ...]` in its own
    /// session.
    fn spawn(
        self: &Arc<Self>,
        name: &str,
        dir: &Path,
        spec: &VmSpec,
        restore: Option<&Restore>,
    ) -> std::result::Result<Arc<Live>, String> {
        let log_path = dir.join("vmm.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut args: Vec<std::ffi::OsString> = vec!["--name".into(), name.into(), "--dir".into()];
        args.push(dir.into());
        // Who makes the VM's cgroup: the daemon, once the VMM runs; or a jailed VMM itself,
        // before its jail, so that the jailed process is in it from its first instruction
        // (none without root: only root may make cgroups here).
        let by_vmm = match &self.cfg.jail {
            Some(j) => {
                self.prepare_jail(dir, spec, j)?;
                args.push("--jail".into());
                args.push(jail_root(dir).into());
                if let Some(u) = &j.user {
                    args.push("--jail-user".into());
                    args.push(u.into());
                }
                let root = vireo_jail::jail::is_root();
                if root {
                    args.push("--cgroup-parent".into());
                    args.push((&self.cfg.cgroup_parent).into());
                }
                Some(root)
            }
            None => None,
        };
        if let Some(r) = restore {
            args.push("--restore".into());
            args.push((&r.dir).into());
            if r.paused {
                args.push("--paused".into());
            }
            if r.force {
                args.push("--force".into());
            }
        }
        // Started by the daemon's unfiltered launcher thread (this one runs under the
        // daemon's seccomp filter, which a VMM must not inherit).
        let child = crate::launcher::launch(args, log, log2)?;
        let pid = Some(child.pid);
        let mut live = Live::new(name, dir.to_path_buf(), pid, true, VmState::Starting);
        let placed = match (by_vmm, pid) {
            (Some(true), _) => Ok(Cgroup {
                dirs: self.cgroups.dirs(&self.cfg.cgroup_parent, name),
            }),
            (Some(false), _) => Err("a daemon not run as root makes no cgroups".to_string()),
            (None, Some(pid)) => self.cgroups.place(
                &self.cfg.cgroup_parent,
                name,
                pid,
                spec.memory.bytes(),
                spec.cpus,
            ),
            (None, None) => Err("the VMM has no pid".to_string()),
        };
        match placed {
            Ok(cg) => {
                live.limits = cg.describe(spec.memory.bytes(), spec.cpus);
                live.cgroup = Some(cg);
            }
            Err(why) => live.limits = format!("not enforced: {why}"),
        }
        let live = Arc::new(live);
        lock(&self.live).insert(name.into(), live.clone());
        // The reaper: the wait status says which signal killed it.
        let l = live.clone();
        tokio::spawn(async move {
            let st = crate::launcher::wait(child).await.ok();
            l.child_status
                .send_replace(st.or(Some(ExitStatus::from_raw(0xff00))));
        });
        tokio::spawn(self.clone().supervise(live.clone(), false));
        Ok(live)
    }

    /// Follows one VMM: connects its `watch`, applies state changes, and finalizes on EOF.
    async fn supervise(self: Arc<Self>, live: Arc<Live>, reattach: bool) {
        let deadline = Instant::now() + self.cfg.start_timeout;
        let lines = loop {
            if live.process_gone() {
                break None;
            }
            match vmm::watch(&live.dir).await {
                Ok(l) => break Some(l),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => {
                    *lock(&live.note) = Some(format!(
                        "the VMM did not open its control socket within {} s ({e})",
                        self.cfg.start_timeout.as_secs()
                    ));
                    live.sigkill();
                    break None;
                }
            }
        };
        if let Some(mut lines) = lines {
            if reattach {
                match vmm::request(&live.dir, "hello", json!({})).await {
                    Ok(h) if h["protocol"].as_u64() != Some(vmm::PROTOCOL) => tracing::warn!(
                        "VMM of {} speaks protocol {}; this daemon speaks {}",
                        live.name,
                        h["protocol"],
                        vmm::PROTOCOL
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("hello to the VMM of {}: {e}", live.name),
                }
            }
            // The watch reports changes from now on; the state request says where it is.
            if let Ok(s) = vmm::request(&live.dir, "state", json!({})).await {
                if let Some(a) = s["accel"].as_str() {
                    *lock(&live.accel) = Some(a.to_string());
                }
                if let Some(ip) = s["ip"].as_str() {
                    *lock(&live.ip) = Some(ip.to_string());
                }
                if s["guest_ready"].as_bool() == Some(true) {
                    self.guest_ready(&live);
                }
                if let Some(st) = s["state"].as_str() {
                    self.apply_state(&live, st);
                }
            }
            while let Ok(Some(line)) = lines.next_line().await {
                match vmm::parse_watch(&line) {
                    WatchEvent::State(s) => self.apply_state(&live, &s),
                    WatchEvent::GuestReady => self.guest_ready(&live),
                    WatchEvent::GuestIp(ip) => *lock(&live.ip) = Some(ip),
                    WatchEvent::Other => {}
                }
            }
        }
        self.finalize(&live).await;
    }

    fn guest_ready(&self, live: &Live) {
        // send_modify, not send_replace with a borrow inside: the borrow would still be held
        // while the sender takes its write lock.
        let mut was = true;
        live.status
            .send_modify(|s| was = std::mem::replace(&mut s.guest_ready, true));
        if !was {
            self.event(&live.name, "guest_ready", "");
        }
    }

    fn apply_state(&self, live: &Live, s: &str) {
        let Some(state) = VmState::parse(s).filter(|s| s.is_active()) else {
            tracing::warn!("VMM of {} reports an unknown state {s:?}", live.name);
            return;
        };
        if live.ended() {
            return;
        }
        if matches!(state, VmState::Running | VmState::Paused) {
            live.reached_running.store(true, Ordering::SeqCst);
        }
        let mut old = Phase::Active(state);
        live.status
            .send_modify(|s| old = std::mem::replace(&mut s.phase, Phase::Active(state)));
        let stored = self.record(&live.name).map(|r| r.state).ok();
        if old != Phase::Active(state) || stored != Some(state) {
            self.set_state(&live.name, state, "", None);
            self.event(&live.name, "state", state.as_str());
        }
    }

    /// The VMM is gone (or going): waits until it is, reads exit.json, records the outcome.
    async fn finalize(&self, live: &Live) {
        if live.finalized.swap(true, Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !live.process_gone() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let exit = vmm::read_exit(&live.dir);
        let reached_running = live.reached_running.load(Ordering::SeqCst);
        let note = lock(&live.note).clone();
        let t = now();
        let (state, kind, detail, info, start_failure) = match exit {
            Some(e) if matches!(e.reason.as_str(), "error" | "panic") && !reached_running => {
                let msg = if e.message.is_empty() {
                    format!("the VMM failed ({}, status {})", e.reason, e.status)
                } else {
                    e.message.clone()
                };
                (
                    VmState::Defined,
                    "start_failed",
                    format!("start failed: {msg}"),
                    exit_info(e, t),
                    Some(msg),
                )
            }
            // A bug in vireo (a panic) or a failure of the VMM while the guest ran (an
            // emulator fault) ends this VM only, and it is crashed, not shut off.
            Some(e) if matches!(e.reason.as_str(), "error" | "panic") => {
                let msg = format!("the VMM failed ({}): {}", e.reason, e.message);
                (VmState::Crashed, "crashed", msg, exit_info(e, t), None)
            }
            Some(e) => {
                let mut d = format!("{} (status {})", e.reason, e.status);
                if !e.message.is_empty() {
                    d += &format!(": {}", e.message);
                }
                (VmState::Defined, "exited", d, exit_info(e, t), None)
            }
            None => {
                let ws = *live.child_status.borrow();
                let (msg, status) = match (ws, &note) {
                    (_, Some(n)) => (n.clone(), None),
                    (Some(ws), None) if ws.signal().is_some() => (
                        format!(
                            "the VMM process died: killed by signal {}",
                            ws.signal().unwrap_or(0)
                        ),
                        ws.signal(),
                    ),
                    (Some(ws), None) if live.child => (
                        format!(
                            "the VMM process exited with status {} without saying why",
                            ws.code().unwrap_or(-1)
                        ),
                        ws.code(),
                    ),
                    _ => ("the VMM process died without saying why".into(), None),
                };
                let info = ExitInfo {
                    reason: "crashed".into(),
                    status,
                    message: msg.clone(),
                    at: t,
                };
                if note.is_some() {
                    // The daemon gave up on the start: a start failure, not a crash.
                    (
                        VmState::Defined,
                        "start_failed",
                        format!("start failed: {msg}"),
                        info,
                        Some(msg),
                    )
                } else {
                    (VmState::Crashed, "crashed", msg, info, None)
                }
            }
        };
        self.set_state(&live.name, state, &detail, None);
        if let Err(e) = lock(&self.store).set_last_exit(&live.name, &info) {
            tracing::error!("cannot store the exit of {}: {e}", live.name);
        }
        self.event(&live.name, kind, &detail);
        if let Some(cg) = live.cgroup.clone() {
            // Removal may wait a moment for a zombie VMM to leave the group.
            let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
        }
        {
            let mut map = lock(&self.live);
            if map
                .get(&live.name)
                .is_some_and(|l| std::ptr::eq(&**l, live))
            {
                map.remove(&live.name);
            }
        }
        live.status.send_modify(|s| {
            s.phase = Phase::Ended {
                state,
                start_failure,
            }
        });
    }

    /// Waits until the VMM of `live` is finalized, at most `limit`.
    async fn wait_ended(live: &Live, limit: Duration) -> bool {
        let mut rx = live.status.subscribe();
        let ended = tokio::time::timeout(
            limit,
            rx.wait_for(|s| matches!(s.phase, Phase::Ended { .. })),
        )
        .await
        .is_ok();
        ended
    }

    fn active_live(&self, name: &str, action: Action) -> Result<(VmRecord, Arc<Live>)> {
        let rec = self.record(name)?;
        state::check(name, rec.state, action).map_err(Error::Conflict)?;
        let live = self.live(name).ok_or_else(|| {
            Error::Conflict(format!(
                "VM '{name}' is {} but the daemon is not attached to its VMM",
                rec.state
            ))
        })?;
        Ok((rec, live))
    }

    pub async fn pause(&self, name: &str, resume: bool) -> Result<VmInfo> {
        let action = if resume {
            Action::Resume
        } else {
            Action::Pause
        };
        let (_, live) = self.active_live(name, action)?;
        let op = if resume { "resume" } else { "pause" };
        let r = vmm::request(&live.dir, op, json!({})).await?;
        if let Some(s) = r["state"].as_str() {
            self.apply_state(&live, s);
        }
        self.get(name)
    }

    /// Asks the guest to power off; the VMM forces it after `timeout_secs`.
    pub async fn stop(self: &Arc<Self>, name: &str, timeout_secs: u64) -> Result<VmInfo> {
        let op = self.op_lock(name);
        let _g = op.lock().await;
        self.stop_inner(name, timeout_secs).await
    }

    async fn stop_inner(&self, name: &str, timeout_secs: u64) -> Result<VmInfo> {
        let (_, live) = self.active_live(name, Action::Stop)?;
        vmm::request(
            &live.dir,
            "shutdown",
            json!({ "timeout_secs": timeout_secs }),
        )
        .await?;
        // The VMM kills the guest at the timeout; if the VMM itself hangs, the daemon does.
        let limit = Duration::from_secs(timeout_secs.saturating_add(10));
        if !Self::wait_ended(&live, limit).await {
            live.sigkill();
            Self::wait_ended(&live, Duration::from_secs(10)).await;
        }
        self.get(name)
    }

    pub async fn kill(&self, name: &str) -> Result<VmInfo> {
        self.record(name)?;
        self.kill_inner(name).await?;
        self.get(name)
    }

    async fn kill_inner(&self, name: &str) -> Result<()> {
        let (_, live) = self.active_live(name, Action::Kill)?;
        if vmm::request(&live.dir, "kill", json!({})).await.is_err() {
            live.sigkill();
        }
        if !Self::wait_ended(&live, Duration::from_secs(10)).await {
            live.sigkill();
            Self::wait_ended(&live, Duration::from_secs(10)).await;
        }
        Ok(())
    }

    pub async fn restart(self: &Arc<Self>, name: &str, timeout_secs: u64) -> Result<VmInfo> {
        let op = self.op_lock(name);
        let _g = op.lock().await;
        let rec = self.record(name)?;
        state::check(name, rec.state, Action::Restart).map_err(Error::Conflict)?;
        let info = self.stop_inner(name, timeout_secs).await?;
        if info.state.is_active() {
            return Err(Error::Vmm(format!(
                "VM '{name}' did not stop: it is {}",
                info.state
            )));
        }
        self.start_inner(name, false, None).await
    }

    /// The VMM's `stats` object.
    pub async fn stats(&self, name: &str) -> Result<Value> {
        let rec = self.record(name)?;
        let live = self
            .live(name)
            .filter(|_| rec.state.is_active())
            .ok_or_else(|| {
                Error::Conflict(format!("VM '{name}' has no stats: it is {}", rec.state))
            })?;
        let mut r = vmm::request(&live.dir, "stats", json!({})).await?;
        Ok(r["stats"].take())
    }

    /// The console log files of the current (or last) run: the rotated one and the current.
    pub fn console_files(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        self.record(name)?;
        let run = self.run_dir(name);
        let dir = if run.join("console.log").exists() || self.live(name).is_some() {
            run
        } else {
            self.vm_dir(name).join("last")
        };
        Ok((dir.join("console.log.1"), dir.join("console.log")))
    }

    /// A control connection of a running VM's VMM on which `exec` of `command` was accepted:
    /// from here on it carries the exec's frames (see `vireo_vmm::server`).
    pub async fn exec_connection(
        &self,
        name: &str,
        command: &[String],
    ) -> Result<tokio::io::BufReader<tokio::net::UnixStream>> {
        let rec = self.record(name)?;
        let dir = match self.live(name) {
            Some(l) if rec.state.is_active() => l.dir.clone(),
            _ => {
                return Err(Error::Conflict(format!(
                    "cannot exec in VM '{name}': it is {}",
                    rec.state
                )))
            }
        };
        match vmm::exchange(&dir, &json!({"op": "exec", "command": command})).await {
            Ok((_, conn)) => Ok(conn),
            Err(vmm::VmmError::Refused { code, message }) if code == "conflict" => {
                Err(Error::Conflict(format!("VM '{name}': {message}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The console socket of a running VM.
    pub fn console_socket(&self, name: &str) -> Result<PathBuf> {
        let rec = self.record(name)?;
        match self.live(name) {
            Some(l) if rec.state.is_active() => Ok(l.dir.join(vmm::CONSOLE_SOCK)),
            _ => Err(Error::Conflict(format!(
                "VM '{name}' has no console: it is {}",
                rec.state
            ))),
        }
    }

    pub fn is_active(&self, name: &str) -> bool {
        self.record(name).is_ok_and(|r| r.state.is_active())
    }

    /// Reattaches to the VMMs a previous daemon left running, and settles the ones that are
    /// gone (exit.json, or `crashed`).
    pub fn recover(self: &Arc<Self>) -> Result<()> {
        let recs = lock(&self.store).list_vms()?;
        for rec in recs {
            let dir = self.run_dir(&rec.name);
            if vmm::lock_held(&dir) {
                let pid = vmm::read_pid(&dir).map(|p| p as u32);
                let state = if rec.state.is_active() {
                    rec.state
                } else {
                    VmState::Starting
                };
                let mut live = Live::new(&rec.name, dir, pid, false, state);
                if state != VmState::Starting {
                    live.reached_running.store(true, Ordering::SeqCst);
                }
                match pid.and_then(|p| self.cgroups.find(&self.cfg.cgroup_parent, &rec.name, p)) {
                    Some(cg) => {
                        live.limits = cg.describe(rec.spec.memory.bytes(), rec.spec.cpus);
                        live.cgroup = Some(cg);
                    }
                    None => {
                        live.limits =
                            "not enforced: the VMM is in no cgroup of this daemon's".into()
                    }
                }
                let live = Arc::new(live);
                lock(&self.live).insert(rec.name.clone(), live.clone());
                if state != rec.state {
                    self.set_state(&rec.name, state, "", None);
                }
                self.event(
                    &rec.name,
                    "reattached",
                    &format!("pid {}", pid.unwrap_or(0)),
                );
                tokio::spawn(self.clone().supervise(live, true));
            } else if rec.state.is_active() {
                let live = Live::new(&rec.name, dir, None, false, rec.state);
                live.reached_running
                    .store(rec.state != VmState::Starting, Ordering::SeqCst);
                let mut live = live;
                live.cgroup = Some(Cgroup {
                    dirs: self.cgroups.dirs(&self.cfg.cgroup_parent, &rec.name),
                });
                let d = self.clone();
                tokio::spawn(async move { d.finalize(&live).await });
            }
        }
        Ok(())
    }
}

/// Whether a definition can run here: its values, absolute paths that exist, a pulled image.
/// Its disks are checked where they are resolved (storage.rs), since they may name volumes.
pub fn check_spec(spec: &VmSpec) -> std::result::Result<(), String> {
    spec.validate().map_err(|e| e.to_string())?;
    let exists = |key: &str, p: &Path| -> std::result::Result<(), String> {
        if !p.is_absolute() {
            return Err(format!("{key}: {} is not an absolute path", p.display()));
        }
        std::fs::metadata(p)
            .map(|_| ())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!("{key}: {}: no such file", p.display()),
                _ => format!("{key}: {}: {e}", p.display()),
            })
    };
    for (key, p) in [
        ("kernel", &spec.kernel),
        ("initrd", &spec.initrd),
        ("firmware", &spec.firmware),
    ] {
        if let Some(p) = p {
            exists(key, p)?;
        }
    }
    if let Some(p) = &spec.console_log {
        if !p.is_absolute() {
            return Err(format!(
                "console_log: {} is not an absolute path",
                p.display()
            ));
        }
    }
    if let Some(v) = &spec.vsock {
        if let Some(uds) = v.split(',').find_map(|o| o.strip_prefix("uds=")) {
            if !Path::new(uds).is_absolute() {
                return Err(format!("vsock: uds={uds} is not an absolute path"));
            }
        }
    }
    if let Some(image) = &spec.image {
        vireo_image::open(image).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A VM's jail directory, beside its run directory: `vms/NAME/jail`.
fn jail_root(run: &Path) -> PathBuf {
    run.parent().unwrap_or(run).join("jail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_paths_must_be_absolute_and_exist() {
        let ok = VmSpec {
            kernel: Some("/".into()),
            ..Default::default()
        };
        check_spec(&ok).unwrap();
        let rel = VmSpec {
            kernel: Some("vmlinux".into()),
            ..Default::default()
        };
        assert!(check_spec(&rel)
            .unwrap_err()
            .contains("not an absolute path"));
        let missing = VmSpec {
            kernel: Some("/nonexistent/vmlinux".into()),
            ..Default::default()
        };
        assert_eq!(
            check_spec(&missing).unwrap_err(),
            "kernel: /nonexistent/vmlinux: no such file"
        );
        let nothing = VmSpec::default();
        assert!(check_spec(&nothing)
            .unwrap_err()
            .contains("nothing to boot"));
    }
}
