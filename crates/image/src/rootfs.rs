//! `debian-riscv64-rootfs`: Debian trixie riscv64 with systemd on a qcow2 root disk, booted with
//! the kernel and initrd Debian installed in it.
//!
//! # Why an image of its own
//! It is a different thing from `debian-riscv64`, not a variant of it: a whole Debian system on a
//! disk, started by systemd from Debian's own initramfs-tools initrd, where the other is a kernel
//! and vireo's busybox initramfs with nothing on disk. It is built differently (mmdebstrap as
//! root, the packages' maintainer scripts run through qemu-user, about ten minutes, a few hundred
//! MB) and boots differently (a root disk, about a minute on the emulated CPU). As a name of its own it is cached,
//! listed, verified and rebuilt on its own (`vireo image pull debian-riscv64-rootfs`), and
//! `--image debian-riscv64` keeps meaning exactly what it did; a flag on the existing image would
//! make one name stand for two images and every cache check ask which one.
//!
//! # How it is built (`build`)
//! 1. **mmdebstrap** (`--mode=root --variant=minbase`) installs the packages of [`INCLUDE`] into
//!    a directory in the image's staging directory in the cache, from the mirror the host's apt
//!    uses, with a sources line of its own: the host's apt configuration is neither read for
//!    packages nor changed. The foreign maintainer scripts run under qemu-user-static through
//!    binfmt_misc, which [`check_host`] verifies first, as it does root and the tools. It runs in
//!    a private mount namespace (`unshare --mount`): mmdebstrap bind-mounts the host's /dev
//!    files and /sys into the tree, and a build killed halfway must not leave those mounted
//!    inside a directory that is about to be deleted; the namespace takes them with it.
//! 2. Two of mmdebstrap's hooks put vireo's part in ([`FILES`], each file's comment says why):
//!    the essential hook copies the files in before the kernel is installed, so the initrd it
//!    triggers is made the way the VM needs (ext4 on virtio-blk loaded at once, nothing else:
//!    every module more is unpacking time on an emulated CPU) and keeps the CLI's command past
//!    switch_root; the customize hook (`customize.sh`, run in the tree) sets the hostname, fstab
//!    and an empty machine-id, enables the agent, masks what cannot work in this VM, and makes
//!    the boot cheaper for an emulated CPU: the modules a boot loads lose their xz compression
//!    and signatures (checking a signature hashes the whole module: 18 s for a 12 MB one), the
//!    initrd is made again with them, and the update work systemd would redo at every boot of a
//!    fresh overlay (ConditionNeedsUpdate units) is done once.
//! 3. The kernel, the initrd and OpenSBI's `fw_jump.bin` (for `--firmware`) are copied out of
//!    the tree's /boot and /usr/lib, and the package versions read from its dpkg database.
//! 4. **mke2fs -d** turns the tree into an ext4 filesystem in a sparse raw file of
//!    [`DISK_SIZE`] (inode tables and journal zeroed now, so the guest's kernel has no lazy
//!    initialisation to do on every boot of a fresh overlay), and [`crate::qcow2`] copies it
//!    into `root.qcow2`, leaving the zero clusters out.
//!
//! The staging directory is renamed into the cache only when all of that has worked
//! (`pull.rs`), so a failed or interrupted build never leaves a partial image behind.
//!
//! # How it runs
//! `vireo run --image debian-riscv64-rootfs` attaches `root.qcow2` as the first virtio disk
//! (`/dev/vda`) through a throwaway overlay, so the cached base is only ever read; the command
//! line says `root=/dev/vda rw`. systemd starts the system; `vireo-agent.service` serves vireo's
//! command channel with the busybox image's protocol (`agent.sh` has it), so `-- CMD` runs CMD
//! once the system has started and ends the VM with its status, and without a command the
//! console's getty logs root in.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::manifest::{self, FileEntry, Files, Manifest, Package, Packages};
use crate::pull::{Progress, FIRMWARE_FILE, INITRD_FILE, KERNEL_FILE};
use crate::{ImageError, Recipe};

/// The root disk's file in the image directory.
pub(crate) const ROOT_FILE: &str = "root.qcow2";

