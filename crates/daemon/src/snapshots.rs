//! Snapshots of running VMs, VMs restored from them, and clones.
//!
//! - A **snapshot** is a directory `<state-dir>/snapshots/NAME` written by the VM's VMM (the
//!   `snapshot` request of the VMM protocol; its layout is `vireo_vmm::snapshot`'s: state.vst,
//!   memory.bin, spec.json, a copy `disk-ID.FMT` of each writable disk) and a row of the store.
//!   Names are global, checked as VM names are. A **diff** snapshot's parent is the VM's latest
//!   snapshot; it holds the pages that differ from what that one restores to.
//! - **Restore** defines a VM from the snapshot's spec.json with its disks rewritten
//!   ([`restore_spec`]): each writable disk's entry becomes `COPY,overlay`, so the VM gets its
//!   persistent overlay `vms/NEW/overlay-diskN.qcow2` on the copy, and the image's root disk
//!   becomes `root_disk = "COPY,overlay"` (`vms/NEW/overlay-root.qcow2`), which the VMM puts
//!   where the image's root disk was (`vireo_vmm::devices::parse`). The snapshot itself is
//!   only read, device order and ids stay the snapshot's, and a later plain start boots from
//!   the overlays. Then `vireo vmm --restore SNAP` continues the guest; a failed start removes
//!   the VM again. The store records which VMs came from which snapshot, and a snapshot is not
//!   removed while one exists (nor while a diff is on it, or another snapshot's disk copies
//!   are overlays on its copies).
//! - A **clone** is a restore with a fresh identity ([`Identity`]): a random locally
//!   administered MAC per NIC and a vsock CID no other VM of the daemon has, with its vsock
//!   socket in its own directory. The guest keeps what its drivers read at boot until it
//!   reads them again (a vsock transport reset, a reboot); see the ARCHITECTURE notes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use utoipa::ToSchema;
use vireo_spec::VmSpec;

use crate::store::SnapshotRecord;
use crate::supervisor::{lock, Daemon, Error, Restore, VmInfo};
use crate::{names, now, vmm};

type Result<T> = std::result::Result<T, Error>;

/// Most clones one request makes.
pub const MAX_CLONES: u32 = 64;

/// A snapshot as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotInfo {
    pub name: String,
    /// The VM it was taken of.
    pub vm: String,
    /// Its directory (state.vst, memory.bin, spec.json, disk-ID.FMT).
    pub dir: String,
    /// `full` or `diff`.
    pub kind: String,
    /// A diff's parent snapshot.
    pub parent: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
    /// Bytes the memory file takes on disk.
    pub memory_bytes: u64,
    /// Data bytes of the disk copies.
    pub disk_bytes: u64,
    /// The state file's id.
    pub id: String,
    /// VMs restored from it (it stays while they exist).
    pub vms: Vec<String>,
    /// How long the VM was paused for it (only in the answer that made it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_ms: Option<f64>,
    /// How long taking it took (only in the answer that made it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
}

/// What a clone request made.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CloneReport {
    /// The snapshot the clones were restored from.
    pub snapshot: String,
    pub vms: Vec<VmInfo>,
    /// The whole request, in milliseconds.
    pub total_ms: f64,
}

/// The tap devices `spec`'s NICs use: each `--net` entry's `tap=NAME` part (the syntax the
/// VMM parses; an entry it would refuse is its to report).
fn tap_names(spec: &VmSpec) -> Vec<String> {
    spec.net
        .iter()
        .filter_map(|n| {
            n.split(',')
                .find_map(|p| p.strip_prefix("tap="))
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        })
        .collect()
}

/// What makes a clone its own machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// One per NIC, in order.
    pub macs: Vec<[u8; 6]>,
    /// The vsock CID, for a VM with a vsock device.
    pub cid: Option<u64>,
}

