//! qcow2 images (v3 read and write, v2 read and write without zero clusters), through the
//! `imago` crate: a qcow2 implementation by a QEMU block-layer developer, used in its
//! synchronous build (requests are served on the device's own thread, no async runtime).
//!
//! What vireo adds around it:
//! - every file of the chain (the image, its backing files) is opened here and locked as
//!   `lock.rs` locks raw images (backing files shared, read-only), so a base image cannot be
//!   written by another process while an overlay on it is in use;
//! - encrypted images (qcow2 AES or LUKS, header `crypt_method` ≠ 0) are refused: imago does
//!   not check the field and would show the guest ciphertext (and corrupt the image on write);
//! - a backing chain is at most [`MAX_CHAIN`] deep, so a chain that loops is an error, not a
//!   recursion without end;
//! - FLUSH writes imago's metadata caches back and then syncs the files (imago's `flush` alone
//!   does not sync).
//!
//! Images with the dirty bit (lazy refcounts left unclean), the corrupt bit, extended L2
//! entries, zstd compression or unknown incompatible features are refused by imago at open,
//! with its message.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, Mapping, ShallowMapping, StorageOpenOptions};

use super::lock::{self, LockError};

/// Deepest backing chain opened (QEMU has no fixed limit; real chains are a few levels).
pub const MAX_CHAIN: usize = 64;

/// An open qcow2 image with its backing chain.
pub(crate) struct Qcow2Image {
    access: Mutex<FormatAccess<imago::file::File>>,
    size: u64,
    /// Version 2 has no zero clusters: write-zeroes and discard go another way.
    v2: bool,
}

/// Why a qcow2 file cannot be used as it is; checked before imago sees it.
fn check_header(file: &File, path: &Path) -> io::Result<bool> {
    let mut h = [0u8; 40];
    file.read_exact_at(&mut h, 0).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: cannot read the qcow2 header: {e}", path.display()),
        )
    })?;
    if &h[..4] != b"QFI\xfb" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a qcow2 image (it does not start with the qcow2 magic); without \
                 format=qcow2 vireo finds the format by itself",
                path.display()
            ),
        ));
    }
    let version = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let crypt = u32::from_be_bytes([h[32], h[33], h[34], h[35]]);
    if crypt != 0 {
        let how = match crypt {
            1 => "AES",
            2 => "LUKS",
            _ => "an unknown method",
        };
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{} is an encrypted qcow2 image ({how}); vireo does not decrypt images",
                path.display()
            ),
        ));
    }
    Ok(version == 2)
}

/// Opens and locks the files of a backing chain: read-only and shared, as a base image is.
struct Gate {
    depth: usize,
}

impl ImplicitOpenGate<imago::file::File> for Gate {
    fn open_format<B: FormatDriverBuilder<imago::file::File>>(
        &mut self,
        builder: B,
    ) -> io::Result<FormatAccess<imago::file::File>> {
        if self.depth >= MAX_CHAIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the backing chain is deeper than {MAX_CHAIN} images (does it loop?) at {}",
                    builder
                        .get_image_path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            ));
        }
        if builder.get_writable() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a backing file would be opened for writing",
            ));
        }
        let inner = Gate {
            depth: self.depth + 1,
        };
        Ok(FormatAccess::new(builder.open(inner)?))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<imago::file::File> {
        let Some(path) = opts.get_filename().map(Path::to_path_buf) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a backing file without a name",
            ));
        };
        if opts.get_writable() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} would be opened for writing", path.display()),
            ));
        }
        let file = OpenOptions::new().read(true).open(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("backing file {}: {e}", path.display()))
        })?;
        if file.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("backing file {} is a directory", path.display()),
            ));
        }
        let mut magic = [0u8; 4];
        if file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"QFI\xfb" {
            check_header(&file, &path)?;
        }
        match lock::lock(&file, true) {
            Ok(()) | Err(LockError::Unsupported(_)) => {}
            Err(LockError::Conflict(holder)) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "backing file {} is in use by another process ({})",
                        path.display(),
                        holder.describe()
                    ),
                ))
            }
            Err(LockError::Io(e)) => return Err(e),
        }
        imago::file::File::from_open_file(file, opts)
    }
}

impl Qcow2Image {
    /// Opens the qcow2 image in `file` (opened and locked by the caller; a duplicate of its
    /// descriptor is handed to imago, so the lock covers both) with its backing chain.
    pub(crate) fn open(file: &File, path: &Path, readonly: bool) -> io::Result<Qcow2Image> {
        Self::open_with(file, path, readonly, true)
    }

    /// Opens the image alone, without its backing chain: what it does not hold itself reads
    /// as unallocated ([`Extent::Unallocated`]). For `vireo disk commit`, which writes the
    /// backing file itself and must not have it opened read-only here too.
    pub(crate) fn open_shallow(file: &File, path: &Path, readonly: bool) -> io::Result<Qcow2Image> {
        Self::open_with(file, path, readonly, false)
    }

