//! The jail a VMM process runs in: its own namespaces, a root directory that holds only what
//! the VM uses, an unprivileged user, no capabilities, no new privileges, rlimits and a cgroup.
//!
//! # How a process enters it ([`enter`])
//! The caller opens first what needs the host's view: passt's socket and tap descriptors, a
//! snapshot's memory mapping, the lock on its run directory. Then, still single-threaded, it
//! calls [`enter`], which:
//! 1. checks the request before anything is made: the root directory must be absent or empty,
//!    the user must exist in the host's user database (as root) or be the caller (without
//!    root), every path to show must exist — so bad input fails with nothing created;
//! 2. without root, enters a new user namespace mapping the caller's uid and gid to
//!    themselves (the unprivileged variant: the VMM is the user who started it, holding
//!    capabilities only over the namespaces it makes, and drops those too);
//! 3. makes the root's skeleton in the host's view: the root directory, an empty file or
//!    directory at `ROOT/PATH` for each path to show, and `ROOT/tmp`; nothing else is ever
//!    created, and exactly these are removed when the jailed process ends;
//! 4. (the caller has put the process in its cgroup before, so that the child is in it too)
//! 5. enters a new PID namespace and forks. The **parent** stays outside as the jailed
//!    process's keeper: it forwards SIGTERM and SIGHUP to it, ignores the terminal's SIGINT and
//!    SIGQUIT (the child gets those itself), waits for it, removes the skeleton and leaves with
//!    its status — the same exit code, or death by the same signal. It never returns.
//!    The **child** is PID 1 of the new PID namespace; it dies with its keeper
//!    (PR_SET_PDEATHSIG, armed after step 7, whose change of credentials would clear it), so
//!    killing the keeper by force kills the VM too;
//! 6. the child enters new mount, IPC, UTS and network namespaces (the network namespace is
//!    empty: every backend that needs the host's network was opened in step 0), marks every
//!    mount private (nothing done here reaches the host), bind-mounts each path onto its
//!    skeleton entry (read-only unless writable, nosuid, nodev but for device nodes),
//!    `pivot_root`s into ROOT and detaches the old root: the host's `/` is gone;
//! 7. sets the rlimits (open files, file size), drops the groups, the gid and the uid (as
//!    root), clears the capability bounding set, the ambient, inheritable, permitted and
//!    effective sets, and sets no-new-privileges and non-dumpable;
//! 8. returns in the child, which goes on to run the VM.
//!
//! Paths keep their names inside: a file shown at `/var/lib/vireo/images/x/vmlinuz` is at
//! that path inside too, so the VMM opens what its definition names, and a reboot (which opens
//! the disks again) needs nothing new. Nothing mounts /proc: nothing the VMM does after this
//! depends on it.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Group, Pid, Uid, User};

/// Why a jail cannot be entered; the message names the thing and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("jail: {0}")]
pub struct JailError(pub String);

fn err(msg: impl std::fmt::Display) -> JailError {
    JailError(msg.to_string())
}

/// Who the jailed process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

impl Credentials {
    /// `USER`, `UID` or `USER:GROUP`/`UID:GID`, looked up in the host's user and group
    /// databases: a name or number that is not there is refused (a uid nobody has may be
    /// one a future user gets, with the VM's files).
    pub fn parse(text: &str) -> Result<Credentials, JailError> {
        let (user, group) = match text.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (text, None),
        };
        let found = match user.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| err(format!("cannot look up user {user:?}: {e}")))?
        .ok_or_else(|| {
            err(format!(
                "jail user {user:?}: no such user in the host's user database (expected a user \
                 name or a uid that /etc/passwd has)"
            ))
        })?;
        let gid = match group {
            None => found.gid.as_raw(),
            Some(g) => match g.parse::<u32>() {
                Ok(n) => Group::from_gid(Gid::from_raw(n)),
                Err(_) => Group::from_name(g),
            }
            .map_err(|e| err(format!("cannot look up group {g:?}: {e}")))?
            .ok_or_else(|| {
                err(format!(
                    "jail group {g:?}: no such group in the host's group database"
                ))
            })?
            .gid
            .as_raw(),
        };
        Ok(Credentials {
            uid: found.uid.as_raw(),
            gid,
        })
    }
}

