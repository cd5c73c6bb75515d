//! The interpreter: a hart runs guest-chosen code for a bounded number of instructions, with
//! the board's UART, PLIC, finisher and CLINT on its bus. The first byte picks the start: M-mode
//! firmware (traps go wherever mtvec says), or S-mode under the built-in SBI (so every ecall
//! is an SBI call with guest-chosen arguments); and the CPU model, everything or rv64gc. Pages
//! of code, CSRs, the MMU, PMP, atomics, FP and the SBI all take the guest's values.
#![no_main]
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vireo_devices::{ConsoleOutput, TestFinisher, Uart};
use vireo_machine::{Bus, ExitSignal, GuestRam, NoIrq};
use vireo_riscv::hart::Hart;
use vireo_riscv::plic::{Plic, PLIC_SIZE};
use vireo_riscv::sys::{IrqOutputs, Sys, SysConfig};
use vireo_riscv::Isa;

const RAM: u64 = 0x8000_0000;
const RAM_SIZE: u64 = 0x1_0000;
/// Instructions per input: enough for loops and traps, few enough for many inputs a second.
const BUDGET: u64 = 4000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, code)) = data.split_first() else {
        return;
    };
    let Ok(ram) = GuestRam::new(&[(RAM, RAM_SIZE)]) else {
        return;
    };
    let _ = ram.write(RAM, &code[..code.len().min(RAM_SIZE as usize)]);
    let exit = Arc::new(ExitSignal::new());
    let irq = Arc::new(IrqOutputs::new(2));
    let console = ConsoleOutput::new();
    let mut bus = Bus::new();
    let _ = bus.insert(
        0x1000_0000,
        0x100,
        Arc::new(Mutex::new(Uart::new(Arc::new(NoIrq), console.clone()))),
    );
    let _ = bus.insert(
        0x0c00_0000,
        PLIC_SIZE,
        Arc::new(Mutex::new(Plic::new(1, irq.clone()))),
    );
    let _ = bus.insert(
        0x10_0000,
        0x1000,
        Arc::new(Mutex::new(TestFinisher::new(exit.clone()))),
    );
    let Some(view) = ram.view_at(RAM) else {
        return;
    };
    let builtin_sbi = mode & 1 != 0;
    let mut sys = Sys::new(
        view,
        &bus,
        SysConfig {
            ram_base: RAM,
            clint_base: 0x200_0000,
            harts: 1,
            builtin_sbi,
            irq,
            exit,
            console: console.clone(),
        },
    );
    let mut h = Hart::new(0);
    h.set_isa(if mode & 2 != 0 { Isa::BASE } else { Isa::max() });
    if builtin_sbi {
        h.enter_supervisor(RAM, 0, RAM + RAM_SIZE - 0x1000);
    } else {
        h.pc = RAM;
    }
    let mut left = BUDGET;
    while left > 0 && sys.fault.is_none() && !sys.exit.is_raised() {
        let (_, ran) = h.run(&mut sys, left);
        left = left.saturating_sub(ran.max(1));
    }
    // What the guest printed is bounded by what it could run.
    assert!(console.take().len() as u64 <= BUDGET * 4096);
});
