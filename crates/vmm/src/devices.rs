//! A VM's devices: typed configurations parsed once from the definition's option strings
//! (`--disk`, `--net`, `--rng`, `--vsock`, `--console`), then built into virtio devices, with
//! a typed handle kept to each for its counters.
//!
//! Every message names the entry the way the user wrote it: `--disk 'x.img,foo'` for a flag,
//! `vm.toml: disk[1] 'x.img,foo'` for a config file's key ([`Entry::label`]), and paths in a
//! file's entries are relative to the file's directory ([`Entry::resolve`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vireo_spec::{Entry, VmSpec};
use vireo_virtio::block::MAX_QUEUES;
use vireo_virtio::{DeviceCounters, VirtioDevice};

use crate::{fail, Error};

/// One device of a VM, as configured. Serialized (JSON) it is what `inspect` shows and what a
/// saved VM will carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceConfig {
    /// virtio-console as the guest console (hvc0).
    Console,
    Block(DiskConfig),
    Net(NetConfig),
    Rng,
    Vsock(VsockConfig),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// `disk0`, `disk1`, ... in the definition's order.
    pub id: String,
    pub path: PathBuf,
    pub readonly: bool,
    pub serial: Option<String>,
    /// `raw`, `qcow2`, or none to probe the file.
    pub format: Option<String>,
    /// The VM writes to a fresh qcow2 overlay on this image, thrown away when the VM ends
    /// (QEMU's `-snapshot` for one disk); the image itself is only read.
    #[serde(default)]
    pub overlay: bool,
    /// Request queues, each with its own I/O thread (default: one per vCPU).
    #[serde(default = "one_queue")]
    pub queues: u16,
    /// The entry as the user wrote it, for messages.
    pub label: String,
}