/// The root disk's virtual size: room for packages and work; the qcow2 base holds only what is
/// used, and an overlay only what the guest writes.
pub(crate) const DISK_SIZE: u64 = 4 << 30;

/// Packages installed on top of minbase (Essential and apt): systemd as init, udev (which
/// loads the drivers for the virtio devices), dbus (for systemctl and logind), kmod, the kernel
/// with initramfs-tools to make its initrd and zstd for initramfs-tools to compress it with
/// (its default; without it, gzip, which the guest kernel unpacks several times slower),
/// busybox-static for the agent (`devmem` writes the exit register, `telnetd` relays a
/// command's pseudo-terminal, as in the busybox image) and opensbi for `--firmware`.
pub(crate) const INCLUDE: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "linux-image-riscv64",
    "initramfs-tools",
    "zstd",
    "busybox-static",
    "opensbi",
];

/// A file vireo adds to the tree: path inside it, mode, contents.
pub(crate) struct GuestFile {
    pub path: &'static str,
    pub mode: u32,
    pub text: &'static str,
}

/// vireo's own files in the image. `customize.sh` runs once at build time and is removed.
pub(crate) const FILES: &[GuestFile] = &[
    GuestFile {
        path: "usr/lib/vireo/agent",
        mode: 0o755,
        text: include_str!("rootfs/agent.sh"),
    },
    GuestFile {
        path: "usr/lib/vireo/tty-run",
        mode: 0o755,
        text: include_str!("rootfs/tty-run.sh"),
    },
    GuestFile {
        path: "usr/lib/vireo/exec-run",
        mode: 0o755,
        text: include_str!("rootfs/exec-run.sh"),
    },
    GuestFile {
        path: "usr/lib/vireo/exit",
        mode: 0o755,
        text: include_str!("rootfs/exit.sh"),
    },
    GuestFile {
        path: "usr/lib/vireo/session",
        mode: 0o755,
        text: include_str!("rootfs/session.sh"),
    },
    GuestFile {
        path: CUSTOMIZE,
        mode: 0o755,
        text: include_str!("rootfs/customize.sh"),
    },
    GuestFile {
        path: "etc/systemd/system/vireo-agent.service",
        mode: 0o644,
        text: include_str!("rootfs/vireo-agent.service"),
    },
    GuestFile {
        path: "etc/systemd/system/serial-getty@.service.d/vireo.conf",
        mode: 0o644,
        text: include_str!("rootfs/serial-getty.conf"),
    },
    GuestFile {
        path: "etc/initramfs-tools/conf.d/vireo.conf",
        mode: 0o644,
        text: include_str!("rootfs/initramfs.conf"),
    },
    GuestFile {
        path: "etc/initramfs-tools/hooks/vireo",
        mode: 0o755,
        text: include_str!("rootfs/initramfs-hook.sh"),
    },
    GuestFile {
        path: "etc/initramfs-tools/scripts/init-bottom/vireo",
        mode: 0o755,
        text: include_str!("rootfs/initramfs-bottom.sh"),
    },
];

/// The customize hook's script, inside the tree.
const CUSTOMIZE: &str = "usr/lib/vireo/customize";

/// The filesystem label of the root disk.
const LABEL: &str = "vireo-root";

/// Fingerprint of what vireo decides about the image: its files (the masked units are in
/// `customize.sh`), packages, disk size
/// and command line. An image built by a vireo that decided otherwise is rebuilt on pull.
pub(crate) fn build_id(default_cmdline: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut part = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    part("rootfs");
    part(default_cmdline);
    part(&DISK_SIZE.to_string());
    for p in INCLUDE {
        part(p);
    }
    for f in FILES {
        part(f.path);
        part(&format!("{:o}", f.mode));
        part(f.text);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Commands the build runs and the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mke2fs", "e2fsprogs"),
    ("unshare", "util-linux"),
    ("dpkg-query", "dpkg"),
    ("qemu-riscv64-static", "qemu-user-static"),
];

/// Everything the build needs from the host, checked before anything is fetched, so a missing
/// piece is named at once rather than minutes into mmdebstrap.
pub(crate) fn check_host(recipe: &Recipe) -> Result<(), ImageError> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NeedsRoot {
            image: recipe.name.to_string(),
        });
    }
    for &(tool, package) in TOOLS {
        if crate::apt::find_in_path(tool).is_none() {
            return Err(ImageError::ToolMissing { tool, package });
        }
    }
    if !binfmt_runs_riscv64(Path::new(BINFMT_DIR)) {
        return Err(ImageError::NoBinfmt {
            arch: recipe.debian_arch,
        });
    }
    Ok(())
}

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The first 20 bytes of a riscv64 ELF executable, as binfmt_misc entries match them: class
/// 64, little-endian, version 1, then e_type (2: EXEC; a PIE has 3) and e_machine 243.
const RISCV64_HEADER: [u8; 20] = [
    0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0xf3, 0,
];

