//! `vireo disk convert`, `commit` and `rebase`: data moved between images through imago (qcow2)
//! or positioned I/O (raw), guided by block status so unallocated and zero ranges are neither
//! read nor written.
//!
//! Every image is opened and locked as a VM's disk is (`lock.rs`: readers share, a writer is
//! alone; a qcow2 image's backing chain is locked shared by `qcow2.rs`), so none of these runs
//! on an image a VM or a QEMU is using. None of them destroys its input on failure: convert
//! writes a temporary file renamed into place at the end; commit writes the base before it
//! empties the overlay (a crash between leaves the overlay reading the same as before); rebase
//! copies data into the overlay before it changes the backing file name.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

use super::super::format::{self, DiskFormat, ForeignFormat};
use super::super::lock::{self, LockError};
use super::super::qcow2::{Extent, Qcow2Image};
use super::bad;

/// Told the bytes done so far and the total, after each step.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Bytes moved per step (and the granularity of progress).
const CHUNK: u64 = 1 << 20;
/// Zero runs shorter than this are written into a raw destination rather than skipped (a file
/// system block).
const RAW_GRANULE: u64 = 4096;
const BACKING_FORMAT_EXT: u32 = 0xe279_2aca;

fn named(path: &Path, e: io::Error) -> io::Error {
    let msg = e.to_string();
    if msg.contains(&path.display().to_string()) {
        e
    } else {
        io::Error::new(e.kind(), format!("{}: {msg}", path.display()))
    }
}

/// An image opened for one of these commands.
struct Img {
    file: File,
    path: PathBuf,
    qcow2: Option<Qcow2Image>,
    size: u64,
}

impl Img {
    /// Opens and locks `path` (a writer alone, a reader shared). `format`: `None` probes the
    /// content. `chain`: a qcow2 image's backing chain is opened too (else it is unallocated).
    fn open(
        path: &Path,
        writable: bool,
        format: Option<DiskFormat>,
        chain: bool,
    ) -> io::Result<Img> {
        let meta = std::fs::metadata(path).map_err(|e| named(path, e))?;
        let ft = meta.file_type();
        // Opening a FIFO would block until a writer appears; a directory is no image.
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(bad(path, "expected a regular file or a block device"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| named(path, e))?;
        match lock::lock(&file, !writable) {
            Ok(()) | Err(LockError::Unsupported(_)) => {}
            Err(LockError::Conflict(holder)) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "{} is in use by another process ({}); stop the VM or tool using it \
                         first",
                        path.display(),
                        holder.describe()
                    ),
                ))
            }
            Err(LockError::Io(e)) => return Err(named(path, e)),
        }
        let mut img = Img {
            size: 0,
            file,
            path: path.to_path_buf(),
            qcow2: None,
        };
        img.size = if ft.is_block_device() {
            (&img.file).seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        let qcow2 = match format {
            Some(DiskFormat::Raw) => false,
            Some(DiskFormat::Qcow2) => true,
            None => match probe(&img.file, img.size)? {
                None => false,
                Some(ForeignFormat::Qcow2) => true,
                Some(other) => {
                    return Err(bad(
                        path,
                        format!(
                            "a {} image; vireo disk handles raw and qcow2 images",
                            other.name()
                        ),
                    ))
                }
            },
        };
        if qcow2 {
            let q = if chain {
                Qcow2Image::open(&img.file, path, !writable)
            } else {
                Qcow2Image::open_shallow(&img.file, path, !writable)
            }
            .map_err(|e| named(path, e))?;
            img.size = q.size();
            img.qcow2 = Some(q);
        }
        Ok(img)
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.qcow2 {
            Some(q) => q.read_exact_at(buf, offset),
            None => self.file.read_exact_at(buf, offset),
        }
        .map_err(|e| named(&self.path, e))
    }

    /// Reads as the guest would, zeroes past the end (a backing file may be shorter than its
    /// overlay).
    fn read_padded(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[n..].fill(0);
        if n > 0 {
            self.read(&mut buf[..n], offset)?;
        }
        Ok(())
    }

    fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.qcow2 {
            Some(q) => q.write_all_at(buf, offset),
            None => self.file.write_all_at(buf, offset),
        }
        .map_err(|e| named(&self.path, e))
    }

    /// Makes the range read as zeroes: a qcow2 zero cluster (v3), a hole in a raw file, or
    /// written zeroes where neither can be had.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; CHUNK as usize];
        let r = match &self.qcow2 {
            Some(q) => q.write_zeroes(offset, len, false, &zeroes),
            None => {
                let punched = match (i64::try_from(offset), i64::try_from(len)) {
                    (Ok(o), Ok(l)) => nix::fcntl::fallocate(
                        &self.file,
                        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                        o,
                        l,
                    )
                    .is_ok(),
                    _ => false,
                };
                if punched {
                    Ok(())
                } else {
                    super::super::backend::write_zeroes_with(offset, len, &zeroes, |b, at| {
                        self.file.write_all_at(b, at)
                    })
                }
            }
        };
        r.map_err(|e| named(&self.path, e))
    }

    /// Block status at `offset` (see [`Qcow2Image::extent`]). A raw file's holes, found with
    /// SEEK_DATA / SEEK_HOLE, read as zeroes; imago's raw driver reports a raw file as all
    /// data, so this is asked of the kernel directly.
    fn extent(&self, offset: u64, len: u64, deep: bool) -> io::Result<(Extent, u64)> {
        if let Some(q) = &self.qcow2 {
            return q
                .extent(offset, len, deep)
                .map_err(|e| named(&self.path, e));
        }
        let rest = self.size.saturating_sub(offset).min(len);
        if rest == 0 {
            return Ok((Extent::Zero, 0));
        }
        let Ok(off) = i64::try_from(offset) else {
            return Ok((Extent::Data, rest));
        };
        let upto = |to: i64| ((to as u64).saturating_sub(offset)).clamp(1, rest);
        Ok(match lseek(&self.file, off, Whence::SeekData) {
            Ok(data) if data > off => (Extent::Zero, upto(data)),
            Ok(_) => match lseek(&self.file, off, Whence::SeekHole) {
                Ok(hole) => (Extent::Data, upto(hole)),
                Err(_) => (Extent::Data, rest),
            },
            // No data from here to the end of the file.
            Err(Errno::ENXIO) => (Extent::Zero, rest),
            // A file system or device without the interface: all data.
            Err(_) => (Extent::Data, rest),
        })
    }

    fn sync(&self) -> io::Result<()> {
        match &self.qcow2 {
            Some(q) => q.sync(),
            None => self.file.sync_all(),
        }
        .map_err(|e| named(&self.path, e))
    }

    fn cluster_size(&self) -> u64 {
        super::info(&self.path)
            .ok()
            .and_then(|i| i.cluster_size)
            .unwrap_or(64 << 10)
    }
}

