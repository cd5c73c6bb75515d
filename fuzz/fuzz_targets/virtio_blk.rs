//! virtio-blk behind virtio-mmio on a 64 KiB raw image: request headers, segments, discard and
//! write-zeroes ranges, GET_ID, flushes, out-of-range sectors.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vireo_virtio::block::{Block, BlockConfig};

fn image() -> &'static PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("vireo-fuzz-blk-{}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; 64 << 10]).expect("fuzz disk image");
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let cfg = BlockConfig {
        path: image().clone(),
        readonly: data.first().is_some_and(|b| b & 0x80 != 0),
        serial: Some("fuzz".into()),
        format: Some(vireo_virtio::block::DiskFormat::Raw),
        // Two queues, each with its I/O thread, so a chain's fate may depend on the other
        // queue's (shared disk, one device).
        num_queues: 2,
    };
    let Ok(dev) = Block::open(&cfg) else { return };
    vireo_fuzz::run_mmio_device(Box::new(dev), 2, data);
});
