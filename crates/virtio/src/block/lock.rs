//! Image locks in QEMU's protocol, so vireo and QEMU (and a second vireo) see each other.
//!
//! QEMU does not lock the whole file. For each block permission bit `i` (consistent read 0,
//! write 1, write unchanged 2, resize 3) a user holding the permission takes a shared OFD lock
//! on byte `100 + i`, and a user that does not let others have it takes a shared lock on byte
//! `200 + i`. All locks are shared, so taking them never fails; a user then asks the kernel
//! (`F_OFD_GETLK` with an exclusive lock) whether anyone else holds byte `200 + i` for a
//! permission it wants, or byte `100 + i` for one it refuses to share. Applying before checking
//! makes two users that start together both fail rather than both succeed.
//!
//! vireo wants consistent read, and write unless the disk is read-only; it shares consistent
//! read and write unchanged, not write or resize (the guest caches what it reads). So any
//! number of read-only users may share an image, or one writer may have it alone, the way a
//! QEMU `-drive` does. OFD locks belong to the open file description: they last as long as
//! the image's `File` and go away with it, however the process ends.

use std::fs::File;
use std::io;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// Permission bits, as QEMU numbers them.
const CONSISTENT_READ: i64 = 0;
const WRITE: i64 = 1;
const RESIZE: i64 = 3;
/// Where the "holds permission" and "does not share permission" bytes start.
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// Who keeps vireo from an image, as far as the lock bytes tell (OFD locks carry no pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Someone has it open for writing.
    Writer,
    /// Someone reading it keeps writers out (a read-only VM, `qemu-img info`).
    Reader,
    /// Someone may resize it (`qemu-img resize`, a block job).
    Resizer,
    /// Someone keeps readers out (a block job rewriting the image).
    Exclusive,
}

impl Holder {
    /// The parenthesis in "in use by another process (...)".
    pub fn describe(self) -> &'static str {
        match self {
            Holder::Writer => "locked for writing",
            Holder::Reader => "open read-only there, which keeps writers out",
            Holder::Resizer => "locked for resizing",
            Holder::Exclusive => "locked exclusively",
        }
    }
}

/// What locking found.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another open file description holds a conflicting lock.
    Conflict(Holder),
    /// The file system cannot do OFD locks; the image is used unlocked.
    Unsupported(io::Error),
    /// Anything else.
    Io(io::Error),
}

fn flock(kind: libc::c_int, offset: i64) -> libc::flock {
    // SAFETY: libc::flock is a plain C struct of integers, for which all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset;
    fl.l_len = 1;
    fl
}

fn classify(e: Errno) -> LockError {
    match e {
        // Someone holds an exclusive lock over the byte (not QEMU: its locks are all shared).
        Errno::EAGAIN | Errno::EACCES => LockError::Conflict(Holder::Exclusive),
        // No OFD locks here (an old kernel, some network file systems).
        Errno::EINVAL | Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::ENOSYS => {
            LockError::Unsupported(e.into())
        }
        e => LockError::Io(e.into()),
    }
}

fn share(file: &File, byte: i64) -> Result<(), LockError> {
    fcntl(file, FcntlArg::F_OFD_SETLK(&flock(libc::F_RDLCK, byte)))
        .map(drop)
        .map_err(classify)
}

/// Whether another open file description holds a lock on `byte`.
fn held_elsewhere(file: &File, byte: i64) -> Result<bool, LockError> {
    let mut probe = flock(libc::F_WRLCK, byte);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)).map_err(classify)?;
    Ok(i32::from(probe.l_type) != libc::F_UNLCK)
}

/// Locks `file` for a read-only or a read-write disk, or says who is in the way (and then
/// holds nothing).
pub(crate) fn lock(file: &File, readonly: bool) -> Result<(), LockError> {
    let r = try_lock(file, readonly);
    if r.is_err() {
        // A failed attempt must not keep others out while the file stays open.
        unlock(file);
    }
    r
}

/// Releases every lock byte. Closing the file does too, but only once no descriptor refers
/// to its open file description any more, and a child forked meanwhile (passt, say) holds
/// copies of every descriptor until it execs: unlocking is immediate.
pub(crate) fn unlock(file: &File) {
    for base in [PERM_BASE, SHARED_BASE] {
        let mut fl = flock(libc::F_UNLCK, base);
        fl.l_len = 4;
        let _ = fcntl(file, FcntlArg::F_OFD_SETLK(&fl));
    }
}

