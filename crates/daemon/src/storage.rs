//! Storage pools and their volumes, as libvirt's directory pools: a pool is a directory the
//! daemon manages, and its volumes are the image files in it (raw or qcow2), found by reading
//! the directory each time, so images copied in by hand are volumes too. The pools are rows of
//! the store; a volume's format, sizes and backing file are read from the file
//! (`vireo_virtio::block::image::info`).
//!
//! - The `default` pool is `<state-dir>/pools/default`, made when first used; it cannot be
//!   removed. Other pools are made on a directory that is new or empty (a `lost+found` aside),
//!   inside `--pool-root` when the daemon has one:
//!   the daemon deletes files in a pool's directory on request, so it never takes over one that
//!   already holds someone's files. Removing a pool forgets it; its directory goes too when the
//!   daemon made it and it is empty, and a pool that still has volumes is kept unless forced
//!   (the files stay either way).
//! - A volume is a regular file (or a link to one) whose name is a valid volume name
//!   ([`names::validate_volume`]); other entries (directories, hidden files, a clone in
//!   progress) are not volumes.
//! - A volume is in use while a VM definition names it (`vol:POOL/NAME`), names its file by
//!   path, or has it in the backing chain of one of its disks (its persistent overlay
//!   included), and while another volume's backing chain holds it. Such a volume cannot be
//!   removed (409 naming the VM or the volume), nor a pool that holds one.
//!
//! A VM's `disk` entry names a path or a volume, `vol:POOL/NAME` or `vol:NAME` for the default
//! pool ([`DiskRef`]), resolved to the file when the VM is created (it must exist then) and at
//! every start. A volume entry without `format=` is given its volume's format at create
//! ([`pin_volume_formats`]), so what the guest writes cannot change how the file is opened. An entry with `overlay` gets a persistent qcow2 overlay in the VM's directory,
//! `vms/NAME/overlay-diskN.qcow2`, made at create on the image (which it only reads, and which
//! nobody may be writing then), kept across stops and starts, removed with the VM: the VMM is
//! given the overlay in the entry's place ([`Daemon::vmm_spec`]).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use utoipa::ToSchema;
use vireo_spec::VmSpec;
use vireo_virtio::block::image;

use crate::names;
use crate::store::PoolRecord;
use crate::supervisor::{lock, Daemon, Error};

type Result<T> = std::result::Result<T, Error>;

/// The pool `vol:NAME` and `--pool`-less requests mean.
pub const DEFAULT_POOL: &str = "default";

/// Largest volume the daemon creates: 64 TiB (a qcow2 of that size has a 1 MiB L1 table).
pub const MAX_VOLUME_SIZE: u64 = 64 << 40;

/// What a `disk` entry's first field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRef {
    Path(PathBuf),
    Volume { pool: String, name: String },
}

impl DiskRef {
    /// `vol:POOL/NAME` or `vol:NAME` (the default pool); anything else is a path.
    pub fn parse(s: &str) -> std::result::Result<DiskRef, String> {
        let Some(v) = s.strip_prefix("vol:") else {
            return Ok(DiskRef::Path(PathBuf::from(s)));
        };
        let (pool, name) = match v.split_once('/') {
            Some((p, n)) => (p, n),
            None => (DEFAULT_POOL, v),
        };
        let bad = |why: String| format!("'{s}': {why} (expected vol:NAME or vol:POOL/NAME)");
        names::validate_pool(pool).map_err(bad)?;
        names::validate_volume(name).map_err(bad)?;
        Ok(DiskRef::Volume {
            pool: pool.into(),
            name: name.into(),
        })
    }
}

/// A `disk` entry (`IMAGE[,readonly][,overlay][,serial=ID][,format=raw|qcow2]`) taken apart as
/// far as the daemon needs; the VMM checks the other options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    pub image: DiskRef,
    pub overlay: bool,
    pub readonly: bool,
    /// `format=`'s value.
    pub format: Option<String>,
    /// The options after the image, as written, `overlay` left out.
    pub options: Vec<String>,
}

impl DiskEntry {
    pub fn parse(text: &str) -> std::result::Result<DiskEntry, String> {
        let mut parts = text.split(',');
        let image = DiskRef::parse(parts.next().unwrap_or(""))?;
        let mut e = DiskEntry {
            image,
            overlay: false,
            readonly: false,
            format: None,
            options: Vec::new(),
        };
        for p in parts {
            match p {
                "overlay" => e.overlay = true,
                "readonly" | "ro" => e.readonly = true,
                _ => {}
            }
            if let Some(f) = p.strip_prefix("format=") {
                e.format = Some(f.into());
            }
            if p != "overlay" {
                e.options.push(p.into());
            }
        }
        Ok(e)
    }
}

/// A `disk` entry of a VM with its files found.
#[derive(Debug, Clone)]
pub struct ResolvedDisk {
    pub entry: DiskEntry,
    /// The image the entry names.
    pub path: PathBuf,
    /// The VM's persistent overlay on it, for an `overlay` entry.
    pub overlay: Option<PathBuf>,
}

