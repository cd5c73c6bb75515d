//! Disk images on the host, for `vireo disk`: creating raw and qcow2 images (imago writes
//! qcow2 v3), and describing one — format, virtual and allocated size, cluster size, the
//! dirty and corrupt flags, and its backing chain.
//!
//! The description reads the qcow2 header itself (a few fixed fields and the backing-format
//! header extension, every offset and length checked against the file), because imago does
//! not expose those fields and refuses a dirty or corrupt image at open, which is exactly
//! what `info` must still be able to describe.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};
use serde::Serialize;

use super::format::{self, ForeignFormat};
use super::qcow2::MAX_CHAIN;

mod check;
mod ops;

pub use check::{check, CheckReport};
pub use ops::{commit, convert, rebase, ConvertOptions, Progress, RebaseOptions};

/// What `vireo disk info` says of one image of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    pub path: PathBuf,
    /// `raw`, `qcow2`, or the name of a format vireo does not serve.
    pub format: String,
    /// The disk's size as the guest sees it.
    pub virtual_size: u64,
    /// Bytes the host file occupies (its allocated blocks).
    pub allocated: u64,
    /// qcow2 only.
    pub version: Option<u32>,
    pub cluster_size: Option<u64>,
    pub dirty: bool,
    pub corrupt: bool,
    pub encrypted: bool,
    /// The backing file as the header names it, and resolved.
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// The next image down, when there is a backing file.
    pub backing: Option<Box<ImageInfo>>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

/// Describes `path` and its backing chain.
pub fn info(path: &Path) -> io::Result<ImageInfo> {
    info_depth(path, 0, &mut Vec::new(), true)
}

/// Describes `path` alone, its backing file named but not opened (it may be missing).
pub fn info_one(path: &Path) -> io::Result<ImageInfo> {
    info_depth(path, 0, &mut Vec::new(), false)
}

fn info_depth(
    path: &Path,
    depth: usize,
    seen: &mut Vec<PathBuf>,
    follow: bool,
) -> io::Result<ImageInfo> {
    if depth >= MAX_CHAIN {
        return Err(bad(
            path,
            format!("the backing chain is deeper than {MAX_CHAIN} images"),
        ));
    }
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if seen.contains(&canonical) {
        return Err(bad(path, "the backing chain loops back to this image"));
    }
    seen.push(canonical);
    let file = format::open_image_read(path, "disk image")?;
    let meta = file.metadata()?;
    let len = meta.len();
    let mut head = vec![0u8; (len.min(format::HEAD_LEN as u64)) as usize];
    file.read_exact_at(&mut head, 0)?;
    let mut info = ImageInfo {
        path: path.to_path_buf(),
        format: "raw".into(),
        virtual_size: len,
        allocated: meta.blocks() * 512,
        version: None,
        cluster_size: None,
        dirty: false,
        corrupt: false,
        encrypted: false,
        backing_file: None,
        backing_format: None,
        backing: None,
    };
    match format::probe(&head, None) {
        None => return Ok(info),
        Some(ForeignFormat::Qcow2) => {}
        Some(other) => {
            info.format = other.name().into();
            return Ok(info);
        }
    }
    let be32 = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    let be64 = |o: usize| {
        head.get(o..o + 8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
    };
    let short = || bad(path, "the qcow2 header is cut short");
    let version = be32(4).ok_or_else(short)?;
    let backing_offset = be64(8).ok_or_else(short)?;
    let backing_len = be32(16).ok_or_else(short)?;
    let cluster_bits = be32(20).ok_or_else(short)?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(
            path,
            format!("cluster bits {cluster_bits} (expected 9 to 21)"),
        ));
    }
    info.format = "qcow2".into();
    info.version = Some(version);
    info.cluster_size = Some(1 << cluster_bits);
    info.virtual_size = be64(24).ok_or_else(short)?;
    info.encrypted = be32(32).ok_or_else(short)? != 0;
    let header_len = if version >= 3 {
        let incompatible = be64(72).ok_or_else(short)?;
        info.dirty = incompatible & 1 != 0;
        info.corrupt = incompatible & 2 != 0;
        be32(100).ok_or_else(short)? as u64
    } else {
        72
    };
    if backing_offset != 0 {
        // QEMU limits the name to 1023 bytes; it lies in the first cluster.
        if backing_len == 0
            || backing_len > 1023
            || backing_offset + u64::from(backing_len) > len.min(1 << cluster_bits)
        {
            return Err(bad(
                path,
                "the backing file name lies outside the header cluster",
            ));
        }
        let mut name = vec![0u8; backing_len as usize];
        file.read_exact_at(&mut name, backing_offset)?;
        let name =
            String::from_utf8(name).map_err(|_| bad(path, "the backing file name is not UTF-8"))?;
        info.backing_format = backing_format(
            &file,
            path,
            header_len,
            backing_offset.min(1 << cluster_bits),
        )?;
        let resolved = if Path::new(&name).is_absolute() {
            PathBuf::from(&name)
        } else {
            path.parent().unwrap_or(Path::new(".")).join(&name)
        };
        info.backing_file = Some(name);
        if follow {
            info.backing = Some(Box::new(info_depth(&resolved, depth + 1, seen, true)?));
        }
    }
    Ok(info)
}