/// Whether an enabled binfmt_misc entry in `dir` hands riscv64 executables to an interpreter.
fn binfmt_runs_riscv64(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|text| binfmt_entry_is_riscv64(&text)))
}

/// Whether one binfmt_misc entry (the text of its file) is enabled and matches riscv64 ELF
/// executables, static and PIE: its magic, under its mask, at its offset.
fn binfmt_entry_is_riscv64(text: &str) -> bool {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    // Two hex digits a byte; an odd digit left over fails the `get`.
    let hex = |s: &str| -> Option<Vec<u8>> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    };
    if text.lines().next() != Some("enabled") {
        return false;
    }
    let (Some(offset), Some(magic)) = (
        field("offset ").and_then(|o| o.parse::<usize>().ok()),
        field("magic ").and_then(hex),
    ) else {
        return false;
    };
    let mask = match field("mask ") {
        Some(m) => match hex(m) {
            Some(m) if m.len() == magic.len() => m,
            _ => return false,
        },
        None => vec![0xff; magic.len()],
    };
    [2u8, 3].iter().all(|&e_type| {
        let mut header = RISCV64_HEADER;
        header[16] = e_type;
        header.get(offset..offset + magic.len()).is_some_and(|h| {
            h.iter()
                .zip(&magic)
                .zip(&mask)
                .all(|((h, m), k)| h & k == m & k)
        })
    })
}

/// The mmdebstrap invocation that installs the tree at `tree`, with vireo's files from `files`,
/// in a mount namespace of its own.
pub(crate) fn mmdebstrap_command(
    recipe: &Recipe,
    mirror: &str,
    tree: &Path,
    files: &Path,
) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "mmdebstrap"])
        .args([
            "--mode=root",
            "--variant=minbase",
            "--format=directory",
            // Progress lines, which the spinner shows; errors come with apt's and dpkg's output.
            "--verbose",
        ])
        .arg(format!("--architectures={}", recipe.debian_arch))
        .arg(format!("--include={}", INCLUDE.join(",")))
        // The image is for booting, not for building: no Recommends, no documentation.
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg("--dpkgopt=path-include=/usr/share/locale/locale.alias")
        .arg(format!("--essential-hook=sync-in {} /", files.display()))
        .arg(format!("--customize-hook=chroot \"$1\" /{CUSTOMIZE}"))
        // The kernel's postinst hook makes no initrd: customize.sh makes the only one, once
        // the modules it loads are ready (an initrd made twice under qemu-user is a minute).
        .env("INITRD", "No")
        .arg(recipe.suite)
        .arg(tree)
        .arg(format!(
            "deb [arch={}] {mirror} {} main",
            recipe.debian_arch, recipe.suite
        ));
    cmd
}

/// The mke2fs invocation that makes `raw` (a file of [`DISK_SIZE`] bytes) an ext4 filesystem
/// holding `tree`.
pub(crate) fn mke2fs_command(tree: &Path, raw: &Path) -> Command {
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-L", LABEL])
        .arg("-d")
        .arg(tree)
        // Zeroed now, where zeroes cost nothing (the qcow2 copy skips them), instead of by the
        // guest kernel's lazy init on every boot of a fresh overlay.
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(raw);
    cmd
}