/// The definition of a VM restored from the snapshot in `dir`, whose spec.json is `spec`:
/// every disk the snapshot copied becomes an `overlay` entry on the copy (its other options
/// kept), the image's root disk (`disk-root.*`) the `root_disk` key, read-only disks stay.
/// `vm_dir` is the new VM's directory: a VM that is not the snapshot's own gets its vsock
/// socket there, and leaves the host resources that are one VM's to the VM they belong to:
/// its NICs lose their `hostfwd=` forwards (a host port is bound by one VM; a clone adds its
/// own), and `console_log` goes (the VM's console.log in its run directory stays).
pub fn restore_spec(
    dir: &Path,
    mut spec: VmSpec,
    own_vm: bool,
    vm_dir: &Path,
    identity: Option<&Identity>,
) -> VmSpec {
    for (i, entry) in spec.disk.iter_mut().enumerate() {
        let Some(copy) = vireo_state::dir::disk_copy(dir, &format!("disk{i}")) else {
            continue;
        };
        let mut e = format!("{},overlay", copy.display());
        for o in entry.split(',').skip(1) {
            // The copy is the base; the overlay records its format.
            if o == "overlay" || o == "readonly" || o == "ro" || o.starts_with("format=") {
                continue;
            }
            e.push(',');
            e.push_str(o);
        }
        *entry = e;
    }
    if let Some(copy) = vireo_state::dir::disk_copy(dir, "root") {
        spec.root_disk = Some(format!("{},overlay", copy.display()));
    }
    if !own_vm {
        for n in spec.net.iter_mut().filter(|n| n.contains("hostfwd=")) {
            tracing::info!("{n}: the host forwards stay with the snapshot's VM");
            *n = n
                .split(',')
                .filter(|p| !p.starts_with("hostfwd="))
                .collect::<Vec<_>>()
                .join(",");
        }
        spec.console_log = None;
    }
    if let Some(id) = identity {
        for (n, mac) in spec.net.iter_mut().zip(&id.macs) {
            let mut parts: Vec<String> = n
                .split(',')
                .filter(|p| !p.starts_with("mac="))
                .map(String::from)
                .collect();
            parts.push(format!("mac={}", mac_text(mac)));
            *n = parts.join(",");
        }
    }
    if let Some(v) = &spec.vsock {
        let cid = identity.and_then(|i| i.cid);
        if cid.is_some() || !own_vm {
            let parts: Vec<String> = v
                .split(',')
                .map(|p| match (p.split_once('='), cid) {
                    (Some(("cid", _)), Some(c)) => format!("cid={c}"),
                    // Another VM's socket: each VM listens on its own.
                    (Some(("uds", _)), _) if !own_vm => {
                        format!("uds={}", vm_dir.join("vsock.sock").display())
                    }
                    _ => p.to_string(),
                })
                .collect();
            spec.vsock = Some(parts.join(","));
        }
    }
    spec
}

pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random unicast, locally administered MAC address.
pub fn random_mac() -> std::io::Result<[u8; 6]> {
    use std::io::Read;
    let mut m = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut m)?;
    m[0] = (m[0] & 0xfc) | 0x02;
    Ok(m)
}

/// The vsock CID of a definition, if it has a vsock device.
pub fn vsock_cid(spec: &VmSpec) -> Option<u64> {
    spec.vsock
        .as_deref()?
        .split(',')
        .find_map(|p| p.strip_prefix("cid="))
        .and_then(|c| c.parse().ok())
}

/// `n` CIDs from 3 up that are not in `used`.
pub fn fresh_cids(used: &HashSet<u64>, n: usize) -> Vec<u64> {
    (3..u64::from(u32::MAX))
        .filter(|c| !used.contains(c))
        .take(n)
        .collect()
}

