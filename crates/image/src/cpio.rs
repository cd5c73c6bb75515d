//! A writer for cpio archives in the SVR4 "newc" format (magic `070701`), the format
//! the Linux kernel unpacks as an initramfs.
//!
//! Every entry is owned by root and has mtime 0 so that the same inputs always give the
//! same bytes. Parent directories that were not added explicitly are emitted
//! automatically (mode 0755) before the first entry below them, because the kernel's
//! unpacker does not create missing parents. Several archives may be concatenated: the
//! kernel unpacks each in turn, and re-creating an existing directory is harmless.
//!
//! ```
//! let mut w = vireo_image::cpio::Writer::new();
//! w.file("vireo/cmd", 0o644, b"'echo' 'hi'\n").unwrap();
//! let archive: Vec<u8> = w.finish();
//! assert!(archive.starts_with(b"070701"));
//! ```

use std::collections::HashSet;

use crate::ImageError;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// The name of the entry that ends a newc archive.
pub const TRAILER: &str = "TRAILER!!!";

/// Builds a newc archive in memory.
#[derive(Debug)]
pub struct Writer {
    out: Vec<u8>,
    next_ino: u32,
    dirs: HashSet<String>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// An empty archive.
    pub fn new() -> Self {
        Writer {
            out: Vec::new(),
            next_ino: 1,
            dirs: HashSet::new(),
        }
    }

