//! One lifecycle for both accelerators: a [`Vm`] is created from a [`crate::Plan`] and its
//! devices, runs on the thread that calls [`Vm::run`] (a VM-owned thread in the VMM process),
//! and is paused, resumed and stopped from any other thread through its [`VmControl`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vireo_devices::{ConsoleOutput, Uart};
use vireo_machine::{BootConfig, GuestExit};
use vireo_spec::Accel;
use vireo_virtio::VirtioDevice;

use crate::{fail, Error};

/// The accelerator running this guest.
// One per VM process, moved rarely: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Vm {
    Emu(vireo_riscv::EmuVm),
    Kvm(vireo_kvm::KvmVm),
}

/// Why [`Vm::run`] returned without the guest asking to stop.
#[derive(Debug)]
pub enum RunError {
    /// Another thread stopped a KVM guest (the emulator reports its exit reason instead).
    Stopped,
    /// The accelerator failed: the message says how.
    Other(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Stopped => f.write_str("the VM was stopped"),
            RunError::Other(s) => f.write_str(s),
        }
    }
}

impl Vm {
    /// Builds the machine: RAM, board devices, `devices` on their transport, the payload.
    pub fn create(
        accel: Accel,
        cfg: &BootConfig,
        out: &ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
        isa: vireo_riscv::Isa,
    ) -> Result<Vm, Error> {
        Ok(match accel {
            Accel::Emu => {
                Vm::Emu(vireo_riscv::EmuVm::build(cfg, out.clone(), devices, isa).map_err(fail)?)
            }
            _ => Vm::Kvm(vireo_kvm::KvmVm::with_devices(cfg, out.clone(), devices).map_err(fail)?),
        })
    }

    /// A machine continuing from a loaded snapshot, with fresh `devices` built from its
    /// definition, on the accelerator the snapshot was taken on (`snapshot::load` checked it
    /// against the definition's).
    pub fn restore(
        cfg: &BootConfig,
        out: &ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
        loaded: crate::snapshot::Loaded,
        clock: vireo_riscv::state::ClockMode,
    ) -> Result<Vm, Error> {
        match &loaded.state {
            crate::snapshot::MachineSnap::Emu(st) => {
                let vm =
                    vireo_riscv::EmuVm::restore(cfg, out.clone(), devices, loaded.ram, st, clock)
                        .map_err(fail)?;
                // A diff of this snapshot can take the pages the log names.
                vm.state_handle().set_dirty_base(Some(loaded.id));
                Ok(Vm::Emu(vm))
            }
            crate::snapshot::MachineSnap::Kvm {
                kvm,
                devices: shared,
            } => {
                // KVM's clock is set back to its saved value (the guest's time stands still
                // while it is not running); catching up is the emulator's only so far.
                if clock == vireo_riscv::state::ClockMode::CatchUp {
                    return Err(fail(
                        "--clock catch-up: the kvm accelerator restores its guest's clock as it was saved (--clock pause) only so far",
                    ));
                }
                let vm = vireo_kvm::KvmVm::restore(
                    cfg,
                    out.clone(),
                    devices,
                    loaded.ram,
                    kvm,
                    Some(shared),
                )
                .map_err(fail)?;
                // A diff of this snapshot can take the pages the logs name: KVM's is turned on
                // before the guest runs (vm-memory's has run since the memory was mapped, and
                // holds what the devices wrote while they were put back).
                let c = vm.controller();
                c.start_dirty_log().map_err(fail)?;
                c.set_dirty_base(Some(loaded.id.clone()));
                Ok(Vm::Kvm(vm))
            }
        }
    }

    pub fn accel(&self) -> &'static str {
        match self {
            Vm::Emu(_) => "emu",
            Vm::Kvm(_) => "kvm",
        }
    }

    /// The console UART, for feeding host input.
    pub fn uart(&self) -> Arc<Mutex<Uart>> {
        match self {
            Vm::Emu(v) => v.uart(),
            Vm::Kvm(v) => v.uart(),
        }
    }

    /// Pauses, resumes, stops and reads the VM from other threads.
    pub fn control(&self) -> VmControl {
        match self {
            Vm::Emu(v) => VmControl::Emu {
                control: v.control(),
                stats: v.stats_handle(),
                state: v.state_handle(),
                mem: v.guest_memory().memory().clone(),
            },
            Vm::Kvm(v) => VmControl::Kvm(v.controller()),
        }
    }

    /// Runs the guest until it powers off, resets, fails, or is stopped.
    pub fn run(&mut self) -> Result<GuestExit, RunError> {
        match self {
            Vm::Emu(v) => v.run().map_err(|e| RunError::Other(e.to_string())),
            Vm::Kvm(v) => v.run().map_err(|e| match e {
                vireo_kvm::KvmError::Stopped => RunError::Stopped,
                e => RunError::Other(e.to_string()),
            }),
        }
    }

    /// [`Vm::run`] on a thread of its own, named for the accelerator (`vireo-emu`,
    /// `vireo-kvm`), which enters the machine thread's sandbox (`vireo_machine::sandbox`)
    /// before the guest runs. The filter binds that thread alone: the caller goes on to build
    /// the next boot's devices, and starting passt needs calls no guest-facing thread makes.
    pub fn run_on_own_thread(&mut self) -> Result<GuestExit, RunError> {
        use vireo_machine::sandbox::{enter, ThreadKind};
        let (name, kind) = match self {
            Vm::Emu(_) => ("vireo-emu", ThreadKind::EmuHarts),
            Vm::Kvm(_) => ("vireo-kvm", ThreadKind::KvmWait),
        };
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn_scoped(scope, || {
                    enter(kind);
                    self.run()
                })
                .map_err(|e| RunError::Other(format!("cannot start the machine's thread: {e}")))
                .and_then(|t| {
                    t.join().unwrap_or_else(|_| {
                        Err(RunError::Other("the machine's thread panicked".into()))
                    })
                })
        })
    }

    /// Guest RAM in bytes.
    pub fn guest_ram_bytes(&self) -> u64 {
        match self {
            Vm::Emu(v) => v.guest_memory().size(),
            Vm::Kvm(v) => v.guest_memory().size(),
        }
    }

    /// The `VIREO_STATS` report, printed to stderr.
    pub fn print_stats(&self, secs: f64) {
        match self {
            Vm::Emu(vm) => {
                let s = vm.stats();
                let idle = s.idle.as_secs_f64();
                let n = s.instructions;
                eprintln!(
                    "vireo: stats: {n} instructions in {secs:.3} s, {idle:.3} s idle ({:.0} MIPS while running); decoded code: {} pages ({} MiB), dropped {} times when full",
                    n as f64 / (secs - idle).max(1e-9) / 1e6,
                    s.code_pages,
                    s.code_pages * 16 / 1024,
                    s.code_evictions
                );
                let counters: Vec<String> = s
                    .counters
                    .named()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                eprintln!("vireo: counters: {}", counters.join(" "));
                if let Some(p) = vm.profile() {
                    let mut v: Vec<_> = p.iter().collect();
                    v.sort_by(|a, b| b.1.cmp(a.1));
                    for (pc, n) in v {
                        eprintln!("vireo: profile: {pc:#018x} {n}");
                    }
                }
            }
            Vm::Kvm(vm) => {
                eprintln!(
                    "vireo: stats: {secs:.3} s; VM exits {:?}",
                    vm.controller().exit_counters()
                );
            }
        }
    }
}