/// The backing-format header extension (type 0xe2792aca), if present: extensions follow the
/// header, each a 4-byte type, 4-byte length and data padded to 8 bytes, ending at type 0.
fn backing_format(file: &File, path: &Path, start: u64, end: u64) -> io::Result<Option<String>> {
    let mut at = start;
    while at + 8 <= end {
        let mut h = [0u8; 8];
        file.read_exact_at(&mut h, at)?;
        let kind = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let len = u64::from(u32::from_be_bytes([h[4], h[5], h[6], h[7]]));
        if kind == 0 {
            return Ok(None);
        }
        if at + 8 + len > end {
            return Err(bad(path, "a header extension runs past the header"));
        }
        if kind == 0xe279_2aca && len <= 64 {
            let mut name = vec![0u8; len as usize];
            file.read_exact_at(&mut name, at + 8)?;
            return Ok(String::from_utf8(name).ok());
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    Ok(None)
}

/// Grows an image (raw or qcow2) to `new_size` bytes. Shrinking is refused: it would drop the
/// guest's data past the new end. The image must not be in use (it is locked as a writer).
pub fn resize(path: &Path, new_size: u64) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    match super::lock::lock(&file, false) {
        Ok(()) | Err(super::lock::LockError::Unsupported(_)) => {}
        Err(super::lock::LockError::Conflict(holder)) => {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use by another process ({})",
                    path.display(),
                    holder.describe()
                ),
            ))
        }
        Err(super::lock::LockError::Io(e)) => return Err(e),
    }
    let current = info(path)?;
    if !matches!(current.format.as_str(), "raw" | "qcow2") {
        return Err(bad(
            path,
            format!("a {} image cannot be resized here", current.format),
        ));
    }
    if new_size < current.virtual_size {
        return Err(bad(
            path,
            format!(
                "{new_size} bytes is less than its {} bytes; shrinking would drop the data past \
                 the new end, and vireo disk resize only grows images",
                current.virtual_size
            ),
        ));
    }
    if current.format == "raw" {
        file.set_len(new_size)?;
        return file.sync_all();
    }
    super::qcow2::Qcow2Image::open(&file, path, false)?.grow(new_size)
}

/// Creates an image: raw (a sparse file of `size` bytes) or qcow2 (v3, via imago), optionally
/// on a backing file, whose size it takes when `size` is `None`. Refuses to overwrite.
pub fn create(
    path: &Path,
    qcow2: bool,
    size: Option<u64>,
    backing: Option<&Path>,
    cluster_size: Option<usize>,
) -> io::Result<()> {
    if path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists; vireo disk create does not overwrite images",
                path.display()
            ),
        ));
    }
    let backing_info = backing.map(info).transpose()?;
    let size = match (size, &backing_info) {
        (Some(s), _) => s,
        (None, Some(b)) => b.virtual_size,
        (None, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a size is needed (or a backing file to take it from)",
            ))
        }
    };
    if !qcow2 {
        if backing.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a raw image cannot have a backing file; use -f qcow2",
            ));
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        return f.set_len(size);
    }
    let storage = imago::file::File::create_open(StorageCreateOptions::new().filename(path))?;
    let mut b = Qcow2::<imago::file::File>::create_builder(storage).size(size);
    if let (Some(bp), Some(bi)) = (backing, &backing_info) {
        if !matches!(bi.format.as_str(), "raw" | "qcow2") {
            let _ = std::fs::remove_file(path);
            return Err(bad(
                bp,
                format!("a {} image cannot back a qcow2 image here", bi.format),
            ));
        }
        b = b.backing(bp.display().to_string(), bi.format.clone());
    }
    if let Some(c) = cluster_size {
        b = b.cluster_size(c);
    }
    b.create().inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// An image opened read-only and locked as a read-only disk is (QEMU's protocol): while it is
/// held nobody may write or resize the image, so a copy of it, or an overlay made on it, sees
/// one consistent image. The locks go on drop.
pub struct ReadLock {
    file: File,
}

impl ReadLock {
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for ReadLock {
    fn drop(&mut self) {
        // Explicitly: a child forked meanwhile holds a copy of the descriptor until it execs.
        super::lock::unlock(&self.file);
    }
}

/// Opens `path` under a [`ReadLock`]. An image someone writes (a running VM, QEMU) is refused
/// with [`io::ErrorKind::ResourceBusy`], naming who holds it; on a file system without OFD
/// locks the image is opened unlocked.
pub fn lock_read(path: &Path) -> io::Result<ReadLock> {
    let file = format::open_image_read(path, "disk image")?;
    match super::lock::lock(&file, true) {
        Ok(()) | Err(super::lock::LockError::Unsupported(_)) => Ok(ReadLock { file }),
        Err(super::lock::LockError::Conflict(holder)) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{} is in use by another process ({})",
                path.display(),
                holder.describe()
            ),
        )),
        Err(super::lock::LockError::Io(e)) => Err(e),
    }
}
