//! What every KVM integration test binary shares.

use std::sync::{Mutex, MutexGuard};

use vireo_kvm::KvmVm;

/// KVM tests share the two host cores; running them one at a time keeps timings honest.
static SERIAL: Mutex<()> = Mutex::new(());

/// The test's turn on KVM, or `None` (after printing why) when this host has no usable KVM.
pub fn kvm() -> Option<MutexGuard<'static, ()>> {
    match KvmVm::probe() {
        Ok(()) => Some(SERIAL.lock().unwrap_or_else(|p| p.into_inner())),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}