/// A host path shown inside the jail, at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Show {
    pub path: PathBuf,
    pub writable: bool,
}

impl Show {
    pub fn read_only(path: impl Into<PathBuf>) -> Show {
        Show {
            path: path.into(),
            writable: false,
        }
    }

    pub fn writable(path: impl Into<PathBuf>) -> Show {
        Show {
            path: path.into(),
            writable: true,
        }
    }
}

/// What [`enter`] is asked for.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// The per-VM root: absent or empty.
    pub root: PathBuf,
    /// As root: the unprivileged user to become (never uid 0). Without root: `None` (the
    /// caller's own uid, in a user namespace).
    pub user: Option<Credentials>,
    /// The paths the jailed process may see.
    pub show: Vec<Show>,
    /// RLIMIT_NOFILE.
    pub max_files: u64,
    /// RLIMIT_FSIZE: the largest file it may write.
    pub max_file_size: u64,
}

/// Open files a VMM needs: its devices' descriptors and the threads' few, with room.
pub const DEFAULT_MAX_FILES: u64 = 1024;

/// Whether this process runs as root (and so makes the jail without a user namespace).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// `/proc/self/status` and `/proc/self/stat`, opened by the jailed process before it left the
/// host's root (a /proc file opened once reads afresh from offset 0), for its own figures.
static PROC_SELF: std::sync::OnceLock<Vec<(&'static str, std::fs::File)>> =
    std::sync::OnceLock::new();

/// The text of `/proc/self/NAME` (`status` or `stat`): read as usual, or in a jail — which
/// has no /proc — through the descriptor opened before it.
pub fn read_proc_self(name: &str) -> Option<String> {
    if let Some(files) = PROC_SELF.get() {
        use std::os::unix::fs::FileExt;
        let (_, f) = files.iter().find(|(n, _)| *n == name)?;
        let mut buf = vec![0u8; 16 << 10];
        let n = f.read_at(&mut buf, 0).ok()?;
        buf.truncate(n);
        return String::from_utf8(buf).ok();
    }
    std::fs::read_to_string(format!("/proc/self/{name}")).ok()
}

/// The keeper's child pid, for its signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Enters the jail (see the module doc). Returns in the jailed child only; the keeper exits
/// with the child's status. Must be called before the process starts any thread.
pub fn enter(spec: &JailSpec) -> Result<(), JailError> {
    check_single_threaded()?;
    let root = absolute(&spec.root)?;
    check_root(&root)?;
    let user = match (&spec.user, is_root()) {
        (Some(c), true) if c.uid == 0 => {
            return Err(err(
                "the jail's user must not be root (uid 0): give an unprivileged one",
            ))
        }
        (Some(c), true) => Some(c.clone()),
        (None, true) => {
            return Err(err(
                "running as root, the jail needs an unprivileged user to become",
            ))
        }
        (Some(c), false) if c.uid != Uid::current().as_raw() => {
            return Err(err(format!(
                "without root the jail runs as the user who starts it (uid {}), not uid {}",
                Uid::current(),
                c.uid
            )))
        }
        (_, false) => None,
    };
    let mut show = Vec::new();
    for s in &spec.show {
        let path = absolute(&s.path)?;
        if path == Path::new("/") || path.starts_with(&root) || root.starts_with(&path) {
            return Err(err(format!(
                "{} cannot be shown in the jail rooted at {}: one holds the other",
                path.display(),
                root.display()
            )));
        }
        let meta = std::fs::metadata(&path)
            .map_err(|e| err(format!("cannot show {} in the jail: {e}", path.display())))?;
        check_access(&path, &meta, s.writable, user.as_ref())?;
        show.push((path, s.writable, meta));
    }
    // Parents before children, each once: a directory shown may hold a file shown.
    show.sort_by(|a, b| a.0.cmp(&b.0));
    show.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 |= b.1;
            true
        } else {
            false
        }
    });

    if !is_root() {
        enter_user_namespace()?;
    }
    let skeleton = Skeleton::make(&root, &show, user.as_ref())?;
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        skeleton.remove();
        return Err(err(format!("cannot make a PID namespace: {e}")));
    }
    // The child tells its keeper through this pipe that it got in (or, by closing it
    // unwritten, that it did not: it then has printed why and exits 125).
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| err(format!("pipe: {e}")))?;
    // SAFETY: this process has one thread (checked above), so the child has a consistent copy
    // of everything; it goes on to run Rust code normally, as any single-threaded fork may.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            skeleton.remove();
            Err(err(format!("cannot fork the jailed process: {e}")))
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ready_w);
            keep(child, ready_r, skeleton)
        }
        Ok(ForkResult::Child) => {
            drop(ready_r);
            confine(&root, &show, user.as_ref(), spec)?;
            // The keeper's death (killed by force) kills this process too. Set last: a change
            // of credentials clears it.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| err(format!("PR_SET_PDEATHSIG: {e}")))?;
            // Written after the death signal is armed: a keeper that died before has closed
            // its end, and the write fails rather than leave this process without one.
            std::fs::File::from(ready_w)
                .write_all(b"1")
                .map_err(|e| err(format!("the jail's keeper is gone ({e})")))
        }
    }
}

