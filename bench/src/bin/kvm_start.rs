//! kvm accelerator start-up: VMM cold start → first guest serial byte → guest exit, and the
//! VMM's resident memory beyond guest RAM, for a micro-guest (1 vCPU, 128 MiB) that prints a
//! line on COM1 and powers off through the exit register.
//!
//! Two measurements:
//! - cold start: this binary re-executes itself with `--child` (≥ 10 times); the parent takes
//!   CLOCK_MONOTONIC before `spawn`, the child reports the same clock at the guest's first COM1
//!   byte and at the guest's exit, plus its own VmRSS before building the VM and after the run
//!   and the guest RAM pages that are resident (mincore), whose difference is the VMM overhead;
//! - in-process: VM creation and run timed inside one process, repeated.
//!
//! Usage: `cargo run --release -p vireo-bench --bin kvm_start [-- RUNS]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_devices::ConsoleOutput;
use vireo_kvm::asm::{Asm, Mode};
use vireo_kvm::{KvmVm, MicroEntry, MicroGuest, EXIT_REGISTER_ADDR};
use vireo_machine::GuestExit;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

const BASE: u64 = 0x10_0000;
const GUEST_RAM: u64 = 128 << 20;
const TARGET_FIRST_BYTE: Duration = Duration::from_millis(10);
const TARGET_OVERHEAD_KIB: u64 = 2048;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC nanoseconds at an earlier `Instant` (both read the same clock on Linux).
fn mono_at(then: Instant) -> u64 {
    mono_ns() - then.elapsed().as_nanos() as u64
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn guest() -> MicroGuest {
    let mut a = Asm::new(Mode::Long, BASE);
    let msg = a.label();
    a.print(0x3f8, msg)
        .mov_ebx(EXIT_REGISTER_ADDR as u32)
        .store32_at_rbx(0x5555)
        .spin();
    a.bind(msg);
    a.bytes(b"vireo micro-guest up\n\0");
    let mut g = MicroGuest::new(
        a.finish().expect("assemble"),
        BASE,
        MicroEntry::Long { rip: BASE },
    );
    g.memory = GUEST_RAM;
    g
}

/// KiB of guest RAM the host has resident.
fn guest_resident_kib(vm: &KvmVm) -> u64 {
    let page = 4096usize;
    let mut pages = 0u64;
    for region in vm.guest_memory().memory().iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `host..host+len` is the region's live mapping (page-aligned by mmap) and
        // `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            pages += vec.iter().filter(|b| *b & 1 == 1).count() as u64;
        }
    }
    pages * 4
}

fn child() {
    let rss_before = status_kib("VmRSS:");
    let out = ConsoleOutput::new();
    let mut vm = KvmVm::new_micro(&guest(), out.clone()).expect("build VM");
    let ctl = vm.controller();
    let exit = vm.run().expect("run");
    let exited = mono_ns();
    assert_eq!(exit, GuestExit::PowerOff);
    assert_eq!(out.take(), b"vireo micro-guest up\n");
    let first = ctl.first_output_at().map(mono_at).unwrap_or(0);
    let rss_after = status_kib("VmRSS:");
    let resident = guest_resident_kib(&vm);
    println!(
        "first_byte_ns={first} exit_ns={exited} rss_before_kib={rss_before} rss_after_kib={rss_after} guest_resident_kib={resident} hwm_kib={}",
        status_kib("VmHWM:")
    );
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

fn median<T: Ord + Copy>(v: &mut [T]) -> T {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child();
        return;
    }
    if let Err(e) = KvmVm::probe() {
        println!("kvm_start: skipped: {e}");
        return;
    }
    let runs: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(15)
        .max(10);
    let exe = std::env::current_exe().expect("own path");

    let (mut first, mut exit, mut wall, mut overhead, mut hwm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = mono_ns();
        let start = Instant::now();
        let o = Command::new(&exe)
            .arg("--child")
            .stderr(Stdio::inherit())
            .output()
            .expect("spawn child");
        wall.push(start.elapsed());
        let line = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "child failed: {line}");
        first.push(Duration::from_nanos(field(&line, "first_byte_ns") - t0));
        exit.push(Duration::from_nanos(field(&line, "exit_ns") - t0));
        let grown = field(&line, "rss_after_kib").saturating_sub(field(&line, "rss_before_kib"));
        overhead.push(grown.saturating_sub(field(&line, "guest_resident_kib")));
        hwm.push(field(&line, "hwm_kib"));
    }

    let (mut new_t, mut first_in, mut run_t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let mut vm = KvmVm::new_micro(&guest(), ConsoleOutput::new()).expect("build VM");
        let built = t.elapsed();
        let ctl = vm.controller();
        let r = Instant::now();
        assert_eq!(vm.run().expect("run"), GuestExit::PowerOff);
        run_t.push(r.elapsed());
        new_t.push(built);
        first_in.push(ctl.first_output_at().map_or(Duration::ZERO, |f| f - t));
    }

    let mf = median(&mut first);
    let mo = median(&mut overhead);
    println!(
        "kvm_start: micro-guest, 1 vCPU, {} MiB guest RAM, {runs} runs each",
        GUEST_RAM >> 20
    );
    println!("cold start (child process spawned per run; parent clock before spawn):");
    println!(
        "  spawn -> first serial byte  median {}  (min {}, max {})  target <= {}: {}",
        ms(mf),
        ms(*first.iter().min().unwrap()),
        ms(*first.iter().max().unwrap()),
        ms(TARGET_FIRST_BYTE),
        if mf <= TARGET_FIRST_BYTE {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  spawn -> guest exit        median {}",
        ms(median(&mut exit))
    );
    println!(
        "  spawn -> child reaped      median {}",
        ms(median(&mut wall))
    );
    println!(
        "  VMM RSS beyond resident guest RAM  median {mo} KiB (max {} KiB)  target <= {TARGET_OVERHEAD_KIB} KiB: {}",
        overhead.iter().max().unwrap(),
        if mo <= TARGET_OVERHEAD_KIB { "met" } else { "MISSED" }
    );
    println!(
        "  child peak RSS (whole process) median {} KiB",
        median(&mut hwm)
    );
    println!("in-process (one process, VM built and run {runs} times):");
    println!(
        "  KvmVm::new_micro           median {}",
        ms(median(&mut new_t))
    );
    println!(
        "  new -> first serial byte   median {}",
        ms(median(&mut first_in))
    );
    println!(
        "  run() to guest exit        median {}",
        ms(median(&mut run_t))
    );
}
