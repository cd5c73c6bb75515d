//! The systemd image, `debian-riscv64-rootfs`: booted from its qcow2 root disk on the emu
//! accelerator to a running system, a command run there through vireo's agent, the cached base
//! never written; and a pull that cannot work says what is missing.
//!
//! The boot test needs the image pulled (`vireo image pull debian-riscv64-rootfs`, which
//! scripts/setup.sh does) and fails, saying so, when it is not.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROOTFS: &str = "debian-riscv64-rootfs";

/// A full systemd boot on an emulated CPU (about a minute and a half on a busy 2-core host),
/// with room for a slower host: a hang still fails, with the console's tail.
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(420);

struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

fn vireo_within(args: &[&str], limit: Duration) -> Out {
    let mut cmd = vireo();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let status = wait(&mut child, limit, &what);
    Out {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn root_disk() -> PathBuf {
    vireo_image::open(ROOTFS)
        .unwrap()
        .root_disk
        .expect("the rootfs image has a root disk")
}

#[test]
fn systemd_reaches_running_and_the_base_disk_is_not_written() {
    require_pulled(ROOTFS);
    let disk = root_disk();
    let before = std::fs::metadata(&disk).unwrap();
    let log = std::env::temp_dir().join(format!("vireo-rootfs-{}.log", std::process::id()));
    let started = Instant::now();
    let r = vireo_within(
        &[
            "run",
            "--image",
            ROOTFS,
            "--console-log",
            log.to_str().unwrap(),
            "--",
            "systemctl",
            "is-system-running",
        ],
        SYSTEMD_TIMEOUT,
    );
    let took = started.elapsed();
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    eprintln!("boot to `systemctl is-system-running` and back: {took:.1?}");
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "running\n"),
        "stderr: {}\n--- console ---\n{console}",
        r.stderr
    );
    // The guest wrote to its root (ext4's superblock at mount, systemd's state): all of it
    // went to the overlay. The file is as it was, and its digest still matches the manifest
    // (`pull` hashes every file of a cached image and says it is already there).
    let after = std::fs::metadata(&disk).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(
        after.modified().unwrap(),
        before.modified().unwrap(),
        "{} was written",
        disk.display()
    );
    let pull = run(&["image", "pull", ROOTFS]);
    assert_eq!(pull.status, 0, "{}{}", pull.stdout, pull.stderr);
    assert!(
        pull.stdout.contains("already pulled"),
        "the cached image no longer matches its manifest: {}{}",
        pull.stdout,
        pull.stderr
    );
}

/// Without a command the console logs root in (after the start marker, so the boot stays
/// hidden) in the running system, and the shell's exit status is vireo's.
#[test]
fn the_console_logs_root_in_and_its_exit_ends_the_vm() {
    require_pulled(ROOTFS);
    let (mut child, mut term) = vireo_on_pty(&["run", "--image", ROOTFS], None);
    term.expect("root@vireo:~# ", SYSTEMD_TIMEOUT);
    term.send(b"systemctl is-system-running; exit 3\r");
    term.expect("running", Duration::from_secs(60));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("vireo did not exit after the shell did:\n{}", term.seen);
        }
        term.pump(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3), "{}", term.seen);
}

/// A pull that cannot work names what is missing, exits with vireo's own status and leaves
/// nothing in the cache: here mmdebstrap is not on PATH (or, run as another user, vireo is not
/// root, which the build needs first).
#[test]
fn pull_without_its_host_tools_says_what_to_install() {
    let cache = std::env::temp_dir().join(format!("vireo-rootfs-cache-{}", std::process::id()));
    let empty = cache.join("bin");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(["image", "pull", ROOTFS])
        .env("VIREO_CACHE_DIR", &cache)
        .env("PATH", &empty)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VIREO_ERROR), "{stderr}");
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let want = if root {
        "`mmdebstrap` is not installed: install the Debian package `mmdebstrap`"
    } else {
        "needs root"
    };
    assert!(stderr.contains(want), "{stderr}");
    let images = cache.join("vireo/images");
    let left: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the cache: {left:?}");
    std::fs::remove_dir_all(&cache).unwrap();
}
