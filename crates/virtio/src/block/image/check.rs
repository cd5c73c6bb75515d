//! `vireo disk check`: a qcow2 image's metadata checked against itself, as `qemu-img check`
//! checks it: every cluster's refcount against the references the image really makes (header,
//! L1 and L2 tables, data and compressed clusters, the refcount table and blocks, snapshot
//! tables and the snapshots' own tables), every table entry inside the file and aligned,
//! clusters claimed by two different structures (overlapping metadata), the COPIED flags, and
//! the dirty and corrupt bits.
//!
//! Hand-written: imago 0.2.6 has no check or repair; it trusts the refcounts it finds when it
//! opens an image (and refuses a dirty or corrupt one, exactly the images a check must still
//! read). Everything is read with positioned reads whose offsets and lengths are checked
//! against the file first, so a hostile image makes findings, never a read outside the file,
//! a panic or an allocation larger than the file.
//!
//! Verdicts as qemu-img's: a cluster whose refcount is above its references is leaked (space
//! wasted, the data safe); below, or any bad table entry, is a corruption (a write could
//! overwrite live data). One difference: the corrupt bit (QEMU found corruption earlier and
//! stopped writing the image) counts as a corruption here, since neither QEMU nor vireo will
//! write the image until it is repaired.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Serialize;

use super::super::lock::{self, LockError};
use super::bad;

/// Findings listed one by one; past this many only counted.
const MAX_MESSAGES: usize = 100;
/// QEMU's limits: an L1 table of at most 32 MiB, a refcount table of at most 8 MiB, 65536
/// snapshots.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_SNAPSHOTS: u32 = 65536;

/// What `vireo disk check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub path: PathBuf,
    pub format: String,
    /// Inconsistencies that can lose data on the next write.
    pub corruptions: u64,
    /// Clusters counted as used that nothing uses.
    pub leaks: u64,
    /// The findings, at most [`MAX_MESSAGES`] of them.
    pub messages: Vec<String>,
    /// The dirty bit (lazy refcounts not written back): refcount mismatches are expected.
    pub dirty: bool,
    /// The corrupt bit.
    pub marked_corrupt: bool,
    pub cluster_size: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Of them, those allocated in this image (data, compressed or zero with a cluster).
    pub allocated_clusters: u64,
    pub compressed_clusters: u64,
    /// End of the last cluster in use.
    pub image_end_offset: u64,
}

impl CheckReport {
    /// qemu-img check's exit codes: 0 clean, 2 corruptions, 3 leaks only.
    pub fn exit_code(&self) -> u8 {
        if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }

    fn corruption(&mut self, msg: String) {
        self.corruptions += 1;
        self.note(msg);
    }

    fn leak(&mut self, msg: String) {
        self.leaks += 1;
        self.note(msg);
    }

    fn note(&mut self, msg: String) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(msg);
        } else if self.messages.len() == MAX_MESSAGES {
            self.messages
                .push("(more findings are counted but not listed)".into());
        }
    }
}

/// What a cluster is used for: two different uses of one cluster are overlapping metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Header,
    L1,
    SnapshotL1,
    L2,
    Data,
    Compressed,
    RefTable,
    RefBlock,
    SnapshotTable,
}

impl Use {
    fn name(self) -> &'static str {
        match self {
            Use::Header => "the header",
            Use::L1 => "the L1 table",
            Use::SnapshotL1 => "a snapshot's L1 table",
            Use::L2 => "an L2 table",
            Use::Data => "a data cluster",
            Use::Compressed => "compressed data",
            Use::RefTable => "the refcount table",
            Use::RefBlock => "a refcount block",
            Use::SnapshotTable => "the snapshot table",
        }
    }
}

