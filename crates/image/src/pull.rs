//! `vireo image pull`: fetch packages (or, for a root filesystem image, run mmdebstrap:
//! `rootfs.rs`), assemble the image in a temporary directory beside its final place, then move
//! it there in one rename.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};

use crate::apt::{self, Apt};
use crate::manifest::{self, FileEntry, Files, Manifest, Package, Packages};
use crate::{
    initramfs, mirror, rootfs, Image, ImageError, Kind, Recipe, BUSYBOX_PACKAGE, BUSYBOX_PATHS,
};

/// How [`pull`] behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullOptions {
    /// Rebuild even if an intact image is already in the cache.
    pub force: bool,
    /// Show a spinner with the current stage on stderr (only drawn when stderr is a
    /// terminal).
    pub progress: bool,
}

/// What [`pull`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    /// An intact image was already in the cache; nothing was fetched.
    AlreadyPresent,
    /// The image was fetched and built.
    Pulled,
}

pub(crate) const KERNEL_FILE: &str = "kernel";
pub(crate) const INITRD_FILE: &str = "initrd.img";
pub(crate) const FIRMWARE_FILE: &str = "fw_jump.bin";

/// Makes sure the image `name` is in the cache and returns it. An image whose manifest
/// and file digests check out is returned as it is, without touching the network,
/// unless `opts.force` is set.
pub fn pull(name: &str, opts: &PullOptions) -> Result<(Image, PullOutcome), ImageError> {
    let recipe = crate::recipe(name)?;
    let images = crate::images_dir()?;
    let dir = images.join(name);
    let progress = Progress::new(opts.progress);

    if !opts.force {
        progress.stage(&format!("{name}: verifying cached image"));
        if manifest::problem(&dir, name, true).is_none() {
            progress.done();
            return Ok((crate::open(name)?, PullOutcome::AlreadyPresent));
        }
    }

    match recipe.kind {
        Kind::Initramfs => apt::check_tools()?,
        Kind::Rootfs => rootfs::check_host(recipe)?,
    }
    let mirror = mirror::find_mirror()?;
    std::fs::create_dir_all(&images).map_err(|e| ImageError::io("create directory", &images, e))?;
    remove_stale(&images, name);

    let staging = Staging::new(&images, name)?;
    let m = match recipe.kind {
        Kind::Initramfs => {
            let apt_root = crate::cache_root()?
                .join("apt")
                .join(format!("{}-{}", recipe.suite, recipe.debian_arch));
            build(recipe, &mirror, &apt_root, &staging.path, &progress)?
        }
        Kind::Rootfs => rootfs::build(recipe, &mirror, &staging.path, &progress)?,
    };
    staging.install(&dir)?;
    progress.done();
    let image =
        crate::image_from_manifest(recipe, &dir, &m).ok_or_else(|| ImageError::NotPulled {
            name: name.to_string(),
            reason: "the new manifest has invalid paths".into(),
        })?;
    Ok((image, PullOutcome::Pulled))
}

