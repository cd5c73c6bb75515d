//! virtio-console behind virtio-mmio: receive and transmit queues, config space.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dev = vireo_virtio::console::Console::new(Box::new(std::io::sink()));
    vireo_fuzz::run_mmio_device(Box::new(dev), 2, data);
});