impl Drop for Img {
    fn drop(&mut self) {
        // imago writes its caches back when dropped: before the lock goes.
        self.qcow2 = None;
        lock::unlock(&self.file);
    }
}

fn probe(file: &File, size: u64) -> io::Result<Option<ForeignFormat>> {
    let mut head = vec![0u8; size.min(format::HEAD_LEN as u64) as usize];
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

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Whether `[offset, offset + len)` of `img` reads as zeroes without holding data.
fn all_zero_extents(img: &Img, offset: u64, len: u64, deep: bool) -> io::Result<bool> {
    let mut at = offset;
    while at < offset + len {
        let (what, n) = img.extent(at, offset + len - at, deep)?;
        if what == Extent::Data || n == 0 {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

/// What `vireo disk convert` writes.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// The source's format; probed from its content when `None`.
    pub src_format: Option<DiskFormat>,
    /// The destination's: qcow2 (v3, via imago) or raw (a sparse file).
    pub qcow2: bool,
    pub cluster_size: Option<usize>,
    /// A backing file for the (qcow2) destination: only what differs from it is written.
    pub backing: Option<PathBuf>,
}

/// Copies the disk `src` (its whole backing chain, flattened) into a new image `dst`, writing
/// only what is not zero (or, on a backing file, only what differs from it). `dst` must not
/// exist; it appears only once complete.
pub fn convert(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
    progress: Progress,
) -> io::Result<()> {
    if dst.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists; vireo disk convert does not overwrite images",
                dst.display()
            ),
        ));
    }
    let source = Img::open(src, false, opts.src_format, true)?;
    let name = dst
        .file_name()
        .ok_or_else(|| bad(dst, "expected a file name"))?;
    let tmp = dst.with_file_name(format!(
        ".{}.vireo-convert-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = convert_into(&source, &tmp, opts, progress).and_then(|()| {
        rename_noreplace(&tmp, dst)?;
        let dir = dst.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} appeared while converting; it is left as it was",
                to.display()
            ),
        )),
        // A file system without RENAME_NOREPLACE: look, then rename.
        Err(Errno::EINVAL) if !to.exists() => std::fs::rename(from, to),
        Err(e) => Err(named(to, e.into())),
    }
}

