//! Save and restore of KVM state on the real /dev/kvm, with a micro-guest that counts: it
//! increments a counter in RAM and writes its low byte to COM1, for ever, with no interrupts
//! and no exceptions (so it runs on this host's nested KVM too). Every test fails, saying why,
//! when KVM is not usable here (`common::kvm`).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vireo_devices::ConsoleOutput;
use vireo_kvm::asm::{Asm, Mode};
use vireo_kvm::state::StateError;
use vireo_kvm::{layout, KvmError, KvmState, KvmVm, MicroEntry, MicroGuest, VmState};
use vireo_machine::{BootConfig, GuestExit, GuestRam};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

mod common;
use common::kvm;

const COM1: u16 = 0x3f8;
const BASE: u64 = 0x10_0000;
/// The counter sits on its own page, two pages above the code.
const COUNTER: u64 = BASE + 0x2000;
const LIMIT: Duration = Duration::from_secs(20);

/// `again: lock inc dword [COUNTER]; mov ebx, COUNTER; mov eax, [rbx]; mov dx, COM1;
/// out dx, al; jmp again`
fn counting_guest(cpus: u32) -> MicroGuest {
    let mut a = Asm::new(Mode::Long, BASE);
    let again = a.label();
    a.bind(again);
    a.lock_inc_mem(COUNTER as u32)
        .mov_ebx(COUNTER as u32)
        .load32_from_rbx()
        .mov_dx(COM1)
        .out_dx_al()
        .jmp(again);
    a.pad_to((COUNTER - BASE) as usize + 4);
    let mut g = MicroGuest::new(a.finish().unwrap(), BASE, MicroEntry::Long { rip: BASE });
    g.cpus = cpus;
    g
}

type Runner = JoinHandle<(KvmVm, Result<GuestExit, KvmError>)>;

/// Runs `vm` on another thread (run() blocks), handing it back when run() returns.
fn start(mut vm: KvmVm) -> Runner {
    std::thread::spawn(move || {
        let r = vm.run_timeout(Duration::from_secs(60));
        (vm, r)
    })
}

/// Collects console output until there are at least `n` bytes.
fn output_until(out: &ConsoleOutput, seen: &mut Vec<u8>, n: usize) {
    let t = Instant::now();
    while seen.len() < n {
        assert!(t.elapsed() < LIMIT, "guest wrote only {} bytes", seen.len());
        seen.extend(out.take());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn stop(vm: Runner, ctl: &vireo_kvm::VmController) -> KvmVm {
    ctl.stop();
    let (vm, r) = vm.join().unwrap();
    assert!(matches!(r, Err(KvmError::Stopped)), "{r:?}");
    vm
}

/// Each RAM region's base and bytes.
fn copy_ram(mem: &vireo_machine::GuestMemoryMmap) -> Vec<(u64, Vec<u8>)> {
    mem.iter()
        .map(|r| {
            let mut bytes = vec![0u8; r.len() as usize];
            mem.read_slice(&mut bytes, r.start_addr()).unwrap();
            (r.start_addr().0, bytes)
        })
        .collect()
}

fn ram_from(copy: &[(u64, Vec<u8>)], memory: u64) -> GuestRam {
    let ram = GuestRam::new(&layout::ram_ranges(memory)).unwrap();
    for (base, bytes) in copy {
        ram.write(*base, bytes).unwrap();
    }
    ram
}

/// Runs the counting guest, pauses it and saves its state and RAM.
fn run_and_save(g: &MicroGuest) -> (KvmState, Vec<(u64, Vec<u8>)>, u8) {
    let out = ConsoleOutput::new();
    let vm = KvmVm::new_micro(g, out.clone()).unwrap();
    let ctl = vm.controller();
    let runner = start(vm);
    let mut seen = Vec::new();
    output_until(&out, &mut seen, 200);
    ctl.pause().unwrap();
    seen.extend(out.take());
    let last = *seen.last().unwrap();
    for w in seen.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "the guest counts by one");
    }
    let state = ctl.save_state().unwrap();
    let ram = copy_ram(ctl.guest_memory());
    let vm = stop(runner, &ctl);
    drop(vm);
    (state, ram, last)
}