struct Checker {
    file: File,
    len: u64,
    cb: u32,
    cs: u64,
    extended_l2: bool,
    external_data: bool,
    /// References found: count and first use, by host cluster.
    refs: HashMap<u64, (u64, Use)>,
    /// Clusters already reported as overlapping.
    overlaps: std::collections::HashSet<u64>,
    report: CheckReport,
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// L1 and L2 entries' offset bits (9 to 55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

impl Checker {
    /// Reads `len` bytes at `offset` if they lie inside the file.
    fn read(&self, offset: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                let mut b = vec![0u8; len as usize];
                self.file.read_exact_at(&mut b, offset)?;
                Ok(Some(b))
            }
            _ => Ok(None),
        }
    }

    /// Counts a reference to the clusters of `[offset, offset + len)`. As QEMU does, a range
    /// may run into the last cluster past the end of the file (an image's last cluster may be
    /// written only in part), not a cluster or more beyond it.
    fn reference(&mut self, offset: u64, len: u64, what: Use) {
        let end = offset.saturating_add(len.max(1));
        if end > self.len && end - self.len >= self.cs {
            self.report.corruption(format!(
                "{} at {offset:#x} (+{len:#x}) lies past the end of the file ({:#x})",
                what.name(),
                self.len
            ));
            return;
        }
        for c in offset >> self.cb..=(end - 1) >> self.cb {
            let e = self.refs.entry(c).or_insert((0, what));
            e.0 += 1;
            let first = e.1;
            let shared_ok = first == what && matches!(what, Use::L2 | Use::Data | Use::Compressed);
            if e.0 > 1 && !shared_ok && first != what && self.overlaps.insert(c) {
                self.report.corruption(format!(
                    "cluster {c} (offset {:#x}) is both {} and {}",
                    c << self.cb,
                    first.name(),
                    what.name()
                ));
            }
        }
    }

    /// A table of `entries` 8-byte entries at `offset`: referenced, and read if it is inside
    /// the file and aligned.
    fn table(&mut self, offset: u64, bytes: u64, what: Use) -> io::Result<Option<Vec<u8>>> {
        if !offset.is_multiple_of(self.cs) {
            self.report.corruption(format!(
                "{} at {offset:#x} is not aligned to a cluster",
                what.name()
            ));
            return Ok(None);
        }
        if bytes == 0 {
            return Ok(Some(Vec::new()));
        }
        self.reference(offset, bytes, what);
        let t = self.read(offset, bytes)?;
        if t.is_none() {
            // `reference` reported a table past the end unless it only runs into the last,
            // partly written cluster: a table must be whole.
            if offset.saturating_add(bytes) - self.len < self.cs {
                self.report.corruption(format!(
                    "{} at {offset:#x} (+{bytes:#x}) runs past the end of the file",
                    what.name()
                ));
            }
        }
        Ok(t)
    }

    /// Walks an L1 table and its L2 tables, counting what they reference.
    /// `active`: the image's own table (allocation statistics are about it).
    fn l1(&mut self, l1: &[u8], active: bool, which: &str) -> io::Result<()> {
        let mut walked = std::collections::HashSet::new();
        let l2_entry_bytes = if self.extended_l2 { 16 } else { 8 };
        let l2_entries = self.cs / l2_entry_bytes;
        for (i, e) in l1.chunks_exact(8).map(|c| be64(c, 0)).enumerate() {
            let l2_off = e & OFFSET_MASK;
            if e & !(OFFSET_MASK | COPIED) != 0 {
                self.report.corruption(format!(
                    "{which} L1 entry {i} ({e:#x}) has reserved bits set"
                ));
            }
            if l2_off == 0 {
                continue;
            }
            if !l2_off.is_multiple_of(self.cs) {
                self.report.corruption(format!(
                    "{which} L1 entry {i}: L2 table at {l2_off:#x} is not aligned to a cluster"
                ));
                continue;
            }
            self.reference(l2_off, self.cs, Use::L2);
            // The same L2 table twice in one L1 table is already a refcount mismatch; its
            // entries are counted once (a hostile table cannot make the walk quadratic).
            if !walked.insert(l2_off) {
                continue;
            }
            let Some(l2) = self.read(l2_off, self.cs)? else {
                self.report.corruption(format!(
                    "{which} L1 entry {i}: L2 table at {l2_off:#x} lies past the end of the \
                     file ({:#x})",
                    self.len
                ));
                continue;
            };
            for j in 0..l2_entries as usize {
                let e = be64(&l2, j * l2_entry_bytes as usize);
                self.l2_entry(e, i as u64 * l2_entries + j as u64, active, which)?;
            }
        }
        Ok(())
    }

    fn l2_entry(&mut self, e: u64, guest: u64, active: bool, which: &str) -> io::Result<()> {
        let at = guest << self.cb;
        if e & COMPRESSED != 0 {
            // Offset bits 0 to x-1, then the sector count less one (x = 62 - (cb - 8)).
            let x = 62 - (self.cb - 8);
            let off = e & ((1u64 << x) - 1);
            let sectors = ((e >> x) & ((1u64 << (self.cb - 8)) - 1)) + 1;
            if e & COPIED != 0 {
                self.report.corruption(format!(
                    "{which}: the compressed cluster at guest offset {at:#x} has the COPIED flag"
                ));
            }
            let start = off & !511;
            self.reference(start, sectors * 512, Use::Compressed);
            if active {
                self.report.allocated_clusters += 1;
                self.report.compressed_clusters += 1;
            }
            return Ok(());
        }
        let off = e & OFFSET_MASK;
        let zero = e & 1 != 0 && !self.extended_l2;
        let reserved = e & !(OFFSET_MASK | COPIED | 1);
        if reserved != 0 {
            self.report.corruption(format!(
                "{which}: the L2 entry for guest offset {at:#x} ({e:#x}) has reserved bits set"
            ));
        }
        if off == 0 {
            if zero && active {
                self.report.allocated_clusters += 1;
            }
            return Ok(());
        }
        if active {
            self.report.allocated_clusters += 1;
        }
        if self.external_data {
            // The data lies in another file, which refcounts do not cover.
            return Ok(());
        }
        if !off.is_multiple_of(self.cs) {
            self.report.corruption(format!(
                "{which}: the cluster for guest offset {at:#x} at {off:#x} is not aligned"
            ));
            return Ok(());
        }
        self.reference(off, self.cs, Use::Data);
        Ok(())
    }
}

