//! Helpers shared by the end-to-end test files (each file uses a subset).
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "debian-riscv64";
/// vireo's own errors (usage included) exit with this, as `docker run`'s do.
pub const VIREO_ERROR: i32 = 125;
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub fn vireo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vireo"))
}

pub fn require_image() {
    let out = vireo().args(["image", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.lines().any(|l| l.starts_with(IMAGE)),
        "the {IMAGE} image is not pulled: run `vireo image pull {IMAGE}` (scripts/setup.sh does)"
    );
}

pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs vireo with a deadline; a hang is a failure, not a stuck test.
pub fn run(args: &[&str]) -> Run {
    run_in(None, args)
}

/// [`run`] in the directory `cwd` (the test's own when `None`).
pub fn run_in(cwd: Option<&std::path::Path>, args: &[&str]) -> Run {
    let mut cmd = vireo();
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vireo {args:?} did not finish within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
    }
}

/// A vireo left running in the background (the first of two VMs), killed and reaped when
/// dropped: the test never waits for it, so it cannot hang the test, and a failing test's
/// unwinding stops it too.
pub struct Background {
    child: std::process::Child,
}

impl Background {
    pub fn start(args: &[&str]) -> Background {
        let child = vireo()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Background { child }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no destructor, no cleanup of vireo's own.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until some process holds a lock on the file `path` (as /proc/locks lists it).
pub fn wait_for_lock(path: &std::path::Path, timeout: Duration) -> bool {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    let (dev, ino) = (m.dev(), m.ino());
    // /proc/locks names the file MAJOR:MINOR:INODE, the numbers in hex, hex, decimal.
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let needle = format!("{major:02x}:{minor:02x}:{ino} ");
    let start = Instant::now();
    while start.elapsed() < timeout {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        if locks.lines().any(|l| l.contains(&needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
