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
            let data = match seek(&src, pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                // No SEEK_DATA here: everything from `pos` is data.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pos,
                Err(e) => return Err(StateError::io(src_path, e)),
            };
            if data >= len {
                break;
            }
            let hole = match seek(&src, data, libc::SEEK_HOLE) {
                Ok(Some(h)) => h.min(len),
                Ok(None) => len,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => len,
                Err(e) => return Err(StateError::io(src_path, e)),
            };
            copy_range(&src, out, data, hole - data, &mut buf)
                .map_err(|e| StateError::io(tmp, e))?;
            copied += hole - data;
            pos = hole;
        }
        Ok(copied)
    })
}