/// Writes [`FILES`] under `dir`, as the essential hook copies them into the tree.
fn write_files(dir: &Path) -> Result<(), ImageError> {
    for f in FILES {
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ImageError::io("create directory", parent, e))?;
        }
        std::fs::write(&path, f.text).map_err(|e| ImageError::io("write", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| ImageError::io("set the mode of", &path, e))?;
    }
    Ok(())
}

/// Builds the image into `out` (the staging directory).
pub(crate) fn build(
    recipe: &Recipe,
    mirror: &str,
    out: &Path,
    progress: &Progress,
) -> Result<Manifest, ImageError> {
    let name = recipe.name;
    let work = out.join("work");
    let files = work.join("files");
    let tree = work.join("root");
    write_files(&files)?;

    progress.stage(&format!("{name}: mmdebstrap (about 10 minutes)"));
    run_streamed(
        mmdebstrap_command(recipe, mirror, &tree, &files),
        progress,
        name,
    )?;

    let (kernel_version, _) = crate::pull::find_modules_dir(&tree)?;
    let kernel_src = tree
        .join("boot")
        .join(format!("{}{kernel_version}", recipe.kernel_prefix));
    copy_out(&kernel_src, &out.join(KERNEL_FILE), "the kernel")?;
    let initrd_src = tree
        .join("boot")
        .join(format!("initrd.img-{kernel_version}"));
    copy_out(&initrd_src, &out.join(INITRD_FILE), "the initrd")?;
    pad_to_4(&out.join(INITRD_FILE))?;
    let Some((firmware_pkg, firmware_path)) = recipe.firmware else {
        return Err(ImageError::MissingFile {
            what: "a firmware in the recipe".into(),
            path: out.to_path_buf(),
        });
    };
    copy_out(
        &tree.join(firmware_path),
        &out.join(FIRMWARE_FILE),
        "the firmware",
    )?;
    let kernel_pkg = format!("linux-image-{kernel_version}");
    let version = |pkg: &str| package_version(&tree, pkg);
    let packages = Packages {
        kernel: version(&kernel_pkg)?,
        busybox: version(crate::BUSYBOX_PACKAGE)?,
        opensbi: Some(version(firmware_pkg)?),
        systemd: Some(version("systemd")?),
    };

    progress.stage(&format!("{name}: making the ext4 filesystem"));
    let raw = work.join("root.ext4");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(DISK_SIZE))
        .map_err(|e| ImageError::io("create", &raw, e))?;
    crate::apt::run(&mut mke2fs_command(&tree, &raw))?;

    progress.stage(&format!("{name}: writing the qcow2 root disk"));
    crate::qcow2::from_raw(&raw, &out.join(ROOT_FILE))?;

    progress.stage(&format!("{name}: hashing"));
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
        build: build_id(recipe.default_cmdline),
        packages,
        files: Files {
            kernel: FileEntry::describe(out, KERNEL_FILE)?,
            initrd: FileEntry::describe(out, INITRD_FILE)?,
            firmware: Some(FileEntry::describe(out, FIRMWARE_FILE)?),
            root_disk: Some(FileEntry::describe(out, ROOT_FILE)?),
        },
    };
    crate::pull::remove_tree(&work)?;
    manifest::write(out, &m)?;
    Ok(m)
}

fn copy_out(from: &Path, to: &Path, what: &str) -> Result<(), ImageError> {
    if !from.is_file() {
        return Err(ImageError::MissingFile {
            what: format!("{what} /{}", from.file_name().unwrap_or_default().display()),
            path: from.parent().map(Path::to_path_buf).unwrap_or_default(),
        });
    }
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| ImageError::io("copy", from, e))
}

/// Zero-pads a file to a multiple of 4 bytes, where the kernel looks for an archive appended
/// after it (the CLI's command).
fn pad_to_4(path: &Path) -> Result<(), ImageError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io("open", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| ImageError::io("read", path, e))?
        .len();
    f.set_len(len.div_ceil(4) * 4)
        .map_err(|e| ImageError::io("write", path, e))
}

