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
//! entries or zstd compression are refused by imago at open, with its message; an external
//! data file or an incompatible feature bit nobody defined is refused here first, naming it
//! (imago would try to open the data file for writing, or read the image wrongly).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::{
    FormatAccess, FormatDriverBuilder, Mapping, ShallowMapping, StorageExt, StorageOpenOptions,
};

use super::lock::{self, LockError};

/// Deepest backing chain opened (QEMU has no fixed limit; real chains are a few levels).
pub const MAX_CHAIN: usize = 64;

/// An open qcow2 image with its backing chain.
pub(crate) struct Qcow2Image {
    access: Mutex<FormatAccess<imago::file::File>>,
    size: u64,
    /// Version 2 has no zero clusters: write-zeroes and discard go another way.
    v2: bool,
    cluster_size: u64,
    /// The image file, for punching the blocks of clusters imago freed.
    host: File,
}

/// Why a qcow2 file cannot be used as it is; checked before imago sees it. Returns whether it
/// is version 2 and its cluster size.
fn check_header(file: &File, path: &Path, writable: bool) -> io::Result<(bool, u64)> {
    // The version 2 header (72 bytes) must be there; version 3 adds the refcount order.
    let mut head = [0u8; 104];
    let len = file.metadata()?.len();
    let want = if len == 0 { 104 } else { len.min(104) as usize };
    file.read_exact_at(&mut head[..want.max(72)], 0)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: cannot read the qcow2 header: {e}", path.display()),
            )
        })?;
    let h = &head[..want.max(72)];
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
    let version = be32(h, 4);
    let crypt = be32(h, 32);
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
    if version >= 3 && h.len() >= 80 {
        let incompatible = u64::from_be_bytes(h[72..80].try_into().unwrap_or([0; 8]));
        // Bits 0 dirty and 1 corrupt are imago's to refuse; 3 (compression type) and 4
        // (extended L2 entries) it reads or refuses itself.
        if incompatible & (1 << 2) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} keeps its data in an external data file (incompatible feature bit 2);                      vireo does not support external data files: convert it with                      `vireo disk convert`",
                    path.display()
                ),
            ));
        }
        let unknown = incompatible & !0x1f;
        if unknown != 0 {
            let bits: Vec<String> = (0..64)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| b.to_string())
                .collect();
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} uses qcow2 incompatible feature bit(s) {} that vireo does not know;                      reading it could return wrong data",
                    path.display(),
                    bits.join(", ")
                ),
            ));
        }
    }
    let cluster_bits = be32(h, 20);
    if !(9..=21).contains(&cluster_bits) {
        // imago refuses it with its own message.
        return Ok((version == 2, 0));
    }
    let cs = 1u64 << cluster_bits;
    check_tables(file, path, h, cs, writable && version <= 3)?;
    Ok((version == 2, cs))
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn be64(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(x)
}

/// QEMU's largest refcount table (and so any image's): 8 MiB.
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU's largest L1 table: 32 MiB (imago refuses larger ones itself).
const MAX_L1_BYTES: u64 = 32 << 20;

/// The L1 and refcount tables, and the L2 tables and refcount blocks they point to, must lie
/// inside the file. imago 0.2.6 does not check this at open and reads past the end of the file
/// as zeroes: an L2 table past the end would serve the guest zeroes for data it never wrote,
/// and a refcount table past the end sends imago's allocator into a recursion that overflows
/// the stack when the image is opened for writing. Only the tables are read (at most the L1
/// and refcount tables, a few hundred KiB for a large disk), not the L2 tables themselves.
fn check_tables(file: &File, path: &Path, h: &[u8], cs: u64, writable: bool) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    // A block device's inode has no length; its end is its size.
    let len = match file.metadata()?.len() {
        0 => {
            let mut f = file;
            f.seek(SeekFrom::End(0))?
        }
        n => n,
    };
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {what}, past the end of the file ({len} bytes); the image is damaged \
                 (vireo disk check describes it)",
                path.display()
            ),
        )
    };
    // Each table: (name, offset, bytes, whose entries point to clusters of this kind).
    let l1 = (be64(h, 40), u64::from(be32(h, 36)) * 8);
    let reftable = (be64(h, 48), u64::from(be32(h, 56)) * cs);
    // Clusters the image's metadata lives in, with what they hold.
    let mut metadata: Vec<(u64, &str)> = vec![(0, "the header")];
    let mut refblocks: Vec<u64> = Vec::new();
    for (name, (offset, bytes), max, entry) in [
        ("the L1 table", l1, MAX_L1_BYTES, "an L2 table"),
        (
            "the refcount table",
            reftable,
            MAX_REFTABLE_BYTES,
            "a refcount block",
        ),
    ] {
        if bytes > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {name} is {bytes} bytes, more than QEMU allows ({max})",
                    path.display()
                ),
            ));
        }
        if offset.checked_add(bytes).is_none_or(|end| end > len) {
            return Err(bad(format!("{name} lies at {offset:#x} (+{bytes:#x})")));
        }
        let mut t = vec![0u8; bytes as usize];
        file.read_exact_at(&mut t, offset)?;
        for (i, e) in t.chunks_exact(8).map(|e| be64(e, 0)).enumerate() {
            // L1 entries hold the offset in bits 9-55, refcount table entries in 9-63.
            let at = if entry == "an L2 table" {
                e & 0x00ff_ffff_ffff_fe00
            } else {
                e & !511
            };
            if at != 0 && at.checked_add(cs).is_none_or(|end| end > len) {
                return Err(bad(format!(
                    "entry {i} of {name} points to {entry} at {at:#x}"
                )));
            }
            if entry == "a refcount block" {
                refblocks.push(at);
            }
            if at != 0 {
                metadata.push((at / cs, entry));
            }
        }
        for c in offset / cs..(offset + bytes).div_ceil(cs) {
            metadata.push((c, name));
        }
    }
    if writable {
        metadata_is_counted(file, path, h, cs, &refblocks, &metadata)?;
    }
    Ok(())
}

