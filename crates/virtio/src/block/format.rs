//! Recognising disk image formats by their content: qcow2 is served (`qcow2.rs`), the others
//! vireo cannot serve are refused.
//!
//! A qcow2 (or VMDK, VHD, ...) file attached as a raw disk shows the guest the container's
//! metadata as sectors; a guest that then formats or repairs "its" disk destroys the image. So
//! every image is probed, as QEMU probes an image opened without `format=`, and one that
//! carries a known magic is refused. The file name plays no part: `disk.img` may be qcow2 and
//! `disk.qcow2` raw. A raw disk whose guest data happens to start like one of these headers
//! is attached with `format=raw`, which skips the probe.

use std::fmt;
use std::path::Path;

/// What the user says an image is (`--disk PATH,format=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image: sector N of the disk is bytes N*512.. of the file. No probing.
    Raw,
    /// A qcow2 image (`qcow2.rs`), with its backing chain.
    Qcow2,
}

/// A container or encryption format recognised by its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignFormat {
    Qcow2,
    Qed,
    Vmdk,
    Vdi,
    Vhdx,
    Vhd,
    Luks,
}

impl ForeignFormat {
    /// The name users and `qemu-img info` know it by.
    pub fn name(self) -> &'static str {
        match self {
            ForeignFormat::Qcow2 => "qcow2",
            ForeignFormat::Qed => "QED",
            ForeignFormat::Vmdk => "VMDK",
            ForeignFormat::Vdi => "VDI",
            ForeignFormat::Vhdx => "VHDX",
            ForeignFormat::Vhd => "VHD",
            ForeignFormat::Luks => "LUKS",
        }
    }

    /// What the user can do about it, given the path they passed.
    pub(crate) fn advice(self, path: &Path) -> String {
        if self == ForeignFormat::Luks {
            // Converting would not help: the guest would still need the key. What the user
            // most likely wants is the encrypted volume itself, unlocked inside the guest.
            return format!(
                "vireo does not decrypt images; to give the guest the encrypted volume as it is \
                 (and unlock it there), add format=raw: --disk {},format=raw",
                path.display()
            );
        }
        let mut target = path.with_extension("qcow2");
        if target == path {
            target = path.with_extension("img");
        }
        format!(
            "vireo reads raw and qcow2 images, convert it with `qemu-img convert -O qcow2 {} {}` \
             (or add format=raw if it is a raw disk whose data only starts like a {} header)",
            path.display(),
            target.display(),
            self.name()
        )
    }
}

impl fmt::Display for ForeignFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many bytes from the start of the image [`probe`] looks at.
pub(crate) const HEAD_LEN: usize = 512;
/// How many bytes at the end of the image [`probe`] looks at (a VHD footer).
pub(crate) const TAIL_LEN: usize = 512;

/// VDI's signature, little-endian at offset 0x40 behind the `<<< ... >>>` text banner.
const VDI_SIGNATURE: u32 = 0xbeda_107f;

/// Finds a known signature in the first bytes of an image (`head`, shorter for a small file)
/// or in its last 512 bytes (`tail`, `None` when the file is smaller than that).
pub(crate) fn probe(head: &[u8], tail: Option<&[u8]>) -> Option<ForeignFormat> {
    let at0 = |magic: &[u8]| head.starts_with(magic);
    if at0(b"QFI\xfb") {
        return Some(ForeignFormat::Qcow2);
    }
    if at0(b"QED\0") {
        return Some(ForeignFormat::Qed);
    }
    // A sparse extent ("KDMV") or a text descriptor that names the extents.
    if at0(b"KDMV") || at0(b"# Disk DescriptorFile") {
        return Some(ForeignFormat::Vmdk);
    }
    if at0(b"<<< ")
        && head
            .get(0x40..0x44)
            .is_some_and(|s| s == VDI_SIGNATURE.to_le_bytes())
    {
        return Some(ForeignFormat::Vdi);
    }
    if at0(b"vhdxfile") {
        return Some(ForeignFormat::Vhdx);
    }
    // A dynamic VHD starts with a copy of its footer; a fixed one has it only at the end.
    if at0(b"conectix") || tail.is_some_and(|t| t.starts_with(b"conectix")) {
        return Some(ForeignFormat::Vhd);
    }
    if at0(b"LUKS\xba\xbe") {
        return Some(ForeignFormat::Luks);
    }
    None
}