    /// Adds a directory. `mode` holds the permission bits (e.g. `0o755`). A directory
    /// already in this archive, added or created as a parent, keeps its first mode.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, ImageError> {
        let name = normalize(path)?;
        if self.dirs.contains(&name) {
            return Ok(self);
        }
        self.parents(&name)?;
        self.entry(&name, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])?;
        self.dirs.insert(name);
        Ok(self)
    }

    /// Adds a regular file with the given permission bits and contents.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<&mut Self, ImageError> {
        let name = normalize(path)?;
        self.parents(&name)?;
        self.entry(&name, S_IFREG | (mode & 0o7777), 1, (0, 0), data)?;
        Ok(self)
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, ImageError> {
        let name = normalize(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(ImageError::CpioEntry {
                path: path.to_string(),
                reason: "expected a non-empty symlink target without NUL bytes".into(),
            });
        }
        self.parents(&name)?;
        self.entry(&name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())?;
        Ok(self)
    }

    /// Adds a character device node with the given device numbers.
    pub fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, ImageError> {
        let name = normalize(path)?;
        self.parents(&name)?;
        self.entry(&name, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])?;
        Ok(self)
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        // The trailer's name and empty body always fit, so this cannot fail.
        let _ = self.raw_entry(TRAILER, 0, 0, 1, (0, 0), &[]);
        self.out
    }

    fn parents(&mut self, name: &str) -> Result<(), ImageError> {
        let mut end = 0;
        while let Some(pos) = name[end..].find('/') {
            let parent = &name[..end + pos];
            if !self.dirs.contains(parent) {
                self.entry(parent, S_IFDIR | 0o755, 2, (0, 0), &[])?;
                self.dirs.insert(parent.to_string());
            }
            end += pos + 1;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), ImageError> {
        let ino = self.next_ino;
        self.raw_entry(name, ino, mode, nlink, rdev, data)?;
        self.next_ino = self.next_ino.wrapping_add(1);
        Ok(())
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), ImageError> {
        let too_big = |what: &str| ImageError::CpioEntry {
            path: name.to_string(),
            reason: format!("expected {what} below 4 GiB, the limit of the newc format"),
        };
        let filesize = u32::try_from(data.len()).map_err(|_| too_big("contents"))?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big("a name"))?;
        // Owner root, mtime 0 and no host device keep the archive reproducible.
        let (uid, gid, mtime, devmajor, devminor, check) = (0, 0, 0, 0, 0, 0);
        let fields = [
            ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdev.0, rdev.1,
            namesize, check,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// Archive names are relative ("bin/sh"), which is what the kernel and `cpio -i` expect.
fn normalize(path: &str) -> Result<String, ImageError> {
    let bad = |reason: &str| ImageError::CpioEntry {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.contains('\0') {
        return Err(bad("expected a path without NUL bytes"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Err(bad("expected a non-empty path below the archive root"));
    }
    if parts.contains(&"..") {
        return Err(bad("expected a path without `..` components"));
    }
    let name = parts.join("/");
    if name == TRAILER {
        return Err(bad("expected a name other than the archive trailer"));
    }
    Ok(name)
}

/// A strict reader for the tests of this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::TRAILER;

    #[derive(Debug, PartialEq)]
    pub(crate) struct Entry {
        pub name: String,
        pub ino: u32,
        pub mode: u32,
        pub uid: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// An independent reader, strict about alignment and the field values we promise.
    pub(crate) fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let start = buf.len();
        let mut entries = Vec::new();
        loop {
            let off = start - buf.len();
            assert_eq!(off % 4, 0, "header not 4-byte aligned");
            assert_eq!(&buf[..6], b"070701", "bad magic at {off}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[6 + i * 8..6 + i * 8 + 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let namesize = field(11) as usize;
            let filesize = field(6) as usize;
            assert_eq!(field(12), 0, "check must be 0");
            let name_end = 110 + namesize;
            assert_eq!(buf[name_end - 1], 0, "name not NUL terminated");
            let name = std::str::from_utf8(&buf[110..name_end - 1])
                .unwrap()
                .to_string();
            let data_start = name_end.div_ceil(4) * 4;
            assert!(buf[name_end..data_start].iter().all(|&b| b == 0));
            let data = buf[data_start..data_start + filesize].to_vec();
            let next = (data_start + filesize).div_ceil(4) * 4;
            assert!(buf[data_start + filesize..next].iter().all(|&b| b == 0));
            let e = Entry {
                name,
                ino: field(0),
                mode: field(1),
                uid: field(2) | field(3),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                data,
            };
            buf = &buf[next..];
            if e.name == TRAILER {
                assert!(buf.is_empty(), "bytes after trailer");
                return entries;
            }
            entries.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::parse;
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        w.dir("/dev", 0o755).unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.file("/bin/busybox", 0o755, b"\x7fELF fake").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.file("etc/vireo/modules", 0o644, b"").unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.finish()
    }

    #[test]
    fn round_trip() {
        let entries = parse(&sample());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "bin",
                "bin/busybox",
                "bin/sh",
                "etc",
                "etc/vireo",
                "etc/vireo/modules",
                "init"
            ]
        );
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by("dev").mode, 0o040755);
        assert_eq!(by("dev").nlink, 2);
        assert_eq!(by("dev/console").mode, 0o020600);
        assert_eq!(by("dev/console").rdev, (5, 1));
        assert_eq!(by("bin/busybox").mode, 0o100755);
        assert_eq!(by("bin/busybox").data, b"\x7fELF fake");
        assert_eq!(by("bin/sh").mode, 0o120777);
        assert_eq!(by("bin/sh").data, b"busybox");
        assert_eq!(by("init").data, b"#!/bin/sh\n");
        let mut inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        inos.dedup();
        assert_eq!(inos.len(), entries.len(), "inode numbers must be unique");
        assert!(entries.iter().all(|e| e.uid == 0 && e.mtime == 0));
    }

    #[test]
    fn output_is_reproducible() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn rejects_bad_paths() {
        let mut w = Writer::new();
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a/../b", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
        assert!(w.symlink("x", "").is_err());
        // Nothing was written for the rejected entries.
        assert!(parse(&w.finish()).is_empty());
    }

    #[test]
    fn cpio_tool_lists_names() {
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            println!("skipping the cpio(1) cross-check: the `cpio` binary is not installed");
            return;
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, sample()).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-it", "--quiet", "-H", "newc", "-F"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = String::from_utf8(out.stdout).unwrap();
        let listed: Vec<&str> = listed.lines().collect();
        assert!(listed.contains(&"dev/console"), "{listed:?}");
        assert!(listed.contains(&"bin/sh"), "{listed:?}");
        assert!(listed.contains(&"etc/vireo/modules"), "{listed:?}");
        assert_eq!(listed.len(), 9, "{listed:?}");
    }
}