/// Refuses, before anything is made, a file the jailed user could not use: inside, only the
/// file's own owner and mode count (the directories above it are the jail's).
fn check_access(
    path: &Path,
    meta: &std::fs::Metadata,
    writable: bool,
    user: Option<&Credentials>,
) -> Result<(), JailError> {
    use std::os::unix::fs::MetadataExt;
    if user.is_some() && meta.file_type().is_char_device() {
        // Made anew for the jail's user (see Skeleton::fill).
        return Ok(());
    }
    let need = 0o4 | if writable { 0o2 } else { 0 } | if meta.is_dir() { 0o1 } else { 0 };
    let (ok, who) = match user {
        Some(c) => {
            let shift = if meta.uid() == c.uid {
                6
            } else if meta.gid() == c.gid {
                3
            } else {
                0
            };
            (
                (meta.mode() >> shift) & need == need,
                format!("uid {} gid {}", c.uid, c.gid),
            )
        }
        None => {
            let mut mode = nix::unistd::AccessFlags::R_OK;
            if writable {
                mode |= nix::unistd::AccessFlags::W_OK;
            }
            (
                nix::unistd::access(path, mode).is_ok(),
                format!("uid {}", Uid::current()),
            )
        }
    };
    if ok {
        return Ok(());
    }
    Err(err(format!(
        "{} is not {} by the jail's user ({who}): it belongs to uid {} gid {} with mode {:04o}; \
         give it to that user or choose another with --jail-user",
        path.display(),
        if writable {
            "readable and writable"
        } else {
            "readable"
        },
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    )))
}

fn absolute(p: &Path) -> Result<PathBuf, JailError> {
    let abs = std::path::absolute(p).map_err(|e| err(format!("{}: {e}", p.display())))?;
    // `..` would let a skeleton entry land outside the root.
    if abs.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(err(format!(
            "{}: expected a path without '..'",
            p.display()
        )));
    }
    Ok(abs)
}

fn check_single_threaded() -> Result<(), JailError> {
    // Read before the jail, where /proc is there; a thread started before the fork would be
    // missing from the child with whatever locks it held.
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        return Err(err(format!(
            "the jail must be entered before the process starts a thread, and {threads} run \
             (a bug in vireo)"
        )));
    }
    Ok(())
}

fn check_root(root: &Path) -> Result<(), JailError> {
    match std::fs::read_dir(root) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(err(format!(
                    "the jail directory {} exists and is not empty (expected an absent or \
                     empty directory, which the jail fills and empties)",
                    root.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(err(format!(
            "the jail directory {} is not a directory",
            root.display()
        ))),
        Err(e) => Err(err(format!(
            "cannot read the jail directory {}: {e}",
            root.display()
        ))),
    }
}

/// Maps the caller's uid and gid to themselves in a new user namespace, which gives it the
/// capabilities to make the other namespaces, and nothing over the host.
fn enter_user_namespace() -> Result<(), JailError> {
    let (uid, gid) = (Uid::current(), Gid::current());
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
        err(format!(
            "cannot make a user namespace (needed to jail without root): {e}"
        ))
    })?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| err(format!("cannot write /proc/self/{file}: {e}")))
    };
    // A process may map only its own ids, and a gid only once setgroups is denied.
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{uid} {uid} 1\n"))?;
    write("gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(())
}

