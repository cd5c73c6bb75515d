//! The VM specification: what a user asks for, independent of how it is run.
//!
//! A [`VmSpec`] is built from a TOML file (`--config vm.toml`) and/or command-line flags; every
//! flag has a key of the same name. Unknown keys are errors, and [`VmSpec::validate`] checks the
//! values that parsing alone cannot (counts, sizes, combinations).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors found while reading or validating a specification.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a bad value.
    #[error("invalid config file {path}: {message}")]
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
    /// virtio-blk disks, one per entry: `PATH[,readonly][,serial=ID]`.
    pub disk: Vec<String>,
    /// virtio-net NICs, one per entry: `user[,hostfwd=tcp:HOSTPORT-:GUESTPORT]...` or
    /// `tap=NAME`.
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
    /// What a guest reboot does: `restart` (boot the VM again) or `exit` (end the run as a
    /// power-off does). A command's run always ends.
    pub reboot: String,
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
            net: Vec::new(),
            rng: false,
            vsock: None,
            console: "serial".into(),
            virtio_transport: "auto".into(),
            reboot: "restart".into(),
        }
    }
}

impl VmSpec {
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

    /// Reads and parses a TOML specification file.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks values that parse but cannot be run.
    pub fn validate(&self) -> Result<(), SpecError> {
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
        if self.image.is_none() && self.kernel.is_none() {
            return Err(SpecError::Invalid {
                key: "kernel",
                message: "nothing to boot: give --image NAME or --kernel PATH".into(),
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
}