impl ResolvedDisk {
    /// The entry the VMM gets: the file it opens, with the options that still apply.
    pub fn vmm_entry(&self) -> String {
        let mut s = match &self.overlay {
            Some(o) => o.display().to_string(),
            None => self.path.display().to_string(),
        };
        for o in &self.entry.options {
            // The overlay is the disk now; a format given was the base's.
            if self.overlay.is_some() && o.starts_with("format=") {
                continue;
            }
            s.push(',');
            s.push_str(o);
        }
        if self.overlay.is_some() {
            s.push_str(",format=qcow2");
        }
        s
    }
}

/// Gives each volume disk of a definition being made (not an overlay's, whose overlay records
/// its base's format) the format its volume has now, unless it has one: a guest that writes a
/// qcow2 header into its raw volume must not make it a qcow2, with a backing file of the
/// guest's choosing, at the next start's probe.
pub fn pin_volume_formats(spec: &mut VmSpec, disks: &[ResolvedDisk]) {
    for (entry, d) in spec.disk.iter_mut().zip(disks) {
        let volume = matches!(d.entry.image, DiskRef::Volume { .. });
        if !volume || d.overlay.is_some() || d.entry.format.is_some() || !describable(&d.path) {
            continue;
        }
        if let Ok(i) = image::info(&d.path) {
            if matches!(i.format.as_str(), "raw" | "qcow2") {
                entry.push_str(&format!(",format={}", i.format));
            }
        }
    }
}

/// Where a VM's persistent overlay for its disk `index` lives.
pub fn overlay_path(vm_dir: &Path, index: usize) -> PathBuf {
    vm_dir.join(format!("overlay-disk{index}.qcow2"))
}

/// One disk of a VM, as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DiskInfo {
    /// The definition's entry.
    pub entry: String,
    /// The image it names (a volume's file).
    pub path: Option<String>,
    /// The VM's persistent overlay on that image, which takes the guest's writes.
    pub overlay: Option<String>,
    /// Why the entry does not resolve now (a volume or file gone).
    pub error: Option<String>,
}

/// A pool, as the API shows it. Sizes are those of the file system the directory is on.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolInfo {
    pub name: String,
    pub path: String,
    /// The file system's size.
    pub capacity_bytes: u64,
    /// What is used on it (by anything, not only this pool).
    pub allocation_bytes: u64,
    /// What is left for unprivileged users.
    pub available_bytes: u64,
    /// Volumes in the directory.
    pub volumes: u64,
    /// Why the directory cannot be read, if it cannot.
    pub error: Option<String>,
}

/// A volume, as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VolumeInfo {
    pub name: String,
    pub pool: String,
    pub path: String,
    /// raw, qcow2, the name of a format vireo does not serve, or unknown (see `error`).
    pub format: String,
    /// The disk's size as a guest sees it.
    pub virtual_size_bytes: u64,
    /// What the file occupies on the host.
    pub allocated_bytes: u64,
    /// A qcow2's backing file, as its header names it.
    pub backing_file: Option<String>,
    /// VMs whose definitions use it (directly, or in a disk's backing chain).
    pub used_by: Vec<String>,
    /// Volumes (`POOL/NAME`) with this one in their backing chain.
    pub backs: Vec<String>,
    /// Why the image cannot be described, if it cannot.
    pub error: Option<String>,
}

/// `POST /pools/{pool}/volumes`, as the daemon takes it.
#[derive(Debug, Clone, Default)]
pub struct NewVolume {
    pub name: String,
    pub size: Option<u64>,
    pub qcow2: bool,
    /// A volume of the pool (NAME), another pool's (`vol:POOL/NAME`), or an absolute path.
    pub backing: Option<String>,
}

/// Whether `path` is a file or a block device, which can be opened to be described: opening a
/// FIFO (a disk path can name anything) would wait for a writer.
fn describable(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() || m.file_type().is_block_device())
}

/// The canonical files of an image's backing chain, the image first. An image that cannot be
/// described (gone, corrupt, not a file) is still its own first link.
pub(crate) fn chain(path: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(i) = describable(path).then(|| image::info(path).ok()).flatten() {
        let mut at = Some(&i);
        while let Some(i) = at {
            v.extend(std::fs::canonicalize(&i.path).ok());
            at = i.backing.as_deref();
        }
    }
    if v.is_empty() {
        v.extend(std::fs::canonicalize(path).ok());
    }
    v
}

/// What one VM's definition holds on to.
pub(crate) struct Use {
    pub(crate) vm: String,
    /// Volumes it names, `(pool, name)`.
    volumes: Vec<(String, String)>,
    /// Every file of its disks' chains (its root disk's included), canonical.
    pub(crate) files: HashSet<PathBuf>,
}