#[test]
fn restored_guest_continues_counting_where_it_stopped() {
    let _kvm = kvm();
    let g = counting_guest(1);
    let (state, ram, last) = run_and_save(&g);
    assert_eq!(state.vcpus.len(), 1);
    let counter = {
        let (base, bytes) = &ram[0];
        let off = (COUNTER - base) as usize;
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    };
    // Paused between the increment and the `out`, the counter is one ahead of the output.
    assert!(
        counter as u8 == last || counter as u8 == last.wrapping_add(1),
        "counter {counter} in RAM, last byte out {last}"
    );
    let rip = state.vcpus[0].regs.rip;
    assert!(
        (BASE..BASE + 0x40).contains(&rip),
        "rip {rip:#x} in the loop"
    );
    println!(
        "saved: rip={rip:#x}, {} MSRs ({} refused: {:x?}), fpu {}",
        state.vcpus[0].msrs.len(),
        state.vcpus[0].msrs_skipped.len(),
        state.vcpus[0].msrs_skipped,
        match &state.vcpus[0].fpu {
            vireo_kvm::state::FpuState::Xsave(w) => format!("XSAVE of {} bytes", w.len() * 4),
            vireo_kvm::state::FpuState::Fpu(_) => "legacy FPU".into(),
        }
    );

    // A new VM on a copy of the RAM, started paused.
    let out = ConsoleOutput::new();
    let vm = KvmVm::restore_micro(
        &g,
        out.clone(),
        Vec::new(),
        ram_from(&ram, g.memory),
        &state,
        None,
    )
    .unwrap();
    let ctl = vm.controller();
    ctl.pause().unwrap();
    assert_eq!(ctl.state(), VmState::Paused);
    // Right after restore the vCPU holds exactly the saved registers.
    let now = ctl.save_state().unwrap();
    let (a, b) = (&state.vcpus[0], &now.vcpus[0]);
    assert_eq!(b.regs, a.regs);
    assert_eq!(b.sregs, a.sregs);
    assert_eq!(b.mp_state, a.mp_state);
    assert_eq!(b.fpu, a.fpu);
    assert_eq!(b.xcrs, a.xcrs);
    assert_eq!(b.debug_regs, a.debug_regs);
    assert_eq!(b.events, a.events);
    let indices = |s: &vireo_kvm::VcpuState| s.msrs.iter().map(|m| m.index).collect::<Vec<_>>();
    assert_eq!(indices(b), indices(a));
    assert_eq!(now.vm.pc, state.vm.pc);
    assert_eq!(now.vm.irqchip.is_some(), state.vm.irqchip.is_some());
    // The guest clock continues: not before the saved value.
    assert!(now.vm.clock.clock >= state.vm.clock.clock);

    let runner = start(vm);
    std::thread::sleep(Duration::from_millis(20));
    assert!(out.is_empty(), "a VM started paused ran");
    ctl.resume().unwrap();
    let mut seen = Vec::new();
    output_until(&out, &mut seen, 100);
    stop(runner, &ctl);
    assert_eq!(
        seen[0],
        last.wrapping_add(1),
        "the restored guest went on from {last}, not from the start"
    );
    for w in seen.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1));
    }
}

#[test]
fn state_survives_serialization_and_restores_two_vcpus() {
    let _kvm = kvm();
    // Both vCPUs count on the same counter; each byte out is still a value it reached.
    let g = counting_guest(2);
    let out = ConsoleOutput::new();
    let vm = KvmVm::new_micro(&g, out.clone()).unwrap();
    let ctl = vm.controller();
    let runner = start(vm);
    output_until(&out, &mut Vec::new(), 200);
    ctl.pause().unwrap();
    let state = ctl.save_state().unwrap();
    let ram = copy_ram(ctl.guest_memory());
    stop(runner, &ctl);
    assert_eq!(state.vcpus.len(), 2);
    let json = serde_json::to_vec(&state).unwrap();
    let state: KvmState = serde_json::from_slice(&json).unwrap();

    let out = ConsoleOutput::new();
    let vm = KvmVm::restore_micro(
        &g,
        out.clone(),
        Vec::new(),
        ram_from(&ram, g.memory),
        &state,
        None,
    )
    .unwrap();
    let ctl = vm.controller();
    let runner = start(vm);
    let mut seen = Vec::new();
    output_until(&out, &mut seen, 100);
    ctl.pause().unwrap();
    let counter: u32 = ctl.guest_memory().read_obj(GuestAddress(COUNTER)).unwrap();
    stop(runner, &ctl);
    let saved: u32 = {
        let (base, bytes) = &ram[0];
        let off = (COUNTER - base) as usize;
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    };
    assert!(
        counter > saved && counter - saved >= seen.len() as u32,
        "the counter went on from {saved} to {counter} ({} bytes out)",
        seen.len()
    );
}

