//! Micro-guests on the real /dev/kvm: machine code built at test time with `vireo_kvm::asm`
//! (each instruction's encoding is documented there). Every test fails, saying why, when KVM is
//! not usable here (`common::kvm`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vireo_devices::ConsoleOutput;
use vireo_kvm::asm::{Asm, Label, Mode};
use vireo_kvm::{
    ApStart, KvmError, KvmVm, MicroEntry, MicroGuest, VcpuError, VmState, EXIT_REGISTER_ADDR,
};
use vireo_machine::GuestExit;

const COM1: u16 = 0x3f8;
const LONG_BASE: u64 = 0x10_0000;
const REAL_BASE: u64 = 0x1_0000;
const LIMIT: Duration = Duration::from_secs(20);

mod common;
use common::kvm;

/// `mov ebx, EXIT; mov dword [rbx], value; jmp $`
fn exit_with(a: &mut Asm, value: u32) {
    a.mov_ebx(EXIT_REGISTER_ADDR as u32)
        .store32_at_rbx(value)
        .spin();
}

fn string(a: &mut Asm, s: &str) -> Label {
    let l = a.label();
    a.bind(l);
    a.bytes(s.as_bytes()).bytes(&[0]);
    l
}

fn long_guest(build: impl FnOnce(&mut Asm)) -> MicroGuest {
    let mut a = Asm::new(Mode::Long, LONG_BASE);
    build(&mut a);
    MicroGuest::new(
        a.finish().expect("assemble"),
        LONG_BASE,
        MicroEntry::Long { rip: LONG_BASE },
    )
}

fn real_guest(build: impl FnOnce(&mut Asm)) -> MicroGuest {
    // cs = 0x1000: segment base 0x10000, code at offset 0.
    let mut a = Asm::new(Mode::Real, 0);
    build(&mut a);
    MicroGuest::new(
        a.finish().expect("assemble"),
        REAL_BASE,
        MicroEntry::Real { cs: 0x1000, ip: 0 },
    )
}

fn run(g: &MicroGuest) -> (Result<GuestExit, KvmError>, String) {
    let out = ConsoleOutput::new();
    let mut vm = KvmVm::new_micro(g, out.clone()).expect("build VM");
    let r = vm.run_timeout(LIMIT);
    (r, String::from_utf8_lossy(&out.take()).into_owned())
}

#[test]
fn real_mode_prints_on_com1_and_resets_through_i8042() {
    let _kvm = kvm();
    let g = real_guest(|a| {
        let msg = a.label();
        a.print(COM1, msg);
        a.mov_al(0xfe).out_imm_al(0x64).hlt(); // i8042: pulse reset
        a.bind(msg);
        a.bytes(b"Hello from real mode\n\0");
    });
    let (r, out) = run(&g);
    assert_eq!(out, "Hello from real mode\n");
    assert_eq!(r.unwrap(), GuestExit::Reset);
}

#[test]
fn long_mode_prints_on_com1_and_powers_off() {
    let _kvm = kvm();
    let g = long_guest(|a| {
        let msg = a.label();
        a.print(COM1, msg);
        exit_with(a, 0x5555);
        a.bind(msg);
        a.bytes(b"Hello from long mode\n\0");
    });
    let (r, out) = run(&g);
    assert_eq!(out, "Hello from long mode\n");
    assert_eq!(r.unwrap(), GuestExit::PowerOff);
}

#[test]
fn exit_register_carries_the_status() {
    let _kvm = kvm();
    let g = long_guest(|a| exit_with(a, (42 << 16) | 0x3333));
    let (r, _) = run(&g);
    let exit = r.unwrap();
    assert_eq!(exit, GuestExit::Failure(42));
    assert_eq!(exit.status(), 42);
}

#[test]
fn isa_debug_exit_port() {
    let _kvm = kvm();
    let g = real_guest(|a| {
        a.mov_al(0x10).out_imm_al(0xf4).hlt();
    });
    let (r, _) = run(&g);
    assert_eq!(r.unwrap(), GuestExit::Failure((0x10 << 1) | 1));
}

