//! The VM specification: what a user asks for, independent of how it is run.
//!
//! A [`VmSpec`] is built from a TOML file (`--config vm.toml`) and/or command-line flags; every
//! flag has a key of the same name (docs/config.md lists them with their defaults). Unknown
//! keys are errors, and [`VmSpec::validate`] checks the values that parsing alone cannot
//! (counts, sizes, combinations).
//!
//! A file is read as written for its own place: relative paths in it (`kernel`, `initrd`,
//! `firmware`, `console_log`, a `disk` entry's path, `vsock`'s `uds=`) are relative to the
//! file's directory, not to wherever vireo happens to be started, and errors about its values
//! name the file and the key ([`Entry::label`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors found while reading or validating a specification.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {}", path.display(), read_reason(source))]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A value in the config file is out of range.
    #[error("{}: {key}: {message}", path.display())]
    InConfig {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    /// The config file is not valid TOML or has an unknown key or a bad value.
    #[error("invalid config file {}: {message}", path.display())]
    ParseConfig { path: PathBuf, message: String },
    /// A memory size could not be parsed.
    #[error(
        "invalid memory size '{0}': expected a number with an optional K, M or G suffix, e.g. 512M"
    )]
    MemSize(String),
    /// An accelerator name is not known.
    #[error("unknown accelerator '{0}': expected one of auto, kvm, emu")]
    Accel(String),
    /// A value is outside what vireo supports.
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn read_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        _ => e.to_string(),
    }
}

/// Which engine runs the guest's instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// kvm for x86-64 guests when /dev/kvm is usable, emu otherwise.
    #[default]
    Auto,
    /// Hardware-assisted x86-64 guests on Linux KVM.
    Kvm,
    /// The built-in RISC-V RV64GC full-system emulator.
    Emu,
}

impl FromStr for Accel {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "emu" => Ok(Accel::Emu),
            other => Err(SpecError::Accel(other.to_string())),
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Emu => "emu",
        })
    }
}

