//! End to end: the VMM's guest-facing threads run under their seccomp filters
//! (crates/jail). Every other end-to-end test boots with them on (the default `kill`): a call
//! a list lacks would kill its VMM there. Here: a thread that makes a forbidden call (the
//! test-only `VIREO_SECCOMP_SELFTEST` hook) kills the process by SIGSYS, `--seccomp log`
//! reports it and lets the guest run on, `--seccomp off` warns, and the filters are where
//! /proc says they are.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

const SIGSYS: i32 = 31;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vireo-seccomp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A scratch directory holding a 1 MiB raw disk, and the disk.
fn scratch_with_disk(tag: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(tag);
    let disk = dir.join("d.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    (dir, disk)
}

/// `vireo run` with the self-test hook aimed at `kind` (none: no hook).
fn run_with(kind: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = vireo();
    if let Some(k) = kind {
        cmd.env("VIREO_SECCOMP_SELFTEST", k);
    }
    let child = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

fn assert_killed_by_sigsys(o: &Output) {
    assert_eq!(
        o.status.signal(),
        Some(SIGSYS),
        "{:?} {}",
        o.status,
        stderr(o)
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_emulators_thread_making_a_forbidden_call_kills_the_vmm() {
    require_image();
    let o = run_with(Some("emu"), &["run", "--image", IMAGE, "--", "true"]);
    assert_killed_by_sigsys(&o);
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn the_main_thread_making_a_forbidden_call_kills_the_vmm() {
    require_image();
    let o = run_with(Some("main"), &["run", "--image", IMAGE, "--", "true"]);
    assert_killed_by_sigsys(&o);
}

#[test]
fn a_device_worker_making_a_forbidden_call_kills_the_vmm() {
    require_image();
    let (dir, disk) = scratch_with_disk("dev");
    let d = format!("{},format=raw", disk.display());
    // The block device's I/O thread starts when the guest's driver sets it up.
    let o = run_with(
        Some("device"),
        &["run", "--image", IMAGE, "--disk", &d, "--", "true"],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_killed_by_sigsys(&o);
}

#[test]
fn log_mode_reports_the_call_and_the_guest_runs_on() {
    require_image();
    let o = run_with(
        Some("emu"),
        &[
            "run",
            "--seccomp",
            "log",
            "--image",
            IMAGE,
            "--",
            "uname",
            "-m",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "riscv64\n");
    // getppid is call 110 on x86-64.
    assert!(
        stderr(&o).contains("system call 110 is outside this thread's list"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn off_says_so_and_a_bad_mode_is_refused() {
    require_image();
    let o = run_with(
        Some("emu"),
        &["run", "--seccomp", "off", "--image", IMAGE, "--", "true"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: --seccomp off"),
        "{}",
        stderr(&o)
    );
    let o = run_with(
        None,
        &["run", "--seccomp", "strict", "--image", IMAGE, "--", "true"],
    );
    assert_eq!(o.status.code(), Some(VIREO_ERROR), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'strict'") && stderr(&o).contains("kill"),
        "{}",
        stderr(&o)
    );
}

/// Each thread's `Seccomp:` line in /proc: the run loop, a device worker, the command
/// channel's reader, the VMM's socket threads and the main thread, which builds the devices,
/// are filtered (mode 2), the worker with its own filter only (the spawner started it); the
/// spawner is not.
#[test]
fn proc_shows_the_filters_on_the_guest_facing_threads() {
    require_image();
    let (dir, disk) = scratch_with_disk("proc");
    let spec = serde_json::json!({"image": IMAGE, "memory": "256M",
        "disk": [format!("{},format=raw", disk.display())]});
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("spec.json"), spec.to_string()).unwrap();
    let mut vmm = Vmm::spawn(&run, &[]);
    vmm.wait_socket(Duration::from_secs(60));
    let pid = vmm.child.id();
    // Threads by name: (Seccomp mode, filters).
    let threads = || -> Vec<(String, String, String)> {
        let mut v = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            v.push((
                comm.trim().to_string(),
                field("Seccomp:"),
                field("Seccomp_filters:"),
            ));
        }
        v
    };
    let t0 = Instant::now();
    let seen = loop {
        let t = threads();
        if t.iter().any(|(c, ..)| c.starts_with("vireo-blk")) {
            break t;
        }
        assert!(
            t0.elapsed() < BOOT_TIMEOUT,
            "no block I/O thread started: {t:?} {}",
            vmm.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let find = |name: &str| {
        seen.iter()
            .find(|(c, ..)| c == name || (name != "vireo" && c.starts_with(name)))
            .unwrap_or_else(|| panic!("no thread {name}: {seen:?}"))
            .clone()
    };
    // The run loop carries its own filter and the main thread's, which started it.
    let emu = find("vireo-emu");
    assert_eq!((emu.1.as_str(), emu.2.as_str()), ("2", "2"), "{seen:?}");
    // A worker is started by the spawner, not by the thread that activated its device: it
    // has its own filter only (one program per kind), none of its activator's.
    let blk = find("vireo-blk");
    assert_eq!((blk.1.as_str(), blk.2.as_str()), ("2", "1"), "{seen:?}");
    let spawner = find("vireo-spawner");
    assert_eq!(
        spawner.1, "0",
        "the spawner runs no guest-facing code: {seen:?}"
    );
    // The thread that reads the guest's command channel parses what the guest wrote.
    let ctl = find("guest-ctl");
    assert_eq!(ctl.1, "2", "{seen:?}");
    // The sockets' threads and the console relay run under the control kind's filter.
    for name in ["vmm-control", "vmm-console", "console-relay"] {
        let t = find(name);
        assert_eq!(t.1, "2", "{name}: {seen:?}");
    }
    // The main thread (named for the binary) builds each boot's devices, under its own.
    let main = find("vireo");
    assert_eq!((main.1.as_str(), main.2.as_str()), ("2", "1"), "{seen:?}");
    drop(vmm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The VMM's control thread making a forbidden call kills the VMM (the test-only hook fires
/// as the thread enters its sandbox, once the VM has booted far enough to serve).
#[test]
fn the_vmm_s_control_thread_making_a_forbidden_call_kills_it() {
    require_image();
    let dir = scratch("control");
    let spec = serde_json::json!({"image": IMAGE, "memory": "256M"});
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("vmm.log")).unwrap();
    let mut child = vireo()
        .env("VIREO_SECCOMP_SELFTEST", "control")
        .args(["vmm", "--name", "t", "--dir"])
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < BOOT_TIMEOUT, "the VMM lives on");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
    assert_eq!(status.signal(), Some(SIGSYS), "{status:?} {log}");
    let _ = std::fs::remove_dir_all(&dir);
}
