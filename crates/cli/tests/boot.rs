//! End-to-end tests: the `vireo` binary boots the pulled Debian riscv64 image on the emulator.
//!
//! They need `vireo image pull debian-riscv64` (scripts/setup.sh runs it); without the image
//! they fail with that instruction rather than skip, so a missing setup step cannot hide.
//! x86-64 guests on KVM are in `boot/kvm.rs` (the `kvm::` tests).

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
// A module rather than a test file of its own, so that its tests are named `kvm::...` and a host
// without KVM can leave them out by that name.
#[path = "boot/kvm.rs"]
mod kvm;
use common::{
    require_image, run, run_in, vireo, vireo_on_pty, Run, BOOT_TIMEOUT, IMAGE, VIREO_ERROR,
};

#[test]
fn uname_prints_riscv64() {
    require_image();
    let r = run(&["run", "--image", IMAGE, "--", "uname", "-m"]);
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    // Only the command's output: no boot messages before it.
    assert_eq!(r.stdout, "riscv64\n", "stderr: {}", r.stderr);
}

#[test]
fn command_exit_status_is_returned() {
    require_image();
    // An argument with a quote and spaces must reach the guest intact.
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--",
        "sh",
        "-c",
        "echo \"[$0]\"; exit 7",
        "it's  a test",
    ]);
    assert_eq!(r.status, 7, "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "[it's  a test]\n");
}

#[test]
fn two_cpus() {
    require_image();
    let r = run(&["run", "--image", IMAGE, "--cpus", "2", "--", "nproc"]);
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout.trim(), "2");
}

#[test]
fn opensbi_firmware_path_boots() {
    require_image();
    let dir = tempdir();
    let log = dir.join("console.log");
    let fw = image_dir().join("fw_jump.bin");
    assert!(fw.exists(), "{} missing from the image", fw.display());
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--firmware",
        fw.to_str().unwrap(),
        "--console-log",
        log.to_str().unwrap(),
        "--",
        "cat",
        "/proc/sys/kernel/ostype",
    ]);
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "Linux\n");
    let console = std::fs::read_to_string(&log).unwrap();
    // OpenSBI's banner proves the M-mode firmware ran rather than the built-in SBI.
    assert!(
        console.contains("OpenSBI v"),
        "no OpenSBI banner in:\n{console}"
    );
    assert!(console.contains("Platform Name"), "{console}");
}

#[test]
fn verbose_shows_the_kernel_log() {
    require_image();
    let r = run(&["run", "--image", IMAGE, "--verbose", "--", "echo", "hi"]);
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    // The kernel log goes beside the command's output, not into it.
    assert!(r.stderr.contains("Linux version 6."), "{}", r.stderr);
    assert_eq!(r.stdout, "hi\n");
}

#[test]
fn interactive_shell_over_a_pty() {
    require_image();
    let (mut child, mut term) = vireo_on_pty(&["run", "--image", IMAGE], None);
    term.expect("# ", BOOT_TIMEOUT);
    term.send(b"echo sum=$((6*7))\r");
    term.expect("sum=42", Duration::from_secs(30));
    // Leaving the shell powers the guest off; vireo exits 0.
    term.send(b"exit\r");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "vireo did not exit after the shell did:\n{}",
            term.seen
        );
        term.pump(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", term.seen);
}

#[test]
fn ctrl_a_x_quits() {
    require_image();
    let (mut child, mut term) = vireo_on_pty(&["run", "--image", IMAGE], None);
    term.expect("# ", BOOT_TIMEOUT);
    term.send(b"\x01x");
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            // An aborted run is not a success: 130, as an interrupted command.
            assert_eq!(s.code(), Some(130));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "Ctrl-A x did not quit"
        );
        term.pump(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- bad input

#[test]
fn missing_kernel_names_the_path() {
    let r = run(&["run", "--kernel", "/nonexistent/vmlinux", "--", "true"]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("/nonexistent/vmlinux"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn non_kernel_file_is_rejected() {
    let dir = tempdir();
    let f = dir.join("notes.txt");
    std::fs::write(&f, vec![b'x'; 4096]).unwrap();
    let r = run(&["run", "--kernel", f.to_str().unwrap()]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(
        r.stderr.contains("notes.txt") && r.stderr.contains("not a kernel"),
        "{}",
        r.stderr
    );
}

#[test]
fn too_little_memory_says_how_much() {
    require_image();
    let r = run(&["run", "--image", IMAGE, "--memory", "32M", "--", "true"]);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stderr);
    assert!(
        r.stderr.contains("need at least") && r.stderr.contains("MiB"),
        "{}",
        r.stderr
    );
}

/// The floor vireo names is real: a boot with exactly that much memory runs the command.
#[test]
fn the_memory_floor_it_names_boots() {
    require_image();
    let r = run(&["run", "--image", IMAGE, "--memory", "64M", "--", "true"]);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stderr);
    let floor: u64 = r
        .stderr
        .split("--memory ")
        .nth(1)
        .and_then(|s| s.split('M').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no --memory suggestion in: {}", r.stderr));
    assert!(floor > 64, "{}", r.stderr);
    let at = format!("{floor}M");
    let r = run(&["run", "--image", IMAGE, "--memory", &at, "--", "echo", "ok"]);
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "ok\n"),
        "at {at}: {}",
        r.stderr
    );
    let below = format!("{}M", floor - 1);
    let r = run(&["run", "--image", IMAGE, "--memory", &below, "--", "true"]);
    assert_eq!(r.status, VIREO_ERROR, "{below}: {}", r.stderr);
}

#[test]
fn bad_config_key_is_named() {
    let dir = tempdir();
    let cfg = dir.join("vm.toml");
    std::fs::write(&cfg, "cpus = 2\nmemroy = \"1G\"\n").unwrap();
    let r = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("memroy"), "{}", r.stderr);
    std::fs::write(&cfg, "cpus = 0\nkernel = \"/k\"\n").unwrap();
    let r = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("cpus"), "{}", r.stderr);
}