/// Reaches a VM from any thread.
#[derive(Clone)]
pub enum VmControl {
    Emu {
        control: Arc<vireo_riscv::EmuControl>,
        stats: Arc<Mutex<vireo_riscv::EmuStats>>,
        state: vireo_riscv::EmuStateHandle,
        /// Guest RAM (the same mapping the harts use), for snapshots.
        mem: vireo_machine::GuestMemoryMmap,
    },
    Kvm(vireo_kvm::VmController),
}

impl VmControl {
    /// Pauses the vCPUs at an instruction boundary, then the devices (emu): once this
    /// returns, no device thread touches guest memory and no request is half-served, so the
    /// machine's state is complete (what a snapshot takes). The guest clock stops unless the
    /// clock mode is catch-up.
    pub fn pause(&self) -> Result<(), String> {
        match self {
            VmControl::Emu { control, state, .. } => {
                if !control.pause(Duration::from_secs(5)) {
                    control.resume();
                    return Err("the machine did not pause within 5 s".into());
                }
                if !state.pause_devices(Duration::from_secs(5)) {
                    state.resume_devices();
                    control.resume();
                    return Err(
                        "a device did not finish its requests within 5 s; the VM runs on".into(),
                    );
                }
                Ok(())
            }
            VmControl::Kvm(c) => c.pause().map_err(|e| e.to_string()),
        }
    }

    /// Has a machine that has not run yet start paused: it parks before its first
    /// instruction, its devices deliver nothing until resumed.
    pub fn start_paused(&self) -> Result<(), String> {
        match self {
            VmControl::Emu { control, state, .. } => {
                // Not running yet: nothing to wait for; the run loop parks at once.
                control.pause(Duration::ZERO);
                if state.pause_devices(Duration::from_secs(5)) {
                    Ok(())
                } else {
                    Err("a device did not pause within 5 s".into())
                }
            }
            VmControl::Kvm(c) => c.pause().map_err(|e| e.to_string()),
        }
    }

    pub fn resume(&self) -> Result<(), String> {
        match self {
            VmControl::Emu { control, state, .. } => {
                state.resume_devices();
                control.resume();
                Ok(())
            }
            VmControl::Kvm(c) => c.resume().map_err(|e| e.to_string()),
        }
    }

    /// Stops the guest at once; `run` returns `why` (emu) or [`RunError::Stopped`] (kvm).
    pub fn stop(&self, why: GuestExit) {
        match self {
            VmControl::Emu { control, .. } => control.stop(why),
            VmControl::Kvm(c) => c.stop(),
        }
    }

    pub fn is_paused(&self) -> bool {
        match self {
            VmControl::Emu { control, .. } => control.is_paused(),
            VmControl::Kvm(c) => c.state() == vireo_kvm::VmState::Paused,
        }
    }

    /// The accelerator's counters by reason, named as in `/metrics`: emu `instructions`,
    /// `traps.<cause>`, `interrupts.<cause>`, `mmio_reads`, `mmio_writes`, `tlb_misses`,
    /// `page_walks`, `code_pages`; kvm `exits.<reason>`.
    pub fn counters(&self) -> Vec<(String, u64)> {
        match self {
            VmControl::Emu { stats, .. } => {
                let s = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let mut v = vec![
                    ("instructions".to_string(), s.instructions),
                    ("idle_ms".to_string(), s.idle.as_millis() as u64),
                    ("code_pages".to_string(), s.code_pages as u64),
                    ("code_cache_drops".to_string(), s.code_evictions),
                ];
                v.extend(s.counters.named());
                v
            }
            VmControl::Kvm(c) => {
                let e = c.exit_counters();
                [
                    ("io", e.io),
                    ("mmio", e.mmio),
                    ("hlt", e.hlt),
                    ("shutdown", e.shutdown),
                    ("internal_error", e.internal_error),
                    ("system_event", e.system_event),
                    ("other", e.other),
                    ("interrupted", e.interrupted),
                ]
                .into_iter()
                .map(|(k, v)| (format!("exits.{k}"), v))
                .collect()
            }
        }
    }
}
