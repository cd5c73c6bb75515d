//! Multiport virtio-console (virtio-serial) behind virtio-mmio: the control queues' messages
//! and two named ports' data queues.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dev) = vireo_virtio::serial::Serial::new(&["fuzz.a", "fuzz.b"]) else {
        return;
    };
    // Queues: port 0 rx/tx, control rx/tx, port 1 rx/tx.
    vireo_fuzz::run_mmio_device(Box::new(dev), 6, data);
});
