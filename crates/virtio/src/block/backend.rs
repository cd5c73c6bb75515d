//! The host side of virtio-blk: a raw disk image (a regular file, sparse or not) or a host block
//! device, accessed only by positioned reads and writes so no file offset is shared state.
//!
//! Opening refuses what would destroy an image by accident: a container format attached as
//! raw (`format.rs`), and an image another process (a vireo, a QEMU) is using (`lock.rs`).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::format::{self, DiskFormat, ForeignFormat};
use super::lock::{self, Holder, LockError};
use super::qcow2::Qcow2Image;

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
    /// The request queue count is out of range.
    #[error(
        "disk: {num_queues} request queues; expected 1 to {}",
        super::MAX_QUEUES
    )]
    BadQueues { num_queues: u16 },
    /// The serial is not a plain ASCII string (virtio 1.2 §5.2.6: the ID is NUL-padded ASCII).
    #[error("disk serial {serial:?}: expected ASCII characters without NUL")]
    SerialNotAscii { serial: String },
    /// The image carries another format's signature; attached raw, the guest would overwrite
    /// the container's metadata.
    #[error("disk image {} is a {format} image; {advice}", path.display())]
    Foreign {
        path: PathBuf,
        format: ForeignFormat,
        advice: String,
    },
    /// The image's format says it cannot be used: encrypted, dirty or corrupt, an unsupported
    /// feature, a bad or looping backing chain (the message says which).
    #[error("disk image {} ({format}): {source}", path.display())]
    Image {
        path: PathBuf,
        format: &'static str,
        source: io::Error,
    },
    /// Another open file description (another vireo, a QEMU) holds a conflicting lock.
    #[error("disk image {} is in use by another process ({}); {}", path.display(), holder.describe(), in_use_advice(*holder, *readonly))]
    InUse {
        path: PathBuf,
        holder: Holder,
        readonly: bool,
    },
}

fn in_use_advice(holder: Holder, readonly: bool) -> &'static str {
    match (holder, readonly) {
        (Holder::Reader, _) => {
            "stop it first, or attach the image with the readonly option here too"
        }
        (_, false) => "two writers would corrupt it: stop the other VM or tool first",
        (_, true) => "the guest would see it change underneath: stop the other VM or tool first",
    }
}

/// Which file an image is, whatever path names it: two paths with the same id are one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileId {
    /// A regular file: its device and inode.
    File { dev: u64, ino: u64 },
    /// A block device: the device it is, so two device nodes for one disk compare equal.
    BlockDevice { rdev: u64 },
}