fn try_lock(file: &File, readonly: bool) -> Result<(), LockError> {
    share(file, PERM_BASE + CONSISTENT_READ)?;
    if !readonly {
        share(file, PERM_BASE + WRITE)?;
    }
    share(file, SHARED_BASE + WRITE)?;
    share(file, SHARED_BASE + RESIZE)?;

    // The same questions QEMU asks, most telling first.
    let checks = [
        (PERM_BASE + WRITE, Holder::Writer, true),
        (PERM_BASE + RESIZE, Holder::Resizer, true),
        (SHARED_BASE + WRITE, Holder::Reader, !readonly),
        (SHARED_BASE + CONSISTENT_READ, Holder::Exclusive, true),
    ];
    for (byte, holder, applies) in checks {
        if applies && held_elsewhere(file, byte)? {
            return Err(LockError::Conflict(holder));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    struct Temp(PathBuf);
    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn temp(name: &str) -> Temp {
        let p = std::env::temp_dir().join(format!("vireo-lock-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        Temp(p)
    }
    fn open(p: &Path) -> File {
        OpenOptions::new().read(true).write(true).open(p).unwrap()
    }
    fn conflict(r: Result<(), LockError>) -> Holder {
        match r {
            Err(LockError::Conflict(h)) => h,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    // OFD locks belong to the open file description, so two opens in one process contend
    // exactly as two processes would.
    #[test]
    fn readers_share_and_a_writer_is_alone() {
        let t = temp("share");
        let (r1, r2) = (open(&t.0), open(&t.0));
        lock(&r1, true).unwrap();
        lock(&r2, true).unwrap();
        let refused = open(&t.0);
        assert_eq!(conflict(lock(&refused, false)), Holder::Reader);
        // (Released explicitly, as DiskFile's drop does: a test in another thread may be
        // forking, and its child holds a copy of every descriptor until it execs.)
        unlock(&r1);
        unlock(&r2);
        // The refused writer holds nothing although its file is still open.
        let w = open(&t.0);
        lock(&w, false).unwrap();
        assert_eq!(conflict(lock(&open(&t.0), false)), Holder::Writer);
        assert_eq!(conflict(lock(&open(&t.0), true)), Holder::Writer);
        unlock(&w);
        lock(&open(&t.0), false).unwrap();
        drop(refused);
    }

    #[test]
    fn a_whole_file_exclusive_lock_is_respected() {
        let t = temp("excl");
        let other = open(&t.0);
        let mut all = flock(libc::F_WRLCK, 0);
        all.l_len = 0;
        fcntl(&other, FcntlArg::F_OFD_SETLK(&all)).unwrap();
        assert_eq!(conflict(lock(&open(&t.0), true)), Holder::Exclusive);
    }

    /// qemu-io opens an image the way QEMU does and runs one command on it.
    fn qemu_io(p: &str, readonly: bool) -> std::process::Output {
        let mut c = Command::new("qemu-io");
        if readonly {
            c.arg("-r");
        }
        c.args(["-f", "raw", "-c", "read 0 512", p])
            .output()
            .expect("qemu-io is needed: apt-get install qemu-utils")
    }

    /// QEMU is the referee: it must see vireo's locks the way it sees its own.
    #[test]
    fn qemu_sees_vireos_locks() {
        let t = temp("qemu");
        let p = t.0.to_str().unwrap();
        let w = open(&t.0);
        lock(&w, false).unwrap();
        let o = qemu_io(p, false);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("lock"), "{err}");
        // A failed attempt changes nothing: the lock is still there.
        assert!(!qemu_io(p, false).status.success());
        unlock(&w);
        let o = qemu_io(p, false);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

        // A read-only vireo keeps QEMU writers out too (its guest caches what it read).
        let r = open(&t.0);
        lock(&r, true).unwrap();
        let o = qemu_io(p, false);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("lock"), "{err}");
        // qemu-io -r shares everything, so it may read beside either.
        assert!(qemu_io(p, true).status.success());
    }

    /// A paused QEMU VM with the image as a virtio disk, locking it the way a running guest's
    /// `-drive` does.
    fn qemu_vm(p: &str, readonly: bool) -> std::process::Child {
        let ro = if readonly { ",readonly=on" } else { "" };
        Command::new("qemu-system-riscv64")
            .args(["-M", "virt", "-S", "-display", "none", "-monitor", "none"])
            .args(["-serial", "none", "-bios", "none", "-drive"])
            .arg(format!("file={p},format=raw,if=none,id=d0{ro}"))
            .args(["-device", "virtio-blk-device,drive=d0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("qemu-system-riscv64 is needed: apt-get install qemu-system-misc")
    }

    /// The VM's stderr if it exits within 2 s (QEMU checks locks as it opens its drives, in
    /// well under that), `None` (and killed) if it runs on.
    fn refused(mut vm: std::process::Child) -> Option<String> {
        use std::io::Read;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if vm.try_wait().unwrap().is_some() {
                let mut err = String::new();
                let _ = vm.stderr.take().unwrap().read_to_string(&mut err);
                return Some(err);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = vm.kill();
        let _ = vm.wait();
        None
    }

    /// Whether anyone holds the "write" permission byte (QEMU has opened the image).
    fn someone_writes(p: &Path) -> bool {
        let f = File::open(p).unwrap();
        held_elsewhere(&f, PERM_BASE + WRITE).unwrap()
    }

    #[test]
    fn a_qemu_vm_and_vireo_keep_each_other_out() {
        let t = temp("vm");
        let p = t.0.to_str().unwrap();
        // vireo first, read-write: QEMU does not start.
        let w = open(&t.0);
        lock(&w, false).unwrap();
        let err = refused(qemu_vm(p, false)).expect("QEMU started on an image vireo writes");
        assert!(err.contains("lock"), "{err}");
        unlock(&w);
        // vireo read-only: a QEMU writer does not start, a QEMU reader does.
        let r = open(&t.0);
        lock(&r, true).unwrap();
        let err = refused(qemu_vm(p, false)).expect("QEMU wrote beside a read-only vireo");
        assert!(err.contains("lock"), "{err}");
        assert_eq!(
            refused(qemu_vm(p, true)),
            None,
            "a QEMU reader was kept out"
        );
        unlock(&r);
        // QEMU first: vireo is refused either way.
        let vm = qemu_vm(p, false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !someone_writes(&t.0) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let rw = lock(&open(&t.0), false);
        let ro = lock(&open(&t.0), true);
        assert_eq!(refused(vm), None, "QEMU exited");
        assert_eq!(conflict(rw), Holder::Writer);
        assert_eq!(conflict(ro), Holder::Writer);
    }
}