#[test]
fn unassigned_pio_and_mmio_are_harmless() {
    let _kvm = kvm();
    let g = long_guest(|a| {
        let pio_bad = a.label();
        let mmio_bad = a.label();
        let ok = string(a, "ok\n");
        let start = a.label();
        // Skip over the string to the code.
        let _ = ok;
        a.bind(start);
        a.mov_dx(0x99).in_al_dx().cmp_al(0xff).jnz(pio_bad);
        a.mov_al(0x12).mov_dx(0x1234).out_dx_al();
        a.mov_ebx(0xd000_0000)
            .store32_at_rbx(0xdead_beef)
            .load32_from_rbx()
            .cmp_eax_imm8(0)
            .jnz(mmio_bad);
        a.print(COM1, ok);
        exit_with(a, 0x5555);
        a.bind(pio_bad);
        exit_with(a, (1 << 16) | 0x3333);
        a.bind(mmio_bad);
        exit_with(a, (2 << 16) | 0x3333);
    });
    // The string sits at the start of the image: enter after it.
    let mut g = g;
    g.entry = MicroEntry::Long { rip: LONG_BASE + 4 };
    let out = ConsoleOutput::new();
    let mut vm = KvmVm::new_micro(&g, out.clone()).unwrap();
    let ctl = vm.controller();
    let r = vm.run_timeout(LIMIT);
    assert_eq!(
        r.unwrap(),
        GuestExit::PowerOff,
        "1 = PIO read not 0xff, 2 = MMIO read not 0"
    );
    assert_eq!(out.take(), b"ok\n");
    let c = ctl.exit_counters();
    assert!(c.io >= 5, "{c:?}");
    assert!(c.mmio >= 3, "{c:?}");
    assert_eq!(ctl.state(), VmState::Exited);
}

/// Every vCPU prints the APIC id it reads from its local APIC (MMIO 0xfee00020, bits 31:24),
/// bumps a shared counter, and vCPU 0 powers off once all have.
fn smp_guest(cpus: u32) -> MicroGuest {
    let counter = (LONG_BASE + 0x800) as u32;
    let mut g = long_guest(|a| {
        let ap = a.label();
        let wait = a.label();
        a.mov_ebx(0xfee0_0020)
            .load32_from_rbx()
            .shr_eax(24)
            .add_al(b'0')
            .mov_dx(COM1)
            .out_dx_al();
        a.lock_inc_mem(counter).test_edi_edi().jnz(ap);
        a.bind(wait);
        a.pause().cmp_mem32_imm8(counter, cpus as i8).jnz(wait);
        exit_with(a, 0x5555);
        a.bind(ap);
        a.cli().hlt().jmp(ap);
        a.pad_to(0x804);
    });
    g.cpus = cpus;
    g
}

#[test]
fn four_vcpus_each_report_their_apic_id() {
    let _kvm = kvm();
    let (r, out) = run(&smp_guest(4));
    assert_eq!(r.unwrap(), GuestExit::PowerOff);
    let mut ids: Vec<char> = out.chars().collect();
    ids.sort();
    assert_eq!(ids, ['0', '1', '2', '3'], "console: {out:?}");
}

#[test]
fn init_sipi_starts_application_processors() {
    let _kvm = kvm();
    // BSP code at 0x10000 (long mode); the AP trampoline at 0x11000 (SIPI vector 0x11) in real
    // mode, with its counter at 0x11100.
    const TRAMPOLINE: u64 = 0x1_1000;
    let counter = (TRAMPOLINE + 0x100) as u32;
    let mut bsp = Asm::new(Mode::Long, REAL_BASE);
    let wait = bsp.label();
    // 'B' goes out before the start-up IPI: after it, an AP may print first (its vCPU thread
    // can run while the BSP's is preempted).
    bsp.mov_dx(COM1)
        .mov_al(b'B')
        .out_dx_al()
        .mov_ebx(0xfee0_0300)
        .store32_at_rbx(0x000c_4500) // ICR: INIT, level assert, all excluding self
        .store32_at_rbx(0x000c_4611); // ICR: start-up, vector 0x11, all excluding self
    bsp.bind(wait);
    bsp.pause().cmp_mem32_imm8(counter, 3).jnz(wait);
    exit_with(&mut bsp, 0x5555);
    let mut image = bsp.finish().unwrap();
    let mut ap = Asm::new(Mode::Real, 0);
    let halt = ap.label();
    ap.mov_ds_cs()
        .mov_dx(COM1)
        .mov_al(b'A')
        .out_dx_al()
        .lock_inc_mem(0x100);
    ap.bind(halt);
    ap.cli().hlt().jmp(halt);
    ap.pad_to(0x104);
    image.resize((TRAMPOLINE - REAL_BASE) as usize, 0);
    image.extend(ap.finish().unwrap());
    let mut g = MicroGuest::new(image, REAL_BASE, MicroEntry::Long { rip: REAL_BASE });
    g.cpus = 4;
    g.ap_start = ApStart::WaitForSipi;
    let out = ConsoleOutput::new();
    let mut vm = KvmVm::new_micro(&g, out.clone()).unwrap();
    // A passing run ends when the BSP powers off; the limit only bounds a failing one, so it
    // is the generous common one (a loaded host delays the AP threads).
    let r = vm.run_timeout(LIMIT);
    let text = String::from_utf8_lossy(&out.take()).into_owned();
    assert_eq!(
        r.unwrap_or_else(|e| panic!("INIT/SIPI did not start the APs: {e}; console {text:?}")),
        GuestExit::PowerOff
    );
    assert_eq!(text, "BAAA", "the BSP first, then each AP once");
}

