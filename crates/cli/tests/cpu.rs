//! End-to-end tests of the emulated CPU: what the Debian kernel finds with every extension
//! advertised and with none (`--cpu`), hardware counting through the SBI PMU, and bare-metal
//! programs run with `--firmware` alone.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{require_image, run, Run, IMAGE, VIREO_ERROR};

const GCC: &str = "riscv64-linux-gnu-gcc";

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vireo-cpu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gcc(args: &[&str]) {
    let out = Command::new(GCC).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {GCC} ({e}): install gcc-riscv64-linux-gnu (scripts/setup.sh does)")
    });
    assert!(
        out.status.success(),
        "{GCC} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `isa` line of the guest's /proc/cpuinfo, and its kernel log.
fn cpuinfo_and_dmesg(cpu: &str) -> (String, String) {
    require_image();
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--cpu",
        cpu,
        "--",
        "sh",
        "-c",
        "grep -m1 '^isa' /proc/cpuinfo; dmesg",
    ]);
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    let (isa, log) = r.stdout.split_once('\n').unwrap_or_default();
    (isa.to_string(), log.to_string())
}

#[test]
fn debian_kernel_uses_the_extensions() {
    let (isa, log) = cpuinfo_and_dmesg("max");
    for ext in [
        "zba",
        "zbb",
        "zbc",
        "zbs",
        "zicond",
        "zicbom",
        "zicboz",
        "zihintntl",
        "zihintpause",
        "zfa",
        "zkr",
        "sstc",
        "svinval",
        "svnapot",
        "svpbmt",
    ] {
        assert!(
            isa.split('_').any(|e| e == ext),
            "/proc/cpuinfo lacks {ext}: {isa}"
        );
    }
    for line in [
        "Timer interrupt in S-mode is available via sstc extension",
        "ASID allocator using 16 bits",
        "SBI PMU extension is available",
    ] {
        assert!(log.contains(line), "the kernel log lacks '{line}':\n{log}");
    }
}

#[test]
fn rv64gc_model_advertises_nothing_optional() {
    let (isa, log) = cpuinfo_and_dmesg("rv64gc");
    // Linux adds the compressed subsets it infers from C and D.
    let exts: Vec<&str> = isa
        .split(':')
        .nth(1)
        .unwrap_or_default()
        .trim()
        .split('_')
        .collect();
    assert_eq!(
        exts,
        ["rv64imafdc", "zicntr", "zicsr", "zifencei", "zca", "zcd"],
        "{isa}"
    );
    // The kernel falls back to the SBI timer, which the built-in SBI still serves.
    assert!(!log.contains("sstc"), "{log}");
}