impl Daemon {
    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("snapshots")
    }

    fn snapshot_info(&self, r: &SnapshotRecord) -> SnapshotInfo {
        SnapshotInfo {
            name: r.name.clone(),
            vm: r.vm.clone(),
            dir: r.dir.display().to_string(),
            kind: r.kind.clone(),
            parent: r.parent.clone(),
            created_at: r.created_at,
            memory_bytes: r.memory_bytes,
            disk_bytes: r.disk_bytes,
            id: r.state_id.clone(),
            vms: lock(&self.store).restored_from(&r.name).unwrap_or_default(),
            paused_ms: None,
            total_ms: None,
        }
    }

    fn snapshot_record(&self, name: &str) -> Result<SnapshotRecord> {
        let missing = || Error::Missing(format!("no snapshot named '{name}'"));
        if names::validate_snapshot(name).is_err() {
            return Err(missing());
        }
        lock(&self.store).get_snapshot(name)?.ok_or_else(missing)
    }

    pub fn get_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        Ok(self.snapshot_info(&self.snapshot_record(name)?))
    }

    /// Every snapshot, oldest first; only `vm`'s when given.
    pub fn list_snapshots(&self, vm: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let recs = lock(&self.store).list_snapshots(vm)?;
        Ok(recs.iter().map(|r| self.snapshot_info(r)).collect())
    }

    /// `BASE-1`, `BASE-2`, ...: the first name no snapshot has.
    fn free_snapshot_name(&self, base: &str) -> Result<String> {
        for n in 1u32.. {
            let name = format!("{base}-{n}");
            if name.len() > names::MAX_LEN {
                return Err(Error::BadRequest(format!(
                    "give the snapshot a name: '{name}' is longer than {} characters",
                    names::MAX_LEN
                )));
            }
            if lock(&self.store).get_snapshot(&name)?.is_none() {
                return Ok(name);
            }
        }
        Err(Error::Internal("no free snapshot name".into()))
    }

    /// Takes a snapshot of a running or paused VM (a diff of its last one with `diff`).
    pub async fn create_snapshot(
        self: &Arc<Self>,
        vm: &str,
        name: Option<String>,
        diff: bool,
    ) -> Result<SnapshotInfo> {
        self.record(vm)?;
        if let Some(n) = &name {
            names::validate_snapshot(n).map_err(Error::BadRequest)?;
        }
        let op = self.op_lock(vm);
        let _g = op.lock().await;
        let _s = self.snapshot_lock.lock().await;
        self.snapshot_locked(vm, name, diff).await
    }

    async fn snapshot_locked(
        &self,
        vm: &str,
        name: Option<String>,
        diff: bool,
    ) -> Result<SnapshotInfo> {
        let rec = self.record(vm)?;
        if !matches!(
            rec.state,
            crate::state::VmState::Running | crate::state::VmState::Paused
        ) {
            return Err(Error::Conflict(format!(
                "cannot snapshot VM '{vm}': it is {} (expected running or paused)",
                rec.state
            )));
        }
        let live = self.live(vm).ok_or_else(|| {
            Error::Conflict(format!(
                "VM '{vm}' is {} but the daemon is not attached to its VMM",
                rec.state
            ))
        })?;
        let jailed = self.cfg.jail.is_some();
        if jailed && diff {
            // A diff reads its parent, in the snapshot store, which the jail does not show.
            return Err(Error::Conflict(format!(
                "VM '{vm}' runs in a jail (the daemon's --jail), and diff snapshots of jailed \
                 VMs are not supported yet: take a full snapshot"
            )));
        }
        let name = match name {
            Some(n) => n,
            None => self.free_snapshot_name(vm)?,
        };
        if lock(&self.store).get_snapshot(&name)?.is_some() {
            return Err(Error::Conflict(format!(
                "a snapshot named '{name}' already exists"
            )));
        }
        // A diff holds the pages that differ from what its parent restores to (the VMM
        // compares contents), so any earlier snapshot of this VM will do: the latest.
        let parent = if diff {
            let latest = lock(&self.store).list_snapshots(Some(vm))?.pop();
            match latest {
                Some(p) => Some(p),
                None => {
                    return Err(Error::Conflict(format!(
                        "a diff snapshot needs a parent, and VM '{vm}' has no snapshot: take a \
                         full snapshot first"
                    )))
                }
            }
        } else {
            None
        };
        let root = self.snapshots_dir();
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| Error::Internal(format!("cannot create {}: {e}", root.display())))?;
        }
        let dir = root.join(&name);
        // No row names it: a directory there was left by a crash of an earlier daemon.
        for leftover in [dir.clone(), vireo_state::dir::partial(&dir)] {
            if leftover.exists() {
                tracing::warn!("removing {}, which no snapshot owns", leftover.display());
                std::fs::remove_dir_all(&leftover).map_err(|e| {
                    Error::Internal(format!("cannot remove {}: {e}", leftover.display()))
                })?;
            }
        }
        // A jailed VMM sees its run directory, not the snapshot store (which holds other VMs'
        // memory): it writes the snapshot there, and the daemon moves it into the store (a
        // snapshot directory may move: its state names its files by name).
        let written = if jailed {
            live.dir.join(format!("snapshot-{name}"))
        } else {
            dir.clone()
        };
        for leftover in [written.clone(), vireo_state::dir::partial(&written)] {
            let _ = std::fs::remove_dir_all(leftover);
        }
        let cleanup = || {
            // The VMM leaves nothing behind; nor do we, whatever it did.
            for d in [&dir, &written] {
                let _ = std::fs::remove_dir_all(d);
                let _ = std::fs::remove_dir_all(vireo_state::dir::partial(d));
            }
        };
        let taken = match vmm::snapshot(
            &live.dir,
            &written,
            parent.as_ref().map(|p| p.dir.as_path()),
        )
        .await
        {
            Ok(t) => t,
            Err(e) => {
                cleanup();
                return Err(match e {
                    vmm::VmmError::Refused { code, message } if code == "conflict" => {
                        Error::Conflict(format!("cannot snapshot VM '{vm}': {message}"))
                    }
                    e => Error::Vmm(format!("the snapshot of VM '{vm}' failed: {e}")),
                });
            }
        };
        if written != dir {
            if let Err(e) = std::fs::rename(&written, &dir) {
                cleanup();
                return Err(Error::Internal(format!(
                    "cannot move the snapshot {} into the store ({}): {e}",
                    written.display(),
                    dir.display()
                )));
            }
        }
        let rec = SnapshotRecord {
            name: name.clone(),
            vm: vm.into(),
            dir: dir.clone(),
            kind: taken.kind.clone(),
            parent: parent.map(|p| p.name),
            created_at: now(),
            memory_bytes: taken.memory_bytes,
            disk_bytes: taken.disk_bytes,
            state_id: taken.id.clone(),
        };
        if let Err(e) = lock(&self.store).insert_snapshot(&rec) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        self.event(
            vm,
            "snapshot_created",
            &format!("{name} ({}, paused {:.1} ms)", taken.kind, taken.paused_ms),
        );
        let mut info = self.snapshot_info(&rec);
        info.paused_ms = Some(taken.paused_ms);
        info.total_ms = Some(taken.total_ms);
        Ok(info)
    }

    /// Removes a snapshot nothing depends on: no diff on it, no VM restored from it, no disk
    /// (of a VM or another snapshot) whose backing chain reaches into it.
    pub async fn delete_snapshot(self: &Arc<Self>, name: &str) -> Result<()> {
        let _s = self.snapshot_lock.lock().await;
        let rec = self.snapshot_record(name)?;
        let d = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || d.delete_snapshot_blocking(&rec, &name))
            .await
            .map_err(|e| Error::Internal(format!("removing the snapshot: {e}")))?
    }

    fn delete_snapshot_blocking(&self, rec: &SnapshotRecord, name: &str) -> Result<()> {
        let children = lock(&self.store).snapshot_children(name)?;
        if !children.is_empty() {
            return Err(Error::Conflict(format!(
                "snapshot '{name}' is the parent of diff snapshot{} {}: remove {} first",
                if children.len() == 1 { "" } else { "s" },
                quoted(&children),
                if children.len() == 1 { "it" } else { "them" },
            )));
        }
        let restored = lock(&self.store).restored_from(name)?;
        if !restored.is_empty() {
            return Err(Error::Conflict(format!(
                "snapshot '{name}' is in use: VM{} {} {} restored from it (its disks are \
                 overlays on the snapshot's copies): remove {} first",
                if restored.len() == 1 { "" } else { "s" },
                quoted(&restored),
                if restored.len() == 1 { "was" } else { "were" },
                if restored.len() == 1 { "it" } else { "them" },
            )));
        }
        let _storage = lock(&self.storage);
        let inside = |files: &HashSet<PathBuf>| {
            let dir = std::fs::canonicalize(&rec.dir).unwrap_or_else(|_| rec.dir.clone());
            files.iter().any(|f| f.starts_with(&dir))
        };
        let vms: Vec<String> = self
            .uses()?
            .into_iter()
            .filter(|u| inside(&u.files))
            .map(|u| u.vm)
            .collect();
        if !vms.is_empty() {
            return Err(Error::Conflict(format!(
                "snapshot '{name}' is in use: the disks of VM {} are backed by its copies",
                quoted(&vms)
            )));
        }
        let others: Vec<String> = lock(&self.store)
            .list_snapshots(None)?
            .into_iter()
            .filter(|s| s.name != name)
            .filter(|s| {
                let files: HashSet<PathBuf> = copies(&s.dir)
                    .iter()
                    .flat_map(|c| crate::storage::chain(c).into_iter().skip(1))
                    .collect();
                inside(&files)
            })
            .map(|s| s.name)
            .collect();
        if !others.is_empty() {
            return Err(Error::Conflict(format!(
                "snapshot '{name}' is in use: the disk copies of snapshot {} are overlays on its \
                 copies",
                quoted(&others)
            )));
        }
        lock(&self.store).delete_snapshot(name)?;
        if let Err(e) = std::fs::remove_dir_all(&rec.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", rec.dir.display());
            }
        }
        self.event(&rec.vm, "snapshot_deleted", name);
        Ok(())
    }

    /// The definition a VM `name` restored from `s` gets.
    fn restored_definition(
        &self,
        s: &SnapshotRecord,
        name: &str,
        identity: Option<&Identity>,
    ) -> Result<VmSpec> {
        let path = s.dir.join(vireo_state::dir::SPEC_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Internal(format!(
                "snapshot '{}': cannot read {}: {e}",
                s.name,
                path.display()
            ))
        })?;
        let spec: VmSpec = serde_json::from_str(&text).map_err(|e| {
            Error::Internal(format!("snapshot '{}': {}: {e}", s.name, path.display()))
        })?;
        Ok(restore_spec(
            &s.dir,
            spec,
            name == s.vm,
            &self.vm_dir(name),
            identity,
        ))
    }

    /// Defines VM `new` from snapshot `snap` and continues the guest in it.
    pub async fn restore(
        self: &Arc<Self>,
        snap: &str,
        new: Option<String>,
        paused: bool,
        force: bool,
    ) -> Result<VmInfo> {
        let s = self.snapshot_record(snap)?;
        let name = match new {
            Some(n) => n,
            None if lock(&self.store).get_vm(&s.vm)?.is_none() => s.vm.clone(),
            None => {
                return Err(Error::Conflict(format!(
                    "VM '{}', which snapshot '{snap}' was taken of, exists: give the restored VM \
                     a name",
                    s.vm
                )))
            }
        };
        names::validate(&name).map_err(Error::BadRequest)?;
        let spec = self.restored_definition(&s, &name, None)?;
        self.taps_free(&spec, snap, 1)?;
        let info = self.restore_one(&s, &name, spec, paused, force).await?;
        self.event(&name, "restored", &format!("from snapshot {snap}"));
        Ok(info)
    }

    /// Defines `name` with `spec` (made from `s`) and starts it with `--restore`; a start that
    /// fails removes the VM again.
    /// A tap device is one host interface that one VMM at a time can open: `count` VMs
    /// restored from snapshot `snap` with definition `spec` can have its taps only if they are
    /// one and no active VM has them already. Refused up front (409), naming the tap and who
    /// has it, rather than failing in the VMM of the second one.
    fn taps_free(&self, spec: &VmSpec, snap: &str, count: u32) -> Result<()> {
        let taps = tap_names(spec);
        let Some(first) = taps.first() else {
            return Ok(());
        };
        if count > 1 {
            return Err(Error::Conflict(format!(
                "snapshot '{snap}' has a NIC on tap '{first}', one host device that {count}                  clones cannot share: clone it with --count 1, or give the VM user networking"
            )));
        }
        for r in lock(&self.store).list_vms()? {
            if !r.state.is_active() {
                continue;
            }
            if let Some(t) = tap_names(&r.spec).into_iter().find(|t| taps.contains(t)) {
                return Err(Error::Conflict(format!(
                    "tap '{t}' of snapshot '{snap}' is in use by VM '{}' ({}): stop it first",
                    r.name,
                    r.state.as_str()
                )));
            }
        }
        Ok(())
    }

    async fn restore_one(
        self: &Arc<Self>,
        s: &SnapshotRecord,
        name: &str,
        spec: VmSpec,
        paused: bool,
        force: bool,
    ) -> Result<VmInfo> {
        crate::supervisor::check_spec(&spec).map_err(Error::Invalid)?;
        let op = self.op_lock(name);
        let _g = op.lock().await;
        {
            let _s = self.snapshot_lock.lock().await;
            if lock(&self.store).get_snapshot(&s.name)?.is_none() {
                return Err(Error::Missing(format!("no snapshot named '{}'", s.name)));
            }
            let d = self.clone();
            let (n, o) = (name.to_string(), s.name.clone());
            tokio::task::spawn_blocking(move || d.define_blocking(&n, spec, Some(&o)))
                .await
                .map_err(|e| Error::Internal(format!("defining the VM: {e}")))??;
        }
        let restore = Restore {
            dir: s.dir.clone(),
            paused,
            force,
        };
        match self.start_inner(name, false, Some(&restore)).await {
            Ok(info) => Ok(info),
            Err(e) => {
                if let Err(d) = self.delete_inner(name, true, "its restore failed").await {
                    tracing::warn!("cannot remove {name} after its failed restore: {d}");
                }
                Err(e)
            }
        }
    }

    /// `count` VMs `PREFIX-1` ... restored from snapshot `snap`, each with a fresh identity.
    pub async fn clone_snapshot(
        self: &Arc<Self>,
        snap: &str,
        count: u32,
        prefix: Option<String>,
    ) -> Result<CloneReport> {
        let t0 = Instant::now();
        let s = self.snapshot_record(snap)?;
        if !(1..=MAX_CLONES).contains(&count) {
            return Err(Error::BadRequest(format!(
                "count: {count} is out of range: 1 to {MAX_CLONES}"
            )));
        }
        let prefix = prefix.unwrap_or_else(|| s.vm.clone());
        let names: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i}")).collect();
        for n in &names {
            names::validate(n).map_err(|e| Error::BadRequest(format!("prefix '{prefix}': {e}")))?;
        }
        let _c = self.clone_lock.lock().await;
        let taken: Vec<String> = names
            .iter()
            .filter(|n| self.record(n).is_ok())
            .cloned()
            .collect();
        if !taken.is_empty() {
            return Err(Error::Conflict(format!(
                "VM{} {} already exist{}: choose another prefix",
                if taken.len() == 1 { "" } else { "s" },
                quoted(&taken),
                if taken.len() == 1 { "s" } else { "" }
            )));
        }
        let template = self.restored_definition(&s, &s.vm, None)?;
        self.taps_free(&template, snap, count)?;
        let mut used: HashSet<u64> = lock(&self.store)
            .list_vms()?
            .iter()
            .filter_map(|r| vsock_cid(&r.spec))
            .collect();
        let mut macs_used: HashSet<[u8; 6]> = HashSet::new();
        let mut made: Vec<VmInfo> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let cid = match template.vsock {
                Some(_) => fresh_cids(&used, 1).first().copied(),
                None => None,
            };
            used.extend(cid);
            let mut macs = Vec::new();
            while macs.len() < template.net.len() {
                let m = random_mac()
                    .map_err(|e| Error::Internal(format!("cannot read /dev/urandom: {e}")))?;
                if macs_used.insert(m) {
                    macs.push(m);
                }
            }
            let identity = Identity { macs, cid };
            let spec = self.restored_definition(&s, name, Some(&identity))?;
            match self.restore_one(&s, name, spec, false, false).await {
                Ok(info) => {
                    self.event(
                        name,
                        "cloned",
                        &format!("from snapshot {snap} ({} of {count})", i + 1),
                    );
                    made.push(info);
                }
                Err(e) => {
                    // All or none: the clones made so far go.
                    for m in &made {
                        let op = self.op_lock(&m.name);
                        let _g = op.lock().await;
                        if let Err(d) = self
                            .delete_inner(&m.name, true, "its clone request failed")
                            .await
                        {
                            tracing::warn!("cannot remove clone {}: {d}", m.name);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(CloneReport {
            snapshot: snap.into(),
            vms: made,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Clones of a running VM: a full snapshot of it first (`VM.clone-N`, which stays while
    /// the clones exist), then [`Daemon::clone_snapshot`].
    pub async fn clone_vm(
        self: &Arc<Self>,
        vm: &str,
        count: u32,
        prefix: Option<String>,
    ) -> Result<CloneReport> {
        let t0 = Instant::now();
        self.record(vm)?;
        if !(1..=MAX_CLONES).contains(&count) {
            return Err(Error::BadRequest(format!(
                "count: {count} is out of range: 1 to {MAX_CLONES}"
            )));
        }
        let snap = {
            let op = self.op_lock(vm);
            let _g = op.lock().await;
            let _s = self.snapshot_lock.lock().await;
            let name = self.free_snapshot_name(&format!("{vm}.clone"))?;
            self.snapshot_locked(vm, Some(name), false).await?
        };
        let prefix = prefix.unwrap_or_else(|| vm.to_string());
        match self.clone_snapshot(&snap.name, count, Some(prefix)).await {
            Ok(mut r) => {
                r.total_ms = t0.elapsed().as_secs_f64() * 1e3;
                Ok(r)
            }
            Err(e) => {
                if let Err(d) = self.delete_snapshot(&snap.name).await {
                    tracing::warn!("cannot remove snapshot {}: {d}", snap.name);
                }
                Err(e)
            }
        }
    }
}

/// The disk copies in a snapshot directory.
fn copies(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(vireo_state::dir::is_disk_copy)
        })
        .collect()
}

fn quoted(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireo-snaps-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The spec a VMM ran, as a snapshot keeps it: disks resolved by the daemon.
    fn run_spec() -> VmSpec {
        VmSpec {
            kernel: Some("/k".into()),
            disk: vec![
                "/state/vms/web/overlay-disk0.qcow2,serial=s0,format=qcow2".into(),
                "/images/base.raw,readonly".into(),
                "/data/d.raw,format=raw,queues=2".into(),
            ],
            net: vec![
                "user,hostfwd=tcp:127.0.0.1:8080-:80".into(),
                "tap=t0".into(),
            ],
            vsock: Some("cid=7,uds=/run/web.vsock".into()),
            ..Default::default()
        }
    }

    fn ids(spec: &VmSpec) -> Vec<String> {
        vireo_vmm::devices::parse(spec)
            .unwrap()
            .iter()
            .map(|d| match d {
                vireo_vmm::devices::DeviceConfig::Block(b) => b.id.clone(),
                vireo_vmm::devices::DeviceConfig::Net(n) => n.id.clone(),
                vireo_vmm::devices::DeviceConfig::Vsock(_) => "vsock".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn restored_disks_are_overlays_on_the_copies() {
        let snap = temp("disks");
        std::fs::write(snap.join("disk-disk0.qcow2"), b"q").unwrap();
        std::fs::write(snap.join("disk-disk2.raw"), b"r").unwrap();
        let vm_dir = Path::new("/state/vms/web");
        let out = restore_spec(&snap, run_spec(), true, vm_dir, None);
        assert_eq!(
            out.disk,
            [
                format!(
                    "{},overlay,serial=s0",
                    snap.join("disk-disk0.qcow2").display()
                ),
                "/images/base.raw,readonly".into(),
                format!("{},overlay,queues=2", snap.join("disk-disk2.raw").display()),
            ]
        );
        assert_eq!(out.root_disk, None);
        // Its own VM again: same NICs, same vsock.
        assert_eq!(out.net, run_spec().net);
        assert_eq!(out.vsock, run_spec().vsock);
        // Another VM listens on its own vsock socket.
        let other = restore_spec(&snap, run_spec(), false, Path::new("/state/vms/b"), None);
        assert_eq!(
            other.vsock.as_deref(),
            Some("cid=7,uds=/state/vms/b/vsock.sock")
        );
        let _ = std::fs::remove_dir_all(&snap);
    }

    /// The image's root disk comes from the snapshot's copy, in the image root disk's slot
    /// (id `root`, first), and every other device keeps its slot and id.
    #[test]
    fn the_root_disk_comes_from_the_copy_in_its_slot() {
        let snap = temp("root");
        std::fs::write(snap.join("disk-root.qcow2"), b"q").unwrap();
        std::fs::write(snap.join("disk-disk0.qcow2"), b"q").unwrap();
        let mut spec = run_spec();
        spec.image = Some("debian-riscv64-rootfs".into());
        spec.kernel = None;
        let out = restore_spec(&snap, spec.clone(), false, Path::new("/v/n"), None);
        assert_eq!(
            out.root_disk,
            Some(format!(
                "{},overlay",
                snap.join("disk-root.qcow2").display()
            ))
        );
        out.validate().unwrap();
        // What the VMM is given at start: the overlay in place of the entry (storage.rs).
        let mut run = out.clone();
        run.root_disk = Some("/v/n/overlay-root.qcow2,format=qcow2".into());
        run.disk[0] = "/v/n/overlay-disk0.qcow2,serial=s0,format=qcow2".into();
        let configs = vireo_vmm::devices::parse(&run).unwrap();
        let vireo_vmm::devices::DeviceConfig::Block(root) = &configs[0] else {
            panic!("{configs:?}")
        };
        assert_eq!(root.id, "root");
        assert_eq!(root.path, Path::new("/v/n/overlay-root.qcow2"));
        // A plain disk now: the guest's writes stay in the VM's overlay.
        assert!(!root.overlay);
        // The image's own root disk would be `root` in front of the same devices.
        let mut no_image = spec.clone();
        no_image.image = None;
        no_image.kernel = Some("/k".into());
        let mut want = vec!["root".to_string()];
        want.extend(ids(&no_image));
        assert_eq!(ids(&run), want);
        let _ = std::fs::remove_dir_all(&snap);
    }

    #[test]
    fn clones_get_their_identity() {
        let snap = temp("ident");
        let id = Identity {
            macs: vec![[0x02, 1, 2, 3, 4, 5], [0x06, 0xaa, 0, 0, 0, 1]],
            cid: Some(42),
        };
        let mut spec = run_spec();
        spec.net[1] = "tap=t0,mac=52:54:00:00:00:01".into();
        let out = restore_spec(&snap, spec, false, Path::new("/state/vms/c-1"), Some(&id));
        // A clone binds none of its origin's host ports.
        assert_eq!(
            out.net,
            ["user,mac=02:01:02:03:04:05", "tap=t0,mac=06:aa:00:00:00:01"]
        );
        assert_eq!(
            out.vsock.as_deref(),
            Some("cid=42,uds=/state/vms/c-1/vsock.sock")
        );
        assert_eq!(vsock_cid(&out), Some(42));
        // The VMM takes them as they are written.
        let configs = vireo_vmm::devices::parse(&out).unwrap();
        let macs: Vec<[u8; 6]> = configs
            .iter()
            .filter_map(|d| match d {
                vireo_vmm::devices::DeviceConfig::Net(n) => Some(n.mac),
                _ => None,
            })
            .collect();
        assert_eq!(macs, id.macs);
        let vsock = configs.iter().find_map(|d| match d {
            vireo_vmm::devices::DeviceConfig::Vsock(v) => Some(v.cid),
            _ => None,
        });
        assert_eq!(vsock, Some(42));
        let _ = std::fs::remove_dir_all(&snap);
    }

    #[test]
    fn macs_and_cids() {
        let mut seen = HashSet::new();
        for _ in 0..64 {
            let m = random_mac().unwrap();
            // Unicast, locally administered.
            assert_eq!(m[0] & 0x03, 0x02, "{}", mac_text(&m));
            seen.insert(m);
        }
        assert!(seen.len() > 60);
        let used: HashSet<u64> = [3, 4, 6].into();
        assert_eq!(fresh_cids(&used, 3), [5, 7, 8]);
        assert_eq!(fresh_cids(&HashSet::new(), 1), [3]);
        let bad = VmSpec {
            net: vec!["user,mac=01:00:00:00:00:01".into()],
            kernel: Some("/k".into()),
            ..Default::default()
        };
        let e = vireo_vmm::devices::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("multicast"), "{e}");
    }
}