fn convert_into(
    source: &Img,
    tmp: &Path,
    opts: &ConvertOptions,
    progress: Progress,
) -> io::Result<()> {
    let size = source.size;
    super::create(
        tmp,
        opts.qcow2,
        Some(size),
        opts.backing.as_deref(),
        opts.cluster_size,
    )?;
    let fmt = if opts.qcow2 {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    };
    let dest = Img::open(tmp, true, Some(fmt), true)?;
    let backing = match &opts.backing {
        Some(b) => Some(Img::open(b, false, None, true)?),
        None => None,
    };
    // A qcow2 destination is written whole clusters at a time: a cluster written in part
    // would take the rest from the backing file, not from the source.
    let granule = if opts.qcow2 {
        dest.cluster_size()
    } else {
        RAW_GRANULE
    };
    let chunk = CHUNK.max(granule);
    let mut buf = vec![0u8; chunk as usize];
    let mut base = vec![0u8; chunk as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk);
        let (src, b) = (&mut buf[..n as usize], &mut base[..n as usize]);
        let zero = all_zero_extents(source, off, n, true)?;
        match &backing {
            None if zero => {}
            None => {
                source.read(src, off)?;
                for (i, piece) in src.chunks(granule as usize).enumerate() {
                    if !is_zero(piece) {
                        dest.write(piece, off + i as u64 * granule)?;
                    }
                }
            }
            Some(back) => {
                if zero {
                    src.fill(0);
                } else {
                    source.read(src, off)?;
                }
                back.read_padded(b, off)?;
                let pieces = src.chunks(granule as usize).zip(b.chunks(granule as usize));
                for (i, (s, bk)) in pieces.enumerate() {
                    let at = off + i as u64 * granule;
                    if s == bk {
                    } else if is_zero(s) {
                        dest.write_zeroes(at, s.len() as u64)?;
                    } else {
                        dest.write(s, at)?;
                    }
                }
            }
        }
        off += n;
        progress(off, size);
    }
    dest.sync()
}

/// Writes what the qcow2 image `overlay` holds itself into its backing file (grown first if
/// smaller), then empties the overlay, which afterwards reads the same through the updated
/// backing file. Returns the backing file's path.
pub fn commit(overlay: &Path, progress: Progress) -> io::Result<PathBuf> {
    let chain = super::info(overlay)?;
    if chain.format != "qcow2" {
        return Err(bad(
            overlay,
            format!(
                "a {} image; only a qcow2 overlay can be committed",
                chain.format
            ),
        ));
    }
    let Some(base_info) = chain.backing.as_deref() else {
        return Err(bad(overlay, "it has no backing file to commit into"));
    };
    let base_format = match base_info.format.as_str() {
        "raw" => DiskFormat::Raw,
        "qcow2" => DiskFormat::Qcow2,
        other => {
            return Err(bad(
                &base_info.path,
                format!("a {other} backing file cannot be written here"),
            ))
        }
    };
    // The overlay first: it is the image named, and holding it keeps a VM from starting on it.
    let top = Img::open(overlay, true, Some(DiskFormat::Qcow2), false)?;
    if base_info.virtual_size < top.size {
        super::resize(&base_info.path, top.size)?;
    }
    let base = Img::open(&base_info.path, true, Some(base_format), true)?;
    let size = top.size;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0;
    while off < size {
        let (what, n) = top.extent(off, (size - off).min(CHUNK), false)?;
        match what {
            Extent::Unallocated => {}
            Extent::Zero => base.write_zeroes(off, n)?,
            Extent::Data => {
                let b = &mut buf[..n as usize];
                top.read(b, off)?;
                base.write(b, off)?;
            }
        }
        off += n;
        progress(off, size);
    }
    base.sync()?;
    if let Some(q) = &top.qcow2 {
        q.discard_to_backing(0, size)
            .map_err(|e| named(overlay, e))?;
    }
    top.sync()?;
    Ok(base_info.path.clone())
}