fn build(
    recipe: &Recipe,
    mirror: &str,
    apt_root: &Path,
    out: &Path,
    progress: &Progress,
) -> Result<Manifest, ImageError> {
    let name = recipe.name;
    let apt = Apt::prepare(apt_root, mirror, recipe.suite, recipe.debian_arch)?;
    progress.stage(&format!(
        "{name}: updating package lists for {} {}",
        recipe.suite, recipe.debian_arch
    ));
    apt.update()?;

    let kernel_pkg = kernel_package(&apt, recipe)?;
    let mut wanted = vec![kernel_pkg.clone(), BUSYBOX_PACKAGE.to_string()];
    if let Some((fw_pkg, _)) = recipe.firmware {
        wanted.push(fw_pkg.to_string());
    }
    progress.stage(&format!("{name}: downloading {}", wanted.join(" ")));
    let work = out.join("work");
    let debs = work.join("debs");
    apt.download(&wanted, &debs)?;

    progress.stage(&format!("{name}: extracting packages"));
    let root = work.join("root");
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&debs).map_err(|e| ImageError::io("read", &debs, e))? {
        let path = entry.map_err(|e| ImageError::io("read", &debs, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("deb") {
            continue;
        }
        versions.push(apt::deb_identity(&path)?);
        apt::extract(&path, &root)?;
    }
    let version_of = |pkg: &str| -> Result<Package, ImageError> {
        versions
            .iter()
            .find(|(p, _)| p == pkg)
            .map(|(p, v)| Package {
                name: p.clone(),
                version: v.clone(),
            })
            .ok_or_else(|| ImageError::MissingFile {
                what: format!("the downloaded package {pkg}"),
                path: debs.clone(),
            })
    };

    let (kernel_version, modules_dir) = find_modules_dir(&root)?;
    let kernel_src = root
        .join("boot")
        .join(format!("{}{kernel_version}", recipe.kernel_prefix));
    if !kernel_src.is_file() {
        return Err(ImageError::MissingFile {
            what: format!("the kernel {}{kernel_version}", recipe.kernel_prefix),
            path: root.join("boot"),
        });
    }
    move_file(&kernel_src, &out.join(KERNEL_FILE))?;
    if let Some((_, fw_path)) = recipe.firmware {
        let src = root.join(fw_path);
        if !src.is_file() {
            return Err(ImageError::MissingFile {
                what: format!("the firmware /{fw_path}"),
                path: root.clone(),
            });
        }
        move_file(&src, &out.join(FIRMWARE_FILE))?;
    }
    let busybox = BUSYBOX_PATHS
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::MissingFile {
            what: format!("busybox at /{}", BUSYBOX_PATHS.join(" or /")),
            path: root.clone(),
        })?;

    progress.stage(&format!("{name}: building initramfs"));
    let initrd = initramfs::build(&initramfs::Inputs {
        modules_dir: &modules_dir,
        kernel_version: &kernel_version,
        busybox: &busybox,
    })?;
    let initrd_path = out.join(INITRD_FILE);
    std::fs::write(&initrd_path, initrd).map_err(|e| ImageError::io("write", &initrd_path, e))?;

    progress.stage(&format!("{name}: hashing"));
    let firmware = match recipe.firmware {
        Some(_) => Some(FileEntry::describe(out, FIRMWARE_FILE)?),
        None => None,
    };
    let m = Manifest {
        format: manifest::FORMAT,
        name: name.to_string(),
        arch: recipe.arch,
        suite: recipe.suite.to_string(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        kernel_version,
        default_cmdline: recipe.default_cmdline.to_string(),
        build: recipe.build_id(),
        packages: Packages {
            kernel: version_of(&kernel_pkg)?,
            busybox: version_of(BUSYBOX_PACKAGE)?,
            opensbi: match recipe.firmware {
                Some((pkg, _)) => Some(version_of(pkg)?),
                None => None,
            },
            systemd: None,
        },
        files: Files {
            kernel: FileEntry::describe(out, KERNEL_FILE)?,
            initrd: FileEntry::describe(out, INITRD_FILE)?,
            firmware,
            root_disk: None,
        },
    };
    std::fs::remove_dir_all(&work).map_err(|e| ImageError::io("remove", &work, e))?;
    manifest::write(out, &m)?;
    Ok(m)
}

/// The versioned kernel package behind the recipe's metapackage, preferring its
/// `-unsigned` sibling when the recipe asks for it and the archive has one.
fn kernel_package(apt: &Apt, recipe: &Recipe) -> Result<String, ImageError> {
    let meta = recipe.kernel_meta;
    let record = apt.show(meta)?.ok_or_else(|| ImageError::KernelPackage {
        meta: meta.to_string(),
        reason: format!(
            "the {} {} archive has no such package",
            recipe.suite, recipe.debian_arch
        ),
    })?;
    let pkg = apt::kernel_dependency(&record).ok_or_else(|| ImageError::KernelPackage {
        meta: meta.to_string(),
        reason: "expected a `linux-image-*` entry in its Depends field".into(),
    })?;
    if recipe.prefer_unsigned {
        let unsigned = format!("{pkg}-unsigned");
        if apt.show(&unsigned)?.is_some() {
            return Ok(unsigned);
        }
    }
    Ok(pkg)
}

/// The kernel version and its modules directory: `usr/lib/modules/<ver>` (merged /usr,
/// as in trixie) or `lib/modules/<ver>`.
pub(crate) fn find_modules_dir(root: &Path) -> Result<(String, PathBuf), ImageError> {
    for base in ["usr/lib/modules", "lib/modules"] {
        let dir = root.join(base);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join("kernel").is_dir())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        found.sort();
        if let Some(first) = found.into_iter().next() {
            return Ok(first);
        }
    }
    Err(ImageError::MissingFile {
        what: "a kernel modules directory (lib/modules/<version>/kernel)".into(),
        path: root.to_path_buf(),
    })
}

fn move_file(from: &Path, to: &Path) -> Result<(), ImageError> {
    std::fs::rename(from, to).map_err(|e| ImageError::io("move", from, e))
}