#[test]
fn config_file_drives_a_boot() {
    require_image();
    let dir = tempdir();
    let cfg = dir.join("vm.toml");
    std::fs::write(
        &cfg,
        format!("image = \"{IMAGE}\"\ncpus = 2\nmemory = \"256M\"\ncommand = [\"nproc\"]\n"),
    )
    .unwrap();
    let r = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "2");
}

/// A config file's relative paths are its directory's: run from another directory (which has
/// a decoy disk of the same name), with the file named relatively, the guest gets the file's
/// disk and the console log lands beside the file.
#[test]
fn config_paths_are_relative_to_the_file() {
    require_image();
    let root = tempdir();
    let (vm, elsewhere) = (root.join("vm"), root.join("elsewhere"));
    std::fs::create_dir_all(&vm).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let disk = |dir: &std::path::Path, mark: &[u8]| {
        let mut bytes = vec![0u8; 1 << 20];
        bytes[..mark.len()].copy_from_slice(mark);
        std::fs::write(dir.join("data.img"), bytes).unwrap();
    };
    disk(&vm, b"FILE-DIR-DISK");
    disk(&elsewhere, b"CWD-DECOY-DSK");
    std::fs::write(
        vm.join("vm.toml"),
        format!(
            "image = \"{IMAGE}\"\ndisk = [\"data.img,serial=cfg0\"]\nconsole_log = \"console.log\"\n\
             command = [\"sh\", \"-c\", \"head -c 13 /dev/vda; echo; cat /sys/block/vda/serial; echo\"]\n"
        ),
    )
    .unwrap();
    let r = run_in(Some(&elsewhere), &["run", "--config", "../vm/vm.toml"]);
    assert_eq!(r.status, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "FILE-DIR-DISK\ncfg0\n", "{}", r.stderr);
    assert!(
        vm.join("console.log").is_file(),
        "no console.log beside the file"
    );
    assert!(
        !elsewhere.join("console.log").exists(),
        "console.log in the cwd"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_disk_option_in_a_config_names_the_file_and_the_key() {
    require_image();
    let dir = tempdir();
    std::fs::File::create(dir.join("ok.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let cfg = dir.join("vm.toml");
    std::fs::write(
        &cfg,
        format!("image = \"{IMAGE}\"\ndisk = [\"ok.img\", \"x.img,foo\"]\ncommand = [\"true\"]\n"),
    )
    .unwrap();
    let start = Instant::now();
    let r = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.status, VIREO_ERROR, "{}{}", r.stdout, r.stderr);
    let want = format!(
        "{}: disk[1] 'x.img,foo': unknown option 'foo'",
        cfg.display()
    );
    assert!(r.stderr.contains(&want), "no {want:?} in: {}", r.stderr);
    assert!(!r.stderr.contains("--disk"), "{}", r.stderr);
    assert!(start.elapsed() < Duration::from_secs(3), "it booted");
    // The same option as a flag is named as the flag.
    let r = run(&["run", "--image", IMAGE, "--disk", "x.img,foo", "--", "true"]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(
        r.stderr
            .contains("--disk 'x.img,foo': unknown option 'foo'"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_help_points_at_the_config_reference() {
    let r = run(&["run", "--help"]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(r.stdout.contains("docs/config.md"), "{}", r.stdout);
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let dir = tempdir();
    let cfg = dir.join("no-such-vm.toml");
    let r = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.status, VIREO_ERROR, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "cannot read config file {}: no such file",
            cfg.display()
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    // A file the config names that is not there: the config, the key, the resolved path.
    let cfg = dir.join("vm.toml");
    std::fs::write(&cfg, "kernel = \"vmlinux\"\n").unwrap();
    let r = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.status, VIREO_ERROR, "{}{}", r.stdout, r.stderr);
    let want = format!(
        "{}: kernel: {}: no such file",
        cfg.display(),
        dir.join("vmlinux").display()
    );
    assert!(r.stderr.contains(&want), "no {want:?} in: {}", r.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_not_pulled_gives_the_command() {
    let dir = tempdir();
    let r = {
        let mut c = vireo();
        c.env("VIREO_CACHE_DIR", &dir)
            .args(["run", "--image", IMAGE, "--", "true"]);
        let o = c.output().unwrap();
        Run {
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    assert_eq!(r.status, VIREO_ERROR, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("vireo image pull debian-riscv64"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["run", "--cpus", "many", "--kernel", "k"][..],
        &["run", "--memory", "12X", "--kernel", "k"],
        &["run", "--accel", "xen", "--kernel", "k"],
        &["run", "--no-such-flag"],
        &["run"],
    ] {
        let r = run(args);
        assert_eq!(r.status, VIREO_ERROR, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}

// ---------------------------------------------------------------- helpers

fn image_dir() -> PathBuf {
    let out = vireo().args(["image", "pull", IMAGE]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let path = s.rsplit(" in ").next().unwrap_or("").trim();
    PathBuf::from(path)
}

fn tempdir() -> PathBuf {
    common::fresh_dir("test")
}
