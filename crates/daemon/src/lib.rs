//! `vireo daemon`: keeps VM definitions in SQLite, runs each VM as its own `vireo vmm` process
//! (the VMM protocol: [`vmm`]), and serves the REST API ([`api`]) on a Unix socket (and, with a
//! token, on TCP); [`client`] is the other end, which the CLI's management verbs use.
//!
//! Layout of the state directory (`--state-dir`, [`config::default_state_dir`]):
//! - `daemon.lock`: flock held by the one daemon using the directory (its pid inside);
//! - `vireo.db`: the store ([`store`]): definitions, states, the event log;
//! - `vms/NAME/run`: the running (or last) VMM's directory: spec.json (the definition with its
//!   volumes resolved and its overlays in place), lock, pid, control.sock, console.sock,
//!   console.log, vmm.log, exit.json. A start moves the previous one to `vms/NAME/last`, so the
//!   last run's console log and exit stay readable.
//! - `vms/NAME/overlay-diskN.qcow2`: the persistent overlay of the VM's `overlay` disk N
//!   ([`storage`]), made at create, removed with the VM;
//! - `vms/NAME/overlay-root.qcow2`: a VM restored from a snapshot: its overlay on the
//!   snapshot's copy of the image's root disk ([`snapshots`]);
//! - `snapshots/SNAP`: a snapshot ([`snapshots`]: state.vst, memory.bin, spec.json, disk-ID.FMT);
//! - `pools/default`: the default storage pool's directory (other pools are where they were
//!   made).

pub mod api;
pub mod capacity;
pub use vireo_jail::cgroup;
pub mod client;
pub mod config;
pub mod launcher;
pub mod metrics;
pub mod names;
pub mod snapshots;
pub mod state;
pub mod storage;
pub mod store;
pub mod supervisor;
pub mod vmm;

mod server;

pub use config::{DaemonArgs, DaemonConfig};
pub use server::{run, run_blocking, DaemonError};

/// Seconds since the Unix epoch, as the store and the VMM protocol keep time.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
