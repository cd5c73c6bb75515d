//! Confinement of vireo's VMM process.
//!
//! - [`seccomp`]: one system-call allowlist per kind of thread that handles guest-controlled
//!   data (`vireo_machine::sandbox::ThreadKind`), installed on each such thread as it starts;
//! - [`jail`]: the namespaces, root directory, user, capabilities and rlimits a VMM process
//!   runs in ([`jail::enter`]);
//! - [`cgroup`]: the per-VM cgroup limiting its memory and CPU.

pub mod cgroup;
pub mod jail;
pub mod seccomp;

pub use jail::{Credentials, JailError, JailSpec, Show};
pub use seccomp::{install, Mode, SeccompError};