#[test]
fn perf_counts_instructions_and_cycles() {
    require_image();
    let dir = scratch("perf");
    let prog = dir.join("perfcount");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cpu/perfcount.c");
    gcc(&[
        "-static",
        "-O2",
        "-o",
        prog.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    // The program travels as a raw disk, padded to whole sectors.
    let mut bytes = std::fs::read(&prog).unwrap();
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let disk = dir.join("perfcount.img");
    std::fs::write(&disk, &bytes).unwrap();
    let spec = format!("{},readonly", disk.display());
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        &spec,
        "--",
        "sh",
        "-c",
        "cat /dev/vda > /tmp/p && chmod +x /tmp/p && /tmp/p",
    ]);
    assert_eq!(r.status, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    let count = |name: &str| -> u64 {
        let i = words
            .iter()
            .position(|w| *w == name)
            .unwrap_or_else(|| panic!("{}", r.stdout));
        words[i + 1].parse().unwrap()
    };
    // The loop is 2,000,000 instructions; the counters run for it and little else (the kernel
    // entries around enable/disable, a timer tick or two). One cycle per instruction.
    for name in ["instructions", "cycles"] {
        let n = count(name);
        assert!(
            (2_000_000..2_400_000).contains(&n),
            "{name}: {n} (expected a little over 2,000,000)\n{}",
            r.stdout
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_cpu_models_are_refused() {
    for (arg, want) in [
        ("rv32gc", "unknown CPU model 'rv32gc'"),
        ("max,-zbx", "unknown extension 'zbx'"),
        ("max,zbb", "invalid CPU feature 'zbb'"),
    ] {
        let r = run(&["run", "--image", IMAGE, "--cpu", arg, "--", "true"]);
        assert_eq!(r.status, VIREO_ERROR, "{arg}: {}", r.stderr);
        assert!(
            r.stderr.contains("--cpu") && r.stderr.contains(want),
            "{arg}: {}",
            r.stderr
        );
    }
}

/// A bare-metal program: print `msg` on the UART, then write `finisher` to the test device.
fn bare_program(dir: &Path, name: &str, msg: &str, finisher: u32) -> PathBuf {
    let src = dir.join(format!("{name}.S"));
    let mut body = String::from(".globl _start\n_start:\n    li t0, 0x10000000\n");
    for b in msg.bytes() {
        body.push_str(&format!("    li t1, {b}\n    sb t1, 0(t0)\n"));
    }
    body.push_str(&format!(
        "    li t0, 0x100000\n    li t1, {finisher:#x}\n    sw t1, 0(t0)\n1:  j 1b\n"
    ));
    std::fs::write(&src, body).unwrap();
    let elf = dir.join(format!("{name}.elf"));
    let ld = Path::new(env!("CARGO_MANIFEST_DIR")).join("../riscv/tests/isa/link.ld");
    gcc(&[
        "-nostdlib",
        "-static",
        "-Wl,--build-id=none",
        "-T",
        ld.to_str().unwrap(),
        "-o",
        elf.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    elf
}

fn firmware(path: &Path) -> Run {
    run(&["run", "--firmware", path.to_str().unwrap()])
}

#[test]
fn firmware_alone_runs_bare_metal_programs() {
    let dir = scratch("fw");
    let pass = bare_program(&dir, "pass", "hello from M-mode\n", 0x5555);
    let r = firmware(&pass);
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "hello from M-mode\n"),
        "{}",
        r.stderr
    );
    // Finisher failure codes: the low byte is the status, and a zero low byte is still a
    // failure.
    let fail7 = bare_program(&dir, "fail7", "", (7 << 16) | 0x3333);
    assert_eq!(firmware(&fail7).status, 7);
    let fail256 = bare_program(&dir, "fail256", "", (256 << 16) | 0x3333);
    assert_eq!(firmware(&fail256).status, 1);
    // The same program as a raw binary runs from the start of RAM.
    let raw = dir.join("pass.bin");
    let out = Command::new("riscv64-linux-gnu-objcopy")
        .args([
            "-O",
            "binary",
            pass.to_str().unwrap(),
            raw.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = firmware(&raw);
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "hello from M-mode\n"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn implausible_firmware_is_refused() {
    let dir = scratch("badfw");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "this is a text file, not a RISC-V program\n").unwrap();
    let r = firmware(&text);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stderr);
    assert!(r.stderr.contains("looks like text"), "{}", r.stderr);
    let zeros = dir.join("zeros.bin");
    std::fs::write(&zeros, [0u8; 4096]).unwrap();
    let r = firmware(&zeros);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stderr);
    assert!(
        r.stderr.contains("not a RISC-V instruction"),
        "{}",
        r.stderr
    );
    // An ELF linked above RAM names its segment.
    let src = dir.join("high.S");
    std::fs::write(&src, ".globl _start\n_start:\n    j _start\n").unwrap();
    let elf = dir.join("high.elf");
    gcc(&[
        "-nostdlib",
        "-static",
        "-Wl,-Ttext=0x100000000",
        "-o",
        elf.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let r = firmware(&elf);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stderr);
    assert!(
        r.stderr.contains("program header") && r.stderr.contains("outside RAM"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