#[test]
fn hlt_without_irqchip_is_reported_not_hung() {
    let _kvm = kvm();
    let mut g = real_guest(|a| {
        a.mov_dx(COM1).mov_al(b'z').out_dx_al().hlt();
    });
    g.irqchip = false;
    let t = Instant::now();
    let (r, out) = run(&g);
    assert_eq!(out, "z");
    let err = r.unwrap_err();
    assert!(matches!(err, KvmError::AllHalted(_)), "{err}");
    assert!(err.to_string().contains("rip="), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn halted_forever_with_interrupts_off_is_reported() {
    let _kvm = kvm();
    let mut g = long_guest(|a| {
        let again = a.label();
        a.mov_dx(COM1).mov_al(b'h').out_dx_al();
        a.bind(again);
        a.cli().hlt().jmp(again);
    });
    g.cpus = 2;
    let t = Instant::now();
    let (r, out) = run(&g);
    assert_eq!(out, "hh");
    let err = r.unwrap_err();
    assert!(matches!(err, KvmError::AllHalted(_)), "{err}");
    assert!(err.to_string().contains("vCPU 1: rip="), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn guest_exception_stops_with_a_register_dump() {
    let _kvm = kvm();
    // int3 with an empty IDT: a triple fault on a plain KVM host, an internal error on a
    // nested PVM host. Either way vireo stops with the registers, never hangs.
    let g = long_guest(|a| {
        a.int3().spin();
    });
    let (r, _) = run(&g);
    let err = r.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            KvmError::Vcpu(VcpuError::InternalError { .. } | VcpuError::Shutdown { .. })
        ),
        "{msg}"
    );
    for reg in [
        "rip=0x10000",
        "rsp=",
        "cr0=",
        "cr3=0x9000",
        "cr4=",
        "efer=",
        "rflags=",
        "cs=0x10",
        "ss=0x18",
    ] {
        assert!(msg.contains(reg), "{reg} missing from: {msg}");
    }
    println!("{msg}");
}

#[test]
fn exception_probe_answers() {
    let _kvm = kvm();
    let works = vireo_kvm::exceptions_work().expect("probe guest ran");
    println!("host KVM delivers guest exceptions: {works}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn pause_and_resume_take_effect_within_10ms() {
    let _kvm = kvm();
    // vCPU 0 loops on port I/O (an exit per iteration); vCPU 1 spins without exits.
    let mut g = long_guest(|a| {
        let spin = a.label();
        let again = a.label();
        a.test_edi_edi().jnz(spin);
        a.bind(again);
        a.out_imm_al(0x80).jmp(again);
        a.bind(spin);
        a.spin();
    });
    g.cpus = 2;
    let mut vm = KvmVm::new_micro(&g, ConsoleOutput::new()).unwrap();
    let ctl = vm.controller();
    assert_eq!(ctl.state(), VmState::Created);
    let result = Arc::new(Mutex::new(None));
    let r2 = result.clone();
    let runner = std::thread::spawn(move || {
        let r = vm.run_timeout(Duration::from_secs(60));
        *r2.lock().unwrap() = Some(r);
    });
    let t = Instant::now();
    while ctl.exit_counters().io < 1000 {
        assert!(t.elapsed() < LIMIT, "guest never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        ctl.pause().unwrap();
        pauses.push(t.elapsed());
        assert_eq!(ctl.state(), VmState::Paused);
        let frozen = ctl.exit_counters().io;
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(ctl.exit_counters().io, frozen, "a paused guest made exits");
        // resume() returns when every vCPU thread has acknowledged and is re-entering
        // KVM_RUN: that is when it takes effect. (Timing the guest's next exit from this
        // thread would measure this thread's scheduling next to two spinning vCPUs instead.)
        let t = Instant::now();
        ctl.resume().unwrap();
        resumes.push(t.elapsed());
        while ctl.exit_counters().io == frozen {
            assert!(t.elapsed() < Duration::from_secs(5), "guest did not resume");
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let (mp, mr) = (median(pauses.clone()), median(resumes.clone()));
    println!(
        "pause median {mp:?} (max {:?}), resume median {mr:?} (max {:?})",
        pauses.iter().max().unwrap(),
        resumes.iter().max().unwrap()
    );
    assert!(mp <= Duration::from_millis(10), "pause median {mp:?}");
    assert!(mr <= Duration::from_millis(10), "resume median {mr:?}");
    // Pausing twice is a no-op; resuming a running VM too.
    ctl.resume().unwrap();
    ctl.stop();
    runner.join().unwrap();
    let r = result.lock().unwrap().take().unwrap();
    assert!(matches!(r, Err(KvmError::Stopped)), "{r:?}");
    assert_eq!(ctl.state(), VmState::Exited);
    assert!(matches!(ctl.pause(), Err(KvmError::BadState { .. })));
    let per = ctl.exit_counters_per_vcpu();
    assert!(per[0].io > 1000 && per[1].io == 0, "{per:?}");
}

#[test]
fn run_twice_is_refused() {
    let _kvm = kvm();
    let g = long_guest(|a| exit_with(a, 0x5555));
    let mut vm = KvmVm::new_micro(&g, ConsoleOutput::new()).unwrap();
    assert_eq!(vm.run().unwrap(), GuestExit::PowerOff);
    assert!(matches!(vm.run(), Err(KvmError::AlreadyRan)));
}

#[test]
fn bad_machine_configs_are_refused() {
    let _kvm = kvm();
    let g = long_guest(|a| exit_with(a, 0x5555));
    for (cpus, memory) in [(0, 16 << 20), (1000, 16 << 20), (1, 4095), (1, 1 << 20)] {
        let mut bad = g.clone();
        bad.cpus = cpus;
        bad.memory = memory;
        let err = KvmVm::new_micro(&bad, ConsoleOutput::new()).err().unwrap();
        assert!(matches!(err, KvmError::Config(_)), "{err}");
    }
}

/// Runs `g` for `limit` on another thread and fails (instead of hanging) if run() does not
/// return within `limit` + 5 s.
fn run_with_watchdog(g: &MicroGuest, limit: Duration) -> Result<GuestExit, KvmError> {
    let mut vm = KvmVm::new_micro(g, ConsoleOutput::new()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vm.run_timeout(limit));
    });
    rx.recv_timeout(limit + Duration::from_secs(5))
        .expect("run() hung past its time limit")
}

#[test]
fn timeout_ends_every_vcpu_thread() {
    let _kvm = kvm();
    // APs that never get a SIPI, and a BSP that never exits.
    let mut spinning = long_guest(|a| {
        a.spin();
    });
    spinning.cpus = 3;
    spinning.ap_start = ApStart::WaitForSipi;
    let r = run_with_watchdog(&spinning, Duration::from_millis(300));
    assert!(matches!(r, Err(KvmError::Timeout(_))), "{r:?}");
    // Every vCPU waiting with interrupts enabled (a legitimate idle guest): the run loop
    // probes them repeatedly and must still stop them all when time is up.
    let mut idle = long_guest(|a| {
        let again = a.label();
        a.bind(again);
        a.sti().hlt().jmp(again);
    });
    idle.cpus = 3;
    for _ in 0..5 {
        let r = run_with_watchdog(&idle, Duration::from_millis(350));
        assert!(matches!(r, Err(KvmError::Timeout(_))), "{r:?}");
    }
}