/// A directory being filled for image `name`; removed on drop unless installed.
struct Staging {
    path: PathBuf,
    installed: bool,
}

impl Staging {
    fn new(images: &Path, name: &str) -> Result<Self, ImageError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = images.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| ImageError::io("create directory", &path, e))?;
        Ok(Staging {
            path,
            installed: false,
        })
    }

    /// Puts the finished image at `dir`. A previous image there is first renamed away,
    /// so at every moment `dir` holds either the old complete image or the new one.
    fn install(mut self, dir: &Path) -> Result<(), ImageError> {
        let mut old = self.path.clone().into_os_string();
        old.push("-old");
        let old = PathBuf::from(old);
        let had_old = match std::fs::rename(dir, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(ImageError::io("move aside", dir, e)),
        };
        if let Err(e) = std::fs::rename(&self.path, dir) {
            if had_old {
                let _ = std::fs::rename(&old, dir);
            }
            return Err(ImageError::io("move into place", &self.path, e));
        }
        self.installed = true;
        if had_old {
            // The new image is in place; a leftover old copy only wastes space and is
            // cleaned by the next pull.
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.installed {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Removes a directory tree, unless something is mounted inside it: a root filesystem build
/// bind-mounts host files (/dev nodes, /sys) into its tree, and deleting through such a mount
/// would delete the host's own. mmdebstrap runs in a mount namespace of its own, so its mounts
/// never reach this one; this is the check that it stays so.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), ImageError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(m) = mounts_under(&mountinfo, dir).first() {
        return Err(ImageError::io(
            "remove",
            dir,
            std::io::Error::other(format!(
                "{} is mounted inside it; unmount it first",
                m.display()
            )),
        ));
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io("remove", dir, e)),
        _ => Ok(()),
    }
}

/// The mount points at or below `dir` in a /proc/PID/mountinfo text (its fifth field, with
/// the kernel's octal escapes for space, tab, newline and backslash undone).
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|field| {
            let mut out = Vec::new();
            let b = field.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let octal = b.get(i + 1..i + 4).filter(|_| b[i] == b'\\');
                match octal.and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 4;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Removes temporary directories of earlier pulls of `name` that were interrupted
/// (their process is gone). A pull still running elsewhere keeps its directory.
fn remove_stale(images: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(images) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let fname = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = fname.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| Path::new("/proc").join(p.to_string()).exists());
        if !alive {
            let _ = remove_tree(&entry.path());
        }
    }
}

/// A spinner showing the current stage. indicatif draws nothing when stderr is not a
/// terminal, so piped or logged output stays clean.
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(enabled: bool) -> Self {
        if !enabled {
            return Progress(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    pub(crate) fn stage(&self, msg: &str) {
        if let Some(bar) = &self.0 {
            let first = bar.message().is_empty();
            bar.set_message(msg.to_string());
            // Ticking only from here on keeps an empty line from being drawn first.
            if first {
                bar.enable_steady_tick(Duration::from_millis(120));
            }
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:5 /null /cache/.img.tmp-1/work/root/dev/null rw shared:2 - devtmpfs udev rw
41 22 0:21 / /cache/.img.tmp-1/work/root/sys rw shared:7 - sysfs sysfs rw
42 22 0:30 / /cache/with\\040space/x rw - tmpfs tmpfs rw
43 22 0:31 / /cache/.img.tmp-10 rw - tmpfs tmpfs rw
";

    #[test]
    fn mounts_inside_a_tree_are_found() {
        let under = |d: &str| mounts_under(MOUNTINFO, Path::new(d));
        assert_eq!(
            under("/cache/.img.tmp-1"),
            [
                PathBuf::from("/cache/.img.tmp-1/work/root/dev/null"),
                PathBuf::from("/cache/.img.tmp-1/work/root/sys")
            ]
        );
        // Whole components only: .img.tmp-10 is not inside .img.tmp-1.
        assert_eq!(
            under("/cache/.img.tmp-10"),
            [PathBuf::from("/cache/.img.tmp-10")]
        );
        assert_eq!(
            under("/cache/with space"),
            [PathBuf::from("/cache/with space/x")]
        );
        assert!(under("/elsewhere").is_empty());
        assert!(mounts_under("", Path::new("/")).is_empty());
    }

    #[test]
    fn remove_tree_removes_what_has_no_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), b"x").unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        // Already gone is fine.
        remove_tree(&t).unwrap();
        // A mounted directory (/proc has mounts under it on every Linux) is refused.
        let e = remove_tree(Path::new("/proc")).unwrap_err().to_string();
        assert!(e.contains("is mounted inside it"), "{e}");
    }
}
