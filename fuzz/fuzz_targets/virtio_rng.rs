//! virtio-rng behind virtio-mmio: the register file and the request queue.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vireo_fuzz::run_mmio_device(Box::new(vireo_virtio::rng::Rng::new()), 1, data);
});
