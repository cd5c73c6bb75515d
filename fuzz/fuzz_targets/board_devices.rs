//! The emu board's own devices, register by register: the 16550 UART, the PLIC (priorities,
//! pending bits, enables, thresholds, claim/complete for two harts), the goldfish RTC and the
//! test finisher, each fed guest reads and writes at any offset and width.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vireo_devices::{ConsoleOutput, GoldfishRtc, TestFinisher, Uart};
use vireo_fuzz::{ops, Op, Regs};
use vireo_machine::{ExitSignal, NoIrq};
use vireo_riscv::plic::{Plic, PLIC_SIZE};
use vireo_riscv::sys::IrqOutputs;

fuzz_target!(|data: &[u8]| {
    let console = ConsoleOutput::new();
    let mut uart = Uart::new(Arc::new(NoIrq), console.clone());
    let mut plic = Plic::new(2, Arc::new(IrqOutputs::new(4)));
    let mut rtc = GoldfishRtc::new();
    let mut fin = TestFinisher::new(Arc::new(ExitSignal::new()));
    for op in ops(data) {
        // The op's space picks the device; PLIC offsets are spread over its whole window.
        let plic_off = |o: u64| (o << 6) % PLIC_SIZE;
        match op {
            Op::Read { space, offset, len } => {
                let mut b = vec![0u8; len];
                match space {
                    0 => uart.read(offset & 0xff, &mut b),
                    1 => plic.read(plic_off(offset), &mut b),
                    2 => rtc.read(offset & 0xfff, &mut b),
                    _ => fin.read(offset & 0xfff, &mut b),
                }
            }
            Op::Write {
                space,
                offset,
                data,
            } => match space {
                0 => uart.write(offset & 0xff, &data),
                1 => plic.write(plic_off(offset), &data),
                2 => rtc.write(offset & 0xfff, &data),
                _ => fin.write(offset & 0xfff, &data),
            },
            // A device raising and lowering a PLIC source.
            Op::Notify { queue } => plic.set_level(usize::from(queue) * 17 % 64, queue & 1 == 0),
            // Host input arriving at the UART.
            Op::Poke { data, .. } => {
                let _ = uart.enqueue_input(&data);
            }
        }
    }
    let _ = console.take();
});
