//! The initramfs: busybox, vireo's /init, device nodes and the virtio/ext4 modules.

use std::io::Write;
use std::path::Path;

use crate::cpio::Writer;
use crate::modules::ModuleTree;
use crate::ImageError;

/// vireo's /init script.
pub(crate) const INIT_SCRIPT: &str = include_str!("init.sh");

/// Fingerprint of vireo's own contribution to an image.
pub(crate) fn build_id(default_cmdline: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // How modules are prepared is part of what vireo contributes.
    const MODULES: &str = "modules: decompressed, signatures stripped";
    for part in [INIT_SCRIPT, UDHCPC_SCRIPT, default_cmdline, MODULES] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The udhcpc event script /init passes with `-s`.
pub(crate) const UDHCPC_SCRIPT: &str = include_str!("udhcpc.script");

/// Virtio transports: loaded first when present as modules; often built in.
const TRANSPORTS: &[&str] = &["virtio_mmio", "virtio_pci"];

/// Virtio drivers /init loads when it sees a virtio device.
const DEVICES: &[&str] = &[
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
];

/// Shipped for `modprobe` on demand (the kernel asks for `fs-ext4` on mount).
const ON_DEMAND: &[&str] = &["ext4"];

const DIRS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("root", 0o700),
    ("mnt", 0o755),
    ("etc", 0o755),
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("lib", 0o755),
    ("lib/modules", 0o755),
];

pub(crate) struct Inputs<'a> {
    /// `.../modules/<version>` in the extracted kernel package.
    pub modules_dir: &'a Path,
    pub kernel_version: &'a str,
    pub busybox: &'a Path,
}

/// Builds the gzip-compressed initramfs, zero-padded to a multiple of 4 bytes: the
/// kernel only finds an archive appended after it (the CLI's command archive) at a
/// 4-byte aligned offset, and skips zero bytes in between.
pub(crate) fn build(inputs: &Inputs) -> Result<Vec<u8>, ImageError> {
    let archive = archive(inputs)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut out = gz
        .write_all(&archive)
        .and_then(|()| gz.finish())
        .map_err(|e| ImageError::io("compress", "the initramfs", e))?;
    out.resize(out.len().div_ceil(4) * 4, 0);
    Ok(out)
}

fn archive(inputs: &Inputs) -> Result<Vec<u8>, ImageError> {
    let kver = inputs.kernel_version;
    let mods_root = format!("lib/modules/{kver}");
    let mut w = Writer::new();
    for &(dir, mode) in DIRS {
        w.dir(dir, mode)?;
    }
    w.dir(&mods_root, 0o755)?;
    w.dir("etc/vireo", 0o755)?;
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;

    let busybox =
        std::fs::read(inputs.busybox).map_err(|e| ImageError::io("read", inputs.busybox, e))?;
    w.file("bin/busybox", 0o755, &busybox)?;
    w.symlink("bin/sh", "busybox")?;
    // The kernel runs this path for on-demand module loading before /init has
    // installed the other applets.
    w.symlink("sbin/modprobe", "/bin/busybox")?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    w.file("etc/vireo/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes())?;
    // Lets the shell prompt and `id` show names instead of numbers.
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    w.file("etc/group", 0o644, b"root:x:0:\n")?;

    let mut tree = ModuleTree::open(inputs.modules_dir)?;
    let boot_roots: Vec<&str> = TRANSPORTS.iter().chain(DEVICES).copied().collect();
    let all_roots: Vec<&str> = boot_roots.iter().chain(ON_DEMAND).copied().collect();
    let boot = tree.resolve(&boot_roots)?;
    let all = tree.resolve(&all_roots)?;

    let mut modules = Vec::new();
    for name in &all {
        modules.push(tree.module(name)?);
    }
    let rel_of = |name: &str| {
        modules
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.rel_path.clone())
            .unwrap_or_default()
    };
    let mut dep = String::new();
    let mut alias = String::new();
    for m in &modules {
        w.file(&format!("{mods_root}/{}", m.rel_path), 0o644, &m.data)?;
        // depmod's convention: all transitive dependencies, the one to load first last.
        let order = tree.resolve(&[m.name.as_str()])?;
        let deps: Vec<String> = order
            .iter()
            .rev()
            .filter(|d| **d != m.name)
            .map(|d| rel_of(d))
            .collect();
        dep.push_str(&format!("{}:", m.rel_path));
        for d in deps {
            dep.push(' ');
            dep.push_str(&d);
        }
        dep.push('\n');
        for a in &m.info.aliases {
            alias.push_str(&format!("alias {a} {}\n", m.name));
        }
    }
    w.file(&format!("{mods_root}/modules.dep"), 0o644, dep.as_bytes())?;
    w.file(
        &format!("{mods_root}/modules.alias"),
        0o644,
        alias.as_bytes(),
    )?;
    for extra in ["modules.builtin", "modules.order"] {
        let path = inputs.modules_dir.join(extra);
        match std::fs::read(&path) {
            Ok(data) => {
                w.file(&format!("{mods_root}/{extra}"), 0o644, &data)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("read", path, e)),
        }
    }
    let list: String = boot
        .iter()
        .map(|name| format!("/{mods_root}/{}\n", rel_of(name)))
        .collect();
    w.file("etc/vireo/modules", 0o644, list.as_bytes())?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse_as_posix_sh() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [("init", INIT_SCRIPT), ("udhcpc.script", UDHCPC_SCRIPT)] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            match std::process::Command::new("sh")
                .arg("-n")
                .arg(&path)
                .output()
            {
                Ok(out) => assert!(
                    out.status.success(),
                    "{name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => println!("skipping the syntax check of {name}: cannot run sh: {e}"),
            }
        }
    }

    #[test]
    fn init_follows_the_protocol() {
        let marker = std::str::from_utf8(crate::START_MARKER).unwrap();
        let printf_form = marker.replace('\x1b', "\\033").replace('\x07', "\\007");
        assert!(INIT_SCRIPT.contains(&format!("printf '{printf_form}'")));
        assert!(INIT_SCRIPT.contains(&format!("sh /{}", crate::COMMAND_FILE)));
        assert!(INIT_SCRIPT.contains("[ -f /vireo/cmd ]"));
        assert!(INIT_SCRIPT.contains("vireo.exit=*"));
        assert!(INIT_SCRIPT.contains("devmem \"$EXIT_ADDR\" 32 0x5555"));
        assert!(INIT_SCRIPT.contains("(status << 16) | 0x3333"));
        // The command channel: the ports the CLI offers, found by name; a pty by telnetd.
        for port in ["vireo.stdin", "vireo.stdout", "vireo.stderr", "vireo.ctl"] {
            assert!(INIT_SCRIPT.contains(port), "{port}");
        }
        assert!(INIT_SCRIPT.contains("/sys/class/virtio-ports/"));
        assert!(INIT_SCRIPT.contains(&format!("/{}", crate::TTY_FILE)));
        assert!(INIT_SCRIPT.contains("telnetd -i"));
    }
}
