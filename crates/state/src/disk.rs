//! Disks by reference: a snapshot names its disks and fingerprints them instead of copying
//! them, and a restore refuses a disk that changed since. A writable disk whose contents must
//! be kept with the snapshot is frozen into it with [`copy_sparse`].

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, StateError};

/// One disk of the machine (the `Disks` section holds a `Vec<DiskRef>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRef {
    /// The device's id, as in the VM definition (`"root"`).
    pub id: String,
    /// Absolute path of the image file.
    pub path: String,
    /// `"raw"` or `"qcow2"`.
    pub format: String,
    pub read_only: bool,
    /// The file's length when the state was saved.
    pub size: u64,
    /// [`fingerprint`] of the file when the state was saved.
    pub fingerprint: String,
}

/// Bytes hashed from each end of the file.
const EDGE: u64 = 1 << 20;

fn open(path: &Path, what: &str) -> Result<File> {
    File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => StateError::MissingFile {
            path: path.to_path_buf(),
            what: what.into(),
        },
        _ => StateError::io(path, e),
    })
}

/// A cheap fingerprint of a disk file: hex SHA-256 over its length, its modification time
/// (nanoseconds) and its first and last MiB. Writing the file changes its mtime, replacing it
/// changes its mtime or contents, so either changes the fingerprint; reading it costs 2 MiB
/// whatever its size. (The inode is left out, so a copy that keeps the mtime — `cp -p`,
/// `rsync -t` to another host — still matches.)
pub fn fingerprint(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut f = open(path, "disk")?;
    let meta = f.metadata().map_err(|e| StateError::io(path, e))?;
    let len = meta.len();
    let mut h = Sha256::new();
    h.update(b"vireo disk fingerprint 1\0");
    h.update(len.to_le_bytes());
    h.update(meta.mtime().to_le_bytes());
    h.update(meta.mtime_nsec().to_le_bytes());
    let mut buf = Vec::with_capacity(EDGE as usize);
    (&mut f)
        .take(EDGE)
        .read_to_end(&mut buf)
        .map_err(|e| StateError::io(path, e))?;
    h.update(&buf);
    let tail = len.saturating_sub(EDGE);
    buf.clear();
    f.seek(SeekFrom::Start(tail))
        .and_then(|_| f.take(EDGE).read_to_end(&mut buf))
        .map_err(|e| StateError::io(path, e))?;
    h.update(&buf);
    Ok(crate::atomic::hex(&h.finalize()))
}

