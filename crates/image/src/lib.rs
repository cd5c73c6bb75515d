//! Guest images for vireo: a Debian kernel, vireo's own initramfs (busybox, a small
//! `/init`, virtio and ext4 modules) and, for RISC-V, OpenSBI firmware; or, for
//! `debian-riscv64-rootfs` (`rootfs.rs`), a whole Debian system with systemd on a qcow2 root
//! disk, with the kernel and initrd Debian made for it.
//!
//! Images are built from Debian packages fetched with the host's apt tools (or mmdebstrap) and
//! mirror, into a private apt state, and kept in the cache directory (see
//! [`cache_root`]).
//!
//! The guest's `/init` speaks a small protocol with the CLI (its header in `init.sh` has the
//! whole of it): if the initramfs holds [`COMMAND_FILE`], it runs that file with `sh`, its
//! standard streams on virtio-serial ports (on a pseudo-terminal when [`TTY_FILE`] is there
//! too), and reports the exit status through the register given as `vireo.exit=0xADDR` on the
//! kernel command line; otherwise it prints [`START_MARKER`] and starts an interactive shell
//! on the console.

pub mod cpio;
mod error;

mod apt;
mod initramfs;
mod manifest;
mod mirror;
mod modules;
mod pull;
mod qcow2;
mod rootfs;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::ImageError;
pub use pull::{pull, PullOptions, PullOutcome};

/// Printed by the guest's `/init` on the console right before the interactive shell starts.
pub const START_MARKER: &[u8] = b"\x1b]vireo;run\x07";

/// Path, inside an initramfs archive, of the command line `/init` runs. The CLI adds it
/// in a second archive appended to the image's initrd.
pub const COMMAND_FILE: &str = "vireo/cmd";

/// Path, beside [`COMMAND_FILE`], of `ROWS COLS TERM`: run the command on a pseudo-terminal
/// of that size.
pub const TTY_FILE: &str = "vireo/tty";

/// Environment variable whose value replaces the cache base directory (see
/// [`cache_root`]).
pub const CACHE_ENV: &str = "VIREO_CACHE_DIR";

/// Guest CPU architecture of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// 64-bit RISC-V.
    #[serde(rename = "riscv64")]
    Riscv64,
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Riscv64 => "riscv64",
            Arch::X86_64 => "x86_64",
        })
    }
}

/// A pulled image, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub arch: Arch,
    /// The image directory in the cache.
    pub dir: PathBuf,
    /// The kernel: a raw RISC-V `Image` or an x86 bzImage.
    pub kernel: PathBuf,
    /// The gzip-compressed cpio initramfs, zero-padded to a multiple of 4 bytes so that
    /// another archive (e.g. one holding [`COMMAND_FILE`]) can be appended as it is.
    pub initrd: PathBuf,
    /// Firmware to load before the kernel (OpenSBI `fw_jump.bin` on RISC-V).
    pub firmware: Option<PathBuf>,
    /// Kernel command line the image is meant to boot with; the CLI appends its own
    /// `vireo.*` arguments.
    pub default_cmdline: String,
    pub kernel_version: String,
    /// The root filesystem's disk image (qcow2), for images that boot from a disk: attached as
    /// the first virtio disk through a throwaway overlay, so it is only ever read.
    pub root_disk: Option<PathBuf>,
}

/// One line of `vireo image list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    pub arch: Arch,
    pub kernel_version: String,
    /// Bytes of all the image's files together.
    pub size: u64,
    /// When the image was built, in seconds since the Unix epoch.
    pub created: u64,
}

/// What an image is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A kernel and vireo's busybox initramfs (`initramfs.rs`).
    Initramfs,
    /// A Debian system with systemd on a root disk, its kernel and initrd (`rootfs.rs`).
    Rootfs,
}

/// How one known image is made.
#[derive(Debug)]
pub(crate) struct Recipe {
    pub name: &'static str,
    pub kind: Kind,
    pub arch: Arch,
    pub suite: &'static str,
    /// Debian's name for the architecture.
    pub debian_arch: &'static str,
    /// Metapackage whose dependency is the current versioned kernel package.
    pub kernel_meta: &'static str,
    /// Debian signs some kernels in a separate package; the unsigned build carries the
    /// same kernel without the Secure Boot signature, which vireo does not need.
    pub prefer_unsigned: bool,
    /// Kernel file name prefix under `/boot`, followed by the kernel version.
    pub kernel_prefix: &'static str,
    /// Package and path (inside it) of the firmware, if the architecture needs one.
    pub firmware: Option<(&'static str, &'static str)>,
    pub default_cmdline: &'static str,
}

const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Where busybox-static puts the binary: merged-/usr suites (trixie) and older ones.
const BUSYBOX_PATHS: &[&str] = &["usr/bin/busybox", "bin/busybox"];