fn one_queue() -> u16 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NetBackend {
    /// passt, with host-to-guest forwards (`tcp:127.0.0.1:8080-:80`).
    User {
        hostfwd: Vec<String>,
    },
    Tap {
        name: String,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// `net0`, `net1`, ...
    pub id: String,
    pub backend: NetBackend,
    pub mac: [u8; 6],
    pub label: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub cid: u64,
    pub uds: PathBuf,
    pub label: String,
}

/// The devices of a definition, in slot order: console, disks (an image's root disk first),
/// NICs, rng, vsock.
pub fn parse(spec: &VmSpec) -> Result<Vec<DeviceConfig>, Error> {
    let mut out = Vec::new();
    if spec.console == "virtio" {
        out.push(DeviceConfig::Console);
    }
    // As QEMU's virtio-blk: a queue per vCPU, so no two vCPUs share a ring.
    let queues = u16::try_from(spec.cpus.clamp(1, MAX_QUEUES as u32)).unwrap_or(1);
    // `root_disk` stands in for the image's own root disk, in its place (a VM restored from a
    // snapshot: its devices' slots must be the snapshot's).
    let root = match spec.root_disk.as_deref() {
        Some(text) => Some(root_disk_config(text, queues)?),
        None => image_root_disk(spec, queues)?,
    };
    if let Some(root) = root {
        out.push(DeviceConfig::Block(root));
    }
    for (i, d) in spec.disk_entries().iter().enumerate() {
        out.push(DeviceConfig::Block(disk_config(d, i, queues)?));
    }
    for (i, n) in spec.net_entries().iter().enumerate() {
        out.push(DeviceConfig::Net(net_config(n, i)?));
    }
    if spec.rng {
        out.push(DeviceConfig::Rng);
    }
    if let Some(v) = spec.vsock_entry() {
        out.push(DeviceConfig::Vsock(vsock_config(&v)?));
    }
    Ok(out)
}

/// The root disk of an image that boots from one (`debian-riscv64-rootfs`): the first virtio
/// disk, so it is the `/dev/vda` of the image's command line, and always through a throwaway
/// overlay, so the cached base is only ever read (and VMs may share it). `--disk` entries
/// follow it as vdb, vdc, ...
fn image_root_disk(spec: &VmSpec, queues: u16) -> Result<Option<DiskConfig>, Error> {
    let Some(name) = &spec.image else {
        return Ok(None);
    };
    let image = vireo_image::open(name).map_err(fail)?;
    Ok(image.root_disk.map(|path| DiskConfig {
        id: "root".into(),
        label: format!("the root disk of image {name} ({})", path.display()),
        path,
        readonly: false,
        serial: None,
        format: Some("qcow2".into()),
        overlay: true,
        queues,
    }))
}

/// The `root_disk` key: a disk entry (no throwaway overlay unless it says `overlay`) with the
/// image root disk's id.
fn root_disk_config(text: &str, queues: u16) -> Result<DiskConfig, Error> {
    let entry = Entry {
        key: "root_disk",
        index: None,
        text,
        file: None,
    };
    let mut cfg = disk_config(&entry, 0, queues)?;
    cfg.id = "root".into();
    Ok(cfg)
}

/// A built device the VMM keeps a handle to after it went to its transport.
#[derive(Clone)]
pub struct DeviceHandle {
    /// `console`, `block`, `net`, `rng`, `vsock` or `serial`.
    pub kind: &'static str,
    /// `disk0`, `net1`, ... or the kind for single devices.
    pub id: String,
    pub counters: Option<Arc<DeviceCounters>>,
    /// A disk's image, for snapshots.
    pub disk: Option<DiskSource>,
}

/// The image a disk device serves, as a snapshot needs it.
#[derive(Clone)]
pub struct DiskSource {
    /// The top image, open (a throwaway overlay has no name any more).
    pub file: Arc<std::fs::File>,
    /// `raw` or `qcow2`.
    pub format: &'static str,
    pub readonly: bool,
    /// The definition's path: the image itself, or the base of a throwaway overlay.
    pub path: PathBuf,
    pub overlay: bool,
}

impl DeviceHandle {
    fn of(kind: &'static str, id: &str, dev: &dyn VirtioDevice) -> Self {
        DeviceHandle {
            kind,
            id: id.to_string(),
            counters: dev.counters(),
            disk: None,
        }
    }
}

/// Built devices, ready for a board, and what the VMM keeps of them.
pub struct Devices {
    pub list: Vec<Box<dyn VirtioDevice>>,
    pub handles: Vec<DeviceHandle>,
    /// With a virtio console: where its input goes.
    pub console_input: Option<vireo_virtio::console::ConsoleInput>,
}

impl Devices {
    /// Adds a device built elsewhere (the command channel's virtio-serial).
    pub fn push(&mut self, kind: &'static str, id: &str, dev: Box<dyn VirtioDevice>) {
        self.handles.push(DeviceHandle::of(kind, id, dev.as_ref()));
        self.list.push(dev);
    }
}

/// The VM's network backends by NIC, in definition order: opened once for the VM's life
/// (passt started, taps opened), before a jail, and lent to each boot's devices
/// ([`vireo_virtio::net::OpenBackend`]).
pub struct Backends {
    nets: Vec<vireo_virtio::net::OpenBackend>,
}

/// Opens the backends of the NICs in `configs`.
pub fn open_backends(configs: &[DeviceConfig]) -> Result<Backends, Error> {
    use vireo_virtio::net::{HostFwd, NetBackendConfig, OpenBackend};
    let mut nets = Vec::new();
    for c in configs {
        let DeviceConfig::Net(n) = c else { continue };
        let bad = |why: String| fail(format!("{}: {why}", n.label));
        let backend = match &n.backend {
            NetBackend::User { hostfwd } => NetBackendConfig::User {
                hostfwd: hostfwd
                    .iter()
                    .map(|f| f.parse::<HostFwd>().map_err(|e| bad(e.to_string())))
                    .collect::<Result<_, _>>()?,
            },
            NetBackend::Tap { name } => NetBackendConfig::Tap { name: name.clone() },
        };
        nets.push(OpenBackend::open(backend).map_err(|e| bad(e.to_string()))?);
    }
    Ok(Backends { nets })
}

/// Builds `configs` in order on `backends` (from [`open_backends`] on the same configs); the
/// console device writes to `output`.
pub fn build(
    configs: &[DeviceConfig],
    output: &vireo_devices::ConsoleOutput,
    backends: &Backends,
) -> Result<Devices, Error> {
    let mut nets = backends.nets.iter();
    let mut devices = Devices {
        list: Vec::new(),
        handles: Vec::new(),
        console_input: None,
    };
    let disks: Vec<&DiskConfig> = configs
        .iter()
        .filter_map(|c| match c {
            DeviceConfig::Block(d) => Some(d),
            _ => None,
        })
        .collect();
    let mut opened = open_disks(&disks)?.into_iter();
    for c in configs {
        match c {
            DeviceConfig::Console => {
                let dev = vireo_virtio::console::Console::new(Box::new(output.clone()));
                devices.console_input = Some(dev.input_handle());
                devices.push("console", "console", Box::new(dev));
            }
            DeviceConfig::Block(d) => {
                let dev = opened
                    .next()
                    .ok_or_else(|| fail(format!("{}: the disk was not opened", d.label)))?;
                let file = dev
                    .image_file()
                    .map_err(|e| fail(format!("{}: {e}", d.label)))?;
                let source = DiskSource {
                    file: Arc::new(file),
                    format: dev.format(),
                    readonly: dev.is_readonly(),
                    path: d.path.clone(),
                    overlay: d.overlay,
                };
                devices.push("block", &d.id, Box::new(dev));
                if let Some(h) = devices.handles.last_mut() {
                    h.disk = Some(source);
                }
            }
            DeviceConfig::Net(n) => {
                let backend = nets
                    .next()
                    .ok_or_else(|| fail(format!("{}: its backend was not opened", n.label)))?;
                let dev = vireo_virtio::net::Net::on(backend, n.mac)
                    .map_err(|e| fail(format!("{}: {e}", n.label)))?;
                devices.push("net", &n.id, Box::new(dev));
            }
            DeviceConfig::Rng => {
                devices.push("rng", "rng", Box::new(vireo_virtio::rng::Rng::new()));
            }
            DeviceConfig::Vsock(v) => {
                let dev = vireo_virtio::vsock::Vsock::new(v.cid, v.uds.clone())
                    .map_err(|e| fail(format!("{}: {e}", v.label)))?;
                devices.push("vsock", "vsock", Box::new(dev));
            }
        }
    }
    Ok(devices)
}

/// Opens the disks in order, refusing a file given twice (whatever paths name it: two devices
/// on one image would corrupt it, and the second would only find the first's lock).
fn open_disks(disks: &[&DiskConfig]) -> Result<Vec<vireo_virtio::block::Block>, Error> {
    use vireo_virtio::block::{Block, BlockConfig, DiskFormat, FileId};
    let mut opened: Vec<(FileId, String, Block)> = Vec::new();
    for d in disks {
        let label = &d.label;
        let twice = |id: FileId, opened: &[(FileId, String, Block)]| {
            opened.iter().find(|(i, ..)| *i == id).map(|(_, first, _)| {
                fail(format!(
                    "{label}: {} is the same file as {first}; a disk can be attached once",
                    d.path.display()
                ))
            })
        };
        // An overlay's base is only read, and may be shared.
        let meta = std::fs::metadata(&d.path).ok().filter(|_| !d.overlay);
        if let Some(e) = meta.and_then(|m| twice(FileId::of(&m), &opened)) {
            return Err(e);
        }
        // An overlay: a fresh qcow2 file on the image, unlinked once open (its descriptor
        // keeps it), so it goes with the VM however the VM ends.
        let overlay = if d.overlay {
            if d.readonly {
                return Err(fail(format!(
                    "{label}: overlay and readonly together: an overlay exists to take the writes"
                )));
            }
            let p = std::env::temp_dir().join(format!(
                "vireo-overlay-{}-{}.qcow2",
                std::process::id(),
                d.id
            ));
            let _ = std::fs::remove_file(&p);
            // The overlay names its base by an absolute path: a relative one would be taken
            // against the overlay's own directory.
            let base = std::path::absolute(&d.path)
                .map_err(|e| fail(format!("{label}: {}: {e}", d.path.display())))?;
            vireo_virtio::block::image::create(&p, true, None, Some(&base), None)
                .map_err(|e| fail(format!("{label}: cannot create its overlay: {e}")))?;
            Some(p)
        } else {
            None
        };
        let cfg = BlockConfig {
            path: overlay.clone().unwrap_or_else(|| d.path.clone()),
            readonly: d.readonly,
            serial: d.serial.clone(),
            num_queues: d.queues,
            format: match (d.format.as_deref(), overlay.is_some()) {
                (_, true) | (Some("qcow2"), _) => Some(DiskFormat::Qcow2),
                (Some(_), _) => Some(DiskFormat::Raw),
                (None, false) => None,
            },
        };
        let block = Block::open(&cfg);
        if let Some(p) = &overlay {
            let _ = std::fs::remove_file(p);
        }
        let block = block.map_err(|e| fail(format!("{label}: {e}")))?;
        // The path may have changed between the look and the open.
        if let Some(e) = twice(block.file_id(), &opened) {
            return Err(e);
        }
        for w in block.warnings() {
            tracing::warn!("{label}: {w}");
            eprintln!("vireo: warning: {label}: {w}");
        }
        opened.push((block.file_id(), label.clone(), block));
    }
    Ok(opened.into_iter().map(|(.., b)| b).collect())
}

/// `PATH[,readonly][,overlay][,serial=ID][,format=raw|qcow2]`
fn disk_config(entry: &Entry, index: usize, queues: u16) -> Result<DiskConfig, Error> {
    let label = entry.label();
    let bad = |why: String| fail(format!("{label}: {why}"));
    let mut parts = entry.text.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| {
        bad("expected PATH[,readonly][,overlay][,serial=ID][,format=raw|qcow2][,queues=N]".into())
    })?;
    // A daemon VM's disk may name a volume, which the daemon resolves before the VMM sees it;
    // here there is no daemon to ask (a file of that name is still a file).
    if path.starts_with("vol:") && !entry.resolve(Path::new(path)).exists() {
        return Err(bad(format!(
            "{path} names a volume of the daemon's storage pools, which only VMs the daemon \
             runs can use (vireo create NAME --disk {path}); give `vireo run` the volume's \
             file instead (vireo volume ls --json shows its path)"
        )));
    }
    let mut cfg = DiskConfig {
        id: format!("disk{index}"),
        path: entry.resolve(Path::new(path)),
        readonly: false,
        serial: None,
        format: None,
        overlay: false,
        queues,
        label: label.clone(),
    };
    for p in parts {
        match p.split_once('=') {
            None if p == "readonly" || p == "ro" => cfg.readonly = true,
            None if p == "overlay" => cfg.overlay = true,
            Some(("serial", id)) if id.len() <= 20 => cfg.serial = Some(id.to_string()),
            Some(("serial", id)) => {
                return Err(bad(format!("serial '{id}' is longer than 20 bytes")))
            }
            Some(("format", f @ ("raw" | "qcow2"))) => cfg.format = Some(f.into()),
            Some(("format", f)) => {
                return Err(bad(format!("unknown format '{f}' (expected raw or qcow2)")))
            }
            Some(("queues", n)) => {
                cfg.queues = n
                    .parse::<u16>()
                    .ok()
                    .filter(|&q| q >= 1 && usize::from(q) <= MAX_QUEUES)
                    .ok_or_else(|| {
                        bad(format!("queues '{n}': expected a number from 1 to {MAX_QUEUES}"))
                    })?
            }
            _ => {
                return Err(bad(format!(
                "unknown option '{p}' (expected readonly, overlay, serial=ID, format=raw|qcow2 or queues=N)"
            )))
            }
        }
    }
    Ok(cfg)
}