/// Opens an image file (the top of a chain, a backing file) for reading without ever blocking:
/// a name may point at a FIFO, whose open would wait for a writer forever. Anything but a
/// regular file or a block device is refused, naming what it is; `what` starts the message
/// ("backing file", "disk image").
pub(crate) fn open_image_read(
    path: &std::path::Path,
    what: &str,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK only changes opening a FIFO (it returns at once); regular files and block
        // devices ignore it for reads.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))?;
    let ft = file.metadata()?.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        let found = super::backend::type_name(ft);
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{what} {} is {found}; expected a regular file or a block device",
                path.display()
            ),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(prefix: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8; HEAD_LEN];
        s[..prefix.len()].copy_from_slice(prefix);
        s
    }

    #[test]
    fn every_known_magic_is_recognised() {
        let cases: &[(&[u8], ForeignFormat)] = &[
            (b"QFI\xfb\0\0\0\x03", ForeignFormat::Qcow2),
            (b"QED\0", ForeignFormat::Qed),
            (b"KDMV\x01\0\0\0", ForeignFormat::Vmdk),
            (b"# Disk DescriptorFile\nversion=1\n", ForeignFormat::Vmdk),
            (b"vhdxfile", ForeignFormat::Vhdx),
            (b"conectix\0\0\0\x02", ForeignFormat::Vhd),
            (b"LUKS\xba\xbe\0\x02", ForeignFormat::Luks),
        ];
        for (magic, want) in cases {
            assert_eq!(probe(&sector(magic), None), Some(*want), "{magic:?}");
        }
        let mut vdi = sector(b"<<< Oracle VM VirtualBox Disk Image >>>\n");
        vdi[0x40..0x44].copy_from_slice(&VDI_SIGNATURE.to_le_bytes());
        assert_eq!(probe(&vdi, None), Some(ForeignFormat::Vdi));
    }

    #[test]
    fn a_fixed_vhd_is_found_by_its_footer() {
        let data = sector(b"");
        let footer = sector(b"conectix");
        assert_eq!(probe(&data, Some(&footer)), Some(ForeignFormat::Vhd));
        // The same bytes elsewhere in the last sector are guest data.
        let mut late = vec![0u8; TAIL_LEN];
        late[8..16].copy_from_slice(b"conectix");
        assert_eq!(probe(&data, Some(&late)), None);
    }

    #[test]
    fn near_misses_are_raw() {
        assert_eq!(probe(&sector(b""), None), None);
        assert_eq!(probe(&[], None), None);
        // A magic must sit at offset 0.
        assert_eq!(probe(&sector(b"\0QFI\xfb"), None), None);
        assert_eq!(probe(&sector(b"QFI"), None), None);
        assert_eq!(probe(&sector(b"LUKS\xba"), None), None);
        assert_eq!(probe(&sector(b"# Disk Descriptor"), None), None);
        // The VDI banner without its signature, or cut short before it.
        assert_eq!(probe(&sector(b"<<< just text >>>"), None), None);
        assert_eq!(probe(b"<<< short", None), None);
        // An ext4 or MBR disk.
        let mut mbr = sector(b"");
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(probe(&mbr, Some(&mbr)), None);
    }

    #[test]
    fn advice_names_a_conversion_that_does_not_overwrite_the_image() {
        let a = ForeignFormat::Vmdk.advice(Path::new("vm/x.vmdk"));
        assert!(
            a.contains("qemu-img convert -O qcow2 vm/x.vmdk vm/x.qcow2"),
            "{a}"
        );
        assert!(a.contains("format=raw"), "{a}");
        let a = ForeignFormat::Vdi.advice(Path::new("d.qcow2"));
        assert!(a.contains("-O qcow2 d.qcow2 d.img"), "{a}");
        let a = ForeignFormat::Luks.advice(Path::new("secret.img"));
        assert!(
            a.contains("--disk secret.img,format=raw") && !a.contains("convert"),
            "{a}"
        );
    }
}