pub(crate) const RECIPES: &[Recipe] = &[
    Recipe {
        name: "debian-riscv64",
        kind: Kind::Initramfs,
        arch: Arch::Riscv64,
        suite: "trixie",
        debian_arch: "riscv64",
        kernel_meta: "linux-image-riscv64",
        prefer_unsigned: false,
        // Debian names the RISC-V kernel vmlinux, but it is the raw `Image` format.
        kernel_prefix: "vmlinux-",
        firmware: Some((
            "opensbi",
            "usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin",
        )),
        default_cmdline: "console=ttyS0 quiet loglevel=1 panic=-1 cryptomgr.notests",
    },
    Recipe {
        name: "debian-x86_64",
        kind: Kind::Initramfs,
        arch: Arch::X86_64,
        suite: "bookworm",
        debian_arch: "amd64",
        kernel_meta: "linux-image-cloud-amd64",
        prefer_unsigned: true,
        kernel_prefix: "vmlinuz-",
        firmware: None,
        default_cmdline: "console=ttyS0 quiet loglevel=1 panic=-1 cryptomgr.notests",
    },
    Recipe {
        name: "debian-riscv64-rootfs",
        kind: Kind::Rootfs,
        arch: Arch::Riscv64,
        suite: "trixie",
        debian_arch: "riscv64",
        // Installed by mmdebstrap into the tree; the kernel and initrd come from its /boot.
        kernel_meta: "linux-image-riscv64",
        prefer_unsigned: false,
        kernel_prefix: "vmlinux-",
        firmware: Some((
            "opensbi",
            "usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin",
        )),
        // The root disk is the first virtio disk, mounted read-write at once (no remount), and
        // never checked: every boot starts from a fresh overlay on a base that was clean when
        // it was made (fsck.mode=skip is honoured by the initramfs and by systemd).
        default_cmdline: "console=ttyS0 root=/dev/vda rw fsck.mode=skip quiet loglevel=1 \
             panic=-1 cryptomgr.notests",
    },
];

const KNOWN: &[&str] = &["debian-riscv64", "debian-x86_64", "debian-riscv64-rootfs"];

/// Names accepted by [`open`] and [`pull`].
pub fn known_images() -> &'static [&'static str] {
    KNOWN
}

impl Recipe {
    /// Fingerprint of what vireo itself puts in an image made by this recipe.
    pub(crate) fn build_id(&self) -> String {
        match self.kind {
            Kind::Initramfs => initramfs::build_id(self.default_cmdline),
            Kind::Rootfs => rootfs::build_id(self.default_cmdline),
        }
    }
}

pub(crate) fn recipe(name: &str) -> Result<&'static Recipe, ImageError> {
    RECIPES
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ImageError::UnknownImage {
            name: name.to_string(),
            known: KNOWN.join(", "),
        })
}

/// The `vireo` cache directory; images live in its `images/NAME` subdirectories and
/// the private apt state in `apt/SUITE-ARCH`.
///
/// It is `$VIREO_CACHE_DIR/vireo` if `VIREO_CACHE_DIR` is set, else
/// `$XDG_CACHE_HOME/vireo`, else `$HOME/.cache/vireo`. Empty or relative values are
/// ignored, as the XDG specification asks for `XDG_CACHE_HOME`.
pub fn cache_root() -> Result<PathBuf, ImageError> {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base = var(CACHE_ENV)
        .or_else(|| var("XDG_CACHE_HOME"))
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .ok_or(ImageError::NoCacheDir)?;
    Ok(base.join("vireo"))
}

pub(crate) fn images_dir() -> Result<PathBuf, ImageError> {
    Ok(cache_root()?.join("images"))
}

/// Opens a pulled image. Files are checked for presence and size but not hashed, so
/// this is cheap enough to call on every `vireo run`.
pub fn open(name: &str) -> Result<Image, ImageError> {
    let recipe = recipe(name)?;
    let dir = images_dir()?.join(name);
    if let Some(reason) = manifest::problem(&dir, name, false) {
        return Err(ImageError::NotPulled {
            name: name.to_string(),
            reason,
        });
    }
    let m = manifest::read(&dir)?;
    image_from_manifest(recipe, &dir, &m).ok_or_else(|| ImageError::NotPulled {
        name: name.to_string(),
        reason: "manifest paths are invalid".into(),
    })
}