/// The MAC addresses of the definition's NICs, in order.
pub fn nic_macs(spec: &VmSpec) -> Result<Vec<[u8; 6]>, Error> {
    spec.net_entries()
        .iter()
        .enumerate()
        .map(|(i, e)| net_config(e, i).map(|n| n.mac))
        .collect()
}

/// `user[,hostfwd=tcp|udp:[ADDR]:H-:G]...` or `tap=NAME`
fn net_config(entry: &Entry, index: usize) -> Result<NetConfig, Error> {
    use vireo_virtio::net::HostFwd;
    let label = entry.label();
    let bad = |why: String| fail(format!("{label}: {why}"));
    // A locally administered, stable address per NIC index, unless `mac=` gives one.
    let mut mac = [0x52, 0x54, 0x00, 0x76, 0x69, index as u8];
    let mut rest = Vec::new();
    for p in entry.text.split(',') {
        match p.strip_prefix("mac=") {
            Some(m) => mac = parse_mac(m).map_err(bad)?,
            None => rest.push(p),
        }
    }
    let mut parts = rest.into_iter();
    let backend = match parts.next() {
        Some("user") => {
            let mut hostfwd = Vec::new();
            for p in parts.by_ref() {
                match p.split_once('=') {
                    Some(("hostfwd", f)) => {
                        let parsed = f.parse::<HostFwd>().map_err(|e| bad(e.to_string()))?;
                        hostfwd.push(parsed.to_string());
                    }
                    _ => {
                        return Err(bad(format!(
                            "unknown option '{p}' (expected hostfwd=tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT)"
                        )))
                    }
                }
            }
            NetBackend::User { hostfwd }
        }
        Some(t) if t.starts_with("tap=") && t.len() > 4 => {
            if let Some(extra) = parts.next() {
                return Err(bad(format!("unknown option '{extra}' after tap=NAME")));
            }
            NetBackend::Tap {
                name: t[4..].to_string(),
            }
        }
        _ => {
            return Err(bad(
                "expected user[,hostfwd=tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT]... or tap=NAME".into(),
            ))
        }
    };
    Ok(NetConfig {
        id: format!("net{index}"),
        backend,
        mac,
        label,
    })
}