/// What [`enter`] created in the host's view, removed again in reverse order.
struct Skeleton {
    made: Vec<PathBuf>,
    root: PathBuf,
}

impl Skeleton {
    fn make(
        root: &Path,
        show: &[(PathBuf, bool, std::fs::Metadata)],
        user: Option<&Credentials>,
    ) -> Result<Skeleton, JailError> {
        let mut s = Skeleton {
            made: Vec::new(),
            root: root.to_path_buf(),
        };
        if let Err(e) = s.fill(show, user) {
            s.remove();
            return Err(e);
        }
        Ok(s)
    }

    fn dir(&mut self, p: &Path, mode: u32) -> Result<(), JailError> {
        match std::fs::DirBuilder::new().mode(mode).create(p) {
            Ok(()) => {
                self.made.push(p.to_path_buf());
                // The mode without the umask.
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| err(format!("cannot set the mode of {}: {e}", p.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
            Err(e) => Err(err(format!("cannot create {}: {e}", p.display()))),
        }
    }

    fn fill(
        &mut self,
        show: &[(PathBuf, bool, std::fs::Metadata)],
        user: Option<&Credentials>,
    ) -> Result<(), JailError> {
        let root = self.root.clone();
        if root.exists() {
            // Empty (checked); left in place afterwards.
        } else {
            if let Some(parent) = root.parent() {
                if !parent.is_dir() {
                    return Err(err(format!(
                        "the jail directory's parent {} is not a directory",
                        parent.display()
                    )));
                }
            }
            self.dir(&root, 0o755)?;
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| err(format!("cannot set the mode of {}: {e}", root.display())))?;
        // The jailed process's scratch space (throwaway disk overlays): its own.
        let tmp = root.join("tmp");
        self.dir(&tmp, 0o700)?;
        if let Some(c) = user {
            nix::unistd::chown(&tmp, Some(Uid::from_raw(c.uid)), Some(Gid::from_raw(c.gid)))
                .map_err(|e| {
                    err(format!(
                        "cannot give {} to the jail's user: {e}",
                        tmp.display()
                    ))
                })?;
        }
        for (path, _, meta) in show {
            let inside = inside(&root, path);
            let mut parents: Vec<&Path> = inside
                .ancestors()
                .skip(1)
                .take_while(|a| *a != root)
                .collect();
            parents.reverse();
            for p in parents {
                self.dir(p, 0o755)?;
            }
            if meta.is_dir() {
                self.dir(&inside, 0o755)?;
            } else if let (Some(c), true) = (user, meta.file_type().is_char_device()) {
                // As root, a device node of the jail user's own (as /dev/kvm, whose host node
                // only its group may open), rather than a bind of the host's.
                use std::os::unix::fs::MetadataExt;
                nix::sys::stat::mknod(
                    &inside,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    meta.rdev(),
                )
                .map_err(|e| err(format!("cannot make {}: {e}", inside.display())))?;
                self.made.push(inside.clone());
                nix::unistd::chown(
                    &inside,
                    Some(Uid::from_raw(c.uid)),
                    Some(Gid::from_raw(c.gid)),
                )
                .map_err(|e| {
                    err(format!(
                        "cannot give {} to the jail's user: {e}",
                        inside.display()
                    ))
                })?;
            } else if !inside.exists() {
                std::fs::File::create_new(&inside)
                    .map_err(|e| err(format!("cannot create {}: {e}", inside.display())))?;
                self.made.push(inside);
            }
        }
        Ok(())
    }

    /// Removes what was made, newest first, each only if it is still an empty directory or an
    /// empty file (never following anything into the host's files), and the scratch
    /// directory's contents (which are the jailed process's own).
    fn remove(&self) {
        let tmp = self.root.join("tmp");
        for p in self.made.iter().rev() {
            let Ok(meta) = std::fs::symlink_metadata(p) else {
                continue;
            };
            let r = if *p == tmp {
                std::fs::remove_dir_all(p)
            } else if meta.is_dir() {
                std::fs::remove_dir(p)
            } else if (meta.is_file() && meta.len() == 0) || meta.file_type().is_char_device() {
                std::fs::remove_file(p)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                eprintln!("vireo: jail: cannot remove {}: {e}", p.display());
            }
        }
    }
}

/// `path` under `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The keeper: forwards signals, waits, removes the skeleton, leaves as the child did.
fn keep(child: Pid, ready: OwnedFd, skeleton: Skeleton) -> ! {
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    // SAFETY: the handlers only call kill(2) with an atomic's value; ignoring the terminal's
    // signals touches no memory.
    unsafe {
        for sig in [Signal::SIGTERM, Signal::SIGHUP] {
            let _ = signal::signal(sig, SigHandler::Handler(forward));
        }
        for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGPIPE] {
            let _ = signal::signal(sig, SigHandler::SigIgn);
        }
    }
    // Whether the child got in does not change what the keeper does; reading the pipe only
    // waits out the set-up.
    let mut buf = [0u8; 1];
    let _ = std::fs::File::from(ready).read(&mut buf);
    let status = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Err(sig),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("vireo: jail: lost the jailed process: {e}");
                break Ok(125);
            }
        }
    };
    skeleton.remove();
    match status {
        Ok(code) => std::process::exit(code),
        Err(sig) => {
            // Die by the same signal, so whoever waits for the keeper sees how the VMM ended.
            // SAFETY: resets one signal's disposition and raises it; no memory involved.
            unsafe {
                let _ = signal::signal(sig, SigHandler::SigDfl);
                libc::raise(sig as libc::c_int);
            }
            std::process::exit(128 + sig as i32)
        }
    }
}

