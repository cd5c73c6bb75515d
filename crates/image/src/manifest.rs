//! `manifest.json`: what an image directory holds and how to tell it is intact.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Arch, ImageError};

pub(crate) const MANIFEST: &str = "manifest.json";

/// Bumped when the layout changes incompatibly, so old images are rebuilt on pull.
pub(crate) const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    pub name: String,
    pub arch: Arch,
    pub suite: String,
    /// Unix time in seconds.
    pub created: u64,
    pub kernel_version: String,
    pub default_cmdline: String,
    /// Fingerprint of what vireo itself put in the image (its /init, scripts, default command
    /// line): an image built by a vireo with different ones is rebuilt on pull.
    #[serde(default)]
    pub build: String,
    pub packages: Packages,
    pub files: Files,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Packages {
    pub kernel: Package,
    pub busybox: Package,
    pub opensbi: Option<Package>,
    /// In an image with a root filesystem: the systemd that boots it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<Package>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Package {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Files {
    pub kernel: FileEntry,
    pub initrd: FileEntry,
    pub firmware: Option<FileEntry>,
    /// The root filesystem's qcow2 disk image, in images that boot from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_disk: Option<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    /// Relative to the image directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Files {
    pub fn all(&self) -> impl Iterator<Item = &FileEntry> {
        [
            Some(&self.kernel),
            Some(&self.initrd),
            self.firmware.as_ref(),
            self.root_disk.as_ref(),
        ]
        .into_iter()
        .flatten()
    }
}

impl FileEntry {
    /// Describes `rel` (a file inside `dir`) by size and digest.
    pub fn describe(dir: &Path, rel: &str) -> Result<Self, ImageError> {
        let path = dir.join(rel);
        let (size, sha256) = hash_file(&path)?;
        Ok(FileEntry {
            path: rel.to_string(),
            size,
            sha256,
        })
    }

    /// The file's location, refusing manifest paths that would leave the image
    /// directory.
    pub fn resolve(&self, dir: &Path) -> Option<PathBuf> {
        let rel = Path::new(&self.path);
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        (plain && !self.path.is_empty()).then(|| dir.join(rel))
    }
}

pub(crate) fn read(dir: &Path) -> Result<Manifest, ImageError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| ImageError::io("read", &path, e))?;
    serde_json::from_slice(&text).map_err(|source| ImageError::Manifest { path, source })
}

pub(crate) fn write(dir: &Path, m: &Manifest) -> Result<(), ImageError> {
    let path = dir.join(MANIFEST);
    let mut text = serde_json::to_vec_pretty(m).map_err(|source| ImageError::Manifest {
        path: path.clone(),
        source,
    })?;
    text.push(b'\n');
    std::fs::write(&path, text).map_err(|e| ImageError::io("write", &path, e))
}

/// Why the image in `dir` cannot be used as it is, or `None` if it is complete. With
/// `deep` every file is hashed; otherwise only presence and size are checked.
pub(crate) fn problem(dir: &Path, name: &str, deep: bool) -> Option<String> {
    let m = match read(dir) {
        Ok(m) => m,
        Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Some("no manifest".into())
        }
        Err(e) => return Some(e.to_string()),
    };
    if m.format != FORMAT {
        return Some(format!(
            "manifest format {} where {FORMAT} is expected",
            m.format
        ));
    }
    if m.name != name {
        return Some(format!("manifest names image `{}`", m.name));
    }
    if let Ok(recipe) = crate::recipe(name) {
        if m.build != recipe.build_id() {
            return Some("it was built by a different vireo version".into());
        }
    }
    for entry in m.files.all() {
        let Some(path) = entry.resolve(dir) else {
            return Some(format!("manifest path `{}` leaves the image", entry.path));
        };
        let size = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(_) => return Some(format!("{} is missing", entry.path)),
        };
        if size != entry.size {
            return Some(format!(
                "{} has {size} bytes where {} are recorded",
                entry.path, entry.size
            ));
        }
        if deep {
            match hash_file(&path) {
                Ok((_, digest)) if digest == entry.sha256 => {}
                Ok(_) => return Some(format!("{} does not match its sha256", entry.path)),
                Err(e) => return Some(e.to_string()),
            }
        }
    }
    None
}

