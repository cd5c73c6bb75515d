//! A 16550A UART (the register model is vm-superio's), on MMIO with byte-wide registers (the
//! RISC-V `virt` board) or on port I/O (COM1 on x86).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vireo_machine::bus::set_le_value;
use vireo_machine::{BusDevice, IrqLine};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

/// vm-superio raises an interrupt on each new condition; a level controller sees a pulse.
pub struct IrqTrigger(pub Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.pulse();
        Ok(())
    }
}

/// Where the guest's transmitted bytes go: a shared buffer the VMM drains, so a guest writing
/// one byte per store does not cost a host system call per byte.
#[derive(Clone, Default)]
pub struct ConsoleOutput(Arc<Mutex<Vec<u8>>>);

impl ConsoleOutput {
    pub fn new() -> Self {
        Self::default()
    }
    /// Takes everything transmitted since the last call.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A 16550A's registers and receive FIFO, as a snapshot holds them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UartState {
    pub divisor_low: u8,
    pub divisor_high: u8,
    pub ier: u8,
    pub iir: u8,
    pub lcr: u8,
    pub lsr: u8,
    pub mcr: u8,
    pub msr: u8,
    pub scratch: u8,
    pub rx_fifo: Vec<u8>,
}

/// A 16550A with 8 byte-wide registers.
pub struct Uart {
    serial: Serial<IrqTrigger, NoEvents, ConsoleOutput>,
}

/// Size of the register window.
pub const UART_WINDOW: u64 = 8;

impl Uart {
    pub fn new(irq: Arc<dyn IrqLine>, out: ConsoleOutput) -> Self {
        Uart {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.serial.fifo_capacity() == 0 {
            return 0;
        }
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// The registers and the receive FIFO, for a snapshot.
    pub fn save_state(&self) -> UartState {
        let s = self.serial.state();
        UartState {
            divisor_low: s.baud_divisor_low,
            divisor_high: s.baud_divisor_high,
            ier: s.interrupt_enable,
            iir: s.interrupt_identification,
            lcr: s.line_control,
            lsr: s.line_status,
            mcr: s.modem_control,
            msr: s.modem_status,
            scratch: s.scratch,
            rx_fifo: s.in_buffer,
        }
    }

    /// Puts saved registers back (vm-superio rebuilds the 16550 from them and raises the
    /// interrupt they imply); a FIFO longer than the chip's is refused.
    pub fn restore_state(&mut self, st: &UartState) -> Result<(), String> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: st.divisor_low,
            baud_divisor_high: st.divisor_high,
            interrupt_enable: st.ier,
            interrupt_identification: st.iir,
            line_control: st.lcr,
            line_status: st.lsr,
            modem_control: st.mcr,
            modem_status: st.msr,
            scratch: st.scratch,
            in_buffer: st.rx_fifo.clone(),
        };
        let trigger = IrqTrigger(self.serial.interrupt_evt().0.clone());
        let out = self.serial.writer().clone();
        self.serial = Serial::from_state(&state, trigger, NoEvents, out).map_err(|e| {
            format!(
                "the UART's saved receive FIFO holds {} bytes, more than the 16550's 64: {e:?}",
                st.rx_fifo.len()
            )
        })?;
        Ok(())
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }
}

impl BusDevice for Uart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are one byte wide; a wider load reads the addressed register alone.
        let v = if offset < UART_WINDOW {
            self.serial.read(offset as u8)
        } else {
            0
        };
        set_le_value(data, u64::from(v));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < UART_WINDOW && !data.is_empty() {
            // The only error is from the trigger, which cannot fail.
            let _ = self.serial.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct CountIrq(AtomicUsize);
    impl IrqLine for CountIrq {
        fn set_level(&self, high: bool) {
            if high {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn transmit_receive_and_interrupts() {
        let irq = Arc::new(CountIrq::default());
        let out = ConsoleOutput::new();
        let mut u = Uart::new(irq.clone(), out.clone());
        for b in b"hi" {
            u.write(0, &[*b]);
        }
        assert_eq!(out.take(), b"hi");
        assert!(out.is_empty());
        // Enable the received-data interrupt, then feed input.
        u.write(1, &[0x01]);
        assert_eq!(u.enqueue_input(b"ok"), 2);
        assert!(irq.0.load(Ordering::SeqCst) >= 1);
        let mut lsr = [0u8];
        u.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8; 4];
        u.read(0, &mut b);
        assert_eq!(b, [b'o', 0, 0, 0]);
        u.read(0, &mut b[..1]);
        assert_eq!(b[0], b'k');
        u.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0, "drained");
        // Out-of-window accesses are harmless.
        u.write(100, &[1]);
        u.read(100, &mut b[..1]);
        assert_eq!(b[0], 0);
        let cap = u.input_capacity();
        assert_eq!(u.enqueue_input(&vec![b'x'; cap + 10]), cap);
        assert_eq!(u.enqueue_input(b"y"), 0);
    }
}
