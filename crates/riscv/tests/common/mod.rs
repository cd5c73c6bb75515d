//! Running a firmware image on the emulated board under a wall-clock guard (shared by the
//! integration tests).

// Each test crate uses a different part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vireo_devices::ConsoleOutput;
use vireo_machine::{BootConfig, GuestExit};
use vireo_riscv::{EmuVm, Isa};

/// How a guarded run ended.
#[derive(Debug)]
pub enum Outcome {
    /// `EmuVm::run` returned.
    Exited(Result<GuestExit, String>),
    /// The guard fired; the VM was stopped through its exit signal.
    TimedOut,
}

/// What a guarded run produced.
pub struct Run {
    pub outcome: Outcome,
    /// Everything the guest wrote to the UART.
    pub console: String,
    /// Instructions the VM retired (trap entries included), when it returned.
    pub instructions: Option<u64>,
    /// How long after the guard fired the VM took to stop (None: it finished by itself, or
    /// never stopped).
    pub stop_latency: Option<Duration>,
}

/// Boots `firmware` (an ELF, or a raw binary loaded at 0x80000000) on a fresh board with `cpus`
/// harts and runs it on its own thread. If it has not finished after `guard`, it is stopped
/// through the board's exit signal (as a host would on Ctrl-C) and given 5 s to do so.
pub fn run_guarded(firmware: &Path, cpus: u32, guard: Duration) -> Run {
    run_guarded_isa(firmware, cpus, guard, Isa::max())
}

/// [`run_guarded`] with harts implementing `isa`.
pub fn run_guarded_isa(firmware: &Path, cpus: u32, guard: Duration, isa: Isa) -> Run {
    let cfg = config(firmware, cpus);
    let console = ConsoleOutput::new();
    let vm_console = console.clone();
    let (sig_tx, sig_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut vm = match EmuVm::build(&cfg, vm_console, Vec::new(), isa) {
            Ok(vm) => vm,
            Err(e) => {
                let _ = done_tx.send((Err(format!("cannot build the VM: {e}")), 0));
                return;
            }
        };
        let _ = sig_tx.send(vm.exit_signal());
        let r = vm.run().map_err(|e| e.to_string());
        let _ = done_tx.send((r, vm.instructions()));
    });
    let mut run = Run {
        outcome: Outcome::TimedOut,
        console: String::new(),
        instructions: None,
        stop_latency: None,
    };
    match done_rx.recv_timeout(guard) {
        Ok((r, n)) => {
            run.outcome = Outcome::Exited(r);
            run.instructions = Some(n);
            let _ = worker.join();
        }
        Err(_) => {
            if let Ok(sig) = sig_rx.try_recv() {
                sig.raise(GuestExit::Reset);
            }
            let t0 = Instant::now();
            // The run loop checks the signal at least once per slice.
            if let Ok((_, n)) = done_rx.recv_timeout(Duration::from_secs(5)) {
                run.stop_latency = Some(t0.elapsed());
                run.instructions = Some(n);
                let _ = worker.join();
            }
        }
    }
    run.console = String::from_utf8_lossy(&console.take()).into_owned();
    run
}

/// A board configuration with no kernel: `firmware` alone, 64 MiB of RAM.
fn config(firmware: &Path, cpus: u32) -> BootConfig {
    BootConfig {
        kernel: PathBuf::new(),
        firmware: Some(firmware.to_path_buf()),
        initrd: None,
        cmdline: String::new(),
        cpus,
        memory: 64 << 20,
        virtio_transport: Default::default(),
    }
}