/// Checks the image at `path`. `Err` when it cannot be checked at all: not found, in use by
/// a writer, not raw or qcow2, a header vireo cannot read. Raw images have no metadata: the
/// report says so (format `raw`, nothing found).
pub fn check(path: &Path) -> io::Result<CheckReport> {
    let file = super::format::open_image_read(path, "disk image")?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(bad(path, "expected a regular file"));
    }
    // A reader lock: an image being written changes under the check.
    match lock::lock(&file, true) {
        Ok(()) | Err(LockError::Unsupported(_)) => {}
        Err(LockError::Conflict(holder)) => {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use by another process ({}); a check needs it to stand still",
                    path.display(),
                    holder.describe()
                ),
            ))
        }
        Err(LockError::Io(e)) => return Err(e),
    }
    let r = check_locked(file.try_clone()?, path, meta.len());
    lock::unlock(&file);
    r
}

fn check_locked(file: File, path: &Path, len: u64) -> io::Result<CheckReport> {
    let mut report = CheckReport {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let mut head = vec![0u8; len.min(super::super::format::HEAD_LEN as u64) as usize];
    file.read_exact_at(&mut head, 0)?;
    match super::super::format::probe(&head, None) {
        None => {
            report.format = "raw".into();
            return Ok(report);
        }
        Some(super::super::format::ForeignFormat::Qcow2) => report.format = "qcow2".into(),
        Some(other) => {
            return Err(bad(
                path,
                format!("a {} image; vireo checks qcow2 images", other.name()),
            ))
        }
    }
    if head.len() < 72 {
        return Err(bad(path, "the qcow2 header is cut short"));
    }
    let version = be32(&head, 4);
    if !(2..=3).contains(&version) {
        return Err(bad(
            path,
            format!("qcow2 version {version} (expected 2 or 3)"),
        ));
    }
    let cb = be32(&head, 20);
    if !(9..=21).contains(&cb) {
        return Err(bad(path, format!("cluster bits {cb} (expected 9 to 21)")));
    }
    let cs = 1u64 << cb;
    report.cluster_size = cs;
    let size = be64(&head, 24);
    report.total_clusters = size.div_ceil(cs);
    let (incompatible, refcount_order) = if version == 3 {
        if head.len() < 104 {
            return Err(bad(path, "the qcow2 header is cut short"));
        }
        let header_len = u64::from(be32(&head, 100));
        if !(104..=cs).contains(&header_len) {
            return Err(bad(
                path,
                format!("header length {header_len} (expected 104 to the cluster size {cs})"),
            ));
        }
        (be64(&head, 72), be32(&head, 96))
    } else {
        (0, 4)
    };
    if refcount_order > 6 {
        return Err(bad(
            path,
            format!("refcount order {refcount_order} (expected 0 to 6)"),
        ));
    }
    const KNOWN: u64 = 0b1_1111;
    if incompatible & !KNOWN != 0 {
        return Err(bad(
            path,
            format!(
                "unknown incompatible features {:#x}; vireo cannot check this image",
                incompatible & !KNOWN
            ),
        ));
    }
    report.dirty = incompatible & 1 != 0;
    report.marked_corrupt = incompatible & 2 != 0;
    if report.dirty {
        report.note(
            "the dirty bit is set (lazy refcounts were not written back): refcount \
             mismatches are expected until QEMU repairs them"
                .into(),
        );
    }
    if report.marked_corrupt {
        report
            .corruption("the image is marked corrupt (QEMU found corruption in it before)".into());
    }
    let mut c = Checker {
        file,
        len,
        cb,
        cs,
        external_data: incompatible & 4 != 0,
        extended_l2: incompatible & 16 != 0,
        refs: HashMap::new(),
        overlaps: Default::default(),
        report,
    };
    c.reference(0, cs, Use::Header);

    // The active L1 table.
    let l1_size = u64::from(be32(&head, 36));
    let l1_off = be64(&head, 40);
    let l1 = if l1_size * 8 > MAX_L1_BYTES {
        c.report.corruption(format!(
            "the L1 table has {l1_size} entries (at most {} allowed)",
            MAX_L1_BYTES / 8
        ));
        None
    } else {
        c.table(l1_off, l1_size * 8, Use::L1)?
    };
    if let Some(l1) = &l1 {
        c.l1(l1, true, "active")?;
    }

    // Snapshots: their table and their own L1 tables (sharing L2 tables and data is what
    // snapshots do; their refcounts say so).
    let nb_snapshots = be32(&head, 60);
    let snap_off = be64(&head, 64);
    if nb_snapshots > MAX_SNAPSHOTS {
        c.report.corruption(format!(
            "{nb_snapshots} snapshots (at most {MAX_SNAPSHOTS} allowed)"
        ));
    } else if nb_snapshots > 0 {
        snapshots(&mut c, snap_off, nb_snapshots)?;
    }

    // The refcount table and its blocks.
    let rt_off = be64(&head, 48);
    let rt_clusters = u64::from(be32(&head, 56));
    let rt = if rt_clusters * cs > MAX_REFTABLE_BYTES.max(cs) {
        c.report.corruption(format!(
            "the refcount table has {rt_clusters} clusters (at most {} bytes allowed)",
            MAX_REFTABLE_BYTES
        ));
        None
    } else {
        c.table(rt_off, rt_clusters * cs, Use::RefTable)?
    };
    let rt = rt.unwrap_or_default();
    let refcount_bits = 1u64 << refcount_order;
    let rb_entries = cs * 8 / refcount_bits;
    let mut blocks: HashMap<u64, Rc<Vec<u8>>> = HashMap::new();
    let mut refblocks: Vec<Option<Rc<Vec<u8>>>> = Vec::with_capacity(rt.len() / 8);
    for (i, e) in rt.chunks_exact(8).map(|b| be64(b, 0)).enumerate() {
        let off = e & !511;
        if e & 511 != 0 {
            c.report.corruption(format!(
                "refcount table entry {i} ({e:#x}) has reserved bits set"
            ));
        }
        if off == 0 {
            refblocks.push(None);
            continue;
        }
        if !off.is_multiple_of(cs) {
            c.report.corruption(format!(
                "refcount block {i} at {off:#x} is not aligned to a cluster"
            ));
            refblocks.push(None);
            continue;
        }
        c.reference(off, cs, Use::RefBlock);
        let block = match blocks.get(&off) {
            Some(b) => Some(Rc::clone(b)),
            None => match c.read(off, cs)? {
                Some(b) => {
                    let b = Rc::new(b);
                    blocks.insert(off, Rc::clone(&b));
                    Some(b)
                }
                None => {
                    c.report.corruption(format!(
                        "refcount block {i} at {off:#x} lies past the end of the file"
                    ));
                    None
                }
            },
        };
        refblocks.push(block);
    }
    let stored = |cluster: u64| -> u64 {
        let (i, j) = ((cluster / rb_entries) as usize, cluster % rb_entries);
        let Some(Some(b)) = refblocks.get(i) else {
            return 0;
        };
        let bit = j * refcount_bits;
        match refcount_bits {
            1 | 2 | 4 => {
                // Sub-byte refcounts fill each byte from its least significant bit.
                let byte = b[(bit / 8) as usize];
                (u64::from(byte) >> (bit % 8)) & ((1 << refcount_bits) - 1)
            }
            8 => u64::from(b[j as usize]),
            16 => u64::from(u16::from_be_bytes([
                b[2 * j as usize],
                b[2 * j as usize + 1],
            ])),
            32 => u64::from(be32(b, 4 * j as usize)),
            _ => be64(b, 8 * j as usize),
        }
    };

    // The COPIED flags of the active tables: set exactly when the refcount is 1 (QEMU writes
    // in place only then).
    if let Some(l1) = &l1 {
        copied_flags(&mut c, l1, &stored)?;
    }

    // Refcounts against references, over every cluster of the file and every cluster
    // referenced (QEMU's range).
    let file_clusters = len.div_ceil(cs);
    let highest = c.refs.keys().max().map_or(0, |&k| k + 1);
    let clusters = file_clusters.max(highest);
    let mut findings = Vec::new();
    // The end of the last cluster in use, by refcount or by reference (as QEMU reports it).
    let mut end = highest;
    for (i, b) in refblocks.iter().enumerate() {
        if b.is_none() {
            continue;
        }
        let first = i as u64 * rb_entries;
        for cluster in first..(first + rb_entries).min(clusters) {
            let s = stored(cluster);
            let r = c.refs.get(&cluster).map_or(0, |e| e.0);
            if s > 0 {
                end = end.max(cluster + 1);
            }
            if s != r {
                findings.push((cluster, s, r));
            }
        }
    }
    let covered = |cluster: u64| {
        matches!(
            refblocks.get((cluster / rb_entries) as usize),
            Some(Some(_))
        )
    };
    for (&cluster, &(r, _)) in &c.refs {
        if !covered(cluster) {
            findings.push((cluster, 0, r));
        }
    }
    findings.sort_unstable();
    for (cluster, s, r) in findings {
        if s > r {
            c.report.leak(format!(
                "Leaked cluster {cluster} refcount={s} reference={r}"
            ));
        } else {
            c.report.corruption(format!(
                "ERROR cluster {cluster} refcount={s} reference={r}"
            ));
        }
    }
    c.report.image_end_offset = end * cs;
    Ok(c.report)
}

fn snapshots(c: &mut Checker, offset: u64, count: u32) -> io::Result<()> {
    if !offset.is_multiple_of(c.cs) {
        c.report.corruption(format!(
            "the snapshot table at {offset:#x} is not aligned to a cluster"
        ));
        return Ok(());
    }
    let mut at = offset;
    let mut l1s = Vec::new();
    for n in 0..count {
        let Some(h) = c.read(at, 40)? else {
            c.report.corruption(format!(
                "snapshot {n} at {at:#x} lies past the end of the file"
            ));
            break;
        };
        let (l1_off, l1_size) = (be64(&h, 0), u64::from(be32(&h, 8)));
        let (id_len, name_len) = (
            u64::from(u16::from_be_bytes([h[12], h[13]])),
            u64::from(u16::from_be_bytes([h[14], h[15]])),
        );
        let extra = u64::from(be32(&h, 36));
        at = (at + 40 + extra + id_len + name_len).next_multiple_of(8);
        l1s.push((n, l1_off, l1_size));
    }
    c.reference(offset, (at - offset).max(1), Use::SnapshotTable);
    for (n, l1_off, l1_size) in l1s {
        if l1_size * 8 > MAX_L1_BYTES {
            c.report
                .corruption(format!("snapshot {n}'s L1 table has {l1_size} entries"));
            continue;
        }
        if let Some(l1) = c.table(l1_off, l1_size * 8, Use::SnapshotL1)? {
            c.l1(&l1, false, &format!("snapshot {n}"))?;
        }
    }
    Ok(())
}

fn copied_flags(c: &mut Checker, l1: &[u8], stored: &dyn Fn(u64) -> u64) -> io::Result<()> {
    let l2_entry_bytes: usize = if c.extended_l2 { 16 } else { 8 };
    let mut seen = std::collections::HashSet::new();
    for (i, e) in l1.chunks_exact(8).map(|b| be64(b, 0)).enumerate() {
        let l2_off = e & OFFSET_MASK;
        if l2_off == 0 || !l2_off.is_multiple_of(c.cs) {
            continue;
        }
        let rc = stored(l2_off >> c.cb);
        if (rc == 1) != (e & COPIED != 0) {
            c.report.corruption(format!(
                "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}"
            ));
        }
        if !seen.insert(l2_off) || c.external_data {
            continue;
        }
        let Some(l2) = c.read(l2_off, c.cs)? else {
            continue;
        };
        for j in 0..(c.cs as usize / l2_entry_bytes) {
            let e = be64(&l2, j * l2_entry_bytes);
            let off = e & OFFSET_MASK;
            if e & COMPRESSED != 0 || off == 0 || !off.is_multiple_of(c.cs) {
                continue;
            }
            let rc = stored(off >> c.cb);
            if (rc == 1) != (e & COPIED != 0) {
                c.report.corruption(format!(
                    "ERROR OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}"
                ));
            }
        }
    }
    Ok(())
}
