//! End to end: snapshots of a running guest through `vireo vmm`'s `snapshot` op, and VMMs
//! restored from them with `vireo vmm --restore` (crates/vmm/src/snapshot.rs), on the emu
//! accelerator with the pulled Debian image.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("vireo-snap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `spec` into `dir` and starts a VMM there.
fn spawn(dir: &Path, spec: &Value, extra: &[&str]) -> Vmm {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    Vmm::spawn(dir, extra)
}

fn req(vmm: &Vmm, r: Value) -> Value {
    let mut s = UnixStream::connect(vmm.dir.join("control.sock")).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    writeln!(s, "{r}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn console(vmm: &Vmm) -> Console {
    let mut s = UnixStream::connect(vmm.dir.join("console.sock")).unwrap();
    s.write_all(b"rw\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    Console {
        s,
        seen: Vec::new(),
    }
}

struct Console {
    s: UnixStream,
    seen: Vec<u8>,
}

impl Console {
    fn send(&mut self, line: &str) {
        self.s.write_all(line.as_bytes()).unwrap();
        self.s.write_all(b"\n").unwrap();
    }

    /// Reads until `needle` appears after what was already consumed; returns the text up to
    /// and including it and consumes it.
    fn until(&mut self, needle: &str, limit: Duration) -> String {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(i) = text.find(needle) {
                let upto = text[..i + needle.len()].to_string();
                self.seen.drain(..upto.len());
                return upto;
            }
            assert!(
                t0.elapsed() < limit,
                "no {needle:?} on the console; got {text:?}"
            );
            match self.s.read(&mut buf) {
                Ok(0) => panic!("console closed; got {text:?}"),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// Reads for `d` and returns what came.
    fn drain(&mut self, d: Duration) -> String {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < d {
            if let Ok(n) = self.s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                self.seen.extend_from_slice(&buf[..n]);
            }
        }
        let t = String::from_utf8_lossy(&self.seen).into_owned();
        self.seen.clear();
        t
    }
}

/// The tick numbers `tick-N` in `text`.
fn ticks(text: &str) -> Vec<u64> {
    text.split("tick-")
        .skip(1)
        .filter_map(|t| {
            let d: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
            d.parse().ok()
        })
        .collect()
}

/// `transport`: the definition's `virtio_transport` ("auto" is virtio-mmio on emu).
fn spec(disk: &Path, transport: &str) -> Value {
    json!({"image": IMAGE, "memory": "256M", "virtio_transport": transport,
           "disk": [format!("{},format=raw", disk.display())]})
}

/// Boots a guest with a 16 MiB raw disk, starts a counter printing `tick-N` on the console,
/// writes BEFORE at the disk's start, takes snapshot `snap`, then writes AFTER at 4 KiB.
/// Returns the VMM (still running), the last tick seen before the snapshot, and its console.
fn boot_count_and_snapshot(
    s: &Scratch,
    snap: &Path,
    transport: &str,
) -> (Vmm, u64, Console, Value) {
    let disk = s.path("data.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut vmm = spawn(&s.path("run1"), &spec(&disk, transport), &[]);
    vmm.wait_socket(Duration::from_secs(60));
    let t0 = Instant::now();
    while req(&vmm, json!({"op": "state"}))["guest_ready"] != true {
        assert!(
            t0.elapsed() < BOOT_TIMEOUT,
            "the guest did not come up: {}",
            vmm.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut con = console(&vmm);
    con.until("BusyBox", Duration::from_secs(30));
    con.send("echo BEFORE > /dev/vda && sync && echo wrote-$((40+2))");
    con.until("wrote-42", Duration::from_secs(60));
    con.send("(i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done) &");
    con.until("tick-5", Duration::from_secs(60));

    // Paused under the running counter: no tick comes; resumed: they go on.
    assert_eq!(req(&vmm, json!({"op": "pause"}))["state"], "paused");
    std::thread::sleep(Duration::from_millis(300));
    con.drain(Duration::from_millis(100));
    let quiet = con.drain(Duration::from_millis(1000));
    assert!(ticks(&quiet).is_empty(), "ticks while paused: {quiet:?}");
    assert_eq!(req(&vmm, json!({"op": "resume"}))["state"], "running");
    con.until("tick-8", Duration::from_secs(30));

    let before = con.drain(Duration::from_millis(300));
    let r = req(&vmm, json!({"op": "snapshot", "dir": snap}));
    assert_eq!(r["ok"], true, "{r}");
    let last = ticks(&before).into_iter().max().unwrap_or(8);
    // The guest runs on after the snapshot and writes what the snapshot must not have.
    con.until(&format!("tick-{}", last + 3), Duration::from_secs(30));
    con.send("echo AFTER | dd of=/dev/vda bs=4096 seek=1 2>/dev/null; sync; echo wrote-$((40+3))");
    con.until("wrote-43", Duration::from_secs(60));
    (vmm, last, con, r)
}

/// Starts a VMM in `dir` restoring `snap` with `spec`, which must fail (exit 125, an error
/// record); returns the error's message.
fn vmm_restore_fails(dir: &Path, spec: &Value, snap: &Path) -> String {
    vmm_restore_fails_with(dir, spec, snap, &[])
}

fn vmm_restore_fails_with(dir: &Path, spec: &Value, snap: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--restore", snap.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut v = spawn(dir, spec, &args);
    let code = v.wait(Duration::from_secs(60));
    assert_eq!(code, 125, "{}", v.log());
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("exit.json")).unwrap()).unwrap();
    assert_eq!(rec["reason"], "error");
    rec["message"].as_str().unwrap().to_string()
}

/// The guest memory a chain of snapshot directories (full one first) restores to, read
/// through the state crate as a restore maps it.
fn memory_of(chain: &[&Path]) -> Vec<u8> {
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
    let files: Vec<(PathBuf, vireo_state::MemoryMap)> = chain
        .iter()
        .map(|d| {
            let f = vireo_state::StateFile::read(d.join("state.vst")).unwrap();
            let (_, map) = f
                .require::<vireo_state::MemoryMap>(&vireo_state::SectionId::MemoryMap)
                .unwrap();
            (d.join("memory.bin"), map)
        })
        .collect();
    let ram = vireo_state::restore_chain(&files).unwrap();
    let mem = ram.memory();
    let mut out = Vec::new();
    for r in mem.iter() {
        let mut bytes = vec![0u8; r.len() as usize];
        mem.read_slice(&mut bytes, r.start_addr()).unwrap();
        out.extend_from_slice(&bytes);
    }
    out
}

/// A run directory for a VMM restoring `snap`: the snapshot's definition with its disk on a
/// fresh overlay over the snapshot's copy (what the daemon does), so the snapshot stays as
/// it was.
fn restore_spec(s: &Scratch, snap: &Path, tag: &str, transport: &str) -> Value {
    // raw for a VM that ran on the raw disk, qcow2 for one that ran on an overlay.
    let copy = ["raw", "qcow2"]
        .iter()
        .map(|f| snap.join(format!("disk-disk0.{f}")))
        .find(|p| p.exists())
        .expect("the snapshot holds a copy of the disk");
    let overlay = s.path(&format!("{tag}-overlay.qcow2"));
    let out = vireo()
        .args(["disk", "create", "-b"])
        .arg(&copy)
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json!({"image": IMAGE, "memory": "256M", "virtio_transport": transport,
           "disk": [format!("{},format=qcow2", overlay.display())]})
}

#[test]
fn a_restored_guest_counts_on_with_its_disk_as_it_was() {
    restored_guest_counts_on("auto");
}

/// The same over virtio-pci: the functions' configuration spaces (BARs where the kernel put
/// them, memory decoding on) and transports come back, and the restored disk answers.
#[test]
fn a_restored_guest_on_virtio_pci_counts_on_with_its_disk_as_it_was() {
    restored_guest_counts_on("pci");
}

fn restored_guest_counts_on(transport: &str) {
    require_image();
    let s = Scratch::new(&format!("restore-{transport}"));
    let snap = s.path("snap1");
    let (mut vmm, last, _con, taken) = boot_count_and_snapshot(&s, &snap, transport);
    assert_eq!(taken["snapshot"]["kind"], "full", "{taken}");
    // Sparse: a 256 MiB guest that booted to a shell takes far less.
    let bytes = taken["snapshot"]["memory_bytes"].as_u64().unwrap();
    assert!(bytes > 1 << 20 && bytes < 200 << 20, "{taken}");
    // A second snapshot into the same directory is refused, and nothing changes.
    let again = req(&vmm, json!({"op": "snapshot", "dir": snap}));
    assert_eq!(again["error"], "conflict", "{again}");
    assert_eq!(req(&vmm, json!({"op": "state"}))["state"], "running");
    assert!(!s.path("snap1.partial").exists());
    assert_eq!(req(&vmm, json!({"op": "kill"}))["ok"], true);
    vmm.wait(Duration::from_secs(30));

    // Onto the other transport: refused, naming both.
    let other = if transport == "pci" { "mmio" } else { "pci" };
    let wrong = restore_spec(&s, &snap, "w", other);
    let out = vmm_restore_fails(&s.path("wrong"), &wrong, &snap);
    assert!(out.contains("virtio transport, the definition"), "{out}");
    let spec = restore_spec(&s, &snap, "r1", transport);
    let mut r = spawn(
        &s.path("run2"),
        &spec,
        &["--restore", snap.to_str().unwrap()],
    );
    r.wait_socket(Duration::from_secs(60));
    let mut con = console(&r);
    let text = con.until(&format!("tick-{}", last + 4), Duration::from_secs(60));
    let seen = ticks(&text);
    let first = *seen.first().expect("ticks after the restore");
    assert!(
        first > 5 && first <= last + 3,
        "the count restarted or jumped: last before the snapshot {last}, first after {first} ({seen:?})"
    );
    // The guest's devices are on the transport it booted with (virtio-pci: the functions'
    // vendor IDs under /sys/bus/pci).
    con.send("cat /sys/bus/pci/devices/*/vendor 2>/dev/null | sort | uniq -c; echo pci-$((6*7))");
    let out = con.until("pci-42", Duration::from_secs(30));
    assert_eq!(
        out.contains("0x1af4"),
        transport == "pci",
        "virtio functions on PCI: {out:?}"
    );
    // The disk: what was written before the snapshot is there, what came after is not.
    con.send("head -c 6 /dev/vda; echo; dd if=/dev/vda bs=4096 skip=1 count=1 2>/dev/null | head -c 5 | od -c | head -1; echo disk-$((7*6))");
    let out = con.until("disk-42", Duration::from_secs(60));
    assert!(out.contains("BEFORE"), "{out:?}");
    assert!(
        !out.contains("A   F   T"),
        "a write after the snapshot is on the restored disk: {out:?}"
    );
    assert!(out.contains("\\0"), "{out:?}");
    assert_eq!(req(&r, json!({"op": "state"}))["state"], "running");
    assert_eq!(req(&r, json!({"op": "kill"}))["ok"], true);
}

#[test]
fn a_diff_snapshot_restores_the_same_guest() {
    require_image();
    let s = Scratch::new("diff");
    let full = s.path("full");
    let (vmm, last, mut con, _) = boot_count_and_snapshot(&s, &full, "auto");
    con.until(&format!("tick-{}", last + 6), Duration::from_secs(30));
    let diff = s.path("diff");
    let d = req(&vmm, json!({"op": "snapshot", "dir": diff, "parent": full}));
    assert_eq!(d["snapshot"]["kind"], "diff", "{d}");
    // The log ran from the full snapshot, and it held every page that changed (the VMM
    // checks that and fails the snapshot otherwise).
    assert_eq!(d["snapshot"]["diff_by"], "dirty-log", "{d}");
    let pages = d["snapshot"]["memory_pages"].as_u64().unwrap();
    assert!(pages > 0 && pages < 256 << 8, "{d}");
    let before = con.drain(Duration::from_millis(100));
    let at_diff = ticks(&before).into_iter().max().unwrap_or(last + 6);
    // A chain restores the same memory as a full snapshot of the same moment, byte for byte:
    // paused, a diff on the diff and a full snapshot are taken of one state.
    assert_eq!(req(&vmm, json!({"op": "pause"}))["state"], "paused");
    let (chained, whole) = (s.path("diff-paused"), s.path("full-paused"));
    let dp = req(
        &vmm,
        json!({"op": "snapshot", "dir": chained, "parent": diff}),
    );
    assert_eq!(dp["snapshot"]["diff_by"], "dirty-log", "{dp}");
    let fp = req(&vmm, json!({"op": "snapshot", "dir": whole}));
    assert_eq!(fp["snapshot"]["kind"], "full", "{fp}");
    let a = memory_of(&[&full, &diff, &chained]);
    let b = memory_of(&[&whole]);
    assert_eq!(a.len(), b.len());
    let differ = a
        .chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .count();
    assert_eq!(
        differ, 0,
        "the chain and the full snapshot differ in {differ} pages"
    );
    assert_eq!(req(&vmm, json!({"op": "resume"}))["state"], "running");
    drop(vmm);
    // Moved together, the chain still restores: the diff finds its parent beside it, and
    // the disk copy in its own directory.
    let moved = s.path("moved");
    std::fs::create_dir(&moved).unwrap();
    std::fs::rename(&full, moved.join("full")).unwrap();
    std::fs::rename(&diff, moved.join("diff")).unwrap();
    let diff = moved.join("diff");

    let spec = restore_spec(&s, &diff, "d1", "auto");
    let mut r = spawn(
        &s.path("run3"),
        &spec,
        &["--restore", diff.to_str().unwrap(), "--paused"],
    );
    r.wait_socket(Duration::from_secs(60));
    assert_eq!(req(&r, json!({"op": "state"}))["state"], "paused");
    let mut con = console(&r);
    let quiet = con.drain(Duration::from_millis(800));
    assert!(
        ticks(&quiet).is_empty(),
        "a VM restored paused ran: {quiet:?}"
    );
    assert_eq!(req(&r, json!({"op": "resume"}))["state"], "running");
    let text = con.until(&format!("tick-{}", at_diff + 3), Duration::from_secs(60));
    let first = ticks(&text)[0];
    assert!(
        first > last + 3,
        "the diff restored the full snapshot's guest: {first} after {last}"
    );
    // A diff of the restored VM on the snapshot it came from uses the log too: it starts at
    // the restore. On another parent it compares contents.
    let d2 = req(
        &r,
        json!({"op": "snapshot", "dir": s.path("diff2"), "parent": diff}),
    );
    assert_eq!(d2["snapshot"]["diff_by"], "dirty-log", "{d2}");
    let d3 = req(
        &r,
        json!({"op": "snapshot", "dir": s.path("diff3"), "parent": moved.join("full")}),
    );
    assert_eq!(d3["snapshot"]["diff_by"], "contents", "{d3}");
    // And that diff restores too.
    drop(r);
    let spec = restore_spec(&s, &s.path("diff3"), "d3", "auto");
    let mut r = spawn(
        &s.path("run4"),
        &spec,
        &["--restore", s.path("diff3").to_str().unwrap()],
    );
    r.wait_socket(Duration::from_secs(60));
    let mut con = console(&r);
    let text = con.until("tick-", Duration::from_secs(60));
    let more = con.until("tick-", Duration::from_secs(30));
    let next = ticks(&format!("{text}{more}"));
    assert!(
        next.iter().all(|&t| t > at_diff),
        "the third diff restored an older guest: {next:?} after {at_diff}"
    );
}

#[test]
fn a_damaged_or_foreign_snapshot_is_refused_with_the_reason() {
    require_image();
    let s = Scratch::new("bad");
    let snap = s.path("snap");
    let (vmm, ..) = boot_count_and_snapshot(&s, &snap, "auto");
    drop(vmm);
    let spec = restore_spec(&s, &snap, "b", "auto");
    let try_restore = |from: &Path, tag: &str, extra: &[&str]| -> String {
        vmm_restore_fails_with(&s.path(tag), &spec, from, extra)
    };
    let copy = |name: &str| -> PathBuf {
        let d = s.path(name);
        std::fs::create_dir_all(&d).unwrap();
        // As `cp -a` copies: with modification times (a disk's fingerprint includes its).
        for f in std::fs::read_dir(&snap).unwrap() {
            let f = f.unwrap();
            let to = d.join(f.file_name());
            std::fs::copy(f.path(), &to).unwrap();
            let mtime = f.metadata().unwrap().modified().unwrap();
            std::fs::File::options()
                .write(true)
                .open(&to)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
        d
    };
    // Truncated state file.
    let t = copy("trunc");
    let st = std::fs::read(t.join("state.vst")).unwrap();
    std::fs::write(t.join("state.vst"), &st[..st.len() / 2]).unwrap();
    let m = try_restore(&t, "r-trunc", &[]);
    assert!(m.contains("state.vst") && m.contains("truncated"), "{m}");
    // A flipped byte.
    let c = copy("corrupt");
    let mut st2 = st.clone();
    let mid = st2.len() / 2;
    st2[mid] ^= 0x40;
    std::fs::write(c.join("state.vst"), &st2).unwrap();
    let m = try_restore(&c, "r-corrupt", &[]);
    assert!(m.contains("corrupt"), "{m}");
    // The memory file missing.
    let nm = copy("nomem");
    std::fs::remove_file(nm.join("memory.bin")).unwrap();
    let m = try_restore(&nm, "r-nomem", &[]);
    assert!(m.contains("memory.bin"), "{m}");
    // A disk changed since (the snapshot's own copy: its state names it by its path):
    // refused, unless forced.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(snap.join("disk-disk0.raw"))
        .unwrap();
    f.write_all(b"CHANGED").unwrap();
    drop(f);
    let m = try_restore(&snap, "r-changed", &[]);
    assert!(m.contains("changed") && m.contains("--force"), "{m}");
    let mut v = spawn(
        &s.path("r-forced"),
        &spec,
        &["--restore", snap.to_str().unwrap(), "--force"],
    );
    v.wait_socket(Duration::from_secs(60));
    assert_eq!(req(&v, json!({"op": "state"}))["state"], "running");
    // No snapshot there at all.
    let m = try_restore(&s.path("nowhere"), "r-none", &[]);
    assert!(m.contains("no snapshot there"), "{m}");
}

/// `R:<vmgenid interrupts>:<a fresh random UUID>:E` from the guest behind `con`.
fn generation_and_uuid(con: &mut Console) -> (u64, String) {
    con.send(
        "echo R:$(awk '/vmgenid/{print $2}' /proc/interrupts):$(cat /proc/sys/kernel/random/uuid):E",
    );
    // The echoed command has `R:$(`; the answer has a digit after `R:`.
    loop {
        let text = con.until(":E", Duration::from_secs(60));
        let Some(at) = text.rfind("R:") else { continue };
        let fields: Vec<&str> = text[at + 2..].trim_end_matches(":E").split(':').collect();
        if let [n, uuid] = fields[..] {
            if let Ok(n) = n.parse() {
                assert_eq!(uuid.len(), 36, "{text:?}");
                return (n, uuid.to_string());
            }
        }
    }
}

/// The guest's eth0 MAC once it is `want` (a clone's guest binds its NIC again after the new
/// generation) and, with `dhcp`, eth0 has an IPv4 address; with whether it has one.
fn guest_mac(con: &mut Console, want: &str, dhcp: bool) -> (String, bool) {
    let inet = if dhcp {
        "&& ip -4 addr show eth0 | grep -q inet"
    } else {
        ""
    };
    con.send(&format!(
        "for i in $(seq 100); do [ \"$(cat /sys/class/net/eth0/address)\" = {want} ] {inet} && break; sleep 0.2; done; \
         echo M:$(cat /sys/class/net/eth0/address):$(ip -4 addr show eth0 | grep -c inet):E"
    ));
    loop {
        let text = con.until(":E", Duration::from_secs(60));
        let Some(at) = text.rfind("M:") else { continue };
        let rest = text[at + 2..].trim_end_matches(":E");
        if let Some((mac, inet)) = rest.rsplit_once(':') {
            if let Ok(n) = inet.parse::<u32>() {
                return (mac.to_string(), n > 0);
            }
        }
    }
}

#[test]
fn clones_of_one_snapshot_are_new_generations_with_their_own_identity() {
    require_image();
    clones_get_their_own_identity(IMAGE, "BusyBox", BOOT_TIMEOUT, true);
}

/// The same with systemd: the image's agent binds the NICs again. (The image configures no
/// network yet, so there is no address to check.)
#[test]
fn clones_of_a_systemd_guest_get_their_own_identity() {
    require_pulled(ROOTFS);
    clones_get_their_own_identity(ROOTFS, "root@vireo:~# ", Duration::from_secs(420), false);
}

const ROOTFS: &str = "debian-riscv64-rootfs";

/// Boots `image` with a NIC until `ready` on its console, snapshots it, and restores three
/// clones of it, each with a MAC address of its own; each clone must have had a new VM
/// generation, draw random numbers of its own, and take up its MAC address (and, with `dhcp`,
/// get an IPv4 address its VMM hears of).
fn clones_get_their_own_identity(image: &str, ready: &str, boot: Duration, dhcp: bool) {
    let s = Scratch::new(&format!("clones-{image}"));
    let spec = |mac: &str, root: Option<&Path>| {
        let mut v = json!({"image": image, "memory": "256M", "net": [format!("user,mac={mac}")]});
        if let Some(copy) = root {
            v["root_disk"] = json!(format!("{},overlay", copy.display()));
        }
        v
    };
    let origin_mac = "52:54:00:12:34:00";
    let mut vmm = spawn(&s.path("origin"), &spec(origin_mac, None), &[]);
    vmm.wait_socket(Duration::from_secs(60));
    let mut con = console(&vmm);
    con.until(ready, boot);
    // The guest bound the device at boot, and no new generation came yet.
    let (n, _) = generation_and_uuid(&mut con);
    assert_eq!(n, 0, "a vmgenid interrupt at boot");
    assert_eq!(
        guest_mac(&mut con, origin_mac, dhcp),
        (origin_mac.to_string(), dhcp)
    );
    let snap = s.path("snap");
    let r = req(&vmm, json!({"op": "snapshot", "dir": snap}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(req(&vmm, json!({"op": "kill"}))["ok"], true);
    vmm.wait(Duration::from_secs(30));
    // An image with a root disk: each clone on an overlay of the snapshot's copy of it.
    let root = snap.join("disk-root.qcow2");
    let root = root.exists().then_some(root.as_path());

    // Restored with its own MAC address, the guest keeps its NIC as it was and reports its
    // address to the new VMM.
    if dhcp {
        let mut same = spawn(
            &s.path("same"),
            &spec(origin_mac, root),
            &["--restore", snap.to_str().unwrap()],
        );
        same.wait_socket(Duration::from_secs(60));
        let t0 = Instant::now();
        while req(&same, json!({"op": "state"}))["ip"].is_null() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the restored VM reports no IP"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut con = console(&same);
        assert_eq!(
            guest_mac(&mut con, origin_mac, true),
            (origin_mac.to_string(), true)
        );
        assert_eq!(req(&same, json!({"op": "kill"}))["ok"], true);
    }

    // Started together from the same memory, each clone must still draw its own numbers
    // (without the new generation all three printed the same UUID) and take the MAC address
    // its definition gives.
    let macs: Vec<String> = (1..=3).map(|i| format!("52:54:00:12:34:{i:02x}")).collect();
    let clones: Vec<Vmm> = macs
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            spawn(
                &s.path(&format!("clone{i}")),
                &spec(mac, root),
                &["--restore", snap.to_str().unwrap()],
            )
        })
        .collect();
    let mut uuids = Vec::new();
    for (mut c, mac) in clones.into_iter().zip(&macs) {
        c.wait_socket(Duration::from_secs(60));
        let mut con = console(&c);
        let (n, uuid) = generation_and_uuid(&mut con);
        assert_eq!(
            n, 1,
            "the clone's kernel did not get the new-generation interrupt"
        );
        uuids.push(uuid);
        assert_eq!(
            guest_mac(&mut con, mac, dhcp),
            (mac.clone(), dhcp),
            "the clone's eth0 has not its own MAC address and an IPv4 address"
        );
        // And its VMM heard the address from the clone's /init.
        let t0 = Instant::now();
        while dhcp && req(&c, json!({"op": "state"}))["ip"].is_null() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the clone's VMM has no guest IP"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(req(&c, json!({"op": "kill"}))["ok"], true);
    }
    let mut distinct = uuids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        uuids.len(),
        "clones drew the same random UUID: {uuids:?}"
    );
}

/// kvm guests through the VMM: a tiny x86-64 kernel of our own (this host's nested KVM runs
/// no full Linux guest: see the kvm crate) that counts in RAM and prints each count on COM1,
/// with a disk and an rng device as virtio-pci functions it never drives. Every test here
/// needs a usable /dev/kvm; `VIREO_TESTS_WITHOUT_KVM=1` leaves them out by name.
mod kvm {
    use super::*;
    use vireo_kvm::testkernel::{counting_elf, counts};

    /// About 30 counts a second on this nested-KVM host, where the spin runs far below native
    /// speed.
    fn counting_kernel() -> Vec<u8> {
        counting_elf(20_000).unwrap()
    }

    fn consecutive(c: &[u64]) -> bool {
        c.windows(2).all(|w| w[1] == w[0] + 1)
    }

    /// Starts a VMM in `dir` (`extra`: its options) and reads its console until the kernel
    /// has printed `n` counts, which must follow each other; the VMM, its console and the
    /// counts.
    fn counting(dir: &Path, spec: &Value, extra: &[&str], n: usize) -> (Vmm, Console, Vec<u64>) {
        let mut vmm = spawn(dir, spec, extra);
        vmm.wait_socket(Duration::from_secs(30));
        let mut con = console(&vmm);
        let mut text = String::new();
        let t0 = Instant::now();
        while counts(&text).len() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no counting ({extra:?}): {text:?} {}",
                vmm.log()
            );
            text.push_str(&con.drain(Duration::from_millis(100)));
        }
        let c = counts(&text);
        assert!(consecutive(&c), "{text}");
        (vmm, con, c)
    }

    fn kvm_spec(kernel: &Path, disk: &str) -> Value {
        json!({"accel": "kvm", "kernel": kernel, "memory": "64M", "rng": true,
               "disk": [disk]})
    }

    #[test]
    fn a_counting_kernel_snapshot_restores_and_counts_on() {
        if let Err(e) = vireo_kvm::KvmVm::probe() {
            panic!(
                "this test needs a usable /dev/kvm: {e}; VIREO_TESTS_WITHOUT_KVM=1 leaves it out"
            );
        }
        let s = Scratch::new("kvm");
        let kernel = s.path("count.elf");
        std::fs::write(&kernel, counting_kernel()).unwrap();
        let disk = s.path("data.raw");
        std::fs::write(&disk, vec![0x5au8; 1 << 20]).unwrap();
        let spec = kvm_spec(&kernel, &format!("{},format=raw", disk.display()));
        let (mut vmm, mut con, seen) = counting(&s.path("run1"), &spec, &[], 20);
        let before = *seen.last().unwrap();

        let snap = s.path("snap");
        let r = req(&vmm, json!({"op": "snapshot", "dir": snap}));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["snapshot"]["kind"], "full", "{r}");
        // The VM runs on after it.
        let after: Vec<u64> = counts(&con.drain(Duration::from_millis(500)));
        assert!(
            !after.is_empty() && after[0] > before,
            "{after:?} after {before}"
        );
        let ran_to = *after.last().unwrap();
        assert_eq!(req(&vmm, json!({"op": "kill"}))["ok"], true);
        vmm.wait(Duration::from_secs(30));

        // Onto the emu accelerator: refused, naming both.
        let emu = json!({"image": IMAGE, "memory": "64M"});
        let m = vmm_restore_fails(&s.path("wrong"), &emu, &snap);
        assert!(m.contains("kvm") && m.contains("emu"), "{m}");
        // Catching the clock up is not something kvm restores do: said, not ignored.
        let copy = snap.join("disk-disk0.raw");
        assert!(copy.exists(), "the snapshot holds a copy of the disk");
        let restored = kvm_spec(&kernel, &format!("{},format=raw,readonly", copy.display()));
        let m = vmm_restore_fails_with(
            &s.path("catchup"),
            &restored,
            &snap,
            &["--clock", "catch-up"],
        );
        assert!(m.contains("catch-up"), "{m}");

        let snap_arg = snap.to_str().unwrap();
        let (r, mut con, c) = counting(&s.path("run2"), &restored, &["--restore", snap_arg], 20);
        assert!(
            c[0] > before && c[0] <= ran_to,
            "the count restarted or jumped: {before} before the snapshot, the original ran to {ran_to}, the restored VM began at {}",
            c[0]
        );
        // Diffs of the restored VM: on the snapshot it came from, then on that diff. KVM's
        // dirty log (with vm-memory's for the devices) names the pages; the VMM checks the
        // log against a comparison of contents (VIREO_SNAPSHOT_VERIFY_DIRTY).
        let d1 = req(
            &r,
            json!({"op": "snapshot", "dir": s.path("d1"), "parent": snap}),
        );
        assert_eq!(d1["snapshot"]["kind"], "diff", "{d1}");
        assert_eq!(d1["snapshot"]["diff_by"], "dirty-log", "{d1}");
        let on = counts(&con.drain(Duration::from_millis(300)));
        assert!(
            on.len() > 2,
            "the restored VM stopped counting after a snapshot: {on:?}"
        );
        let d2 = req(
            &r,
            json!({"op": "snapshot", "dir": s.path("d2"), "parent": s.path("d1")}),
        );
        assert_eq!(d2["snapshot"]["diff_by"], "dirty-log", "{d2}");
        // The guest writes its counter page and nothing else: a handful of pages.
        let pages = d2["snapshot"]["memory_pages"].as_u64().unwrap();
        assert!((1..16).contains(&pages), "{d2}");
        // The first count read after the diff: printed after it, or (one line in flight at
        // most, at this rate) the last one before it.
        let at_d2 = *counts(&con.drain(Duration::from_millis(100)))
            .first()
            .unwrap_or(&0);
        assert_eq!(req(&r, json!({"op": "kill"}))["ok"], true);
        let mut r = r;
        r.wait(Duration::from_secs(30));

        // The chain restores: counting on from the second diff, not from the full snapshot.
        let d2_arg = s.path("d2");
        let (r, _con, c) = counting(
            &s.path("run3"),
            &restored,
            &["--restore", d2_arg.to_str().unwrap()],
            5,
        );
        assert!(
            c[0] > on[on.len() - 1] && (at_d2 == 0 || c[0] <= at_d2 + 1),
            "the chain restored the wrong count: {} (counted to {} before the second diff, {at_d2} after it)",
            c[0],
            on[on.len() - 1]
        );
        assert_eq!(req(&r, json!({"op": "kill"}))["ok"], true);
    }
}
