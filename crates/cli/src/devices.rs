//! `--disk`, `--net`, `--rng`, `--vsock`: option strings to virtio devices.
//!
//! Every message names the entry the way the user wrote it: `--disk 'x.img,foo'` for a flag,
//! `vm.toml: disk[1] 'x.img,foo'` for a config file's key ([`Entry::label`]), and paths in a
//! file's entries are relative to the file's directory ([`Entry::resolve`]).

use std::path::Path;

use vireo_spec::{Entry, VmSpec};
use vireo_virtio::VirtioDevice;

use crate::run::{fail, Failure};

/// The devices of a VM and, with a virtio console, where its input goes.
pub struct Devices {
    pub list: Vec<Box<dyn VirtioDevice>>,
    pub console_input: Option<vireo_virtio::console::ConsoleInput>,
}

/// Builds the spec's devices in slot order: console, disks, NICs, rng, vsock.
pub fn build(spec: &VmSpec, output: &vireo_devices::ConsoleOutput) -> Result<Devices, Failure> {
    let mut out: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut console_input = None;
    if spec.console == "virtio" {
        let c = vireo_virtio::console::Console::new(Box::new(output.clone()));
        console_input = Some(c.input_handle());
        out.push(Box::new(c));
    }
    for d in disks(spec)? {
        out.push(Box::new(d));
    }
    for (i, n) in spec.net_entries().iter().enumerate() {
        out.push(Box::new(net(n, i)?));
    }
    if spec.rng {
        out.push(Box::new(vireo_virtio::rng::Rng::new()));
    }
    if let Some(v) = spec.vsock_entry() {
        out.push(Box::new(vsock(&v)?));
    }
    Ok(Devices {
        list: out,
        console_input,
    })
}

/// Opens the spec's disks in order, refusing a file given twice (whatever paths name it: two
/// devices on one image would corrupt it, and the second would only find the first's lock).
fn disks(spec: &VmSpec) -> Result<Vec<vireo_virtio::block::Block>, Failure> {
    use vireo_virtio::block::{Block, FileId};
    let mut opened: Vec<(FileId, String, Block)> = Vec::new();
    for d in spec.disk_entries() {
        let label = d.label();
        let cfg = disk_config(&d)?;
        let twice = |id: FileId, opened: &[(FileId, String, Block)]| {
            opened.iter().find(|(i, ..)| *i == id).map(|(_, first, _)| {
                fail(format!(
                    "{label}: {} is the same file as {first}; a disk can be attached once",
                    cfg.path.display()
                ))
            })
        };
        if let Ok(meta) = std::fs::metadata(&cfg.path) {
            if let Some(e) = twice(FileId::of(&meta), &opened) {
                return Err(e);
            }
        }
        let block = Block::open(&cfg).map_err(|e| fail(format!("{label}: {e}")))?;
        // The path may have changed between the look and the open.
        if let Some(e) = twice(block.file_id(), &opened) {
            return Err(e);
        }
        for w in block.warnings() {
            eprintln!("vireo: warning: {label}: {w}");
        }
        opened.push((block.file_id(), label, block));
    }
    Ok(opened.into_iter().map(|(.., b)| b).collect())
}

/// `PATH[,readonly][,serial=ID][,format=raw]`
fn disk_config(entry: &Entry) -> Result<vireo_virtio::block::BlockConfig, Failure> {
    use vireo_virtio::block::DiskFormat;
    let bad = |why: String| fail(format!("{}: {why}", entry.label()));
    let mut parts = entry.text.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("expected PATH[,readonly][,serial=ID][,format=raw]".into()))?;
    let mut cfg = vireo_virtio::block::BlockConfig {
        path: entry.resolve(Path::new(path)),
        readonly: false,
        serial: None,
        format: None,
    };
    for p in parts {
        match p.split_once('=') {
            None if p == "readonly" || p == "ro" => cfg.readonly = true,
            Some(("serial", id)) if id.len() <= 20 => cfg.serial = Some(id.to_string()),
            Some(("serial", id)) => {
                return Err(bad(format!("serial '{id}' is longer than 20 bytes")))
            }
            Some(("format", "raw")) => cfg.format = Some(DiskFormat::Raw),
            Some(("format", "qcow2")) => {
                return Err(bad(
                    "format=qcow2 is not supported yet; vireo uses raw images only for now, \
                     convert it with `qemu-img convert -O raw`"
                        .into(),
                ))
            }
            Some(("format", f)) => return Err(bad(format!("unknown format '{f}' (expected raw)"))),
            _ => {
                return Err(bad(format!(
                    "unknown option '{p}' (expected readonly, serial=ID or format=raw)"
                )))
            }
        }
    }
    Ok(cfg)
}

/// `user[,hostfwd=tcp|udp:[ADDR]:H-:G]...` or `tap=NAME`
fn net(entry: &Entry, index: usize) -> Result<vireo_virtio::net::Net, Failure> {
    use vireo_virtio::net::{HostFwd, Net, NetBackendConfig};
    let bad = |why: String| fail(format!("{}: {why}", entry.label()));
    let mut parts = entry.text.split(',');
    let backend = match parts.next() {
        Some("user") => {
            let mut hostfwd = Vec::new();
            for p in parts.by_ref() {
                match p.split_once('=') {
                    Some(("hostfwd", f)) => {
                        hostfwd.push(f.parse::<HostFwd>().map_err(|e| bad(e.to_string()))?)
                    }
                    _ => {
                        return Err(bad(format!(
                            "unknown option '{p}' (expected hostfwd=tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT)"
                        )))
                    }
                }
            }
            NetBackendConfig::User { hostfwd }
        }
        Some(t) if t.starts_with("tap=") && t.len() > 4 => {
            if let Some(extra) = parts.next() {
                return Err(bad(format!("unknown option '{extra}' after tap=NAME")));
            }
            NetBackendConfig::Tap {
                name: t[4..].to_string(),
            }
        }
        _ => {
            return Err(bad(
                "expected user[,hostfwd=tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT]... or tap=NAME".into(),
            ))
        }
    };
    // A locally administered, stable address per NIC index.
    let mac = [0x52, 0x54, 0x00, 0x76, 0x69, index as u8];
    Net::new(backend, mac).map_err(|e| bad(e.to_string()))
}

/// `cid=N,uds=PATH`
fn vsock(entry: &Entry) -> Result<vireo_virtio::vsock::Vsock, Failure> {
    let bad = |why: &str| {
        fail(format!(
            "{}: {why} (expected cid=N,uds=PATH)",
            entry.label()
        ))
    };
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
    vireo_virtio::vsock::Vsock::new(cid, uds).map_err(|e| fail(format!("{}: {e}", entry.label())))
}