impl<'de> Deserialize<'de> for Accel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Accel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes, written as `512M`, `1G`, `65536` or `64K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemSize(pub u64);

impl MemSize {
    pub const MIB: u64 = 1 << 20;
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for MemSize {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let err = || SpecError::MemSize(s.to_string());
        let t = s.trim();
        // Accept K, M, G with an optional B or iB after them (512M, 512MB, 512MiB).
        let upper = t.to_ascii_uppercase();
        let unit = upper
            .strip_suffix("IB")
            .or_else(|| upper.strip_suffix('B'))
            .unwrap_or(&upper);
        let (digits, shift) = match unit.chars().last() {
            Some('K') => (&unit[..unit.len() - 1], 10),
            Some('M') => (&unit[..unit.len() - 1], 20),
            Some('G') => (&unit[..unit.len() - 1], 30),
            // A bare number is MiB, as with QEMU's -m.
            Some(c) if c.is_ascii_digit() && unit.len() == upper.len() => (unit, 20),
            _ => return Err(err()),
        };
        let n: u64 = digits.parse().map_err(|_| err())?;
        n.checked_shl(shift)
            .filter(|v| v >> shift == n)
            .map(MemSize)
            .ok_or_else(err)
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1 << 30) {
            write!(f, "{}G", b >> 30)
        } else if b.is_multiple_of(1 << 20) {
            write!(f, "{}M", b >> 20)
        } else if b.is_multiple_of(1 << 10) {
            write!(f, "{}K", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl<'de> Deserialize<'de> for MemSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => format!("{n}M").parse().map_err(serde::de::Error::custom),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for MemSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Everything `vireo run` needs to know about one VM. Field names are the config-file keys and
/// the long flag names (with `_` written `-` on the command line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmSpec {
    /// The accelerator: auto, kvm or emu.
    pub accel: Accel,
    /// A pulled guest image by name (`vireo image list`).
    pub image: Option<String>,
    /// A kernel to boot (RISC-V Image or ELF; x86 bzImage or vmlinux).
    pub kernel: Option<PathBuf>,
    /// An initramfs to hand the kernel.
    pub initrd: Option<PathBuf>,
    /// The kernel command line; replaces the image's default one.
    pub cmdline: Option<String>,
    /// M-mode firmware (e.g. OpenSBI fw_jump.bin) instead of the built-in SBI.
    pub firmware: Option<PathBuf>,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Guest RAM size.
    pub memory: MemSize,
    /// Show the guest's whole console (kernel log included).
    pub verbose: bool,
    /// Copy everything the guest console prints to this file.
    pub console_log: Option<PathBuf>,
    /// A command to run in the guest instead of a shell; vireo exits with its status.
    pub command: Vec<String>,
    /// virtio-blk disks, one per entry: `PATH[,readonly][,overlay][,serial=ID][,format=raw|qcow2]`;
    /// a VM the daemon runs may name a volume, `vol:POOL/NAME` or `vol:NAME`, for PATH.
    pub disk: Vec<String>,
    /// The disk that stands in for an image's own root disk (the first virtio disk, id
    /// `root`): `PATH[,serial=ID][,format=raw|qcow2]`. The daemon gives it to a VM restored
    /// from a snapshot (its overlay on the snapshot's copy of the root disk).
    pub root_disk: Option<String>,
    /// virtio-net NICs, one per entry: `user[,hostfwd=tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT]...`
    /// or `tap=NAME`, then optionally `,mac=XX:XX:XX:XX:XX:XX`.
    pub net: Vec<String>,
    /// A virtio-rng device fed from the host's random source.
    pub rng: bool,
    /// A virtio-vsock device: `cid=N,uds=PATH`.
    pub vsock: Option<String>,
    /// The guest console: `serial` (16550 UART, ttyS0) or `virtio` (virtio-console, hvc0).
    pub console: String,
    /// How virtio devices attach: `mmio` (virtio-mmio), `pci` (virtio-pci), or `auto` (mmio on
    /// the emu board, pci on the kvm PC).
    pub virtio_transport: String,
    /// The emulated RISC-V CPU (emu only): `max` (every extension vireo implements) or
    /// `rv64gc`, then `,+EXT` / `,-EXT` edits, e.g. `max,-sstc`.
    pub cpu: String,
    /// What a guest reboot does: `restart` (boot the VM again) or `exit` (end the run as a
    /// power-off does). A command's run always ends.
    pub reboot: String,
    /// The config file this spec was read from, if any (not a key).
    #[serde(skip)]
    pub source: Option<ConfigSource>,
}

/// Where a spec's file-given values came from, for resolving their paths and naming them in
/// errors. The file's `disk` and `net` entries come first; flags append theirs after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// The file, as the user named it.
    pub path: PathBuf,
    /// Its directory, which relative paths in it are relative to.
    pub dir: PathBuf,
    /// How many of `disk` the file gave.
    pub disks: usize,
    /// How many of `net` the file gave.
    pub nets: usize,
    /// Whether `vsock` is the file's (a flag replaces it).
    pub vsock: bool,
}

/// One device option string (`disk`, `net`, `vsock`) and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key or flag name.
    pub key: &'static str,
    /// Position among the key's entries (`None` for a single-valued key).
    pub index: Option<usize>,
    /// The option string as written.
    pub text: &'a str,
    /// The config file, when the entry came from one.
    pub file: Option<&'a ConfigSource>,
}

impl Entry<'_> {
    /// How messages name the entry: `--disk 'x.img,foo'` or `vm.toml: disk[1] 'x.img,foo'`.
    pub fn label(&self) -> String {
        match (self.file, self.index) {
            (Some(f), Some(i)) => {
                format!("{}: {}[{i}] '{}'", f.path.display(), self.key, self.text)
            }
            (Some(f), None) => format!("{}: {} '{}'", f.path.display(), self.key, self.text),
            (None, _) => format!("--{} '{}'", self.key.replace('_', "-"), self.text),
        }
    }

    /// A path written in the entry, made relative to the config file's directory when the
    /// entry came from a file (flags' paths stay relative to the current directory).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.file {
            Some(f) => resolve_in(&f.dir, path),
            None => path.to_path_buf(),
        }
    }
}

fn resolve_in(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

/// Most vCPUs a guest may have; bounded by what the generated device tree and PLIC describe.
pub const MAX_CPUS: u32 = 32;
/// Smallest RAM vireo accepts at all; the loader checks the real need against the payload.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest RAM vireo accepts on the emu accelerator.
pub const MAX_MEMORY: u64 = 64 << 30;

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            accel: Accel::Auto,
            image: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            firmware: None,
            cpus: 1,
            memory: MemSize(512 << 20),
            verbose: false,
            console_log: None,
            command: Vec::new(),
            disk: Vec::new(),
            root_disk: None,
            net: Vec::new(),
            rng: false,
            vsock: None,
            console: "serial".into(),
            virtio_transport: "auto".into(),
            cpu: "max".into(),
            reboot: "restart".into(),
            source: None,
        }
    }
}

impl VmSpec {
    /// The keys that hold one file path each (kernel, initrd, firmware, console_log), for
    /// resolving them against a directory. Paths inside `disk` and `vsock` entries are resolved
    /// where the entries are parsed.
    pub fn file_paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        [
            &mut self.kernel,
            &mut self.initrd,
            &mut self.firmware,
            &mut self.console_log,
        ]
        .into_iter()
        .flatten()
    }

    /// Whether a guest reboot boots the VM again.
    pub fn reboot_restarts(&self) -> bool {
        self.reboot == "restart"
    }

    /// Parses a TOML specification; unknown keys and bad values are errors naming the key.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::ParseConfig {
            path: path.to_path_buf(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| {
                        let line = text[..s.start].matches('\n').count() + 1;
                        format!(" (line {line})")
                    })
                    .unwrap_or_default(),
        })
    }

    /// Reads and parses a TOML specification file, checks its values, and makes its relative
    /// paths relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec = Self::from_toml(&text, path)?;
        spec.check_values().map_err(|e| match e {
            SpecError::Invalid { key, message } => SpecError::InConfig {
                path: path.to_path_buf(),
                key,
                message,
            },
            e => e,
        })?;
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        for p in spec.file_paths_mut() {
            *p = resolve_in(&dir, p);
        }
        spec.source = Some(ConfigSource {
            path: path.to_path_buf(),
            dir,
            disks: spec.disk.len(),
            nets: spec.net.len(),
            vsock: spec.vsock.is_some(),
        });
        Ok(spec)
    }

    /// Checks that the file's `kernel`, `initrd` and `firmware` exist, except those a flag
    /// replaced (`from_flags`), so a wrong path is reported with the file and the key.
    pub fn check_file_paths(&self, from_flags: &[&str]) -> Result<(), SpecError> {
        let Some(src) = &self.source else {
            return Ok(());
        };
        let keys = [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("firmware", &self.firmware),
        ];
        for (key, value) in keys {
            let Some(p) = value.as_ref().filter(|_| !from_flags.contains(&key)) else {
                continue;
            };
            if let Err(e) = std::fs::metadata(p) {
                return Err(SpecError::InConfig {
                    path: src.path.clone(),
                    key,
                    message: format!("{}: {}", p.display(), read_reason(&e)),
                });
            }
        }
        Ok(())
    }

    /// Replaces the vsock option with one given on the command line.
    pub fn set_vsock_flag(&mut self, v: String) {
        self.vsock = Some(v);
        if let Some(s) = &mut self.source {
            s.vsock = false;
        }
    }

    fn entries<'a>(
        &'a self,
        key: &'static str,
        list: &'a [String],
        from_file: usize,
    ) -> Vec<Entry<'a>> {
        list.iter()
            .enumerate()
            .map(|(i, text)| {
                let file = self.source.as_ref().filter(|_| i < from_file);
                Entry {
                    key,
                    index: file.map(|_| i),
                    text,
                    file,
                }
            })
            .collect()
    }

    /// The `disk` entries, in order.
    pub fn disk_entries(&self) -> Vec<Entry<'_>> {
        let n = self.source.as_ref().map_or(0, |s| s.disks);
        self.entries("disk", &self.disk, n)
    }

    /// The `net` entries, in order.
    pub fn net_entries(&self) -> Vec<Entry<'_>> {
        let n = self.source.as_ref().map_or(0, |s| s.nets);
        self.entries("net", &self.net, n)
    }

    /// The `vsock` entry, if any.
    pub fn vsock_entry(&self) -> Option<Entry<'_>> {
        let text = self.vsock.as_deref()?;
        Some(Entry {
            key: "vsock",
            index: None,
            text,
            file: self.source.as_ref().filter(|s| s.vsock),
        })
    }

    /// Checks values that parse but cannot be run.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.check_values()?;
        // A firmware alone is a bare-metal program (QEMU's -bios without -kernel).
        if self.image.is_none() && self.kernel.is_none() && self.firmware.is_none() {
            return Err(SpecError::Invalid {
                key: "kernel",
                message: "nothing to boot: give --image NAME, --kernel PATH or --firmware PROG"
                    .into(),
            });
        }
        if self.root_disk.is_some() && self.image.is_none() {
            return Err(SpecError::Invalid {
                key: "root_disk",
                message: "it stands in for an image's root disk: give image too".into(),
            });
        }
        Ok(())
    }

    /// The checks of one value each, which a config file must pass on its own.
    fn check_values(&self) -> Result<(), SpecError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(SpecError::Invalid {
                key: "cpus",
                message: format!("{} is out of range: expected 1 to {MAX_CPUS}", self.cpus),
            });
        }
        let m = self.memory.bytes();
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&m) {
            return Err(SpecError::Invalid {
                key: "memory",
                message: format!(
                    "{} is out of range: expected {} to {}",
                    self.memory,
                    MemSize(MIN_MEMORY),
                    MemSize(MAX_MEMORY)
                ),
            });
        }
        if !m.is_multiple_of(4096) {
            return Err(SpecError::Invalid {
                key: "memory",
                message: format!("{} is not a multiple of 4K", self.memory),
            });
        }
        if !matches!(self.console.as_str(), "serial" | "virtio") {
            return Err(SpecError::Invalid {
                key: "console",
                message: format!(
                    "'{}' is not a console: expected serial or virtio",
                    self.console
                ),
            });
        }
        if !matches!(self.virtio_transport.as_str(), "auto" | "mmio" | "pci") {
            return Err(SpecError::Invalid {
                key: "virtio_transport",
                message: format!(
                    "'{}' is not a virtio transport: expected auto, mmio or pci",
                    self.virtio_transport
                ),
            });
        }
        if !matches!(self.reboot.as_str(), "restart" | "exit") {
            return Err(SpecError::Invalid {
                key: "reboot",
                message: format!(
                    "'{}' is not a reboot action: expected restart or exit",
                    self.reboot
                ),
            });
        }
        if let Some(c) = &self.cmdline {
            if c.len() >= 1024 {
                return Err(SpecError::Invalid {
                    key: "cmdline",
                    message: format!("{} bytes is too long: at most 1023", c.len()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes_parse() {
        assert_eq!("512M".parse::<MemSize>().unwrap().0, 512 << 20);
        assert_eq!("1G".parse::<MemSize>().unwrap().0, 1 << 30);
        assert_eq!("64k".parse::<MemSize>().unwrap().0, 64 << 10);
        assert_eq!("256".parse::<MemSize>().unwrap().0, 256 << 20);
        assert_eq!("2GiB".parse::<MemSize>().unwrap().0, 2 << 30);
        assert_eq!("512MB".parse::<MemSize>().unwrap().0, 512 << 20);
        assert!("12X".parse::<MemSize>().is_err());
        assert!("12B".parse::<MemSize>().is_err());
        assert!("G".parse::<MemSize>().is_err());
        assert!("-1M".parse::<MemSize>().is_err());
        assert!("".parse::<MemSize>().is_err());
        assert!("99999999999999999999G".parse::<MemSize>().is_err());
        assert_eq!(MemSize(512 << 20).to_string(), "512M");
    }

    #[test]
    fn toml_round_trip_and_unknown_key() {
        let p = Path::new("vm.toml");
        let s = VmSpec::from_toml("cpus = 2\nmemory = \"1G\"\naccel = \"emu\"\n", p).unwrap();
        assert_eq!(s.cpus, 2);
        assert_eq!(s.memory, MemSize(1 << 30));
        assert_eq!(s.accel, Accel::Emu);
        let text = toml::to_string(&s).unwrap();
        assert_eq!(VmSpec::from_toml(&text, p).unwrap(), s);

        let e = VmSpec::from_toml("cpus = 2\nmemroy = \"1G\"\n", p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("memroy") && msg.contains("line 2"), "{msg}");
        let e = VmSpec::from_toml("accel = \"xen\"\n", p).unwrap_err();
        assert!(e.to_string().contains("xen"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut s = VmSpec {
            kernel: Some("k".into()),
            ..Default::default()
        };
        s.validate().unwrap();
        s.cpus = 0;
        assert!(s.validate().unwrap_err().to_string().contains("cpus"));
        s.cpus = 1;
        s.memory = MemSize(1 << 20);
        assert!(s.validate().unwrap_err().to_string().contains("memory"));
        s.memory = MemSize(512 << 20);
        s.kernel = None;
        assert!(s.validate().unwrap_err().to_string().contains("--image"));
    }

    /// A config file in a directory of its own, removed on drop.
    struct ConfigDir(PathBuf);

    impl ConfigDir {
        fn new(name: &str, text: &str) -> (ConfigDir, PathBuf) {
            let d = std::env::temp_dir().join(format!("vireo-spec-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let f = d.join("vm.toml");
            std::fs::write(&f, text).unwrap();
            (ConfigDir(d), f)
        }
    }

    impl Drop for ConfigDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let (dir, file) = ConfigDir::new(
            "paths",
            "kernel = \"k/Image\"\ninitrd = \"/abs/initrd\"\nfirmware = \"fw.bin\"\n\
             console_log = \"logs/console.txt\"\ndisk = [\"a.img\", \"/abs/b.img,readonly\"]\n\
             vsock = \"cid=3,uds=v.sock\"\n",
        );
        let s = VmSpec::from_file(&file).unwrap();
        assert_eq!(s.kernel, Some(dir.0.join("k/Image")));
        assert_eq!(s.initrd, Some(PathBuf::from("/abs/initrd")));
        assert_eq!(s.firmware, Some(dir.0.join("fw.bin")));
        assert_eq!(s.console_log, Some(dir.0.join("logs/console.txt")));
        // Device strings are kept as written (messages quote them) and resolved on use.
        let disks = s.disk_entries();
        assert_eq!(disks[0].text, "a.img");
        assert_eq!(disks[0].resolve(Path::new("a.img")), dir.0.join("a.img"));
        assert_eq!(
            disks[1].resolve(Path::new("/abs/b.img")),
            PathBuf::from("/abs/b.img")
        );
        let v = s.vsock_entry().unwrap();
        assert_eq!(v.resolve(Path::new("v.sock")), dir.0.join("v.sock"));

        // A config named without a directory: its directory is the current one.
        let s = VmSpec::from_toml("disk = [\"a.img\"]\n", Path::new("vm.toml")).unwrap();
        assert_eq!(
            s.disk_entries()[0].resolve(Path::new("a.img")),
            Path::new("a.img")
        );
    }

    #[test]
    fn entries_say_where_they_came_from() {
        let (_dir, file) = ConfigDir::new(
            "labels",
            "disk = [\"x.img\", \"y.img,foo\"]\nnet = [\"user\"]\nvsock = \"cid=3,uds=v.sock\"\n",
        );
        let mut s = VmSpec::from_file(&file).unwrap();
        // What build_spec does with flags: append disks and nets, replace vsock.
        s.disk.push("z.img".into());
        s.net.push("tap=t0".into());
        let f = file.display();
        let labels: Vec<String> = s.disk_entries().iter().map(Entry::label).collect();
        assert_eq!(
            labels,
            [
                format!("{f}: disk[0] 'x.img'"),
                format!("{f}: disk[1] 'y.img,foo'"),
                "--disk 'z.img'".to_string(),
            ]
        );
        // A flag's path stays relative to the current directory.
        assert_eq!(
            s.disk_entries()[2].resolve(Path::new("z.img")),
            Path::new("z.img")
        );
        assert_eq!(s.net_entries()[0].label(), format!("{f}: net[0] 'user'"));
        assert_eq!(s.net_entries()[1].label(), "--net 'tap=t0'");
        assert_eq!(
            s.vsock_entry().unwrap().label(),
            format!("{f}: vsock 'cid=3,uds=v.sock'")
        );
        s.set_vsock_flag("cid=4,uds=w.sock".into());
        let v = s.vsock_entry().unwrap();
        assert_eq!(v.label(), "--vsock 'cid=4,uds=w.sock'");
        assert_eq!(v.resolve(Path::new("w.sock")), Path::new("w.sock"));
        // Without a file, everything is a flag.
        let s = VmSpec {
            disk: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(s.disk_entries()[0].label(), "--disk 'a'");
    }

    #[test]
    fn file_errors_name_the_file_and_the_key() {
        let (dir, file) = ConfigDir::new("bad", "cpus = 0\n");
        let e = VmSpec::from_file(&file).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cpus: ", file.display())) && e.contains("out of range"),
            "{e}"
        );
        std::fs::write(&file, "memory = \"3M\"\n").unwrap();
        let e = VmSpec::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("vm.toml: memory: "), "{e}");
        std::fs::write(&file, "console = \"tty\"\n").unwrap();
        let e = VmSpec::from_file(&file).unwrap_err().to_string();
        assert!(
            e.contains("vm.toml: console: ") && e.contains("'tty'"),
            "{e}"
        );
        // Nothing to boot is not the file's fault: a flag may give the kernel.
        std::fs::write(&file, "cpus = 2\n").unwrap();
        VmSpec::from_file(&file).unwrap();

        // A path the file names that is not there: the file, the key, the resolved path.
        std::fs::write(&file, "kernel = \"vmlinux\"\ninitrd = \"/\"\n").unwrap();
        let s = VmSpec::from_file(&file).unwrap();
        let e = s.check_file_paths(&[]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: kernel: {}: no such file",
                file.display(),
                dir.0.join("vmlinux").display()
            )
        );
        // Unless a flag replaced it.
        s.check_file_paths(&["kernel"]).unwrap();

        let missing = dir.0.join("nope.toml");
        let e = VmSpec::from_file(&missing).unwrap_err();
        assert!(matches!(e, SpecError::ReadConfig { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read config file {}: no such file",
                missing.display()
            )
        );
    }

    /// docs/config.md documents every key (a key added without its line fails here).
    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../../docs/config.md");
        let full = VmSpec {
            image: Some("i".into()),
            kernel: Some("k".into()),
            initrd: Some("i".into()),
            cmdline: Some("c".into()),
            firmware: Some("f".into()),
            console_log: Some("l".into()),
            command: vec!["c".into()],
            disk: vec!["d".into()],
            root_disk: Some("r".into()),
            net: vec!["n".into()],
            vsock: Some("v".into()),
            ..Default::default()
        };
        let text = toml::to_string(&full).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        assert_eq!(keys.len(), 20, "{text}");
        for k in keys {
            assert!(
                doc.contains(&format!("| `{k}` |")),
                "docs/config.md lacks `{k}`"
            );
        }
    }
}
