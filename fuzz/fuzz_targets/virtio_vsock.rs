//! virtio-vsock behind virtio-mmio: transmitted packet headers (ops, ports, lengths, credit)
//! and the replies the device queues for the receive ring. The host side is a fresh Unix socket
//! with no host peers; a guest connecting to a host port meets no listener and gets a reset.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("vireo-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let Ok(dev) = vireo_virtio::vsock::Vsock::new(3, dir.join("v.sock")) else {
        return;
    };
    // Queues: receive, transmit, event.
    vireo_fuzz::run_mmio_device(Box::new(dev), 3, data);
});
