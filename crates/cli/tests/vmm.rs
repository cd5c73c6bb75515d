//! End to end: `vireo vmm`, the per-VM process the daemon supervises, driven over its control
//! and console sockets (protocol: crates/vmm/src/server.rs) with the pulled Debian image.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct RunDir(PathBuf);

impl RunDir {
    fn new(tag: &str, spec: Value) -> RunDir {
        let d = std::env::temp_dir().join(format!("vireo-vmm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("spec.json"), spec.to_string()).unwrap();
        RunDir(d)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
    fn exit_record(&self) -> Value {
        let t = std::fs::read_to_string(self.path("exit.json")).expect("exit.json written");
        serde_json::from_str(&t).unwrap()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends one request and reads its answer.
fn req(dir: &RunDir, r: Value) -> Value {
    let mut s = UnixStream::connect(dir.path("control.sock")).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    writeln!(s, "{r}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats["stats"]["counters"][name].as_u64().unwrap_or(0)
}

/// Reads from `s` until `needle` has appeared (or fails after `limit`).
fn read_until(s: &mut UnixStream, needle: &str, limit: Duration) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if String::from_utf8_lossy(&got).contains(needle) {
            return String::from_utf8_lossy(&got).into_owned();
        }
        assert!(
            t0.elapsed() < limit,
            "no {needle:?} on the console; got {:?}",
            String::from_utf8_lossy(&got)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("console closed; got {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
}

#[test]
fn a_vmm_serves_state_console_pause_stats_and_a_graceful_shutdown() {
    require_image();
    let dir = RunDir::new("life", json!({"image": IMAGE, "memory": "512M"}));
    let mut vmm = Vmm::spawn(&dir.0, &[]);
    vmm.wait_socket(Duration::from_secs(30));
    let hello = req(&dir, json!({"op": "hello"}));
    assert_eq!(hello["protocol"], 1, "{hello}");
    assert_eq!(hello["pid"].as_u64(), Some(u64::from(vmm.child.id())));
    // A watcher sees the state changes until the VMM is gone.
    let mut watch = UnixStream::connect(dir.path("control.sock")).unwrap();
    writeln!(watch, "{}", json!({"op": "watch"})).unwrap();
    let watcher = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(watch).lines() {
            match l {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        lines
    });
    wait_for("guest_ready", BOOT_TIMEOUT, || {
        req(&dir, json!({"op": "state"}))["guest_ready"] == true
    });
    assert_eq!(req(&dir, json!({"op": "state"}))["state"], "running");

    // A command through the console, with a second writer refused.
    let mut con = UnixStream::connect(dir.path("console.sock")).unwrap();
    con.write_all(b"rw\n").unwrap();
    // Its backlog arriving means the VMM took its mode line: the writer is this one.
    read_until(&mut con, "BusyBox", Duration::from_secs(10));
    let mut other = UnixStream::connect(dir.path("console.sock")).unwrap();
    other.write_all(b"rw\n").unwrap();
    read_until(&mut other, "read-only", Duration::from_secs(10));
    con.write_all(b"echo vmm-$((6*7))\n").unwrap();
    read_until(&mut con, "vmm-42", Duration::from_secs(30));
    // The read-only client saw it too, and its keys go nowhere.
    read_until(&mut other, "vmm-42", Duration::from_secs(10));

    // Paused: nothing retires, the console is silent; resumed: it runs on.
    let p = req(&dir, json!({"op": "pause"}));
    assert_eq!(p["state"], "paused", "{p}");
    let again = req(&dir, json!({"op": "pause"}));
    assert_eq!(again["error"], "conflict", "{again}");
    assert!(again["message"].as_str().unwrap().contains("paused"));
    // What the guest wrote just before the pause is still being copied out (every 5 ms).
    std::thread::sleep(Duration::from_millis(200));
    let a = req(&dir, json!({"op": "stats"}));
    con.write_all(b"echo still-$((2+3))\n").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let b = req(&dir, json!({"op": "stats"}));
    assert_eq!(
        counter(&a, "instructions"),
        counter(&b, "instructions"),
        "instructions retired while paused"
    );
    assert_eq!(a["stats"]["console_bytes"], b["stats"]["console_bytes"]);
    assert_eq!(req(&dir, json!({"op": "resume"}))["state"], "running");
    read_until(&mut con, "still-5", Duration::from_secs(30));
    let c = req(&dir, json!({"op": "stats"}));
    assert!(counter(&c, "instructions") > counter(&b, "instructions"));
    assert!(counter(&c, "traps.ecall_u") > 0, "{c}");
    assert!(counter(&c, "mmio_writes") > 0, "{c}");
    assert_eq!(c["stats"]["accel"], "emu");
    assert!(c["stats"]["vmm_rss_bytes"].as_u64().unwrap() > 0);

    // Bad requests are answered, not fatal.
    let bad = req(&dir, json!({"op": "fly"}));
    assert_eq!(bad["error"], "bad_request", "{bad}");
    let bad = req(&dir, json!({"op": "state", "extra": 1}));
    assert_eq!(bad["error"], "bad_request", "{bad}");

    // Graceful: the guest's own shutdown runs and it powers off.
    let s = req(&dir, json!({"op": "shutdown", "timeout_secs": 60}));
    assert_eq!(s["state"], "stopping", "{s}");
    assert_eq!(vmm.wait(Duration::from_secs(60)), 0);
    let rec = dir.exit_record();
    assert_eq!(rec["reason"], "poweroff", "{rec}");
    assert!(!dir.path("control.sock").exists() && !dir.path("console.sock").exists());
    let log = std::fs::read_to_string(dir.path("console.log")).unwrap();
    assert!(log.contains("vmm-42"), "the console log has the session");
    let events = watcher.join().unwrap();
    let states: Vec<&str> = events
        .iter()
        .filter(|l| l.contains("\"state\""))
        .map(|l| {
            if l.contains("paused") {
                "paused"
            } else if l.contains("stopping") {
                "stopping"
            } else {
                "running"
            }
        })
        .collect();
    assert_eq!(states, ["paused", "running", "stopping"], "{events:?}");
    assert!(events.iter().any(|l| l.contains("guest_ready")) || events.len() >= 3);
}

#[test]
fn a_command_vm_ends_with_its_status_and_its_output_in_the_log() {
    require_image();
    let dir = RunDir::new(
        "cmd",
        json!({"image": IMAGE, "command": ["sh", "-c", "echo out-$((40+2)); echo err >&2; exit 3"]}),
    );
    let mut vmm = Vmm::spawn(&dir.0, &[]);
    assert_eq!(vmm.wait(BOOT_TIMEOUT), 3);
    let rec = dir.exit_record();
    assert_eq!(rec["reason"], "failure", "{rec}");
    assert_eq!(rec["status"], 3);
    let log = std::fs::read_to_string(dir.path("console.log")).unwrap();
    assert!(log.contains("out-42") && log.contains("err"), "{log}");
}

#[test]
fn kill_stops_at_once_and_a_second_vmm_cannot_take_the_directory() {
    require_image();
    let dir = RunDir::new("kill", json!({"image": IMAGE}));
    let mut vmm = Vmm::spawn(&dir.0, &[]);
    vmm.wait_socket(Duration::from_secs(30));
    // The directory is the running VMM's: another one refuses it and leaves its files.
    let second = run(&["vmm", "--name", "t", "--dir", dir.0.to_str().unwrap()]);
    assert_eq!(second.status, VIREO_ERROR, "{}", second.stderr);
    assert!(second.stderr.contains("another VMM"), "{}", second.stderr);
    assert!(dir.path("control.sock").exists());
    assert_eq!(req(&dir, json!({"op": "kill"}))["ok"], true);
    let code = vmm.wait(Duration::from_secs(20));
    assert_ne!(code, 0);
    assert_eq!(dir.exit_record()["reason"], "killed");
}

#[test]
fn a_vmm_that_cannot_start_says_why() {
    let dir = RunDir::new(
        "bad",
        json!({"kernel": "/nonexistent/vmlinux", "memory": "256M"}),
    );
    let mut vmm = Vmm::spawn(&dir.0, &[]);
    assert_eq!(vmm.wait(Duration::from_secs(20)), VIREO_ERROR);
    let rec = dir.exit_record();
    assert_eq!(rec["reason"], "error");
    assert!(
        rec["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/vmlinux"),
        "{rec}"
    );
    assert!(!dir.path("control.sock").exists());

    let dir = RunDir::new("badjson", json!({"image": IMAGE, "cpuz": 2}));
    let mut vmm = Vmm::spawn(&dir.0, &[]);
    assert_eq!(vmm.wait(Duration::from_secs(20)), VIREO_ERROR);
    let msg = dir.exit_record()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("spec.json") && msg.contains("cpuz"), "{msg}");
}

/// The pulled image's own initramfs, as a file (given as `initrd`, it is a custom one: no
/// command channel).
fn image_initrd() -> PathBuf {
    vireo_image::open(IMAGE)
        .expect("the image is pulled")
        .initrd
}

#[test]
fn a_guest_without_vireos_init_is_stopped_at_once_and_told_why() {
    require_image();
    let initrd = image_initrd();
    assert!(initrd.exists(), "{} is missing", initrd.display());
    let dir = RunDir::new(
        "noinit",
        json!({"image": IMAGE, "initrd": initrd, "memory": "256M"}),
    );
    let mut vmm = Vmm::spawn(&dir.0, &[]);
    vmm.wait_socket(Duration::from_secs(30));
    let s = req(&dir, json!({"op": "shutdown", "timeout_secs": 60}));
    assert_eq!(s["ok"], true, "{s}");
    // At once, not after the 60 s.
    assert_ne!(vmm.wait(Duration::from_secs(20)), 0);
    let rec = dir.exit_record();
    assert_eq!(rec["reason"], "killed", "{rec}");
    assert!(
        rec["message"].as_str().unwrap().contains("no vireo /init"),
        "{rec}"
    );
}

/// A guest kernel that panics is stopped (it would spin without panic=-1), and the panic line
/// is the exit record's message; `vireo run` says the same.
#[test]
fn a_guest_kernel_panic_ends_the_vm_with_its_line() {
    require_image();
    let dir = RunDir::new(
        "panic",
        json!({"image": IMAGE, "cmdline": "console=ttyS0 rdinit=/nonexistent root=/dev/nothing"}),
    );
    let mut vmm = Vmm::spawn(&dir.0, &[]);
    assert_ne!(vmm.wait(BOOT_TIMEOUT), 0);
    let rec = dir.exit_record();
    assert_eq!(rec["reason"], "reset", "{rec}");
    let msg = rec["message"].as_str().unwrap();
    assert!(
        msg.starts_with("guest kernel panicked: ") && msg.contains("Kernel panic - not syncing"),
        "{msg}"
    );
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--cmdline",
        "console=ttyS0 rdinit=/nonexistent root=/dev/nothing",
    ]);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stderr);
    assert!(
        r.stderr.contains("guest kernel panicked: ")
            && r.stderr.contains("Kernel panic - not syncing"),
        "{}",
        r.stderr
    );
}

/// A guest that floods its console costs the host a bounded amount: `console.log` is rotated
/// at 1 MiB (two files at most), console clients that do not keep up lose output rather than
/// holding the guest or growing a queue, and the VMM's memory stays bounded; the guest goes on
/// as before.
#[test]
fn a_guest_flooding_its_console_costs_the_host_a_bounded_amount() {
    require_image();
    let dir = RunDir::new("flood", json!({"image": IMAGE, "memory": "256M"}));
    let mut vmm = Vmm::spawn(&dir.0, &[]);
    vmm.wait_socket(Duration::from_secs(30));
    wait_for("the guest's shell", BOOT_TIMEOUT, || {
        req(&dir, json!({"op": "state"}))["guest_ready"] == true
    });
    // The writer, which stops reading once it has typed the flood: it and a client that never
    // reads fall behind.
    let mut stuck = UnixStream::connect(dir.path("console.sock")).unwrap();
    stuck.write_all(b"ro\n").unwrap();
    let mut con = UnixStream::connect(dir.path("console.sock")).unwrap();
    con.write_all(b"rw\n").unwrap();
    read_until(&mut con, "BusyBox", Duration::from_secs(10));
    let before = req(&dir, json!({"op": "stats"}));
    let base = before["stats"]["console_bytes"].as_u64().unwrap();
    // 2.5 MB of output, then a marker computed in the guest (so the echo of the command line
    // is not taken for it).
    con.write_all(b"head -c 2500000 /dev/zero | tr '\\0' x; echo; echo flood-$((40+2))\n")
        .unwrap();
    // The log has everything (its current file the end of it).
    wait_for(
        "the flood's end in console.log",
        Duration::from_secs(900),
        || std::fs::read_to_string(dir.path("console.log")).is_ok_and(|l| l.contains("flood-42")),
    );
    let after = req(&dir, json!({"op": "stats"}));
    let printed = after["stats"]["console_bytes"].as_u64().unwrap() - base;
    assert!(printed >= 2_500_000, "{after}");
    assert!(
        after["stats"]["console_dropped_bytes"].as_u64().unwrap() > 0,
        "the clients that do not read held everything: {after}"
    );
    let len = |f: &str| std::fs::metadata(dir.path(f)).map(|m| m.len()).unwrap_or(0);
    assert!(len("console.log") <= 1 << 20, "{}", len("console.log"));
    assert!(
        len("console.log.1") > 0 && len("console.log.1") <= 1 << 20,
        "{}",
        len("console.log.1")
    );
    // The VMM's own memory stays far below what the guest printed times its clients.
    let rss = after["stats"]["vmm_rss_bytes"].as_u64().unwrap();
    let rss_before = before["stats"]["vmm_rss_bytes"].as_u64().unwrap();
    assert!(
        rss < rss_before + (16 << 20),
        "the VMM grew from {rss_before} to {rss} bytes"
    );
    // The guest answers as before (seen by a client that attaches now).
    let mut watch = UnixStream::connect(dir.path("console.sock")).unwrap();
    watch.write_all(b"ro\n").unwrap();
    con.write_all(b"echo after-$((3*3))\n").unwrap();
    read_until(&mut watch, "after-9", Duration::from_secs(120));
    drop(stuck);
    assert_eq!(req(&dir, json!({"op": "kill"}))["ok"], true);
    vmm.wait(Duration::from_secs(30));
}