/// What `vireo disk rebase` does.
#[derive(Debug, Clone, Default)]
pub struct RebaseOptions {
    /// The new backing file's name as the header will hold it (relative names are relative
    /// to the overlay's directory); `None` makes the image standalone.
    pub backing: Option<String>,
    /// The new backing file's format; probed when `None`.
    pub backing_format: Option<DiskFormat>,
    /// Rewrite the name only, copying nothing (for a backing file moved or renamed).
    pub unsafe_names_only: bool,
}

/// Puts the qcow2 image `overlay` on another backing file (or none). Safe mode first copies
/// into the overlay every range it does not hold where the old and the new backing file
/// differ, so the guest sees the same disk.
pub fn rebase(overlay: &Path, opts: &RebaseOptions, progress: Progress) -> io::Result<()> {
    let current = super::info(overlay).or_else(|e| {
        // Unsafe mode is how a broken chain (a moved backing file) is repaired.
        if opts.unsafe_names_only {
            super::info_one(overlay)
        } else {
            Err(e)
        }
    })?;
    if current.format != "qcow2" {
        return Err(bad(
            overlay,
            format!(
                "a {} image; only a qcow2 image has a backing file",
                current.format
            ),
        ));
    }
    let new_path = opts.backing.as_ref().map(|b| {
        let p = Path::new(b);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            overlay.parent().unwrap_or(Path::new(".")).join(p)
        }
    });
    if let Some(p) = &new_path {
        if let (Ok(a), Ok(b)) = (std::fs::metadata(p), std::fs::metadata(overlay)) {
            if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
                return Err(bad(overlay, "an image cannot be its own backing file"));
            }
        }
    }
    let mut top = Img::open(
        overlay,
        true,
        Some(DiskFormat::Qcow2),
        !opts.unsafe_names_only,
    )?;
    let format = match (&new_path, opts.backing_format) {
        (None, _) => None,
        (Some(_), Some(DiskFormat::Raw)) => Some("raw"),
        (Some(_), Some(DiskFormat::Qcow2)) => Some("qcow2"),
        (Some(p), None) => {
            let i = super::info_one(p).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{e}; give the backing format (-F raw|qcow2) if it does not exist yet"),
                )
            })?;
            match i.format.as_str() {
                "raw" => Some("raw"),
                "qcow2" => Some("qcow2"),
                other => {
                    return Err(bad(
                        p,
                        format!("a {other} image cannot back a qcow2 image here"),
                    ))
                }
            }
        }
    };
    if !opts.unsafe_names_only {
        let new = match &new_path {
            Some(p) => Some(Img::open(
                p,
                false,
                format.map(|f| {
                    if f == "raw" {
                        DiskFormat::Raw
                    } else {
                        DiskFormat::Qcow2
                    }
                }),
                true,
            )?),
            None => None,
        };
        copy_differences(
            &top,
            new.as_ref(),
            current.cluster_size.unwrap_or(64 << 10),
            progress,
        )?;
        top.sync()?;
    }
    // imago's caches go back to the file before the header is rewritten underneath it.
    top.qcow2 = None;
    set_backing(&top.file, overlay, opts.backing.as_deref(), format)?;
    top.file.sync_all().map_err(|e| named(overlay, e))
}

fn copy_differences(
    top: &Img,
    new: Option<&Img>,
    cluster: u64,
    progress: Progress,
) -> io::Result<()> {
    let size = top.size;
    let chunk = CHUNK.max(cluster);
    let (mut old_buf, mut new_buf) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let mut off = 0;
    while off < size {
        let (what, n) = top.extent(off, (size - off).min(chunk), false)?;
        if what == Extent::Unallocated {
            let (old, newb) = (&mut old_buf[..n as usize], &mut new_buf[..n as usize]);
            // Through the old backing chain, as the guest reads it now.
            top.read(old, off)?;
            match new {
                Some(img) => img.read_padded(newb, off)?,
                None => newb.fill(0),
            }
            // Unallocated ranges are whole clusters (but at the disk's end), so writing
            // cluster-sized pieces allocates nothing more than it must.
            let pieces = old
                .chunks(cluster as usize)
                .zip(newb.chunks(cluster as usize));
            for (i, (o, nw)) in pieces.enumerate() {
                let at = off + i as u64 * cluster;
                if o == nw {
                } else if is_zero(o) {
                    top.write_zeroes(at, o.len() as u64)?;
                } else {
                    top.write(o, at)?;
                }
            }
        }
        off += n;
        progress(off, size);
    }
    Ok(())
}

