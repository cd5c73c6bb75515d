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
    let mut child = vireo()
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
