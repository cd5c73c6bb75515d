//! The names inside a snapshot directory, shared by the VMM that writes one and the daemon
//! that manages them (the layout is documented in `vireo_vmm::snapshot`).

use std::path::{Path, PathBuf};

/// The state file.
pub const STATE_FILE: &str = "state.vst";
/// Guest RAM.
pub const MEMORY_FILE: &str = "memory.bin";
/// The VM definition the snapshot was taken of, as JSON.
pub const SPEC_FILE: &str = "spec.json";
/// Disk copies are named `disk-ID.FORMAT`.
const DISK_PREFIX: &str = "disk-";
/// The formats a disk copy can have.
pub const DISK_FORMATS: [&str; 2] = ["qcow2", "raw"];

/// The file name of the copy of disk `id` in `format`.
pub fn disk_copy_name(id: &str, format: &str) -> String {
    format!("{DISK_PREFIX}{id}.{format}")
}

/// The copy of disk `id` in the snapshot directory `dir`, if the snapshot made one.
pub fn disk_copy(dir: &Path, id: &str) -> Option<PathBuf> {
    DISK_FORMATS
        .iter()
        .map(|f| dir.join(disk_copy_name(id, f)))
        .find(|p| p.is_file())
}

/// Whether a file name in a snapshot directory is a disk copy.
pub fn is_disk_copy(name: &str) -> bool {
    name.starts_with(DISK_PREFIX)
}

/// Where a snapshot is written before it is whole (renamed to `dir` then).
pub fn partial(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let d = std::env::temp_dir().join(format!("vireo-state-dir-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(disk_copy_name("root", "qcow2"), "disk-root.qcow2");
        assert!(is_disk_copy("disk-disk0.raw") && !is_disk_copy("memory.bin"));
        assert_eq!(disk_copy(&d, "disk0"), None);
        std::fs::write(d.join("disk-disk0.raw"), b"").unwrap();
        assert_eq!(disk_copy(&d, "disk0"), Some(d.join("disk-disk0.raw")));
        assert_eq!(partial(Path::new("/s/a")), PathBuf::from("/s/a.partial"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