pub(crate) fn image_from_manifest(
    recipe: &Recipe,
    dir: &Path,
    m: &manifest::Manifest,
) -> Option<Image> {
    let firmware = match &m.files.firmware {
        Some(f) => Some(f.resolve(dir)?),
        None => None,
    };
    let root_disk = match &m.files.root_disk {
        Some(f) => Some(f.resolve(dir)?),
        None => None,
    };
    Some(Image {
        name: recipe.name.to_string(),
        arch: m.arch,
        dir: dir.to_path_buf(),
        kernel: m.files.kernel.resolve(dir)?,
        initrd: m.files.initrd.resolve(dir)?,
        firmware,
        default_cmdline: m.default_cmdline.clone(),
        kernel_version: m.kernel_version.clone(),
        root_disk,
    })
}

/// The images present in the cache, sorted by name. Directories without a readable
/// manifest (e.g. from an older vireo) are left out.
pub fn list() -> Result<Vec<ImageInfo>, ImageError> {
    let dir = images_dir()?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io("read", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("read", &dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Dot-directories are pulls in progress or being replaced.
        if name.starts_with('.') {
            continue;
        }
        let Ok(m) = manifest::read(&entry.path()) else {
            continue;
        };
        out.push(ImageInfo {
            name,
            arch: m.arch,
            kernel_version: m.kernel_version.clone(),
            size: m.files.all().map(|f| f.size).sum(),
            created: m.created,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Joins `args` into a POSIX shell command line in which every argument is taken
/// literally: each is wrapped in single quotes, and an embedded `'` becomes `'\''`.
pub fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serialises tests that read or change the process environment.
    pub(crate) static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn cache_root_rules_and_not_pulled_message() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let saved: Vec<_> = [CACHE_ENV, "XDG_CACHE_HOME", "HOME"]
            .iter()
            .map(|k| (*k, std::env::var_os(k)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("HOME", "/home/someone");
        std::env::remove_var("XDG_CACHE_HOME");
        std::env::remove_var(CACHE_ENV);
        assert_eq!(
            cache_root().unwrap(),
            Path::new("/home/someone/.cache/vireo")
        );
        std::env::set_var("XDG_CACHE_HOME", "relative/is/ignored");
        assert_eq!(
            cache_root().unwrap(),
            Path::new("/home/someone/.cache/vireo")
        );
        std::env::set_var("XDG_CACHE_HOME", "/xdg");
        assert_eq!(cache_root().unwrap(), Path::new("/xdg/vireo"));
        std::env::set_var(CACHE_ENV, dir.path());
        assert_eq!(cache_root().unwrap(), dir.path().join("vireo"));

        let e = open("debian-riscv64").unwrap_err().to_string();
        assert!(e.contains("vireo image pull debian-riscv64"), "{e}");
        let e = open("nope").unwrap_err().to_string();
        assert!(e.contains("debian-riscv64, debian-x86_64"), "{e}");
        assert_eq!(list().unwrap(), Vec::new());

        std::env::remove_var(CACHE_ENV);
        std::env::remove_var("XDG_CACHE_HOME");
        std::env::remove_var("HOME");
        assert!(matches!(cache_root(), Err(ImageError::NoCacheDir)));
        for (k, v) in saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn quote_plain_spaces_quotes_and_empty() {
        assert_eq!(shell_quote(&s(&["ls", "-l"])), "'ls' '-l'");
        assert_eq!(shell_quote(&s(&["echo", "a b"])), "'echo' 'a b'");
        assert_eq!(shell_quote(&s(&["echo", "it's"])), r"'echo' 'it'\''s'");
        assert_eq!(shell_quote(&s(&["printf", ""])), "'printf' ''");
        assert_eq!(shell_quote(&s(&["''"])), r"''\'''\'''");
        assert_eq!(shell_quote(&[]), "");
    }

    /// The quoted line must give back the original arguments when a real shell reads it.
    #[test]
    fn quote_round_trips_through_sh() {
        let args = s(&[
            "a b",
            "it's",
            "",
            "$HOME",
            "`x`",
            "\\n",
            "*",
            "new\nline",
            "\"q\"",
        ]);
        let script = format!(
            "for a in {}; do printf '%s\\0' \"$a\"; done",
            shell_quote(&args)
        );
        let out = match std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                println!("skipping the sh round trip: cannot run sh: {e}");
                return;
            }
        };
        let got: Vec<String> = out
            .stdout
            .split(|&b| b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert_eq!(&got[..got.len() - 1], args.as_slice());
    }

    #[test]
    fn start_marker_bytes() {
        assert_eq!(
            START_MARKER,
            &[0x1b, b']', b'v', b'i', b'r', b'e', b'o', b';', b'r', b'u', b'n', 0x07]
        );
    }

    #[test]
    fn recipes_match_known_names() {
        let names: Vec<&str> = RECIPES.iter().map(|r| r.name).collect();
        assert_eq!(names, known_images());
        let e = recipe("debian-sparc").unwrap_err().to_string();
        assert!(
            e.contains("debian-riscv64") && e.contains("debian-x86_64"),
            "{e}"
        );
    }
}