/// `XX:XX:XX:XX:XX:XX`, a unicast address.
fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac={s}: expected six hex bytes XX:XX:XX:XX:XX:XX");
    let mut mac = [0u8; 6];
    let mut n = 0;
    for (i, part) in s.split(':').enumerate() {
        if i >= 6 || part.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        n += 1;
    }
    if n != 6 {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "mac={s} is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(mac)
}

/// `cid=N,uds=PATH`
fn vsock_config(entry: &Entry) -> Result<VsockConfig, Error> {
    let label = entry.label();
    let bad = |why: &str| fail(format!("{label}: {why} (expected cid=N,uds=PATH)"));
    let (mut cid, mut uds) = (None, None);
    for p in entry.text.split(',') {
        match p.split_once('=') {
            Some(("cid", n)) => {
                let n: u64 = n.parse().map_err(|_| bad("cid is not a number"))?;
                // 0-2 are reserved (hypervisor, local, host); u32::MAX is "any".
                if n < 3 || n >= u64::from(u32::MAX) {
                    return Err(bad("cid must be from 3 to 4294967294"));
                }
                cid = Some(n);
            }
            Some(("uds", path)) if !path.is_empty() => uds = Some(entry.resolve(Path::new(path))),
            _ => return Err(bad(&format!("unknown option '{p}'"))),
        }
    }
    let (Some(cid), Some(uds)) = (cid, uds) else {
        return Err(bad("both cid and uds are needed"));
    };
    Ok(VsockConfig {
        cid,
        uds,
        label: label.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(disk: &[&str], net: &[&str]) -> VmSpec {
        VmSpec {
            disk: disk.iter().map(|s| s.to_string()).collect(),
            net: net.iter().map(|s| s.to_string()).collect(),
            rng: true,
            ..VmSpec::default()
        }
    }

    #[test]
    fn configs_are_typed_and_round_trip_as_json() {
        let s = spec(
            &["/tmp/a.img,readonly,serial=abc"],
            &["user,hostfwd=tcp::8080-:80", "tap=tap0"],
        );
        let c = parse(&s).unwrap();
        assert_eq!(c.len(), 4);
        match &c[0] {
            DeviceConfig::Block(d) => {
                assert_eq!(d.id, "disk0");
                assert!(d.readonly);
                assert_eq!(d.serial.as_deref(), Some("abc"));
            }
            other => panic!("{other:?}"),
        }
        match &c[1] {
            DeviceConfig::Net(n) => {
                assert_eq!(n.id, "net0");
                assert_eq!(
                    n.backend,
                    NetBackend::User {
                        hostfwd: vec!["tcp::8080-:80".into()]
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c[3], DeviceConfig::Rng);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""kind":"block""#), "{json}");
        let back: Vec<DeviceConfig> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_entries_name_themselves() {
        let e = parse(&spec(&["x.img,bogus"], &[])).unwrap_err().to_string();
        assert!(
            e.contains("'x.img,bogus'") && e.contains("unknown option 'bogus'"),
            "{e}"
        );
        let e = parse(&spec(&[], &["user,hostfwd=tcp::x-:80"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--net"), "{e}");
        let e = parse(&spec(&[], &["vde"])).unwrap_err().to_string();
        assert!(e.contains("expected user"), "{e}");
        let e = parse(&spec(&["vol:base.qcow2,overlay"], &[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'vol:base.qcow2,overlay'") && e.contains("names a volume"),
            "{e}"
        );
    }

    #[test]
    fn the_same_disk_twice_is_refused() {
        let dir = std::env::temp_dir().join(format!("vireo-vmm-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("d.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let link = dir.join("link.img");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let s = spec(&[img.to_str().unwrap(), link.to_str().unwrap()], &[]);
        let c = parse(&s).unwrap();
        let backends = open_backends(&c).unwrap();
        let e = build(&c, &vireo_devices::ConsoleOutput::new(), &backends)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("is the same file as"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