#[test]
fn saving_a_running_vm_is_refused() {
    let _kvm = kvm();
    let g = counting_guest(1);
    let out = ConsoleOutput::new();
    let vm = KvmVm::new_micro(&g, out.clone()).unwrap();
    let ctl = vm.controller();
    let created = ctl.save_state().unwrap_err();
    assert!(
        matches!(created, KvmError::NotPaused(VmState::Created)),
        "{created}"
    );
    let runner = start(vm);
    output_until(&out, &mut Vec::new(), 10);
    let err = ctl.save_state().unwrap_err();
    assert!(
        matches!(err, KvmError::NotPaused(VmState::Running)),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("Running") && msg.contains("pause it first"),
        "{msg}"
    );
    stop(runner, &ctl);
    let exited = ctl.save_state().unwrap_err();
    assert!(
        matches!(exited, KvmError::NotPaused(VmState::Exited)),
        "{exited}"
    );
}

#[test]
fn restore_with_another_vcpu_count_is_refused() {
    let _kvm = kvm();
    let g = counting_guest(1);
    let (state, ram, _) = run_and_save(&g);
    let two = counting_guest(2);
    let err = KvmVm::restore_micro(
        &two,
        ConsoleOutput::new(),
        Vec::new(),
        ram_from(&ram, g.memory),
        &state,
        None,
    )
    .err()
    .expect("a 1-vCPU state restored into a 2-vCPU VM");
    assert!(
        matches!(err, KvmError::State(StateError::Mismatch(_))),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("1 vCPUs and this VM 2"), "{msg}");

    // RAM of another size is refused too.
    let err = KvmVm::restore_micro(
        &g,
        ConsoleOutput::new(),
        Vec::new(),
        GuestRam::new(&layout::ram_ranges(32 << 20)).unwrap(),
        &state,
        None,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("guest RAM regions"), "{err}");

    // And a VM without the irqchip cannot take a state that has one.
    let mut bare = g.clone();
    bare.irqchip = false;
    let err = KvmVm::restore_micro(
        &bare,
        ConsoleOutput::new(),
        Vec::new(),
        ram_from(&ram, g.memory),
        &state,
        None,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("irqchip"), "{err}");
}

/// Dirty bitmaps as sorted guest-physical page addresses.
fn dirty(bitmaps: &[(u64, Vec<u64>)]) -> Vec<u64> {
    let mut pages = Vec::new();
    for (base, words) in bitmaps {
        for (w, &bits) in words.iter().enumerate() {
            for b in 0..64 {
                if bits & (1 << b) != 0 {
                    pages.push(base + ((w as u64 * 64 + b) << 12));
                }
            }
        }
    }
    pages
}

#[test]
fn dirty_log_reports_the_page_the_guest_wrote() {
    let _kvm = kvm();
    let g = counting_guest(1);
    let out = ConsoleOutput::new();
    let vm = KvmVm::new_micro(&g, out.clone()).unwrap();
    let ctl = vm.controller();
    assert!(matches!(ctl.dirty_pages(), Err(KvmError::DirtyLogOff)));
    ctl.enable_dirty_log().unwrap();
    let runner = start(vm);
    output_until(&out, &mut Vec::new(), 50);
    ctl.pause().unwrap();
    // The first read clears what came before (it may hold more than the counter).
    let first = dirty(&ctl.dirty_pages().unwrap());
    assert!(first.contains(&COUNTER), "{first:x?}");
    assert!(
        dirty(&ctl.dirty_pages().unwrap()).is_empty(),
        "reading clears"
    );
    ctl.resume().unwrap();
    output_until(&out, &mut Vec::new(), 50);
    ctl.pause().unwrap();
    let pages = dirty(&ctl.dirty_pages().unwrap());
    stop(runner, &ctl);
    assert_eq!(pages, vec![COUNTER], "only the counter's page was written");
}

