//! ISA conformance programs for the emulator.
//!
//! Every `tests/isa/NAME.S` is a small bare-metal program (macros in `tests/isa/common.h`, layout
//! in `tests/isa/link.ld`) that runs as the firmware of the emulated board in M-mode, checks its
//! own results and reports through the `sifive,test0` finisher: `0x5555` passes,
//! `(n << 16) | 0x3333` fails at check `n` (the numbered `CHECK n, ...` in the source; 4095 means
//! a trap nobody expected). The programs are assembled here, at test time, with Debian's RISC-V
//! cross compiler; a missing compiler fails the tests rather than skipping them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{run_guarded_isa, Outcome};
use vireo_machine::GuestExit;
use vireo_riscv::Isa;

const GCC: &str = "riscv64-linux-gnu-gcc";
const OBJDUMP: &str = "riscv64-linux-gnu-objdump";
/// Wall-clock limit for one program.
const GUARD: Duration = Duration::from_secs(20);

fn isa_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/isa")
}

fn missing_tool(tool: &str, e: std::io::Error) -> ! {
    panic!(
        "cannot run {tool} ({e}): the RISC-V ISA tests assemble their programs with Debian's \
         cross compiler; install it with `apt-get install gcc-riscv64-linux-gnu` \
         (the project's setup script does this)"
    )
}

/// A scratch directory for one program's build, removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vireo-isa-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create scratch directory");
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Assembles and links `tests/isa/NAME.S` into an ELF in `out`.
fn build(name: &str, out: &Path) -> PathBuf {
    let dir = isa_dir();
    let src = dir.join(format!("{name}.S"));
    let elf = out.join(format!("{name}.elf"));
    let res = Command::new(GCC)
        .args([
            "-march=rv64gc_zba_zbb_zbc_zbs_zicbom_zicboz_zicbop_zihintpause",
            "-mabi=lp64d",
            "-nostdlib",
            "-nostartfiles",
            "-static",
            "-mno-relax",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg("-T")
        .arg(dir.join("link.ld"))
        .arg("-I")
        .arg(&dir)
        .arg("-o")
        .arg(&elf)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| missing_tool(GCC, e));
    assert!(
        res.status.success(),
        "assembling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    elf
}

/// Builds and runs one program, asserting that it passes.
fn run_program(name: &str, cpus: u32) {
    run_program_isa(name, cpus, Isa::max());
}

/// Builds and runs one program on harts implementing `isa`.
fn run_program_isa(name: &str, cpus: u32, isa: Isa) {
    let scratch = Scratch::new(name);
    let elf = build(name, &scratch.0);
    check_run_isa(name, &elf, cpus, isa);
}

fn check_run(name: &str, elf: &Path, cpus: u32) {
    check_run_isa(name, elf, cpus, Isa::max())
}

fn check_run_isa(name: &str, elf: &Path, cpus: u32, isa: Isa) {
    let run = run_guarded_isa(elf, cpus, GUARD, isa);
    let console = run.console;
    match run.outcome {
        Outcome::Exited(Ok(GuestExit::PowerOff)) => {}
        Outcome::Exited(Ok(GuestExit::Failure(4095))) => {
            panic!("{name}: unexpected trap (see the console)\nconsole:\n{console}")
        }
        Outcome::Exited(Ok(GuestExit::Failure(n))) => panic!(
            "{name}: failed check {n} (CHECK {n} in tests/isa/{name}.S)\nconsole:\n{console}"
        ),
        Outcome::Exited(Ok(other)) => {
            panic!("{name}: guest exited with {other:?}\nconsole:\n{console}")
        }
        Outcome::Exited(Err(e)) => panic!("{name}: emulator error: {e}\nconsole:\n{console}"),
        Outcome::TimedOut => {
            panic!("{name}: did not finish within {GUARD:?} (hung or looping)\nconsole:\n{console}")
        }
    }
}

#[test]
fn alu() {
    run_program("alu", 1);
}

#[test]
fn branch() {
    run_program("branch", 1);
}

#[test]
fn mem() {
    run_program("mem", 1);
}

#[test]
fn muldiv() {
    run_program("muldiv", 1);
}

#[test]
fn atomic() {
    run_program("atomic", 1);
}

#[test]
fn compressed() {
    let scratch = Scratch::new("compressed");
    let elf = build("compressed", &scratch.0);
    // The point of the program is running 16-bit encodings: make sure the assembler produced
    // them (objdump names every compressed instruction c.* with -M no-aliases).
    let dis = Command::new(OBJDUMP)
        .args(["-d", "-M", "no-aliases"])
        .arg(&elf)
        .output()
        .unwrap_or_else(|e| missing_tool(OBJDUMP, e));
    assert!(dis.status.success(), "objdump failed");
    let dis = String::from_utf8_lossy(&dis.stdout);
    let found: std::collections::HashSet<&str> = dis
        .split_whitespace()
        .filter(|w| w.starts_with("c."))
        .collect();
    for want in [
        "c.addi16sp",
        "c.addi4spn",
        "c.lwsp",
        "c.swsp",
        "c.ldsp",
        "c.sdsp",
        "c.fldsp",
        "c.fsdsp",
        "c.lw",
        "c.sw",
        "c.ld",
        "c.sd",
        "c.fld",
        "c.fsd",
        "c.li",
        "c.lui",
        "c.addi",
        "c.addiw",
        "c.slli",
        "c.srli",
        "c.srai",
        "c.andi",
        "c.sub",
        "c.xor",
        "c.or",
        "c.and",
        "c.subw",
        "c.addw",
        "c.mv",
        "c.add",
        "c.j",
        "c.beqz",
        "c.bnez",
        "c.jr",
        "c.jalr",
    ] {
        assert!(
            found.contains(want),
            "compressed.S assembled without any {want}: {found:?}"
        );
    }
    check_run("compressed", &elf, 1);
}

#[test]
fn fp_arith() {
    run_program("fp_arith", 1);
}

#[test]
fn fp_misc() {
    run_program("fp_misc", 1);
}

#[test]
fn csr() {
    run_program("csr", 1);
}

#[test]
fn counters() {
    run_program("counters", 1);
}

#[test]
fn traps() {
    run_program("traps", 1);
}

#[test]
fn interrupts() {
    run_program("interrupts", 1);
}

#[test]
fn mmu_sv39() {
    run_program("mmu_sv39", 1);
}

#[test]
fn mmu_sv48() {
    run_program("mmu_sv48", 1);
}

#[test]
fn smc() {
    run_program("smc", 1);
}

#[test]
fn smp() {
    run_program("smp", 2);
}

#[test]
fn lrsc_smp() {
    run_program("lrsc_smp", 2);
}

#[test]
fn pmp() {
    run_program("pmp", 1);
}

#[test]
fn fp_edge() {
    run_program("fp_edge", 1);
}

#[test]
fn bitmanip() {
    run_program("bitmanip", 1);
}

#[test]
fn zfa() {
    run_program("zfa", 1);
}

#[test]
fn cbo() {
    run_program("cbo", 1);
}

#[test]
fn sstc() {
    run_program("sstc", 1);
}

#[test]
fn sysext() {
    run_program("sysext", 1);
}

#[test]
fn mmu_ext() {
    run_program("mmu_ext", 1);
}

/// The rv64gc model: no optional extension decodes or shows its CSRs.
#[test]
fn extensions_off() {
    run_program_isa("ext_off", 1, Isa::BASE);
}
