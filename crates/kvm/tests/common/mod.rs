//! What every KVM integration test binary shares.

use std::sync::{Mutex, MutexGuard};

use vireo_kvm::KvmVm;

/// KVM tests share the two host cores; running them one at a time keeps timings honest.
static SERIAL: Mutex<()> = Mutex::new(());

/// The test's turn on KVM. Without a usable /dev/kvm the test fails, saying why: a test that
/// could not run must not pass. `VIREO_TESTS_WITHOUT_KVM=1 scripts/test.sh` leaves these tests
/// out on such a host and lists them as not run.
pub fn kvm() -> MutexGuard<'static, ()> {
    if let Err(e) = KvmVm::probe() {
        panic!(
            "this test needs a usable /dev/kvm: {e}. On a host without KVM, run \
             `VIREO_TESTS_WITHOUT_KVM=1 scripts/test.sh`, which leaves the KVM tests out and \
             lists them as not run"
        );
    }
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