/// Step 6 and 7 of the module doc, in the child.
fn confine(
    root: &Path,
    show: &[(PathBuf, bool, std::fs::Metadata)],
    user: Option<&Credentials>,
    spec: &JailSpec,
) -> Result<(), JailError> {
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(|e| {
        err(format!(
            "cannot make the mount, IPC, UTS and network namespaces: {e}"
        ))
    })?;
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| err(format!("cannot make the mounts private: {e}")))?;
    mount(Some(root), root, none, MsFlags::MS_BIND, none)
        .map_err(|e| err(format!("cannot bind {} onto itself: {e}", root.display())))?;
    for (path, writable, meta) in show {
        let target = inside(root, path);
        let device = meta.file_type().is_char_device() || meta.file_type().is_block_device();
        if device && user.is_some() {
            // A node of its own (Skeleton::fill).
            continue;
        }
        mount(
            Some(path.as_path()),
            &target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(|e| err(format!("cannot show {} in the jail: {e}", path.display())))?;
        // A bind mount takes its flags only on a remount; those locked by a more privileged
        // namespace (nosuid, nodev, noexec, ...) must be kept or the remount is refused.
        let kept = statvfs(path.as_path())
            .map(|s| s.flags())
            .unwrap_or(FsFlags::empty());
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
        if !device {
            flags |= MsFlags::MS_NODEV;
        }
        if !writable || kept.contains(FsFlags::ST_RDONLY) {
            flags |= MsFlags::MS_RDONLY;
        }
        for (f, m) in [
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if kept.contains(f) {
                flags |= m;
            }
        }
        mount(none, &target, none, flags, none).map_err(|e| {
            err(format!(
                "cannot make {} {} in the jail: {e}",
                path.display(),
                if *writable { "writable" } else { "read-only" }
            ))
        })?;
    }
    let proc_self = ["status", "stat"]
        .into_iter()
        .filter_map(|n| {
            std::fs::File::open(format!("/proc/self/{n}"))
                .ok()
                .map(|f| (n, f))
        })
        .collect();
    let _ = PROC_SELF.set(proc_self);
    let cwd = std::env::current_dir().ok();
    std::env::set_current_dir(root)
        .map_err(|e| err(format!("cannot enter {}: {e}", root.display())))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one, and is detached.
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| err(format!("pivot_root into {}: {e}", root.display())))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| err(format!("cannot detach the host's root: {e}")))?;
    std::env::set_current_dir("/").map_err(|e| err(format!("chdir /: {e}")))?;
    // Paths given relative to the working directory (`vireo run --kernel k.elf`) are shown at
    // their absolute place, so the same directory inside the jail, which the skeleton made as
    // their parent, resolves them the same. Without one under it, the jail's `/` it is.
    if let Some(dir) = cwd.filter(|d| d.is_dir()) {
        let _ = std::env::set_current_dir(dir);
    }
    let _ = nix::unistd::sethostname("vireo-jail");
    std::env::set_var("TMPDIR", "/tmp");

    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_NOFILE, spec.max_files, spec.max_files).map_err(|e| {
        err(format!(
            "cannot limit open files to {}: {e}",
            spec.max_files
        ))
    })?;
    setrlimit(
        Resource::RLIMIT_FSIZE,
        spec.max_file_size,
        spec.max_file_size,
    )
    .map_err(|e| {
        err(format!(
            "cannot limit file sizes to {}: {e}",
            spec.max_file_size
        ))
    })?;

    if let Some(c) = user {
        let (uid, gid) = (Uid::from_raw(c.uid), Gid::from_raw(c.gid));
        nix::unistd::setgroups(&[]).map_err(|e| err(format!("setgroups: {e}")))?;
        nix::unistd::setresgid(gid, gid, gid)
            .map_err(|e| err(format!("cannot become gid {gid}: {e}")))?;
        drop_bounding_set()?;
        nix::sys::prctl::set_keepcaps(false).map_err(|e| err(format!("PR_SET_KEEPCAPS: {e}")))?;
        nix::unistd::setresuid(uid, uid, uid)
            .map_err(|e| err(format!("cannot become uid {uid}: {e}")))?;
    } else {
        drop_bounding_set()?;
    }
    use caps::CapSet;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set)
            .map_err(|e| err(format!("cannot clear the {set:?} capabilities: {e}")))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| err(format!("PR_SET_NO_NEW_PRIVS: {e}")))?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| err(format!("PR_SET_DUMPABLE: {e}")))?;
    Ok(())
}

