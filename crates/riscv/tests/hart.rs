//! Hart-level tests that need no cross compiler: small programs assembled by hand (each word is
//! commented with its assembly), written to a temporary file and loaded as raw firmware at
//! 0x80000000, where every hart starts in M-mode with a0 = mhartid. They report through the
//! `sifive,test0` finisher at 0x100000 (0x5555 pass, 0x13333 fail) and run under a
//! wall-clock guard.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{run_guarded, Outcome, Run};
use vireo_machine::GuestExit;

/// Writes `words` as a little-endian raw image to a fresh temporary file.
struct Image(PathBuf);

impl Image {
    fn new(name: &str, words: &[u32]) -> Self {
        let path =
            std::env::temp_dir().join(format!("vireo-hart-{}-{name}.bin", std::process::id()));
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(&path, bytes).expect("write firmware image");
        Image(path)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(name: &str, words: &[u32], cpus: u32, guard: Duration) -> Run {
    let img = Image::new(name, words);
    run_guarded(&img.0, cpus, guard)
}

fn assert_passes(name: &str, r: Run) {
    match r.outcome {
        Outcome::Exited(Ok(GuestExit::PowerOff)) => {}
        other => panic!("{name}: {other:?}\nconsole:\n{}", r.console),
    }
}

/// The finisher's pass/fail tail shared by the programs below, at word offsets given by each.
const PASS_FAIL: [u32; 8] = [
    0x0000_53b7, // lui   t2, 0x5
    0x5553_8393, // addi  t2, t2, 0x555         t2 = 0x5555
    0x0072_a023, // sw    t2, 0(t0)             pass
    0x0000_006f, // j     .
    0x0001_33b7, // fail: lui t2, 0x13
    0x3333_8393, // addi  t2, t2, 0x333         t2 = 0x13333 = (1 << 16) | 0x3333
    0x0072_a023, // sw    t2, 0(t0)             fail at check 1
    0x0000_006f, // j     .
];

/// A loop of 2^20 iterations (several million instructions, so many scheduling slices) that
/// only ends through the finisher: sum = 2^20 + (2^20 - 1) + ... + 1 = 2^39 + 2^19.
#[test]
fn arithmetic_loop_ends_through_the_finisher() {
    let mut p = vec![
        0x0010_02b7, // 0x00  lui   t0, 0x100       t0 = 0x100000, the finisher
        0x0000_0513, // 0x04  addi  a0, zero, 0     sum
        0x0010_05b7, // 0x08  lui   a1, 0x100       n = 0x100000
        0x00b5_0533, // 0x0c  loop: add a0, a0, a1
        0xfff5_8593, // 0x10  addi  a1, a1, -1
        0xfe05_9ce3, // 0x14  bne   a1, zero, loop (-8)
        0x0010_0313, // 0x18  addi  t1, zero, 1
        0x0273_1313, // 0x1c  slli  t1, t1, 39
        0x0008_03b7, // 0x20  lui   t2, 0x80        2^19
        0x0073_6333, // 0x24  or    t1, t1, t2      expected 2^39 + 2^19
        0x0065_1a63, // 0x28  bne   a0, t1, fail (+20 = 0x3c)
    ];
    p.extend_from_slice(&PASS_FAIL); // 0x2c pass, 0x3c fail
    let r = run("loop", &p, 1, Duration::from_secs(20));
    let n = r.instructions;
    assert_passes("arithmetic loop", r);
    // 3 instructions per iteration.
    assert!(n.unwrap_or(0) > 3 << 20, "only {n:?} instructions retired");
}

/// An illegal instruction with no trap handler (mtvec = 0): the hart traps to address 0, where
/// there is no memory, so every fetch there raises an instruction access fault that traps to 0
/// again. That is what the hardware would do; the emulator must keep running (not wedge or
/// crash) and stop promptly when the host raises the exit signal. An emulator that reports the
/// runaway guest by itself (an error or an exit) is fine too.
#[test]
fn illegal_instruction_without_handler_does_not_hang() {
    let p = [
        0x0000_0000, // the all-zero parcel: illegal
    ];
    let r = run("nohandler", &p, 1, Duration::from_millis(500));
    match r.outcome {
        Outcome::Exited(Ok(GuestExit::PowerOff)) => panic!("a trapping guest cannot pass"),
        Outcome::Exited(_) => {} // detected and reported by the emulator: defined
        Outcome::TimedOut => {
            let latency = r
                .stop_latency
                .expect("the trap loop ignored the exit signal for 5 s: the emulator hangs");
            assert!(latency < Duration::from_secs(2), "took {latency:?} to stop");
            // It was looping through traps, not stuck: each trap entry counts as a step.
            let n = r.instructions.unwrap_or(0);
            assert!(
                n > 1000,
                "only {n} steps in 500 ms: the hart was not running"
            );
        }
    }
    assert!(r.console.is_empty(), "console: {}", r.console);
}

/// Loads and stores to physical addresses where nothing lives raise access faults (cause 5 for
/// loads, 7 for stores and AMOs, mtval = the address) rather than crashing the emulator.
#[test]
fn unassigned_physical_addresses_raise_access_faults() {
    let mut p = vec![
        0x0000_0297, // 0x00  auipc t0, 0
        0x09c2_8293, // 0x04  addi  t0, t0, 0x9c    handler
        0x3052_9073, // 0x08  csrw  mtvec, t0
        0x0010_02b7, // 0x0c  lui   t0, 0x100       finisher
        0x3000_04b7, // 0x10  lui   s1, 0x30000     s1 = 0x30000000: nothing there
        0xfff0_0913, // 0x14  addi  s2, zero, -1
        0x0004_a503, // 0x18  lw    a0, 0(s1)
        0x0050_0313, // 0x1c  addi  t1, zero, 5     load access fault
        0x0669_1663, // 0x20  bne   s2, t1, fail (0x8c)
        0x0699_9463, // 0x24  bne   s3, s1, fail    mtval = 0x30000000
        0xfff0_0913, // 0x28  addi  s2, zero, -1
        0x00a4_a423, // 0x2c  sw    a0, 8(s1)
        0x0070_0313, // 0x30  addi  t1, zero, 7     store access fault
        0x0469_1c63, // 0x34  bne   s2, t1, fail
        0x0084_8393, // 0x38  addi  t2, s1, 8
        0x0479_9863, // 0x3c  bne   s3, t2, fail    mtval = 0x30000008
        0xfff0_0913, // 0x40  addi  s2, zero, -1
        0xff80_3503, // 0x44  ld    a0, -8(zero)    0xffff_ffff_ffff_fff8: beyond 56-bit PAs
        0x0050_0313, // 0x48  addi  t1, zero, 5
        0x0469_1063, // 0x4c  bne   s2, t1, fail
        0x1000_0a37, // 0x50  lui   s4, 0x10000     the UART's 0x100-byte window ...
        0xfff0_0913, // 0x54  addi  s2, zero, -1
        0x100a_4503, // 0x58  lbu   a0, 0x100(s4)   ... and just past it
        0x0050_0313, // 0x5c  addi  t1, zero, 5
        0x0269_1663, // 0x60  bne   s2, t1, fail
        0x100a_0393, // 0x64  addi  t2, s4, 0x100
        0x0279_9263, // 0x68  bne   s3, t2, fail
        0xfff0_0913, // 0x6c  addi  s2, zero, -1
        0x0064_a52f, // 0x70  amoadd.w a0, t1, (s1)
        0x0070_0313, // 0x74  addi  t1, zero, 7     an AMO faults as a store
        0x0069_1a63, // 0x78  bne   s2, t1, fail
    ];
    p.extend_from_slice(&PASS_FAIL); // 0x7c pass, 0x8c fail
    p.extend_from_slice(&[
        0x3420_2973, // 0x9c  handler: csrr s2, mcause
        0x3430_29f3, // 0xa0  csrr  s3, mtval
        0x3410_2e73, // 0xa4  csrr  t3, mepc
        0x004e_0e13, // 0xa8  addi  t3, t3, 4       skip the faulting instruction
        0x341e_1073, // 0xac  csrw  mepc, t3
        0x3020_0073, // 0xb0  mret
    ]);
    assert_eq!(p.len() * 4, 0xb4);
    let r = run("unassigned", &p, 1, Duration::from_secs(20));
    assert_passes("unassigned physical addresses", r);
}

/// Two harts: hart 0 writes a payload and raises a flag with amoswap; hart 1 spins on the flag
/// with amoor, reads the payload and answers payload + 1, which hart 0 waits for. Both start at
/// 0x80000000 in M-mode with a0 = mhartid. The data block is at 0x80000100:
/// +0 flag, +4 payload, +8 answer.
#[test]
fn two_harts_handshake_through_an_amo_flag() {
    let mut p = vec![
        0x0405_1e63, // 0x00  bne   a0, zero, hart1 (0x5c)
        0x0000_0497, // 0x04  auipc s1, 0
        0x0fc4_8493, // 0x08  addi  s1, s1, 0xfc    s1 = 0x80000100
        0x0010_02b7, // 0x0c  lui   t0, 0x100       finisher
        0x02a0_0313, // 0x10  addi  t1, zero, 42
        0x0064_a223, // 0x14  sw    t1, 4(s1)       payload
        0x0330_000f, // 0x18  fence rw, rw
        0x0010_0313, // 0x1c  addi  t1, zero, 1
        0x0a64_a02f, // 0x20  amoswap.w.rl zero, t1, (s1)   flag = 1
        0x0084_a303, // 0x24  wait: lw t1, 8(s1)    answer
        0xfe03_0ee3, // 0x28  beq   t1, zero, wait
        0x02b0_0393, // 0x2c  addi  t2, zero, 43
        0x0073_1e63, // 0x30  bne   t1, t2, fail (0x4c)
        0xf140_2373, // 0x34  csrr  t1, mhartid
        0x0003_1a63, // 0x38  bne   t1, zero, fail
    ];
    p.extend_from_slice(&PASS_FAIL); // 0x3c pass, 0x4c fail
    p.extend_from_slice(&[
        0x0000_0497, // 0x5c  hart1: auipc s1, 0
        0x0a44_8493, // 0x60  addi  s1, s1, 0xa4    s1 = 0x80000100
        0xf140_2373, // 0x64  csrr  t1, mhartid
        0x02a3_1063, // 0x68  bne   t1, a0, bad (0x88)   a0 must be the hart id
        0x4404_a32f, // 0x6c  spin: amoor.w.aq t1, zero, (s1)
        0xfe03_0ee3, // 0x70  beq   t1, zero, spin
        0x0044_a303, // 0x74  lw    t1, 4(s1)       payload
        0x0013_0313, // 0x78  addi  t1, t1, 1
        0x0084_8913, // 0x7c  addi  s2, s1, 8
        0x0869_202f, // 0x80  amoswap.w zero, t1, (s2)  answer
        0x0000_006f, // 0x84  halt: j .
        0x0010_02b7, // 0x88  bad: lui t0, 0x100
        0x0002_33b7, // 0x8c  lui   t2, 0x23
        0x3333_8393, // 0x90  addi  t2, t2, 0x333   (2 << 16) | 0x3333: fail at check 2
        0x0072_a023, // 0x94  sw    t2, 0(t0)
        0xfedf_f06f, // 0x98  j     halt
    ]);
    assert_eq!(p.len() * 4, 0x9c);
    p.resize(0x100 / 4 + 4, 0); // the data block, zeroed
    let r = run("twoharts", &p, 2, Duration::from_secs(20));
    assert_passes("two harts", r);
}