/// The volume files in `dir`, by name.
fn scan(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if names::validate_volume(&name).is_err() {
            continue;
        }
        // Following a link: an image linked in by hand is a volume.
        if std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
            v.push((name, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// (capacity, allocation, available) of the file system holding `dir`.
fn fs_usage(dir: &Path) -> io::Result<(u64, u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir)?;
    let unit = s.fragment_size() as u64;
    let blocks = s.blocks() as u64;
    Ok((
        blocks * unit,
        blocks.saturating_sub(s.blocks_free() as u64) * unit,
        s.blocks_available() as u64 * unit,
    ))
}

/// Copies `src` into the new file `dst` as it is (a qcow2 keeps its backing file name), leaving
/// holes as holes: ranges the file system reports as holes are skipped, and so are zero
/// chunks within data, so a sparse image stays sparse.
fn copy_sparse(src: &File, dst: &File) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    const CHUNK: usize = 1 << 20;
    let len = src.metadata()?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let (data, end) = match lseek(src, pos as i64, Whence::SeekData) {
            Ok(d) => {
                let h = lseek(src, d, Whence::SeekHole).map_err(io::Error::from)?;
                (d as u64, (h as u64).min(len))
            }
            // No data past `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            // A file system that cannot tell: all of it may be data.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => (pos, len),
            Err(e) => return Err(e.into()),
        };
        let mut at = data;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..n], at)?;
            }
            at += n as u64;
        }
        pos = end;
    }
    dst.set_len(len)?;
    dst.sync_all()
}