#[test]
fn a_kernel_booted_from_a_boot_config_is_restored_with_its_waiting_ap() {
    let _kvm = kvm();
    // A note-less ELF "kernel" (entered in long mode at 16 MiB) that counts like the micro
    // guest; its second vCPU waits for a SIPI that never comes (mp_state is saved as such).
    const KBASE: u64 = 0x100_0000;
    const KCOUNTER: u64 = KBASE + 0x1000;
    let mut a = Asm::new(Mode::Long, KBASE);
    let again = a.label();
    a.bind(again);
    a.lock_inc_mem(KCOUNTER as u32)
        .mov_ebx(KCOUNTER as u32)
        .load32_from_rbx()
        .mov_dx(COM1)
        .out_dx_al()
        .jmp(again);
    a.pad_to((KCOUNTER - KBASE) as usize + 4);
    let elf = vireo_kvm::testkernel::elf(&a.finish().unwrap(), KBASE, &[]);
    let dir = std::env::temp_dir().join(format!("vireo-kvm-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("counting.elf");
    std::fs::write(&kernel, elf).unwrap();
    let cfg = BootConfig {
        kernel,
        initrd: None,
        cmdline: "console=ttyS0".into(),
        cpus: 2,
        memory: 64 << 20,
        firmware: None,
        virtio_transport: Default::default(),
    };
    let out = ConsoleOutput::new();
    let vm = KvmVm::new(&cfg, out.clone()).unwrap();
    let ctl = vm.controller();
    let runner = start(vm);
    let mut seen = Vec::new();
    output_until(&out, &mut seen, 100);
    ctl.pause().unwrap();
    seen.extend(out.take());
    let last = *seen.last().unwrap();
    let state = ctl.save_state().unwrap();
    let ram = copy_ram(ctl.guest_memory());
    stop(runner, &ctl);
    assert_eq!(
        state.vcpus[1].mp_state,
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED,
        "the AP still waits for INIT/SIPI"
    );
    assert!(state.vm.irqchip.is_some());

    let out = ConsoleOutput::new();
    let vm = KvmVm::restore(
        &cfg,
        out.clone(),
        Vec::new(),
        ram_from(&ram, cfg.memory),
        &state,
        None,
    )
    .unwrap();
    let ctl = vm.controller();
    let runner = start(vm);
    let mut after = Vec::new();
    output_until(&out, &mut after, 50);
    ctl.pause().unwrap();
    let now = ctl.save_state().unwrap();
    stop(runner, &ctl);
    assert_eq!(after[0], last.wrapping_add(1), "continued from {last}");
    assert_eq!(
        now.vcpus[1].mp_state,
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VM restored from `saved` with `devices` as the definition's and `shared` as their
/// saved state, paused before it runs; its console.
fn restored_paused(
    g: &MicroGuest,
    devices: Vec<Box<dyn vireo_virtio::VirtioDevice>>,
    state: &KvmState,
    ram: &[(u64, Vec<u8>)],
    shared: &vireo_kvm::DevicesState,
) -> (KvmVm, vireo_kvm::VmController, ConsoleOutput) {
    let out = ConsoleOutput::new();
    let vm = KvmVm::restore_micro(
        g,
        out.clone(),
        devices,
        ram_from(ram, g.memory),
        state,
        Some(shared),
    )
    .unwrap();
    let ctl = vm.controller();
    ctl.pause().unwrap();
    (vm, ctl, out)
}

/// COM1 and the virtio-pci functions come back with the vCPUs: a counting guest with an rng
/// device, paused (devices too), saved, and restored with and without a device to put it on.
#[test]
fn devices_are_saved_and_restored_with_the_vcpus() {
    let _kvm = kvm();
    let g = counting_guest(1);
    let rng =
        || vec![Box::new(vireo_virtio::rng::Rng::new()) as Box<dyn vireo_virtio::VirtioDevice>];
    let out = ConsoleOutput::new();
    let vm = KvmVm::new_micro_with_devices(&g, out.clone(), rng()).unwrap();
    let ctl = vm.controller();
    let runner = start(vm);
    let mut seen = Vec::new();
    output_until(&out, &mut seen, 100);
    assert!(
        matches!(
            ctl.save_devices(),
            Err(KvmError::NotPaused(VmState::Running))
        ),
        "saved the devices of a running VM"
    );
    ctl.pause().unwrap();
    seen.extend(out.take());
    let last = *seen.last().unwrap();
    let state = ctl.save_state().unwrap();
    let devices = ctl.save_devices().unwrap();
    let ram = copy_ram(ctl.guest_memory());
    stop(runner, &ctl);
    assert_eq!(devices.virtio.len(), 1);
    assert_eq!(devices.virtio[0].device_type, 4, "virtio-rng");
    // The firmware's BAR placement is in the saved space.
    assert!(
        devices.pci[0].config.bars[0] >= layout::PCI_MMIO_BASE,
        "{:x?}",
        devices.pci[0].config.bars
    );

    // A definition without the device cannot take it.
    let err = KvmVm::restore_micro(
        &g,
        ConsoleOutput::new(),
        Vec::new(),
        ram_from(&ram, g.memory),
        &state,
        Some(&devices),
    )
    .err()
    .expect("restored a virtio device onto a VM without one");
    assert!(err.to_string().contains("1 virtio devices"), "{err}");

    let (vm, ctl, out) = restored_paused(&g, rng(), &state, &ram, &devices);
    let mut back = ctl.save_devices().unwrap();
    // A restore is a new generation: another ID (announced on its GSI).
    assert!(devices.vmgenid.is_some());
    assert_ne!(
        back.vmgenid, devices.vmgenid,
        "the restore kept the generation ID"
    );
    back.vmgenid = devices.vmgenid;
    assert_eq!(back, devices, "a restore then a save changed them");
    ctl.resume().unwrap();
    let runner = start(vm);
    let mut after = Vec::new();
    output_until(&out, &mut after, 20);
    stop(runner, &ctl);
    assert_eq!(after[0], last.wrapping_add(1), "continued from {last}");
}

/// The guest reads the VM generation ID where the ACPI tables say it is, and a restore hands
/// it a new one: a guest printing the ID's first byte for ever prints the saved ID's, and
/// after the restore the new one's.
#[test]
fn the_guest_reads_its_generation_id_and_a_restore_changes_it() {
    let _kvm = kvm();
    let mut a = Asm::new(Mode::Long, BASE);
    let again = a.label();
    a.bind(again);
    a.mov_ebx(layout::VMGENID_ADDR as u32)
        .load32_from_rbx()
        .mov_dx(COM1)
        .out_dx_al()
        .jmp(again);
    let g = MicroGuest::new(a.finish().unwrap(), BASE, MicroEntry::Long { rip: BASE });
    let out = ConsoleOutput::new();
    let vm = KvmVm::new_micro(&g, out.clone()).unwrap();
    let ctl = vm.controller();
    let runner = start(vm);
    let mut seen = Vec::new();
    output_until(&out, &mut seen, 10);
    ctl.pause().unwrap();
    let state = ctl.save_state().unwrap();
    let devices = ctl.save_devices().unwrap();
    let ram = copy_ram(ctl.guest_memory());
    stop(runner, &ctl);
    let id = devices.vmgenid.unwrap();
    assert!(seen.iter().all(|&b| b == id[0]), "{seen:?}, ID {id:x?}");

    let (vm, ctl, out) = restored_paused(&g, Vec::new(), &state, &ram, &devices);
    let new = ctl.save_devices().unwrap().vmgenid.unwrap();
    assert_ne!(new, id);
    ctl.resume().unwrap();
    let runner = start(vm);
    let mut after = Vec::new();
    output_until(&out, &mut after, 10);
    stop(runner, &ctl);
    // The first byte may be one the guest had loaded before the pause (between its load and
    // its `out`); every later one is read anew.
    assert!(
        after[0] == new[0] || after[0] == id[0],
        "{after:?}, new ID {new:x?}"
    );
    assert!(
        after[1..].iter().all(|&b| b == new[0]),
        "{after:?}, new ID {new:x?}"
    );
}
