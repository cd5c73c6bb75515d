//! What a VM's jail must show it (`vireo run --jail`, `vireo vmm --jail`): the files its
//! definition names, at the paths it names them by, and nothing else of the host.
//!
//! - the kernel and the firmware, read-only (a reboot loads them again; the initramfs is in
//!   memory already);
//! - each disk: the image writable (read-only when the disk is, or for a throwaway overlay,
//!   whose base is only read) and every image of its backing chain read-only; a throwaway
//!   overlay is made in the jail's own `/tmp`;
//! - the vsock socket's directory, writable: the device listens there, and the sockets it
//!   connects to for the guest (`PATH_PORT`) are made there by the host's programs later;
//! - `/dev/kvm` on kvm;
//! - what the caller adds: the VMM's run directory, `vireo run`'s console log.
//!
//! Network backends are opened before the jail ([`crate::devices::open_backends`]), so the
//! jail's network namespace is empty and a VM with user-mode networking or a tap still has
//! its network.

use std::path::{Path, PathBuf};

use vireo_jail::{Credentials, JailSpec, Show};
use vireo_spec::Accel;

use crate::devices::DeviceConfig;
use crate::{fail, Error, Plan};

/// How a VM is to be jailed.
#[derive(Debug, Clone)]
pub struct JailOptions {
    /// The per-VM root directory (absent or empty).
    pub root: PathBuf,
    /// Who to run as (as root; default: the user `nobody`).
    pub user: Option<Credentials>,
}

/// The user a root-started jail runs as when none is given.
pub const DEFAULT_USER: &str = "nobody";

impl JailOptions {
    /// `--jail DIR [--jail-user USER[:GROUP]]`.
    pub fn new(root: PathBuf, user: Option<&str>) -> Result<JailOptions, Error> {
        let user = match user {
            Some(u) => Some(Credentials::parse(u).map_err(fail)?),
            None if vireo_jail::jail::is_root() => {
                Some(Credentials::parse(DEFAULT_USER).map_err(fail)?)
            }
            None => None,
        };
        Ok(JailOptions { root, user })
    }

    /// Gives `path` to the jail's user (as root; without root the VMM's files are the user's
    /// already): what the jailed VMM writes must be its own.
    pub fn give(&self, path: &Path) -> Result<(), Error> {
        let Some(c) = &self.user else {
            return Ok(());
        };
        std::os::unix::fs::chown(path, Some(c.uid), Some(c.gid)).map_err(|e| {
            fail(format!(
                "cannot give {} to the jail's user: {e}",
                path.display()
            ))
        })
    }
}

/// The jail for `plan` and `configs`, showing `extra` too.
pub fn spec(
    opts: &JailOptions,
    plan: &Plan,
    configs: &[DeviceConfig],
    extra: Vec<Show>,
) -> Result<JailSpec, Error> {
    let mut show = vec![Show::read_only(&plan.boot.kernel)];
    if let Some(f) = &plan.boot.firmware {
        show.push(Show::read_only(f));
    }
    if plan.accel == Accel::Kvm {
        show.push(Show::writable("/dev/kvm"));
    }
    // The largest file the VMM writes: a snapshot's memory (RAM) or a disk grown to its
    // virtual size, with room for qcow2's metadata.
    let mut largest = plan.boot.memory;
    for c in configs {
        match c {
            DeviceConfig::Block(d) => {
                let writable = !d.readonly && !d.overlay;
                show.push(Show {
                    path: d.path.clone(),
                    writable,
                });
                // A chain vireo cannot read is the device's error to report, in the jail.
                if let Ok(info) = vireo_virtio::block::image::info(&d.path) {
                    largest = largest.max(info.virtual_size);
                    let mut below = info.backing.as_deref();
                    while let Some(b) = below {
                        show.push(Show::read_only(&b.path));
                        below = b.backing.as_deref();
                    }
                }
            }
            DeviceConfig::Vsock(v) => {
                show.push(Show::writable(socket_dir(&v.uds)?));
            }
            _ => {}
        }
    }
    show.extend(extra);
    Ok(JailSpec {
        root: opts.root.clone(),
        user: opts.user.clone(),
        show,
        max_files: vireo_jail::jail::DEFAULT_MAX_FILES,
        max_file_size: largest.saturating_add(largest / 8).saturating_add(1 << 30),
    })
}

fn socket_dir(uds: &Path) -> Result<PathBuf, Error> {
    let abs = std::path::absolute(uds).map_err(|e| fail(format!("{}: {e}", uds.display())))?;
    abs.parent()
        .filter(|p| *p != Path::new("/"))
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            fail(format!(
                "vsock uds={}: in a jail the socket needs a directory of its own (not /)",
                uds.display()
            ))
        })
}

/// Enters the jail: the caller is single-threaded and has opened its network backends.
pub fn enter(spec: &JailSpec) -> Result<(), Error> {
    vireo_jail::jail::enter(spec).map_err(fail)
}
