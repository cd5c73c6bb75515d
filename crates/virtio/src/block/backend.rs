//! The host side of virtio-blk: a raw disk image (a regular file, sparse or not) or a host block
//! device, accessed only by positioned reads and writes so no file offset is shared state.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image path does not exist.
    #[error("disk image {}: no such file", path.display())]
    NotFound { path: PathBuf },
    /// The path names something other than a regular file or a block device.
    #[error("disk image {}: expected a regular file or a block device, found {found}", path.display())]
    WrongType { path: PathBuf, found: &'static str },
    /// Opening read-write was refused; the image can still be used read-only.
    #[error("disk image {}: not writable ({source}); expected a writable image or the read-only option", path.display())]
    NotWritable { path: PathBuf, source: io::Error },
    /// Any other failure opening or inspecting the image.
    #[error("disk image {}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// The serial does not fit the 20-byte device ID string.
    #[error("disk serial {serial:?} is {len} bytes; expected at most 20")]
    SerialTooLong { serial: String, len: usize },
    /// The serial is not a plain ASCII string (virtio 1.2 §5.2.6: the ID is NUL-padded ASCII).
    #[error("disk serial {serial:?}: expected ASCII characters without NUL")]
    SerialNotAscii { serial: String },
}

/// An open disk image.
pub(crate) struct DiskFile {
    file: File,
    path: PathBuf,
    size: u64,
}

fn type_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "an unknown file type"
    }
}

fn check_type(path: &Path, ft: std::fs::FileType) -> Result<(), BlockError> {
    if ft.is_file() || ft.is_block_device() {
        Ok(())
    } else {
        Err(BlockError::WrongType {
            path: path.to_path_buf(),
            found: type_name(ft),
        })
    }
}

impl DiskFile {
    /// Opens `path` read-only or read-write.
    pub(crate) fn open(path: &Path, readonly: bool) -> Result<Self, BlockError> {
        let io_err = |action, source| BlockError::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        // Look before opening: opening a FIFO for reading would block until a writer appears.
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BlockError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("inspect it", e)
            }
        })?;
        check_type(path, meta.file_type())?;

        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|e| {
                let refused = e.kind() == io::ErrorKind::PermissionDenied
                    || e.raw_os_error() == Some(libc::EROFS)
                    || e.raw_os_error() == Some(libc::ETXTBSY);
                if !readonly && refused {
                    BlockError::NotWritable {
                        path: path.to_path_buf(),
                        source: e,
                    }
                } else {
                    io_err("open it", e)
                }
            })?;
        // The path may have been replaced between the look and the open: check what we got.
        let meta = file.metadata().map_err(|e| io_err("inspect it", e))?;
        check_type(path, meta.file_type())?;
        let size = if meta.file_type().is_block_device() {
            // A block device's inode has no length; its end is its size. The file position this
            // moves is never used (all I/O is positioned).
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|e| io_err("read its size", e))?
        } else {
            meta.len()
        };
        Ok(DiskFile {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes at open time.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes completed writes durable (data, and the metadata needed to read it back).
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: fallocate on a file descriptor we own; it reads no memory of ours.
            let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Deallocates `len` bytes at `offset`; they read back as zeroes. Fails with
    /// `Unsupported`-like errors (EOPNOTSUPP) where the host cannot punch holes.
    pub(crate) fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `len` bytes at `offset`, keeping them allocated where the host can; falls back to
    /// writing zeroes.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(e) if is_unsupported(&e) => self.write_zeroes_slowly(offset, len, zeroes),
            Err(e) => Err(e),
        }
    }

    /// Deallocates the range where the host can, else writes zeroes; either way it reads back
    /// as zeroes.
    pub(crate) fn punch_or_write_zeroes(
        &self,
        offset: u64,
        len: u64,
        zeroes: &[u8],
    ) -> io::Result<()> {
        match self.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            Err(e) if is_unsupported(&e) => self.write_zeroes(offset, len, zeroes),
            Err(e) => Err(e),
        }
    }

    fn write_zeroes_slowly(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// The host file system or device cannot do this fallocate mode.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV)
    ) || e.kind() == io::ErrorKind::Unsupported
}