/// The installed version of `pkg` in the tree's dpkg database.
fn package_version(tree: &Path, pkg: &str) -> Result<Package, ImageError> {
    let out = crate::apt::run(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                tree.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Version}", pkg]),
    )?;
    let version = out.trim();
    if version.is_empty() {
        return Err(ImageError::MissingFile {
            what: format!("the installed package {pkg}"),
            path: tree.join("var/lib/dpkg"),
        });
    }
    Ok(Package {
        name: pkg.to_string(),
        version: version.to_string(),
    })
}

/// Runs a long command, showing its `I:` progress lines on the spinner; on failure the error
/// carries the end of its output (stdout and stderr together, in order).
fn run_streamed(mut cmd: Command, progress: &Progress, name: &str) -> Result<(), ImageError> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let failed = |status: String, output: String| ImageError::Command {
        command: shown.clone(),
        status,
        output,
    };
    let (reader, writer) =
        std::io::pipe().map_err(|e| failed("could not start".into(), e.to_string()))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| failed("could not start".into(), e.to_string()))?;
    cmd.stdin(Stdio::null())
        .stdout(writer2)
        .stderr(writer)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive");
    let mut child = cmd
        .spawn()
        .map_err(|e| failed("could not start".into(), e.to_string()))?;
    // The pipe ends only when every writer is closed, ours (inside `cmd`) included.
    drop(cmd);
    let mut tail: VecDeque<String> = VecDeque::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        if let Some(msg) = line.strip_prefix("I: ") {
            progress.stage(&format!("{name}: {}", shorten(msg, 70)));
        }
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child
        .wait()
        .map_err(|e| failed("could not be waited for".into(), e.to_string()))?;
    if status.success() {
        return Ok(());
    }
    Err(failed(status.to_string(), Vec::from(tail).join("\n")))
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> &'static Recipe {
        crate::recipe("debian-riscv64-rootfs").unwrap()
    }

    fn file(path: &str) -> &'static str {
        FILES.iter().find(|f| f.path == path).unwrap().text
    }

    fn args(cmd: &Command) -> Vec<String> {
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// qemu-user-static's entry as Debian registers it.
    const QEMU_ENTRY: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/riscv64-binfmt-P\n\
        flags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200f300\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";

    #[test]
    fn binfmt_entries_that_run_riscv64() {
        assert!(binfmt_entry_is_riscv64(QEMU_ENTRY));
        // Disabled, or for another machine (aarch64 is 183, 0xb7).
        assert!(!binfmt_entry_is_riscv64(
            &QEMU_ENTRY.replace("enabled", "disabled")
        ));
        assert!(!binfmt_entry_is_riscv64(
            &QEMU_ENTRY.replace("f300", "b700")
        ));
        // Without a mask the exact bytes must match, and then PIE (e_type 3) does not.
        let no_mask: String = QEMU_ENTRY
            .lines()
            .filter(|l| !l.starts_with("mask"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!binfmt_entry_is_riscv64(&no_mask));
        // A magic at another offset, or a mask that does not fit it.
        assert!(!binfmt_entry_is_riscv64(
            &QEMU_ENTRY.replace("offset 0", "offset 4")
        ));
        assert!(!binfmt_entry_is_riscv64(
            &QEMU_ENTRY.replace("mask ff", "mask f")
        ));
        // The `register` and `status` files are not entries.
        assert!(!binfmt_entry_is_riscv64("enabled\n"));
        assert!(!binfmt_entry_is_riscv64(""));

        let dir = tempfile::tempdir().unwrap();
        assert!(!binfmt_runs_riscv64(dir.path()));
        assert!(!binfmt_runs_riscv64(&dir.path().join("missing")));
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        std::fs::write(dir.path().join("qemu-riscv64"), QEMU_ENTRY).unwrap();
        assert!(binfmt_runs_riscv64(dir.path()));
    }

    #[test]
    fn mmdebstrap_runs_in_its_own_mount_namespace_with_a_sources_line_of_its_own() {
        let cmd = mmdebstrap_command(
            recipe(),
            "http://mirror.example/debian",
            Path::new("/cache/stage/work/root"),
            Path::new("/cache/stage/work/files"),
        );
        let a = args(&cmd);
        assert_eq!(
            &a[..6],
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "mmdebstrap"
            ]
        );
        for want in [
            "--mode=root",
            "--variant=minbase",
            "--architectures=riscv64",
            "--essential-hook=sync-in /cache/stage/work/files /",
            "--customize-hook=chroot \"$1\" /usr/lib/vireo/customize",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        let include = a.iter().find_map(|x| x.strip_prefix("--include=")).unwrap();
        for pkg in [
            "systemd-sysv",
            "udev",
            "linux-image-riscv64",
            "initramfs-tools",
        ] {
            assert!(include.split(',').any(|p| p == pkg), "{pkg}");
        }
        // Suite, target, then the one source: the mirror given, the guest's architecture.
        assert_eq!(
            &a[a.len() - 3..],
            [
                "trixie",
                "/cache/stage/work/root",
                "deb [arch=riscv64] http://mirror.example/debian trixie main"
            ]
        );
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == "INITRD" && v == Some("No".as_ref())));
        assert!(file(CUSTOMIZE).contains("update-initramfs -c -k \"$kver\""));
        // Nothing of the host's apt configuration is passed or pointed at.
        assert!(!a.iter().any(|x| x.contains("/etc/apt")), "{a:?}");
        // The customize hook runs the script the essential hook copied in.
        assert!(FILES
            .iter()
            .any(|f| f.path == CUSTOMIZE && f.mode & 0o111 != 0));
    }

    /// What the recipe says the image holds is what mmdebstrap installs.
    #[test]
    fn packages_match_the_recipe() {
        let r = recipe();
        assert!(INCLUDE.contains(&r.kernel_meta));
        assert!(INCLUDE.contains(&r.firmware.unwrap().0));
        assert!(INCLUDE.contains(&crate::BUSYBOX_PACKAGE));
        assert_eq!(r.kind, crate::Kind::Rootfs);
    }

    #[test]
    fn mke2fs_fills_the_raw_file_from_the_tree() {
        let a = args(&mke2fs_command(
            Path::new("/t/root"),
            Path::new("/t/root.ext4"),
        ));
        assert_eq!(a[0], "mke2fs");
        let at = a.iter().position(|x| x == "-d").unwrap();
        assert_eq!(a[at + 1], "/t/root");
        assert_eq!(a.last().unwrap(), "/t/root.ext4");
        assert!(a.windows(2).any(|w| w == ["-t", "ext4"]));
        assert!(a
            .windows(2)
            .any(|w| w == ["-E", "lazy_itable_init=0,lazy_journal_init=0"]));
    }

    #[test]
    fn guest_scripts_parse_as_posix_sh() {
        let dir = tempfile::tempdir().unwrap();
        for f in FILES.iter().filter(|f| f.text.starts_with("#!/bin/sh")) {
            let path = dir.path().join("script");
            std::fs::write(&path, f.text).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-n")
                .arg(&path)
                .output()
                .expect("sh is needed to check the guest scripts");
            assert!(
                out.status.success(),
                "{}: {}",
                f.path,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The agent, the session and the initramfs script speak the protocol the CLI speaks to
    /// the busybox image's /init.
    #[test]
    fn guest_side_follows_the_command_channel_protocol() {
        let agent = file("usr/lib/vireo/agent");
        for port in ["vireo.stdin", "vireo.stdout", "vireo.stderr", "vireo.ctl"] {
            assert!(agent.contains(port), "{port}");
        }
        assert!(agent.contains("/sys/class/virtio-ports/"));
        for line in ["echo started >&4", "echo \"exited $?\" >&4", "poweroff)"] {
            assert!(agent.contains(line), "{line}");
        }
        // The CLI's files (vireo/cmd, vireo/tty in the initrd) are found under /run.
        let bottom = file("etc/initramfs-tools/scripts/init-bottom/vireo");
        assert!(bottom.contains("[ -d /vireo ]") && bottom.contains("/run/vireo/"));
        let (cmd, tty) = (
            crate::COMMAND_FILE.strip_prefix("vireo/").unwrap(),
            crate::TTY_FILE.strip_prefix("vireo/").unwrap(),
        );
        assert!(agent.contains("DIR=/run/vireo"));
        assert!(agent.contains(&format!("sh \"$DIR/{cmd}\"")));
        assert!(agent.contains(&format!("\"$DIR/{tty}\"")));
        assert!(agent.contains("telnetd -i -l /usr/lib/vireo/tty-run"));
        assert!(agent.contains("-E HOME=/root /usr/lib/vireo/exec-run"));
        assert!(file("usr/lib/vireo/exec-run").contains("sh /run/vireo/exec.sh"));
        let tty_run = file("usr/lib/vireo/tty-run");
        assert!(tty_run.contains(&format!("</run/{}", crate::TTY_FILE)));
        assert!(tty_run.contains(&format!("sh /run/{}", crate::COMMAND_FILE)));
        // Every way out reports a status through the exit register.
        let exit = file("usr/lib/vireo/exit");
        assert!(exit.contains("vireo.exit=*"));
        assert!(exit.contains("devmem \"$EXIT_ADDR\" 32 0x5555"));
        assert!(exit.contains("(status << 16) | 0x3333"));
        // The console's session starts with the marker the CLI waits for.
        let marker = std::str::from_utf8(crate::START_MARKER).unwrap();
        let printf_form = marker.replace('\x1b', "\\033").replace('\x07', "\\007");
        let session = file("usr/lib/vireo/session");
        assert!(session.contains(&format!("printf '{printf_form}'")));
        assert!(
            file("etc/systemd/system/serial-getty@.service.d/vireo.conf")
                .contains("--login-program /usr/lib/vireo/session")
        );
        // The service exists and is enabled at build time.
        assert!(file(CUSTOMIZE).contains("systemctl enable vireo-agent.service"));
        assert!(file("etc/systemd/system/vireo-agent.service")
            .contains("ExecStart=/usr/lib/vireo/agent"));
    }

    /// The initrd finds the root the command line names, on the disk vireo attaches.
    #[test]
    fn initrd_and_fstab_agree_with_the_command_line() {
        let cmdline = recipe().default_cmdline;
        assert!(cmdline.split(' ').any(|w| w == "root=/dev/vda"));
        assert!(cmdline.split(' ').any(|w| w == "rw"));
        assert!(cmdline.split(' ').any(|w| w == "fsck.mode=skip"));
        assert!(file(CUSTOMIZE).contains("/dev/vda\\t/\\text4"));
        let conf = file("etc/initramfs-tools/conf.d/vireo.conf");
        assert!(conf.contains("MODULES=list") && conf.contains("FSTYPE=ext4"));
        let hook = file("etc/initramfs-tools/hooks/vireo");
        for m in ["virtio_mmio", "virtio_pci", "virtio_blk", "ext4"] {
            assert!(hook.contains(m), "{m}");
        }
    }

    #[test]
    fn files_are_written_with_their_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path()).unwrap();
        for f in FILES {
            let meta = std::fs::metadata(dir.path().join(f.path)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, f.mode, "{}", f.path);
            assert_eq!(
                std::fs::read_to_string(dir.path().join(f.path)).unwrap(),
                f.text
            );
        }
    }

    #[test]
    fn build_id_is_its_own() {
        let id = build_id(recipe().default_cmdline);
        assert_eq!(id.len(), 16);
        assert_eq!(id, recipe().build_id());
        assert_ne!(id, build_id("console=ttyS0"));
        assert_ne!(id, crate::initramfs::build_id(recipe().default_cmdline));
    }

    #[test]
    fn host_errors_say_what_to_install() {
        let e = ImageError::NoBinfmt { arch: "riscv64" }.to_string();
        for want in [
            "qemu-user-static",
            "binfmt-support",
            "update-binfmts --enable qemu-riscv64",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = ImageError::NeedsRoot {
            image: "debian-riscv64-rootfs".into(),
        }
        .to_string();
        assert!(
            e.contains("sudo vireo image pull debian-riscv64-rootfs"),
            "{e}"
        );
        assert!(TOOLS.contains(&("mmdebstrap", "mmdebstrap")));
        assert!(TOOLS.contains(&("qemu-riscv64-static", "qemu-user-static")));
    }

    #[test]
    fn long_progress_lines_are_shortened() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc...");
        assert_eq!(shorten("ééé", 2), "éé...");
    }
}