/// An I/O failure on a pool's files as an API error: a full file system is a capacity
/// conflict, an image that exists a conflict, a size the file system cannot have or an image
/// that cannot be used that way bad input; the rest is the daemon's.
fn io_error(what: &str, e: io::Error) -> Error {
    let msg = format!("{what}: {e}");
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::Capacity(msg),
        io::ErrorKind::AlreadyExists | io::ErrorKind::ResourceBusy => Error::Conflict(msg),
        io::ErrorKind::FileTooLarge => Error::BadRequest(format!(
            "{what}: the size is more than the pool's file system allows ({e})"
        )),
        io::ErrorKind::InvalidInput
        | io::ErrorKind::InvalidData
        | io::ErrorKind::InvalidFilename => Error::BadRequest(msg),
        io::ErrorKind::NotFound => Error::Missing(msg),
        _ => Error::Internal(msg),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

fn quoted(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Daemon {
    fn default_pool_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("pools").join(DEFAULT_POOL)
    }

    /// A pool by name: 400 for a name no pool can have, 404 for none of that name. The default
    /// pool's directory is made here the first time.
    fn pool(&self, name: &str) -> Result<PoolRecord> {
        names::validate_pool(name).map_err(Error::BadRequest)?;
        if name == DEFAULT_POOL {
            let path = self.default_pool_dir();
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|e| Error::Internal(format!("cannot create {}: {e}", path.display())))?;
            return Ok(PoolRecord {
                name: name.into(),
                path,
                made_dir: true,
                created_at: 0.0,
            });
        }
        lock(&self.store)
            .get_pool(name)?
            .ok_or_else(|| Error::Missing(format!("no pool named '{name}'")))
    }

    fn pools(&self) -> Result<Vec<PoolRecord>> {
        let mut v = vec![self.pool(DEFAULT_POOL)?];
        v.extend(lock(&self.store).list_pools()?);
        Ok(v)
    }

    /// A pool's directory, for resolving `vol:` references; the error is the message.
    fn pool_dir(&self, name: &str) -> std::result::Result<PathBuf, String> {
        self.pool(name).map(|p| p.path).map_err(|e| e.to_string())
    }

    fn pool_info(&self, p: &PoolRecord) -> PoolInfo {
        let (usage, count) = (fs_usage(&p.path), scan(&p.path));
        let error = match (&usage, &count) {
            (Err(e), _) | (_, Err(e)) => Some(format!("{}: {e}", p.path.display())),
            _ => None,
        };
        let (capacity, allocation, available) = usage.unwrap_or_default();
        PoolInfo {
            name: p.name.clone(),
            path: p.path.display().to_string(),
            capacity_bytes: capacity,
            allocation_bytes: allocation,
            available_bytes: available,
            volumes: count.map(|c| c.len() as u64).unwrap_or(0),
            error,
        }
    }

    pub fn list_pools(&self) -> Result<Vec<PoolInfo>> {
        Ok(self.pools()?.iter().map(|p| self.pool_info(p)).collect())
    }

    pub fn get_pool(&self, name: &str) -> Result<PoolInfo> {
        Ok(self.pool_info(&self.pool(name)?))
    }

    /// Defines a pool on `path`: an absolute path to an empty directory, or to a new one whose
    /// parent exists (made here, mode 0700).
    pub fn create_pool(&self, name: &str, path: &str) -> Result<PoolInfo> {
        let _g = lock(&self.storage);
        names::validate_pool(name).map_err(Error::BadRequest)?;
        if name == DEFAULT_POOL || lock(&self.store).get_pool(name)?.is_some() {
            return Err(Error::Conflict(format!(
                "a pool named '{name}' already exists"
            )));
        }
        let bad = |why: String| Error::BadRequest(format!("path '{path}': {why}"));
        let given = Path::new(path);
        if !given.is_absolute() {
            return Err(bad("expected an absolute path".into()));
        }
        let (dir, exists) = match std::fs::canonicalize(given) {
            Ok(d) => (d, true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(leaf)) = (given.parent(), given.file_name()) else {
                    return Err(bad("expected a directory's path".into()));
                };
                let parent = std::fs::canonicalize(parent).map_err(|e| {
                    bad(format!(
                        "its parent {} cannot be used: {e} (the daemon makes the pool's \
                         directory, not the ones above it)",
                        parent.display()
                    ))
                })?;
                (parent.join(leaf), false)
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let state = std::fs::canonicalize(&self.cfg.state_dir)
            .unwrap_or_else(|_| self.cfg.state_dir.clone());
        if dir.starts_with(&state) || state.starts_with(&dir) {
            return Err(bad(format!(
                "{} overlaps the daemon's state directory {}",
                dir.display(),
                state.display()
            )));
        }
        if let Some(root) = &self.cfg.pool_root {
            let r = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
            if !dir.starts_with(&r) {
                return Err(bad(format!(
                    "{} is outside {}, where this daemon makes pools (--pool-root)",
                    dir.display(),
                    r.display()
                )));
            }
        }
        if exists {
            if !dir.is_dir() {
                return Err(bad(format!("{} is not a directory", dir.display())));
            }
            let entries: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| bad(e.to_string()))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lost+found")
                .collect();
            if !entries.is_empty() {
                return Err(Error::Conflict(format!(
                    "path '{path}': {} is not empty ({} {}): a pool's directory must be new or \
                     empty, since the daemon deletes files in it on request; make the pool on \
                     a new directory and move the images in",
                    dir.display(),
                    entries.len(),
                    plural(entries.len(), "entry", "entries")
                )));
            }
        }
        if let Some(p) = lock(&self.store)
            .list_pools()?
            .into_iter()
            .find(|p| p.path == dir)
        {
            return Err(Error::Conflict(format!(
                "pool '{}' is already on {}",
                p.name,
                dir.display()
            )));
        }
        if !exists {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
        }
        let rec = PoolRecord {
            name: name.into(),
            path: dir.clone(),
            made_dir: !exists,
            created_at: crate::now(),
        };
        if let Err(e) = lock(&self.store).insert_pool(&rec) {
            if !exists {
                let _ = std::fs::remove_dir(&dir);
            }
            return Err(e.into());
        }
        tracing::info!(pool = name, path = %dir.display(), "pool created");
        Ok(self.pool_info(&rec))
    }

    /// Forgets a pool. One a VM or another pool's volume uses is refused; one with volumes is
    /// refused unless `force` (which keeps the files). The directory goes when the daemon made
    /// it and it is empty.
    pub fn delete_pool(&self, name: &str, force: bool) -> Result<()> {
        let _g = lock(&self.storage);
        let pool = self.pool(name)?;
        if name == DEFAULT_POOL {
            return Err(Error::Conflict(
                "the default pool cannot be removed (it is where volumes go without --pool)".into(),
            ));
        }
        let vols = scan(&pool.path).unwrap_or_default();
        let uses = self.uses()?;
        let users: Vec<String> = uses
            .iter()
            .filter(|u| {
                u.volumes.iter().any(|(p, _)| p == name)
                    || u.files.iter().any(|f| f.starts_with(&pool.path))
            })
            .map(|u| u.vm.clone())
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "pool '{name}' is in use by {} {}",
                plural(users.len(), "VM", "VMs"),
                quoted(&users)
            )));
        }
        let mut backed = Vec::new();
        for other in self.pools()?.iter().filter(|p| p.name != name) {
            for (v, path) in scan(&other.path).unwrap_or_default() {
                if chain(&path)
                    .iter()
                    .skip(1)
                    .any(|f| f.starts_with(&pool.path))
                {
                    backed.push(format!("{}/{v}", other.name));
                }
            }
        }
        if !backed.is_empty() {
            return Err(Error::Conflict(format!(
                "pool '{name}' holds the backing file of {} {}",
                plural(backed.len(), "volume", "volumes"),
                quoted(&backed)
            )));
        }
        if !vols.is_empty() && !force {
            let names: Vec<String> = vols.iter().map(|(n, _)| n.clone()).collect();
            return Err(Error::Conflict(format!(
                "pool '{name}' holds {} {} ({}): remove {} first, or force to forget the pool \
                 and keep its files",
                vols.len(),
                plural(vols.len(), "volume", "volumes"),
                quoted(&names),
                plural(vols.len(), "it", "them")
            )));
        }
        lock(&self.store).delete_pool(name)?;
        if pool.made_dir {
            // Only an empty directory goes: remove_dir refuses anything else.
            let _ = std::fs::remove_dir(&pool.path);
        }
        tracing::info!(pool = name, "pool removed");
        Ok(())
    }

    /// What every VM definition holds on to.
    pub(crate) fn uses(&self) -> Result<Vec<Use>> {
        let recs = lock(&self.store).list_vms()?;
        let mut v = Vec::new();
        for rec in recs {
            let mut u = Use {
                vm: rec.name.clone(),
                volumes: Vec::new(),
                files: HashSet::new(),
            };
            let vm_dir = self.vm_dir(&rec.name);
            for (i, text) in rec.spec.disk.iter().enumerate() {
                let Ok(entry) = DiskEntry::parse(text) else {
                    continue;
                };
                if let DiskRef::Volume { pool, name } = &entry.image {
                    u.volumes.push((pool.clone(), name.clone()));
                }
                if let Ok(r) = self.resolve(i, text, &vm_dir) {
                    u.files.extend(chain(&r.path));
                    if let Some(o) = &r.overlay {
                        u.files.extend(chain(o));
                    }
                }
            }
            if let Ok(Some(r)) = self.resolve_root(&rec.name, &rec.spec) {
                u.files.extend(chain(&r.path));
                if let Some(o) = &r.overlay {
                    u.files.extend(chain(o));
                }
            }
            v.push(u);
        }
        Ok(v)
    }

    /// Resolves disk `index` of a VM whose directory is `vm_dir`: the image must exist; an
    /// overlay's file need not (yet). The error names the entry.
    fn resolve(
        &self,
        index: usize,
        text: &str,
        vm_dir: &Path,
    ) -> std::result::Result<ResolvedDisk, String> {
        let mut r = self.resolve_entry(&format!("disk[{index}]"), text)?;
        r.overlay = r.entry.overlay.then(|| overlay_path(vm_dir, index));
        Ok(r)
    }

    /// Resolves a VM's `root_disk` entry (a restored VM's: an `overlay` on a snapshot's copy
    /// of the image's root disk, `vms/NAME/overlay-root.qcow2`).
    pub(crate) fn resolve_root(
        &self,
        vm: &str,
        spec: &VmSpec,
    ) -> std::result::Result<Option<ResolvedDisk>, String> {
        let Some(text) = &spec.root_disk else {
            return Ok(None);
        };
        let mut r = self.resolve_entry("root_disk", text)?;
        r.overlay = r
            .entry
            .overlay
            .then(|| self.vm_dir(vm).join("overlay-root.qcow2"));
        Ok(Some(r))
    }

    /// A disk entry's image found (it must exist); `key` names it in the error. No overlay.
    fn resolve_entry(&self, key: &str, text: &str) -> std::result::Result<ResolvedDisk, String> {
        let entry = DiskEntry::parse(text).map_err(|e| format!("{key}: {e}"))?;
        let path = match &entry.image {
            DiskRef::Path(p) => {
                if !p.is_absolute() {
                    return Err(format!("{key}: {} is not an absolute path", p.display()));
                }
                p.clone()
            }
            DiskRef::Volume { pool, name } => {
                let dir = self
                    .pool_dir(pool)
                    .map_err(|e| format!("{key}: {text}: {e}"))?;
                dir.join(name)
            }
        };
        if let Err(e) = std::fs::metadata(&path) {
            return Err(match (&entry.image, e.kind()) {
                (DiskRef::Volume { pool, name }, io::ErrorKind::NotFound) => {
                    format!("{key}: no volume '{name}' in pool '{pool}'")
                }
                (_, io::ErrorKind::NotFound) => format!("{key}: {}: no such file", path.display()),
                _ => format!("{key}: {}: {e}", path.display()),
            });
        }
        Ok(ResolvedDisk {
            entry,
            path,
            overlay: None,
        })
    }

    /// Every disk of a definition resolved; the first failure's message.
    pub(crate) fn resolve_disks(
        &self,
        vm: &str,
        spec: &VmSpec,
    ) -> std::result::Result<Vec<ResolvedDisk>, String> {
        let vm_dir = self.vm_dir(vm);
        spec.disk
            .iter()
            .enumerate()
            .map(|(i, d)| self.resolve(i, d, &vm_dir))
            .collect()
    }

    /// The disks of a VM as `inspect` shows them.
    pub(crate) fn disk_info(&self, vm: &str, spec: &VmSpec) -> Vec<DiskInfo> {
        let vm_dir = self.vm_dir(vm);
        spec.disk
            .iter()
            .enumerate()
            .map(|(i, d)| match self.resolve(i, d, &vm_dir) {
                Ok(r) => DiskInfo {
                    entry: d.clone(),
                    path: Some(r.path.display().to_string()),
                    overlay: r.overlay.map(|o| o.display().to_string()),
                    error: None,
                },
                Err(e) => DiskInfo {
                    entry: d.clone(),
                    path: None,
                    overlay: None,
                    error: Some(e),
                },
            })
            .collect()
    }

    /// Makes the persistent overlays of a VM being defined. The caller holds the storage lock;
    /// on an error, the overlays made so far are removed.
    pub(crate) fn make_overlays(&self, disks: &[(String, &ResolvedDisk)]) -> Result<()> {
        let mut made: Vec<&Path> = Vec::new();
        let r = disks.iter().try_for_each(|(key, d)| {
            let Some(o) = &d.overlay else {
                return Ok(());
            };
            if !describable(&d.path) {
                return Err(Error::Invalid(format!(
                    "{key}: {} is not a file or a block device, which an overlay needs as its base",
                    d.path.display()
                )));
            }
            if d.entry.readonly {
                return Err(Error::Invalid(format!(
                    "{key}: overlay and readonly together: an overlay exists to take the writes"
                )));
            }
            let base = image::info(&d.path).map_err(|e| Error::Invalid(format!("{key}: {e}")))?;
            if let Some(f) = d.entry.format.as_deref().filter(|f| *f != base.format) {
                return Err(Error::Invalid(format!(
                    "{key}: format={f}, but {} is {}: the overlay records its base's format, so \
                     leave format= out or convert the image",
                    d.path.display(),
                    base.format
                )));
            }
            // Nobody may write the base while the overlay is made on it.
            let _base = image::lock_read(&d.path).map_err(|e| match e.kind() {
                io::ErrorKind::ResourceBusy => {
                    Error::Conflict(format!("{key}: {e}: an overlay needs a base nobody writes"))
                }
                _ => Error::Invalid(format!("{key}: {e}")),
            })?;
            if let Some(dir) = o.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Internal(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            image::create(o, true, None, Some(&d.path), None).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                    Error::Invalid(format!("{key}: cannot make its overlay: {e}"))
                }
                _ => io_error(&format!("{key}: cannot make its overlay"), e),
            })?;
            made.push(o);
            Ok(())
        });
        if r.is_err() {
            for o in made {
                let _ = std::fs::remove_file(o);
            }
        }
        r
    }

    /// The definition the VMM runs: each disk its resolved file, an overlay entry the VM's
    /// overlay (which must still be there: the guest's writes are in it).
    pub(crate) fn vmm_spec(&self, vm: &str, spec: &VmSpec) -> std::result::Result<VmSpec, String> {
        let disks = self.resolve_disks(vm, spec)?;
        let mut out = spec.clone();
        for (i, d) in disks.iter().enumerate() {
            if let Some(o) = d.overlay.as_ref().filter(|o| !o.exists()) {
                return Err(format!(
                    "disk[{i}]: its overlay {} is gone (it was made with the VM and held the \
                     guest's writes); define the VM again to start over from {}",
                    o.display(),
                    d.path.display()
                ));
            }
            out.disk[i] = d.vmm_entry();
        }
        if let Some(r) = self.resolve_root(vm, spec)? {
            if let Some(o) = r.overlay.as_ref().filter(|o| !o.exists()) {
                return Err(format!(
                    "root_disk: its overlay {} is gone (it held the guest's writes)",
                    o.display()
                ));
            }
            out.root_disk = Some(r.vmm_entry());
        }
        Ok(out)
    }

    fn volume_info(
        &self,
        pool: &str,
        name: &str,
        path: &Path,
        uses: &[Use],
        chains: &[(String, Vec<PathBuf>)],
    ) -> VolumeInfo {
        let canon = std::fs::canonicalize(path).ok();
        let used_by = uses
            .iter()
            .filter(|u| {
                u.volumes.iter().any(|(p, n)| p == pool && n == name)
                    || canon.as_ref().is_some_and(|c| u.files.contains(c))
            })
            .map(|u| u.vm.clone())
            .collect();
        let backs = chains
            .iter()
            .filter(|(_, c)| {
                canon
                    .as_ref()
                    .is_some_and(|me| c.iter().skip(1).any(|f| f == me))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let (info, error) = match image::info(path) {
            Ok(i) => (Some(i), None),
            Err(e) => (None, Some(e.to_string())),
        };
        VolumeInfo {
            name: name.into(),
            pool: pool.into(),
            path: path.display().to_string(),
            format: info
                .as_ref()
                .map_or_else(|| "unknown".into(), |i| i.format.clone()),
            virtual_size_bytes: info.as_ref().map_or(0, |i| i.virtual_size),
            allocated_bytes: info.as_ref().map_or(0, |i| i.allocated),
            backing_file: info.and_then(|i| i.backing_file),
            used_by,
            backs,
            error,
        }
    }

    /// Every volume of every pool with its backing chain (`POOL/NAME`, canonical files).
    fn all_chains(&self) -> Result<Vec<(String, Vec<PathBuf>)>> {
        let mut v = Vec::new();
        for p in self.pools()? {
            for (n, path) in scan(&p.path).unwrap_or_default() {
                v.push((format!("{}/{n}", p.name), chain(&path)));
            }
        }
        Ok(v)
    }

    fn scan_pool(&self, pool: &PoolRecord) -> Result<Vec<(String, PathBuf)>> {
        scan(&pool.path).map_err(|e| {
            Error::Conflict(format!(
                "pool '{}': cannot read its directory {}: {e}",
                pool.name,
                pool.path.display()
            ))
        })
    }

    pub fn list_volumes(&self, pool: &str) -> Result<Vec<VolumeInfo>> {
        let p = self.pool(pool)?;
        let vols = self.scan_pool(&p)?;
        let (uses, chains) = (self.uses()?, self.all_chains()?);
        Ok(vols
            .iter()
            .map(|(n, path)| self.volume_info(pool, n, path, &uses, &chains))
            .collect())
    }

    /// A volume's file: 400 for a bad name, 404 when there is none.
    fn volume_path(&self, pool: &PoolRecord, name: &str) -> Result<PathBuf> {
        names::validate_volume(name).map_err(Error::BadRequest)?;
        let path = pool.path.join(name);
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            Ok(path)
        } else {
            Err(Error::Missing(format!(
                "no volume '{name}' in pool '{}'",
                pool.name
            )))
        }
    }

    pub fn get_volume(&self, pool: &str, name: &str) -> Result<VolumeInfo> {
        let p = self.pool(pool)?;
        let path = self.volume_path(&p, name)?;
        Ok(self.volume_info(pool, name, &path, &self.uses()?, &self.all_chains()?))
    }

    /// A new volume's file, which must not exist: 400 for a bad name, 409 when it is taken.
    fn new_volume_path(&self, pool: &PoolRecord, name: &str) -> Result<PathBuf> {
        names::validate_volume(name).map_err(Error::BadRequest)?;
        let path = pool.path.join(name);
        if path.symlink_metadata().is_ok() {
            return Err(Error::Conflict(format!(
                "pool '{}' already has a volume (or file) named '{name}'",
                pool.name
            )));
        }
        Ok(path)
    }

    /// Runs `make`, which creates `path`, and removes whatever it left there when it failed
    /// (never a file that was there before).
    fn making(path: &Path, make: impl FnOnce() -> Result<()>) -> Result<()> {
        let was_there = path.symlink_metadata().is_ok();
        let r = make();
        if r.is_err() && !was_there {
            let _ = std::fs::remove_file(path);
        }
        r
    }

    pub fn create_volume(&self, pool: &str, req: &NewVolume) -> Result<VolumeInfo> {
        let _g = lock(&self.storage);
        let p = self.pool(pool)?;
        let path = self.new_volume_path(&p, &req.name)?;
        if let Some(s) = req.size {
            if s == 0 || s > MAX_VOLUME_SIZE {
                return Err(Error::BadRequest(format!(
                    "size_bytes: {s} is out of range: expected 1 to {MAX_VOLUME_SIZE} (64 TiB)"
                )));
            }
        }
        let backing = match req.backing.as_deref() {
            None => None,
            Some(b) => {
                if !req.qcow2 {
                    return Err(Error::BadRequest(
                        "backing: a raw volume cannot have a backing file; make it qcow2".into(),
                    ));
                }
                Some(self.backing_path(&p, b)?)
            }
        };
        if req.size.is_none() && backing.is_none() {
            return Err(Error::BadRequest(
                "size_bytes: a size is needed (or a backing image to take it from)".into(),
            ));
        }
        let what = format!("volume '{}' in pool '{pool}'", req.name);
        Self::making(&path, || {
            let _base = backing
                .as_deref()
                .map(image::lock_read)
                .transpose()
                .map_err(|e| io_error("backing", e))?;
            image::create(&path, req.qcow2, req.size, backing.as_deref(), None)
                .map_err(|e| io_error(&what, e))
        })?;
        tracing::info!(pool, volume = req.name, "volume created");
        self.get_volume(pool, &req.name)
    }

    /// A backing image named by a volume creation: a volume of `pool` (NAME), another pool's
    /// (`vol:POOL/NAME`), or an absolute path.
    fn backing_path(&self, pool: &PoolRecord, b: &str) -> Result<PathBuf> {
        if let DiskRef::Volume { pool, name } =
            DiskRef::parse(b).map_err(|e| Error::BadRequest(format!("backing {e}")))?
        {
            return self.volume_path(&self.pool(&pool)?, &name);
        }
        if !b.contains('/') {
            return self.volume_path(pool, b);
        }
        let p = Path::new(b);
        if !p.is_absolute() {
            return Err(Error::BadRequest(format!(
                "backing '{b}': expected a volume name, vol:POOL/NAME or an absolute path"
            )));
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => Ok(p.to_path_buf()),
            Ok(_) => Err(Error::BadRequest(format!("backing '{b}': not a file"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::Missing(format!("backing '{b}': no such file")))
            }
            Err(e) => Err(Error::BadRequest(format!("backing '{b}': {e}"))),
        }
    }

    /// Removes a volume's file, unless a VM or another volume uses it.
    pub fn delete_volume(&self, pool: &str, name: &str) -> Result<()> {
        let _g = lock(&self.storage);
        let p = self.pool(pool)?;
        let path = self.volume_path(&p, name)?;
        let info = self.volume_info(pool, name, &path, &self.uses()?, &self.all_chains()?);
        if !info.used_by.is_empty() {
            return Err(Error::Conflict(format!(
                "volume '{name}' in pool '{pool}' is in use by {} {}",
                plural(info.used_by.len(), "VM", "VMs"),
                quoted(&info.used_by)
            )));
        }
        if !info.backs.is_empty() {
            return Err(Error::Conflict(format!(
                "volume '{name}' in pool '{pool}' is the backing file of {} {}: remove {} first",
                plural(info.backs.len(), "volume", "volumes"),
                quoted(&info.backs),
                plural(info.backs.len(), "it", "them")
            )));
        }
        std::fs::remove_file(&path)
            .map_err(|e| io_error(&format!("cannot remove {what}", what = path.display()), e))?;
        tracing::info!(pool, volume = name, "volume removed");
        Ok(())
    }

    /// A new volume `new` in the pool of `src`: a full copy of it (a qcow2 keeps its backing
    /// file), or with `overlay` a qcow2 overlay on it. Nobody may write `src` meanwhile.
    pub fn clone_volume(
        &self,
        pool: &str,
        src: &str,
        new: &str,
        overlay: bool,
    ) -> Result<VolumeInfo> {
        let _g = lock(&self.storage);
        let p = self.pool(pool)?;
        let from = self.volume_path(&p, src)?;
        let to = self.new_volume_path(&p, new)?;
        let what = format!("volume '{new}' in pool '{pool}'");
        let src_lock = image::lock_read(&from)
            .map_err(|e| io_error(&format!("volume '{src}' in pool '{pool}'"), e))?;
        if overlay {
            Self::making(&to, || {
                image::create(&to, true, None, Some(&from), None).map_err(|e| io_error(&what, e))
            })?;
        } else {
            // Copied under a hidden name (not a volume; short, as `new` may be as long as a
            // file name can be) and linked in whole, so the volume never shows half made and
            // a file put there meanwhile is not overwritten.
            let part = p.path.join(format!(".clone-{}.part", std::process::id()));
            let _ = std::fs::remove_file(&part);
            Self::making(&part, || {
                let dst = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&part)
                    .map_err(|e| io_error(&what, e))?;
                copy_sparse(src_lock.file(), &dst).map_err(|e| io_error(&what, e))?;
                std::fs::hard_link(&part, &to).map_err(|e| io_error(&what, e))?;
                Ok(())
            })?;
            let _ = std::fs::remove_file(&part);
        }
        drop(src_lock);
        tracing::info!(pool, volume = new, from = src, overlay, "volume cloned");
        self.get_volume(pool, new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_references() {
        assert_eq!(
            DiskRef::parse("/a/b.img").unwrap(),
            DiskRef::Path("/a/b.img".into())
        );
        assert_eq!(
            DiskRef::parse("vol:base.qcow2").unwrap(),
            DiskRef::Volume {
                pool: "default".into(),
                name: "base.qcow2".into()
            }
        );
        assert_eq!(
            DiskRef::parse("vol:fast/x").unwrap(),
            DiskRef::Volume {
                pool: "fast".into(),
                name: "x".into()
            }
        );
        for (s, why) in [
            ("vol:", "empty"),
            ("vol:a/../b", "'/'"),
            ("vol:../x", "invalid pool name '..'"),
            ("vol:p/..", "names a directory"),
            ("vol:/x", "invalid pool name ''"),
        ] {
            let e = DiskRef::parse(s).unwrap_err();
            assert!(
                e.contains(why) && e.contains("expected vol:NAME or vol:POOL/NAME"),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn entries_for_the_vmm() {
        let e = DiskEntry::parse("vol:p/b,overlay,serial=x,format=raw").unwrap();
        assert!(e.overlay && !e.readonly);
        assert_eq!(e.format.as_deref(), Some("raw"));
        assert_eq!(e.options, ["serial=x", "format=raw"]);
        let r = ResolvedDisk {
            entry: e.clone(),
            path: "/pool/b".into(),
            overlay: Some("/vms/a/overlay-disk0.qcow2".into()),
        };
        assert_eq!(
            r.vmm_entry(),
            "/vms/a/overlay-disk0.qcow2,serial=x,format=qcow2"
        );
        let plain = ResolvedDisk {
            entry: DiskEntry::parse("vol:b,readonly").unwrap(),
            path: "/pool/b".into(),
            overlay: None,
        };
        assert!(plain.entry.readonly);
        assert_eq!(plain.vmm_entry(), "/pool/b,readonly");
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireo-storage-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_sparse_copy_is_equal_and_stays_sparse() {
        use std::os::unix::fs::MetadataExt;
        let d = temp("copy");
        let src = d.join("src");
        let f = File::create(&src).unwrap();
        // 64 MiB with data at three places, the first one straddling a chunk boundary.
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[7u8; 8192], (1 << 20) - 4096).unwrap();
        f.write_all_at(b"middle", 30 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        let dst = d.join("dst");
        let out = File::options()
            .write(true)
            .create_new(true)
            .open(&dst)
            .unwrap();
        copy_sparse(&File::open(&src).unwrap(), &out).unwrap();
        drop(out);
        assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
        let m = std::fs::metadata(&dst).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 8 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn volumes_are_the_image_files() {
        let d = temp("scan");
        std::fs::write(d.join("b.img"), b"x").unwrap();
        std::fs::write(d.join("a.qcow2"), b"x").unwrap();
        std::fs::write(d.join(".a.part"), b"x").unwrap();
        std::fs::write(d.join("with space"), b"x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink(d.join("b.img"), d.join("link.img")).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling")).unwrap();
        let names: Vec<String> = scan(&d).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a.qcow2", "b.img", "link.img"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