/// Rewrites the backing file name and the backing-format header extension of a qcow2 image,
/// keeping its other header extensions as they are. Hand-written: imago 0.2.6 writes headers
/// only when it creates an image (its header type is private), and offers no way to change a
/// backing file name.
fn set_backing(
    file: &File,
    path: &Path,
    name: Option<&str>,
    backing_format: Option<&str>,
) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut fixed = [0u8; 104];
    let fixed_len = len.min(104) as usize;
    file.read_exact_at(&mut fixed[..fixed_len], 0)?;
    let be32 = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let be64 = |b: &[u8], o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
    if fixed_len < 72 || &fixed[..4] != b"QFI\xfb" {
        return Err(bad(path, "not a qcow2 image"));
    }
    let version = be32(&fixed, 4);
    let cluster_bits = be32(&fixed, 20);
    if !(9..=21).contains(&cluster_bits) || !(2..=3).contains(&version) {
        return Err(bad(
            path,
            "the qcow2 header is not one vireo can rewrite (version 2 or 3, cluster bits 9 to 21)",
        ));
    }
    let cs = 1u64 << cluster_bits;
    let header_len = if version == 3 {
        if fixed_len < 104 {
            return Err(bad(path, "the qcow2 header is cut short"));
        }
        u64::from(be32(&fixed, 100))
    } else {
        72
    };
    if !(72..=cs).contains(&header_len) || header_len > len {
        return Err(bad(path, "the qcow2 header length is out of range"));
    }
    // Nothing but the header may live in the first cluster, or rewriting it would clobber it.
    let l1 = be64(&fixed, 40);
    let reftable = be64(&fixed, 48);
    let snapshots = (be32(&fixed, 60) != 0).then(|| be64(&fixed, 64));
    if l1 < cs || reftable < cs || snapshots.is_some_and(|s| s < cs) {
        return Err(bad(
            path,
            "qcow2 tables lie in the header cluster; refusing to rewrite the header",
        ));
    }
    let mut head = vec![0u8; len.min(cs) as usize];
    file.read_exact_at(&mut head, 0)?;
    let old_name = be64(&head, 8);
    let old_name_end = old_name + u64::from(be32(&head, 16));
    // Extensions run from the header's end to the backing file name (an old v2 image may have
    // the name right after the header and no extensions) or the cluster's end.
    let ext_end = if old_name > header_len {
        old_name.min(head.len() as u64)
    } else {
        head.len() as u64
    };
    let mut kept: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut at = header_len;
    let mut old_end = header_len;
    while at + 8 <= ext_end {
        let kind = be32(&head, at as usize);
        let elen = u64::from(be32(&head, at as usize + 4));
        if kind == 0 {
            old_end = at + 8;
            break;
        }
        if at + 8 + elen > ext_end {
            return Err(bad(path, "a header extension runs past the header"));
        }
        if kind != BACKING_FORMAT_EXT {
            kept.push((
                kind,
                head[(at + 8) as usize..(at + 8 + elen) as usize].to_vec(),
            ));
        }
        at += 8 + elen.div_ceil(8) * 8;
        old_end = at;
    }
    if let Some(f) = backing_format {
        kept.insert(0, (BACKING_FORMAT_EXT, f.as_bytes().to_vec()));
    }
    let mut out = head[..header_len as usize].to_vec();
    for (kind, data) in &kept {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    if version == 3 || !kept.is_empty() {
        out.extend_from_slice(&[0u8; 8]);
    }
    let (name_off, name_len) = match name {
        Some(n) => {
            if n.is_empty() || n.len() > 1023 {
                return Err(bad(
                    path,
                    "a backing file name must be 1 to 1023 bytes long",
                ));
            }
            let off = out.len() as u64;
            out.extend_from_slice(n.as_bytes());
            (off, n.len() as u32)
        }
        None => (0, 0),
    };
    if out.len() as u64 > cs {
        return Err(bad(
            path,
            "the backing file name does not fit in the header cluster",
        ));
    }
    out[8..16].copy_from_slice(&name_off.to_be_bytes());
    out[16..20].copy_from_slice(&name_len.to_be_bytes());
    // Clear what the old name and extensions occupied beyond the new header.
    let clear_to = old_end.max(old_name_end).min(cs).min(head.len() as u64);
    if (out.len() as u64) < clear_to {
        out.resize(clear_to as usize, 0);
    }
    file.write_all_at(&out, 0).map_err(|e| named(path, e))
}