/// Drops every capability the kernel knows from the bounding set (caps' own list may be
/// shorter than a newer kernel's, so the kernel is asked up to where it says "no such one":
/// EINVAL). One call per capability: dropping one that is not there is no error, and on this
/// path every system call counts (each costs microseconds under nested virtualization).
fn drop_bounding_set() -> Result<(), JailError> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(err(format!(
                "cannot drop capability {cap} from the bounding set: {e}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireo-jail-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn credentials_are_looked_up() {
        assert_eq!(
            Credentials::parse("root").unwrap(),
            Credentials { uid: 0, gid: 0 }
        );
        assert_eq!(
            Credentials::parse("0:0").unwrap(),
            Credentials { uid: 0, gid: 0 }
        );
        let e = Credentials::parse("4000000123").unwrap_err().to_string();
        assert!(
            e.contains("\"4000000123\"") && e.contains("no such user"),
            "{e}"
        );
        let e = Credentials::parse("no-such-vireo-user")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-vireo-user") && e.contains("no such user"),
            "{e}"
        );
        let e = Credentials::parse("root:no-such-vireo-group")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-vireo-group") && e.contains("no such group"),
            "{e}"
        );
    }

    #[test]
    fn a_non_empty_root_is_refused_and_left_alone() {
        let d = scratch("nonempty");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("x"), b"mine").unwrap();
        let e = check_root(&d).unwrap_err().to_string();
        assert!(
            e.contains("exists and is not empty") && e.contains(&*d.to_string_lossy()),
            "{e}"
        );
        assert_eq!(std::fs::read(d.join("x")).unwrap(), b"mine");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_skeleton_is_made_and_removed_exactly() {
        let d = scratch("skel");
        let host = scratch("skel-host");
        std::fs::create_dir_all(host.join("sub")).unwrap();
        std::fs::write(host.join("sub/file"), b"x").unwrap();
        let show: Vec<_> = [host.join("sub/file"), host.join("sub")]
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).unwrap();
                (p, false, m)
            })
            .collect();
        let s = Skeleton::make(&d, &show, None).unwrap();
        assert!(inside(&d, &host.join("sub/file")).is_file());
        assert!(d.join("tmp").is_dir());
        std::fs::write(d.join("tmp/left-by-the-vmm"), b"y").unwrap();
        s.remove();
        assert!(!d.exists(), "the root it made is gone");
        // The host's files are untouched.
        assert_eq!(std::fs::read(host.join("sub/file")).unwrap(), b"x");
        std::fs::remove_dir_all(&host).unwrap();
    }
}