/// Size and lowercase hex sha256 of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String), ImageError> {
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ImageError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let digest = hasher.finalize();
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((size, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Manifest {
        std::fs::write(dir.join("kernel"), b"kernel bytes").unwrap();
        std::fs::write(dir.join("initrd"), b"initrd bytes").unwrap();
        let m = Manifest {
            format: FORMAT,
            name: "debian-riscv64".into(),
            arch: Arch::Riscv64,
            suite: "trixie".into(),
            created: 1,
            kernel_version: "6.12.0-test".into(),
            default_cmdline: "console=ttyS0".into(),
            build: crate::initramfs::build_id(
                crate::recipe("debian-riscv64").unwrap().default_cmdline,
            ),
            packages: Packages {
                kernel: Package {
                    name: "linux-image-x".into(),
                    version: "1".into(),
                },
                busybox: Package {
                    name: "busybox-static".into(),
                    version: "1".into(),
                },
                opensbi: None,
                systemd: None,
            },
            files: Files {
                kernel: FileEntry::describe(dir, "kernel").unwrap(),
                initrd: FileEntry::describe(dir, "initrd").unwrap(),
                firmware: None,
                root_disk: None,
            },
        };
        write(dir, &m).unwrap();
        m
    }

    #[test]
    fn sha256_of_known_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            (
                3,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string()
            )
        );
    }

    #[test]
    fn intact_image_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample(dir.path());
        assert_eq!(read(dir.path()).unwrap(), m);
        assert_eq!(problem(dir.path(), "debian-riscv64", true), None);
    }

    #[test]
    fn changed_or_missing_files_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        // Same size, different bytes: only the digest can tell.
        std::fs::write(dir.path().join("kernel"), b"KERNEL bytes").unwrap();
        assert_eq!(problem(dir.path(), "debian-riscv64", false), None);
        assert!(problem(dir.path(), "debian-riscv64", true)
            .unwrap()
            .contains("sha256"));
        std::fs::write(dir.path().join("kernel"), b"short").unwrap();
        assert!(problem(dir.path(), "debian-riscv64", false)
            .unwrap()
            .contains("bytes where"));
        std::fs::write(dir.path().join("kernel"), b"kernel bytes").unwrap();
        assert_eq!(problem(dir.path(), "debian-riscv64", true), None);
        std::fs::remove_file(dir.path().join("initrd")).unwrap();
        assert!(problem(dir.path(), "debian-riscv64", false)
            .unwrap()
            .contains("missing"));
    }

    #[test]
    fn wrong_name_missing_or_bad_manifest_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            problem(dir.path(), "debian-riscv64", true).as_deref(),
            Some("no manifest")
        );
        sample(dir.path());
        assert!(problem(dir.path(), "debian-x86_64", true).is_some());
        std::fs::write(dir.path().join(MANIFEST), b"{not json").unwrap();
        assert!(problem(dir.path(), "debian-riscv64", true).is_some());
    }

    #[test]
    fn root_disk_is_part_of_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample(dir.path());
        // Manifests without the newer fields still read (an older vireo's images).
        let text = std::fs::read_to_string(dir.path().join(MANIFEST)).unwrap();
        assert!(!text.contains("root_disk") && !text.contains("systemd"));
        std::fs::write(dir.path().join("root.qcow2"), b"disk").unwrap();
        m.files.root_disk = Some(FileEntry::describe(dir.path(), "root.qcow2").unwrap());
        write(dir.path(), &m).unwrap();
        assert_eq!(read(dir.path()).unwrap(), m);
        assert_eq!(m.files.all().count(), 3);
        assert_eq!(problem(dir.path(), "debian-riscv64", true), None);
        std::fs::remove_file(dir.path().join("root.qcow2")).unwrap();
        assert!(problem(dir.path(), "debian-riscv64", false)
            .unwrap()
            .contains("root.qcow2 is missing"));
    }

    #[test]
    fn paths_may_not_escape() {
        let e = |p: &str| FileEntry {
            path: p.into(),
            size: 0,
            sha256: String::new(),
        };
        let d = Path::new("/img");
        assert_eq!(e("kernel").resolve(d), Some(PathBuf::from("/img/kernel")));
        assert_eq!(e("../x").resolve(d), None);
        assert_eq!(e("/etc/passwd").resolve(d), None);
        assert_eq!(e("").resolve(d), None);
    }
}
