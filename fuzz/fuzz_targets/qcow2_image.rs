//! A hostile qcow2 image (and its backing file) from the input: `vireo disk info` and
//! `vireo disk check` on it, then the image as a virtio-blk disk behind virtio-mmio, read-only
//! and then read-write, with guest requests (reads, writes, flushes, discards, write-zeroes)
//! from the rest of the input. Info, check and the read-only disk must leave the image as it
//! was, and nothing may write the backing file; after the read-write run, an image that
//! `check` found clean must still be clean: a write may leak clusters, never corrupt the
//! metadata.
//!
//! Input: two bytes give the length of the image part, a list of records (`u8` file: bit 0
//! picks the image `top.qcow2` or its backing file `base.qcow2`, both in a scratch directory;
//! `u32` offset, `u16` length, the bytes), each written at its offset (modulo the size cap) in
//! a file that is otherwise sparse zeroes; the rest is the device input (see `vireo_fuzz`).
//! Real images are mostly zeroes, so a few records describe one: `seeds.py` makes them from
//! `qemu-img` images.
#![no_main]
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_virtio::block::{image, Block, BlockConfig, DiskFormat};

/// Largest file the input makes (a 2 MiB-cluster image with data is six clusters).
const MAX_FILE: u64 = 16 << 20;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("vireo-fuzz-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz scratch directory");
        d
    })
}

/// Writes the records into the files; returns the rest of the input.
fn write_images<'a>(data: &'a [u8], top: &Path, base: &Path) -> &'a [u8] {
    let (mut recs, rest) = match data {
        [a, b, rest @ ..] => {
            let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
            rest.split_at(n)
        }
        _ => (data, &[][..]),
    };
    let mut files: [Option<std::fs::File>; 2] = [None, None];
    while let [which, o0, o1, o2, o3, l0, l1, tail @ ..] = recs {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        recs = next;
        let i = usize::from(which & 1);
        if files[i].is_none() {
            let path = if i == 0 { top } else { base };
            files[i] = std::fs::File::create(path).ok();
        }
        let Some(f) = &files[i] else { continue };
        let offset = u64::from(u32::from_le_bytes([*o0, *o1, *o2, *o3])) % (MAX_FILE - len as u64);
        let end = offset + len as u64;
        // An empty record still sets the length: a large sparse image costs a few bytes.
        if f.metadata().is_ok_and(|m| m.len() < end) {
            let _ = f.set_len(end);
        }
        let _ = f.write_all_at(bytes, offset);
    }
    rest
}

fn disk(path: &Path, readonly: bool) -> Option<Block> {
    Block::open(&BlockConfig {
        path: path.to_path_buf(),
        readonly,
        serial: None,
        format: Some(DiskFormat::Qcow2),
        num_queues: 1,
    })
    .ok()
}

/// The file's bytes, to tell whether something wrote it (both files are at most
/// [`MAX_FILE`] before the read-write run).
fn contents(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fuzz_target!(|data: &[u8]| {
    let top = dir().join("top.qcow2");
    let base = dir().join("base.qcow2");
    let _ = std::fs::remove_file(&top);
    let _ = std::fs::remove_file(&base);
    let device = write_images(data, &top, &base);
    if !top.exists() {
        return;
    }
    let (top_before, base_before) = (contents(&top), contents(&base));
    let _ = image::info(&top);
    let _ = image::info_one(&top);
    let clean = image::check(&top).is_ok_and(|r| r.corruptions == 0 && !r.dirty);
    if let Some(b) = disk(&top, true) {
        vireo_fuzz::run_mmio_device(Box::new(b), 1, device);
    }
    // Describing, checking and a read-only disk only read.
    assert!(
        contents(&top) == top_before,
        "info, check or the read-only disk wrote the image"
    );
    if let Some(b) = disk(&top, false) {
        vireo_fuzz::run_mmio_device(Box::new(b), 1, device);
        // Dropped above: its caches are written back and its locks released.
        if clean {
            match image::check(&top) {
                Ok(r) => assert!(
                    r.corruptions == 0,
                    "guest requests corrupted a clean image: {:?}",
                    r.messages
                ),
                Err(e) => panic!("a clean image cannot be checked after guest requests: {e}"),
            }
        }
    }
    // A backing file is only ever read, whatever writes the image on it.
    assert!(
        contents(&base) == base_before,
        "the backing file was written"
    );
});