impl FileId {
    /// The id of what `meta` (from `stat`, which follows symbolic links) describes.
    pub fn of(meta: &Metadata) -> FileId {
        if meta.file_type().is_block_device() {
            FileId::BlockDevice { rdev: meta.rdev() }
        } else {
            FileId::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }
}

/// What a disk format does with the guest's requests. Byte offsets are the guest's (virtual
/// disk) offsets; every range is inside the virtual size (the device checks before calling).
/// Implementations are shared by the disk's I/O threads, one per request queue, so they take
/// `&self` and do their own locking.
pub(crate) trait DiskBackend: Send + Sync {
    /// `raw` or `qcow2`.
    fn format(&self) -> &'static str;
    /// The disk's size as the format defines it; `None`: the file's (or device's) length.
    fn virtual_size(&self) -> Option<u64> {
        None
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// After a request that changed the image: cached metadata goes to the file (crash
    /// consistency against a killed vireo; durability is [`DiskBackend::sync_data`]'s).
    fn write_done(&self) -> io::Result<()> {
        Ok(())
    }
    /// Makes completed writes durable (data, and the metadata needed to read it back).
    fn sync_data(&self) -> io::Result<()>;
    /// Deallocates the range; it reads back as zeroes. EOPNOTSUPP-like errors where the host
    /// cannot.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Zeroes the range keeping it allocated where possible; `zeroes` is a buffer of zero
    /// bytes for backends that must write them.
    fn write_zeroes(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()>;
    /// Zeroes the range, deallocating it where possible.
    fn punch_or_write_zeroes(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()>;
}

/// A raw image: the guest's offsets are the file's.
struct RawFile(File);

impl RawFile {
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: fallocate on a file descriptor we own; it reads no memory of ours.
            let r = unsafe { libc::fallocate(self.0.as_raw_fd(), mode, off, len) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl DiskBackend for RawFile {
    fn format(&self) -> &'static str {
        "raw"
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }
    fn write_zeroes(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(e) if is_unsupported(&e) => {
                write_zeroes_with(offset, len, zeroes, |b, at| self.0.write_all_at(b, at))
            }
            Err(e) => Err(e),
        }
    }
    fn punch_or_write_zeroes(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
        match self.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            Err(e) if is_unsupported(&e) => self.write_zeroes(offset, len, zeroes),
            Err(e) => Err(e),
        }
    }
}

impl DiskBackend for Qcow2Image {
    fn format(&self) -> &'static str {
        "qcow2"
    }
    fn virtual_size(&self) -> Option<u64> {
        Some(self.size())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Qcow2Image::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        Qcow2Image::write_all_at(self, buf, offset)
    }
    fn write_done(&self) -> io::Result<()> {
        self.write_back()
    }
    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.discard(offset, len, &[0u8; 4096])
    }
    fn write_zeroes(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
        Qcow2Image::write_zeroes(self, offset, len, false, zeroes)
    }
    fn punch_or_write_zeroes(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
        Qcow2Image::write_zeroes(self, offset, len, true, zeroes)
    }
}

/// An open disk image: the file vireo locked, what it is, and the backend serving its I/O.
pub(crate) struct DiskFile {
    /// The descriptor holding the image's lock (the backend's descriptors share it or are
    /// opened after it).
    file: File,
    path: PathBuf,
    size: u64,
    id: FileId,
    /// Set when the image could not be locked (a file system without OFD locks).
    lock_warning: Option<String>,
    backend: Box<dyn DiskBackend>,
}

/// What a path that is no disk image is, for messages.
pub(crate) fn type_name(ft: std::fs::FileType) -> &'static str {
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
    /// The descriptor holding the image's lock.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Opens `path` read-only or read-write, probes its content unless `format` says what it
    /// is, and locks it for as long as the `DiskFile` lives.
    pub(crate) fn open(
        path: &Path,
        readonly: bool,
        format: Option<DiskFormat>,
    ) -> Result<Self, BlockError> {
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
        let qcow2 = match format {
            Some(DiskFormat::Raw) => false,
            Some(DiskFormat::Qcow2) => true,
            None => match probe(&file, size).map_err(|e| io_err("read its header", e))? {
                None => false,
                Some(ForeignFormat::Qcow2) => true,
                Some(found) => {
                    return Err(BlockError::Foreign {
                        path: path.to_path_buf(),
                        format: found,
                        advice: found.advice(path),
                    })
                }
            },
        };
        let lock_warning = match lock::lock(&file, readonly) {
            Ok(()) => None,
            Err(LockError::Conflict(holder)) => {
                return Err(BlockError::InUse {
                    path: path.to_path_buf(),
                    holder,
                    readonly,
                })
            }
            Err(LockError::Unsupported(e)) => Some(format!(
                "disk image {}: cannot lock it ({e}); nothing stops another process from \
                 writing it at the same time",
                path.display()
            )),
            Err(LockError::Io(e)) => return Err(io_err("lock it", e)),
        };
        // Opened after the lock: the chain is read only once the image is ours.
        let backend: Box<dyn DiskBackend> = if qcow2 {
            Box::new(Qcow2Image::open(&file, path, readonly).map_err(|source| {
                BlockError::Image {
                    path: path.to_path_buf(),
                    format: "qcow2",
                    source,
                }
            })?)
        } else {
            // A duplicate of the locked descriptor: same open file description, same lock.
            Box::new(RawFile(
                file.try_clone()
                    .map_err(|e| io_err("duplicate its descriptor", e))?,
            ))
        };
        let size = backend.virtual_size().unwrap_or(size);
        Ok(DiskFile {
            size,
            file,
            path: path.to_path_buf(),
            id: FileId::of(&meta),
            lock_warning,
            backend,
        })
    }

    pub(crate) fn id(&self) -> FileId {
        self.id
    }

    pub(crate) fn lock_warning(&self) -> Option<&str> {
        self.lock_warning.as_deref()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes at open time.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The image's format: `raw` or `qcow2`.
    pub(crate) fn format(&self) -> &'static str {
        self.backend.format()
    }

    /// What serves the image's I/O.
    pub(crate) fn backend(&self) -> &dyn DiskBackend {
        self.backend.as_ref()
    }
}

/// Zeroes `len` bytes at `offset` by writing `zeroes` (a buffer of zero bytes) over and over,
/// where nothing cheaper can.
pub(crate) fn write_zeroes_with(
    offset: u64,
    len: u64,
    zeroes: &[u8],
    mut write: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64) as usize;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        write(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        lock::unlock(&self.file);
    }
}

/// Reads the first and last sectors of an image and looks for a foreign format's signature.
fn probe(file: &File, size: u64) -> io::Result<Option<ForeignFormat>> {
    let mut head = vec![0u8; (size.min(format::HEAD_LEN as u64)) as usize];
    file.read_exact_at(&mut head, 0)?;
    let tail = if size >= format::TAIL_LEN as u64 {
        let mut t = vec![0u8; format::TAIL_LEN];
        file.read_exact_at(&mut t, size - format::TAIL_LEN as u64)?;
        Some(t)
    } else {
        None
    };
    Ok(format::probe(&head, tail.as_deref()))
}

/// The host file system or device cannot do this fallocate mode.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV)
    ) || e.kind() == io::ErrorKind::Unsupported
}
