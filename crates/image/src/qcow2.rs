//! The root disk's last build step: the raw ext4 image `mke2fs` wrote, copied into a qcow2
//! image. The qcow2 file is created by `vireo_virtio::block::image::create` (what `vireo disk
//! create` uses, so the cached base is the same kind of qcow2 as any other vireo makes) and
//! filled through imago, the qcow2 library behind vireo's disks; qemu-img is not needed.
//!
//! Clusters that read as zeroes are left unallocated: most of the filesystem is free space and
//! zeroed inode tables, so the cached base holds only what the tree needs, and a guest still
//! reads exactly the bytes of the raw image.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};

use crate::ImageError;

/// The unit zero ranges are skipped in: the cluster size `create` picks by default (64 KiB),
/// so a skipped range is a whole cluster never allocated.
const CLUSTER: usize = 64 << 10;

/// How much is read and written at once.
const CHUNK: usize = 16 * CLUSTER;

/// Copies the raw image `raw` into a new qcow2 image `out` of the same virtual size. Returns
/// the number of data bytes written (the non-zero clusters).
pub(crate) fn from_raw(raw: &Path, out: &Path) -> Result<u64, ImageError> {
    let mut src = File::open(raw).map_err(|e| ImageError::io("open", raw, e))?;
    let size = src
        .metadata()
        .map_err(|e| ImageError::io("read", raw, e))?
        .len();
    vireo_virtio::block::image::create(out, true, Some(size), None, None)
        .map_err(|e| ImageError::io("create", out, e))?;
    let written = copy_nonzero(&mut src, size, out).inspect_err(|_| {
        let _ = std::fs::remove_file(out);
    })?;
    Ok(written)
}

fn copy_nonzero(src: &mut File, size: u64, out: &Path) -> Result<u64, ImageError> {
    let io = |e| ImageError::io("write", out, e);
    let storage =
        imago::file::File::open(StorageOpenOptions::new().filename(out).write(true)).map_err(io)?;
    // A new image has no backing file; nothing else may be opened on its behalf.
    let driver = Qcow2::<imago::file::File>::builder(storage)
        .write(true)
        .open(imago::format::gate::DenyImplicitOpenGate::default())
        .map_err(io)?;
    let access = FormatAccess::new(driver);
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    let mut written = 0u64;
    while offset < size {
        let len = CHUNK.min((size - offset) as usize);
        src.read_exact(&mut buf[..len])
            .map_err(|e| ImageError::io("read", out, e))?;
        for (start, end) in nonzero_runs(&buf[..len], CLUSTER) {
            access
                .write(&buf[start..end], offset + start as u64)
                .map_err(io)?;
            written += (end - start) as u64;
        }
        offset += len as u64;
    }
    access.flush().map_err(io)?;
    access.sync().map_err(io)?;
    Ok(written)
}

/// The byte ranges of `buf` to write: consecutive `unit`-sized pieces that are not all zeroes,
/// joined (the last piece may be shorter).
fn nonzero_runs(buf: &[u8], unit: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, piece) in buf.chunks(unit).enumerate() {
        if piece.iter().all(|&b| b == 0) {
            continue;
        }
        let (start, end) = (i * unit, i * unit + piece.len());
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    #[test]
    fn runs_skip_zero_units_and_join_neighbours() {
        let mut b = vec![0u8; 10];
        assert_eq!(nonzero_runs(&b, 4), vec![]);
        b[1] = 1;
        b[5] = 1;
        assert_eq!(nonzero_runs(&b, 4), vec![(0, 8)]);
        b[9] = 1;
        b[5] = 0;
        assert_eq!(nonzero_runs(&b, 4), vec![(0, 4), (8, 10)]);
    }

    fn qemu_img(args: &[&str]) -> std::process::Output {
        Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img is needed to referee the conversion: apt-get install qemu-utils")
    }

    /// qemu-img, not our own reader, says the qcow2 image holds the raw image's bytes, is
    /// consistent, and left the zero ranges unallocated.
    #[test]
    fn qcow2_reads_as_the_raw_image_says_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("root.ext4");
        let out = dir.path().join("root.qcow2");
        let size = 40u64 << 20;
        let f = File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        // Data at the start, across a chunk boundary, in a cluster's last byte and at the very
        // end; zeroes written explicitly (allocated in the raw file) must not be copied.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all_at(&data, 0).unwrap();
        f.write_all_at(&data, CHUNK as u64 * 3 - 1000).unwrap();
        f.write_all_at(&[7], (CLUSTER as u64) * 100 - 1).unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 20 << 20).unwrap();
        f.write_all_at(&[9; 512], size - 512).unwrap();
        drop(f);

        // Clusters 0-3, 47-51 (the run across the boundary), 99 and the last one.
        assert_eq!(
            from_raw(&raw, &out).unwrap(),
            (4 + 5 + 1 + 1) * CLUSTER as u64
        );

        let check = qemu_img(&["check", "-q", out.to_str().unwrap()]);
        assert!(check.status.success(), "{check:?}");
        let cmp = qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(cmp.status.success(), "{cmp:?}");
        let info = qemu_img(&["info", "--output=json", out.to_str().unwrap()]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], size);
        // The file holds the data clusters and a little metadata, not 40 MiB.
        assert!(std::fs::metadata(&out).unwrap().len() < 2 << 20, "{info}");

        // Refuses to overwrite, and leaves the existing file alone.
        assert!(from_raw(&raw, &out).is_err());
        assert!(qemu_img(&["check", "-q", out.to_str().unwrap()])
            .status
            .success());
    }
}
