//! vireo's kvm accelerator: x86-64 guests on Linux KVM, booted directly from a kernel file.
//!
//! The board is a minimal PC (see [`layout`] for the map): guest RAM below 4 GiB with a gap
//! for MMIO (and above 4 GiB for large guests), KVM's in-kernel PIC/IOAPIC/LAPIC/PIT, COM1 on
//! vireo-devices' 16550 UART, the i8042 reset line, a CMOS RTC, QEMU's isa-debug-exit port, and
//! vireo's exit register (a `sifive,test0`-compatible [`vireo_devices::TestFinisher`]) at
//! [`layout::EXIT_REGISTER_ADDR`]. CPUs are described by ACPI (MADT) and an MP table; each vCPU
//! runs in its own thread as a state machine driven over channels (see [`vcpu`]).
//!
//! [`exceptions_work`] runs a probe guest that takes an `int3` through its IDT: on nested hosts
//! that cannot deliver guest exceptions (such as PVM) it returns false, and a full Linux guest
//! cannot boot there; [`kernel_kind`] tells a Linux kernel from one (a unikernel, a test kernel)
//! that may never take an exception.

pub mod acpi;
pub mod asm;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod pc;
pub mod regs;
pub mod state;
pub mod testkernel;
pub mod vcpu;
pub mod vm;

use std::time::Duration;

use asm::{Asm, Mode};
pub use boot::{kernel_kind, BootEntry, KernelKind, LoadError};
pub use layout::EXIT_REGISTER_ADDR;
pub use state::{DevicesState, KvmState, StateError, VcpuState, VmWideState, KVM_STATE_VERSION};
pub use vcpu::{ExitCounts, RegisterDump, VcpuError};
use vireo_devices::ConsoleOutput;
use vireo_machine::GuestExit;
pub use vm::{ApStart, KvmError, KvmVm, MicroEntry, MicroGuest, VmController, VmState};

/// Where the probe guest's code goes.
const PROBE_BASE: u64 = 0x10_0000;

/// The probe guest: installs an IDT whose vector 3 handler powers the guest off through the
/// exit register, then executes `int3`. Falling through `int3` reports failure 2.
pub fn exception_probe_guest() -> Result<MicroGuest, asm::AsmError> {
    let mut a = Asm::new(Mode::Long, PROBE_BASE);
    let handler = a.label();
    a.lidt_abs((PROBE_BASE + 0x100) as u32)
        .int3()
        .mov_ebx(EXIT_REGISTER_ADDR as u32)
        .store32_at_rbx((2 << 16) | 0x3333)
        .spin();
    a.bind(handler);
    a.mov_ebx(EXIT_REGISTER_ADDR as u32)
        .store32_at_rbx(0x5555)
        .spin();
    let handler_addr = a.addr_of(handler).unwrap_or(PROBE_BASE);
    // IDTR at +0x100: limit, base.
    let idt = PROBE_BASE + 0x200;
    a.pad_to(0x100);
    a.bytes(&(4u16 * 16 - 1).to_le_bytes())
        .bytes(&idt.to_le_bytes());
    // IDT at +0x200: four 16-byte gates, vector 3 a present 64-bit interrupt gate in the
    // kernel code segment.
    a.pad_to(0x200 + 3 * 16);
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(handler_addr as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&regs::SEL_CODE64.to_le_bytes());
    gate[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    gate[6..8].copy_from_slice(&((handler_addr >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((handler_addr >> 32) as u32).to_le_bytes());
    a.bytes(&gate);
    let code = a.finish()?;
    let mut g = MicroGuest::new(code, PROBE_BASE, MicroEntry::Long { rip: PROBE_BASE });
    g.irqchip = false;
    g.memory = 4 << 20;
    Ok(g)
}

/// Whether this host's KVM delivers exceptions to a guest at CPL0: runs the probe guest and
/// returns false when KVM reports an internal error instead (nested PVM hosts do).
pub fn exceptions_work() -> Result<bool, KvmError> {
    KvmVm::probe()?;
    let mut vm = KvmVm::new_micro(&exception_probe_guest()?, ConsoleOutput::new())?;
    match vm.run_timeout(Duration::from_secs(10)) {
        Ok(GuestExit::PowerOff) => Ok(true),
        Err(KvmError::Vcpu(VcpuError::InternalError { .. })) => Ok(false),
        Ok(other) => Err(KvmError::Probe(format!(
            "skipped its int3 handler and exited with {other:?}"
        ))),
        Err(e) => Err(e),
    }
}
