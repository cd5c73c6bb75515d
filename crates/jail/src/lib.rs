//! Confinement of vireo's VMM process: what its threads may ask of the host kernel.
//!
//! [`seccomp`] holds one system-call allowlist per kind of thread that handles
//! guest-controlled data (`vireo_machine::sandbox::ThreadKind`) and installs it on each such
//! thread as it starts. The jail (namespaces, pivot_root, an unprivileged user) is to come
//! here too.

pub mod seccomp;

pub use seccomp::{install, Mode, SeccompError};