/// Checks that a disk is still the one the state was saved with.
pub fn check_disk(disk: &DiskRef) -> Result<()> {
    let path = Path::new(&disk.path);
    if fingerprint(path)? != disk.fingerprint {
        return Err(StateError::DiskChanged {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// `lseek(fd, offset, whence)`, `None` for ENXIO (no data, or no hole, past `offset`).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek takes no pointers; the fd is open for as long as `file` is borrowed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Copies `len` bytes at `offset` of `src` to the same offset of `dst`: with
/// copy_file_range where the kernel and file systems can, else through a buffer.
fn copy_range(
    src: &File,
    dst: &File,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let (mut off, end) = (offset, offset + len);
    let mut kernel_copy = true;
    while off < end {
        if kernel_copy {
            let mut in_off = off as libc::loff_t;
            let mut out_off = off as libc::loff_t;
            let want = (end - off).min(1 << 30) as usize;
            // SAFETY: both fds are open for the borrows of `src` and `dst`; the offset pointers
            // are to locals that outlive the call; the kernel copies between the files and
            // touches no memory of ours besides the two offsets.
            let r = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut in_off,
                    dst.as_raw_fd(),
                    &mut out_off,
                    want,
                    0,
                )
            };
            if r > 0 {
                off += r as u64;
                continue;
            }
            let e = std::io::Error::last_os_error();
            match (r, e.raw_os_error()) {
                // The file shrank under us: stop at its new end, as a read would.
                (0, _) => return Ok(()),
                (_, Some(libc::EINTR)) => continue,
                (
                    _,
                    Some(
                        libc::ENOSYS | libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM,
                    ),
                ) => {
                    kernel_copy = false;
                    continue;
                }
                _ => return Err(e),
            }
        }
        if buf.is_empty() {
            buf.resize(1 << 20, 0);
        }
        let n = (end - off).min(buf.len() as u64) as usize;
        let got = src.read_at(&mut buf[..n], off)?;
        if got == 0 {
            return Ok(());
        }
        dst.write_all_at(&buf[..got], off)?;
        off += got as u64;
    }
    Ok(())
}

/// Copies a disk file keeping its holes (whole or not at all: a temporary file beside `dst`,
/// synced and renamed), and returns the bytes of data copied. The data runs are found with
/// `SEEK_DATA`/`SEEK_HOLE`; a file system without them is copied whole.
pub fn copy_sparse(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> Result<u64> {
    let src_path = src.as_ref();
    let src = open(src_path, "disk")?;
    copy_sparse_from(&src, src_path, dst)
}

/// [`copy_sparse`] from a file already open (`src_path` names it in errors): the file's
/// position moves, so its other users must do positioned I/O only (vireo's disks do). A
/// jailed VMM copies its disks so, having no /proc to open them again by.
pub fn copy_sparse_from(src: &File, src_path: &Path, dst: impl AsRef<Path>) -> Result<u64> {
    let len = src
        .metadata()
        .map_err(|e| StateError::io(src_path, e))?
        .len();
    let dst_path: PathBuf = dst.as_ref().to_path_buf();
    crate::atomic::write_with(&dst_path, |out, tmp| {
        out.set_len(len).map_err(|e| StateError::io(tmp, e))?;
        let mut buf = Vec::new();
        let mut copied = 0u64;
        let mut pos = 0u64;
        while pos < len {
            let data = match seek(src, pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                // No SEEK_DATA here: everything from `pos` is data.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pos,
                Err(e) => return Err(StateError::io(src_path, e)),
            };
            if data >= len {
                break;
            }
            let hole = match seek(src, data, libc::SEEK_HOLE) {
                Ok(Some(h)) => h.min(len),
                Ok(None) => len,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => len,
                Err(e) => return Err(StateError::io(src_path, e)),
            };
            copy_range(src, out, data, hole - data, &mut buf)
                .map_err(|e| StateError::io(tmp, e))?;
            copied += hole - data;
            pos = hole;
        }
        Ok(copied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::time::{Duration, UNIX_EPOCH};

    const MIB: u64 = 1 << 20;

    fn set_mtime(path: &Path, secs: u64) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn fingerprint_follows_writes_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let f = File::create(&path).unwrap();
        f.set_len(3 * MIB).unwrap();
        f.write_all_at(b"boot sector", 0).unwrap();
        drop(f);
        set_mtime(&path, 1_000_000);
        let fp = fingerprint(&path).unwrap();
        assert_eq!(fp.len(), 64);
        assert_eq!(fingerprint(&path).unwrap(), fp);
        let disk = DiskRef {
            id: "root".into(),
            path: path.to_str().unwrap().into(),
            format: "raw".into(),
            read_only: false,
            size: 3 * MIB,
            fingerprint: fp.clone(),
        };
        check_disk(&disk).unwrap();
        // A write in the middle changes only the mtime, which is enough.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"x", MIB + 5).unwrap();
        drop(f);
        set_mtime(&path, 1_000_001);
        assert_ne!(fingerprint(&path).unwrap(), fp);
        let e = check_disk(&disk).unwrap_err();
        assert!(matches!(e, StateError::DiskChanged { .. }));
        assert!(e
            .to_string()
            .contains("disk.raw: the disk changed since the state was saved"));
        // A write at the end with the mtime put back is caught by the content.
        set_mtime(&path, 1_000_000);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"tail", 3 * MIB - 4).unwrap();
        drop(f);
        set_mtime(&path, 1_000_000);
        assert_ne!(fingerprint(&path).unwrap(), fp);
        // A disk that is gone.
        std::fs::remove_file(&path).unwrap();
        let e = check_disk(&disk).unwrap_err();
        assert!(matches!(e, StateError::MissingFile { .. }), "{e}");
        assert!(
            e.to_string().ends_with("disk.raw: the disk is missing"),
            "{e}"
        );
    }

    #[test]
    fn small_files_have_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny");
        std::fs::write(&path, b"").unwrap();
        let a = fingerprint(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        set_mtime(&path, 5);
        assert_ne!(fingerprint(&path).unwrap(), a);
    }

    #[test]
    fn copy_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        let f = File::create(&src).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.write_all_at(&[0xab; 4096], 0).unwrap();
        f.write_all_at(&[0xcd; 8192], 40 * MIB).unwrap();
        f.write_all_at(b"end", 64 * MIB - 3).unwrap();
        drop(f);
        let dst = dir.path().join("frozen.raw");
        let copied = copy_sparse(&src, &dst).unwrap();
        assert!(copied >= 4096 + 8192 + 3, "{copied}");
        assert!(
            copied <= 8 * MIB,
            "copied {copied} bytes of a file with 12 KiB of data"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        assert!(
            meta.blocks() * 512 <= 8 * MIB,
            "{} bytes allocated",
            meta.blocks() * 512
        );
        // A file that is all hole, and one with no hole.
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap().set_len(MIB).unwrap();
        assert_eq!(copy_sparse(&empty, dir.path().join("e2")).unwrap(), 0);
        assert_eq!(std::fs::metadata(dir.path().join("e2")).unwrap().len(), MIB);
        let dense = dir.path().join("dense");
        std::fs::write(&dense, vec![7u8; 100_000]).unwrap();
        assert_eq!(copy_sparse(&dense, dir.path().join("d2")).unwrap(), 100_000);
        assert_eq!(
            std::fs::read(dir.path().join("d2")).unwrap(),
            vec![7u8; 100_000]
        );
        let e = copy_sparse(dir.path().join("none"), dir.path().join("x")).unwrap_err();
        assert!(matches!(e, StateError::MissingFile { .. }));
        assert!(!dir.path().join("x").exists());
    }
}