/// Every cluster holding metadata must have a refcount. imago 0.2.6 allocates clusters by
/// their refcounts alone, with no check against the image's own tables (QEMU has one): with
/// the refcount of the header's cluster lost, it takes that cluster for a new refcount block
/// and overwrites the header, and a missing refcount block sends its allocator into a
/// recursion that overflows the stack. Checked for writable images only (reading needs no
/// refcounts), and only for metadata: data clusters would need every L2 table read.
fn metadata_is_counted(
    file: &File,
    path: &Path,
    h: &[u8],
    cs: u64,
    reftable: &[u64],
    metadata: &[(u64, &str)],
) -> io::Result<()> {
    let order = if be32(h, 4) >= 3 && h.len() >= 100 {
        be32(h, 96)
    } else {
        4
    };
    if order > 6 {
        // imago refuses it with its own message.
        return Ok(());
    }
    let bits = 1u64 << order;
    let per_block = cs * 8 / bits;
    let mut blocks: std::collections::HashMap<u64, Vec<u8>> = Default::default();
    for &(c, what) in metadata {
        let damaged = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: cluster {c} ({what}) has no refcount: the refcounts are damaged, and \
                     writing would overwrite the image's own metadata; `vireo disk check` \
                     describes the damage, `qemu-img check -r all` repairs it (the image can \
                     still be used read-only)",
                    path.display()
                ),
            )
        };
        let block = match reftable.get((c / per_block) as usize) {
            Some(&b) if b != 0 => b,
            _ => return Err(damaged()),
        };
        let b = match blocks.entry(block) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut b = vec![0u8; cs as usize];
                file.read_exact_at(&mut b, block)?;
                e.insert(b)
            }
        };
        let bit = (c % per_block) * bits;
        let byte = (bit / 8) as usize;
        let width = (bits as usize).div_ceil(8);
        let count = if bits < 8 {
            (u64::from(b[byte]) >> (bit % 8)) & ((1 << bits) - 1)
        } else {
            b[byte..byte + width]
                .iter()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
        };
        if count == 0 {
            return Err(damaged());
        }
    }
    Ok(())
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
        let file = super::format::open_image_read(&path, "backing file")?;
        let mut magic = [0u8; 4];
        if file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"QFI\xfb" {
            check_header(&file, &path, false)?;
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
        let (v2, cluster_size) = check_header(file, path, !readonly)?;
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
            cluster_size,
            host: file.try_clone()?,
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
        let mut a = self.lock();
        self.punch_exclusive(&a, offset, len)?;
        a.discard_to_zero(offset, len)
    }

    /// Punches the host file's blocks under the whole clusters of the range that this image
    /// alone uses (COPIED, refcount 1), so a discard gives the space back to the host: imago
    /// 0.2.6 frees the clusters in the refcounts but leaves their blocks allocated in the
    /// file. Done before imago's discard, so a punched cluster is never one imago has already
    /// handed out again; it reads as zeroes, which is what the discard is for. Clusters shared
    /// with an internal snapshot (not COPIED) are left alone.
    fn punch_exclusive(
        &self,
        a: &FormatAccess<imago::file::File>,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let cs = self.cluster_size;
        if cs == 0 {
            return Ok(());
        }
        let (start, end) = (offset.next_multiple_of(cs), (offset + len) / cs * cs);
        let mut at = start;
        while at < end {
            let (m, n) = a.get_shallow_mapping(at, end - at)?;
            if n == 0 {
                break;
            }
            if let ShallowMapping::Raw {
                storage,
                offset: host,
                writable: true,
                ..
            } = m
            {
                storage.write_zeroes(host, n)?;
            }
            at += n;
        }
        Ok(())
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
            let mut a = self.lock();
            self.punch_exclusive(&a, offset, len)?;
            a.discard_to_zero(offset, len)
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
    /// The host blocks of the clusters this image alone used are punched afterwards (imago
    /// leaves them allocated); not before, as in [`Qcow2Image::discard`], because until the
    /// discard is done they must still read as the data, not as zeroes. No cluster is handed
    /// out again in between: a discard allocates only to copy an L2 table shared with a
    /// snapshot, and the data clusters of such a table are shared too, so none is punched.
    pub(crate) fn discard_to_backing(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut a = self.lock();
        let mut exclusive = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let (m, n) = a.get_shallow_mapping(at, offset + len - at)?;
            if n == 0 {
                break;
            }
            if let ShallowMapping::Raw {
                offset: host,
                writable: true,
                ..
            } = m
            {
                exclusive.push((host, n));
            }
            at += n;
        }
        a.discard_to_backing(offset, len)?;
        a.flush()?;
        for (host, n) in exclusive {
            // Into the image file itself: an image with an external data file is refused at
            // open (the gate would have to open it for writing).
            let (Ok(o), Ok(l)) = (i64::try_from(host), i64::try_from(n)) else {
                continue;
            };
            // Giving the space back is a courtesy: a host that cannot punch keeps it.
            let _ = nix::fcntl::fallocate(
                &self.host,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                o,
                l,
            );
        }
        Ok(())
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