    fn open_with(file: &File, path: &Path, readonly: bool, chain: bool) -> io::Result<Qcow2Image> {
        let v2 = check_header(file, path)?;
        let dup = file.try_clone()?;
        let opts = StorageOpenOptions::new().filename(path).write(!readonly);
        let storage = imago::file::File::from_open_file(dup, opts)?;
        let mut builder = Qcow2::<imago::file::File>::builder(storage).write(!readonly);
        if !chain {
            builder = builder.backing(None);
        }
        let driver = builder.open(Gate { depth: 1 })?;
        let access = FormatAccess::new(driver);
        let size = access.size();
        Ok(Qcow2Image {
            access: Mutex::new(access),
            size,
            v2,
        })
    }

    fn lock(&self) -> MutexGuard<'_, FormatAccess<imago::file::File>> {
        self.access.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Grows the virtual disk to `new_size`; the new range reads as zeroes (never as a backing
    /// file's data).
    pub(crate) fn grow(&self, new_size: u64) -> io::Result<()> {
        let a = self.lock();
        a.resize_grow(new_size, imago::format::PreallocateMode::Zero)?;
        a.flush()?;
        a.sync()
    }

    /// The virtual disk's size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().read(buf, offset)
    }

    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.lock().write(buf, offset)
    }

    /// Writes imago's metadata caches back to the files (not synced): called after every
    /// request that changed the image, so that a killed vireo leaves at most leaked clusters.
    /// imago keeps new refcounts and L2 entries in memory until a flush, while it writes an L1
    /// entry for a new L2 table at once; without this, `kill -9` after a guest write that
    /// allocated leaves an L2 table whose cluster has refcount 0 (qemu-img check calls it
    /// corruption). A guest that never flushes its disk would otherwise expose that forever.
    pub(crate) fn write_back(&self) -> io::Result<()> {
        self.lock().flush()
    }

    /// Metadata caches written back, then the files synced: a completed FLUSH is durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let a = self.lock();
        a.flush()?;
        a.sync()
    }

    /// Discard: the clusters are freed (and the host file's blocks punched) where the format
    /// can; the range reads back as zeroes (never as the backing file's data, which would
    /// change what the guest sees).
    pub(crate) fn discard(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
        if self.v2 {
            // No zero clusters in v2: write zeroes, so the range still reads back as zeroes.
            return self.write_zeroes_slowly(offset, len, zeroes);
        }
        self.lock().discard_to_zero(offset, len)
    }

    /// Zeroes a range; kept allocated unless `unmap` allows freeing it.
    pub(crate) fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        zeroes: &[u8],
    ) -> io::Result<()> {
        if self.v2 {
            return self.write_zeroes_slowly(offset, len, zeroes);
        }
        if unmap {
            self.lock().discard_to_zero(offset, len)
        } else {
            self.lock().write_zeroes(offset, len)
        }
    }

    fn write_zeroes_slowly(&self, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
        super::backend::write_zeroes_with(offset, len, zeroes, |b, at| self.write_all_at(b, at))
    }

    /// What the `len` bytes at `offset` are (imago's block status), and for how many bytes
    /// from `offset` that holds (at least 1, at most `len`, while `offset` is inside the disk).
    /// `deep`: through the whole backing chain (data or zeroes, as the guest reads it);
    /// otherwise this image's own layer only (allocated here or not).
    pub(crate) fn extent(&self, offset: u64, len: u64, deep: bool) -> io::Result<(Extent, u64)> {
        let a = self.lock();
        let rest = self.size.saturating_sub(offset).min(len);
        if rest == 0 {
            return Ok((Extent::Unallocated, 0));
        }
        let (what, n) = if deep {
            match a.get_mapping(offset, rest)? {
                (Mapping::Zero { .. }, n) => (Extent::Zero, n),
                (Mapping::Eof { .. }, _) => (Extent::Zero, rest),
                (_, n) => (Extent::Data, n),
            }
        } else {
            match a.get_shallow_mapping(offset, rest)? {
                (ShallowMapping::Zero { explicit: true, .. }, n) => (Extent::Zero, n),
                (ShallowMapping::Zero { .. }, n) | (ShallowMapping::Indirect { .. }, n) => {
                    (Extent::Unallocated, n)
                }
                (ShallowMapping::Eof { .. }, _) => (Extent::Unallocated, rest),
                (_, n) => (Extent::Data, n),
            }
        };
        // A mapping of length 0 inside the disk would loop a caller for ever; imago does not
        // return one, but the caller's progress must not depend on that.
        Ok((what, n.clamp(1, rest)))
    }

    /// Makes the range unallocated in this image, so that the backing file shows through
    /// (the clusters freed); `vireo disk commit` empties the overlay this way.
    pub(crate) fn discard_to_backing(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut a = self.lock();
        a.discard_to_backing(offset, len)?;
        a.flush()
    }
}

/// Block status of a range of a qcow2 image ([`Qcow2Image::extent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extent {
    /// Holds data (possibly zeroes: only reading tells).
    Data,
    /// Reads as zeroes without holding data (an unallocated range at the bottom of the chain,
    /// or, seen shallowly, a zero cluster of this image).
    Zero,
    /// Not allocated in this image: it reads from the backing file (shallow view only).
    Unallocated,
}
