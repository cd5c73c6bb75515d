//! The PC's legacy devices that live in the VMM: the i8042's reset line, the CMOS real-time
//! clock, QEMU's isa-debug-exit port, and interrupt lines into KVM's in-kernel irqchip. (The
//! PIC, PIT, IOAPIC and local APICs are KVM's in-kernel models; the UART is vireo-devices'.)

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kvm_ioctls::VmFd;
use vireo_machine::bus::{le_value, set_le_value};
use vireo_machine::{BusDevice, ExitSignal, GuestExit, IrqLine, MsiSink};
use vm_superio::{I8042Device, Trigger};

use crate::state::{CmosState, StateError};

/// An ISA interrupt line driven through KVM_IRQ_LINE (the in-kernel PIC and IOAPIC both see it).
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmIrqLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        KvmIrqLine { vm, gsi }
    }
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        // Fails only if the irqchip is gone, when nobody is listening anyway.
        let _ = self.vm.set_irq_line(self.gsi, high);
    }
}

/// Message-signalled interrupts from PCI functions, delivered through KVM irqfds: each
/// distinct (address, data) message gets a GSI routed to it (KVM_SET_GSI_ROUTING, MSI entry)
/// and an eventfd bound to that GSI (KVM_IRQFD), so sending it is one eventfd write from
/// whichever thread raised it (an I/O thread, a vCPU) and the in-kernel local APICs decode the
/// 0xfee0_0000 address and the vector. The guest picks the messages (it writes the MSI-X
/// tables), so the routes are bounded ([`MAX_MSI_ROUTES`]); past that, or if KVM refuses a
/// route, a message goes out with KVM_SIGNAL_MSI instead, which delivers the same interrupt.
pub struct KvmMsi {
    vm: Arc<VmFd>,
    routes: std::sync::Mutex<MsiRoutes>,
}

/// GSIs above the IOAPIC's 24 pins are free for MSI routes.
const MSI_GSI_BASE: u32 = 24;
/// MSI routes kept at most: every vector of a few devices, with room for a guest that moves
/// its messages around.
pub const MAX_MSI_ROUTES: usize = 256;

#[derive(Default)]
struct MsiRoutes {
    /// (address, data) and its eventfd; the GSI is MSI_GSI_BASE + the index.
    by_message: Vec<((u64, u32), vmm_sys_util::eventfd::EventFd)>,
    /// Where each message is in `by_message`: every completion looks its message up.
    index: std::collections::HashMap<(u64, u32), usize>,
    /// KVM refused routing or irqfds once: everything goes through KVM_SIGNAL_MSI.
    refused: bool,
}

impl KvmMsi {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmMsi {
            vm,
            routes: std::sync::Mutex::new(MsiRoutes::default()),
        }
    }

    /// Messages with an irqfd (for tests and statistics).
    pub fn routed(&self) -> usize {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_message
            .len()
    }

    fn signal(&self, address: u64, data: u32) {
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        // Fails only if the irqchip is gone, when nobody is listening anyway.
        let _ = self.vm.signal_msi(msi);
    }

    /// Adds a route for `message`; its eventfd, or why not.
    fn add_route(&self, r: &mut MsiRoutes, message: (u64, u32)) -> Result<usize, String> {
        use kvm_bindings::{
            kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1 as EntryUnion,
            kvm_irq_routing_irqchip, kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
            KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
            KVM_IRQ_ROUTING_MSI,
        };
        let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| e.to_string())?;
        // KVM_SET_GSI_ROUTING replaces the whole table, so it carries the routes
        // KVM_CREATE_IRQCHIP set by default too: GSIs 0-15 to the PICs and the IOAPIC, 16-23
        // to the IOAPIC (the kernel's default_routing).
        let chip = |gsi: u32, irqchip: u32, pin: u32| kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            u: EntryUnion {
                irqchip: kvm_irq_routing_irqchip { irqchip, pin },
            },
            ..Default::default()
        };
        let mut entries = Vec::new();
        for gsi in 0..MSI_GSI_BASE {
            entries.push(chip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
            if gsi < 16 {
                let pic = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(chip(gsi, pic, gsi % 8));
            }
        }
        let messages = r.by_message.iter().map(|(m, _)| *m).chain([message]);
        for (i, (address, data)) in messages.enumerate() {
            entries.push(kvm_irq_routing_entry {
                gsi: MSI_GSI_BASE + i as u32,
                type_: KVM_IRQ_ROUTING_MSI,
                u: EntryUnion {
                    msi: kvm_irq_routing_msi {
                        address_lo: address as u32,
                        address_hi: (address >> 32) as u32,
                        data,
                        ..Default::default()
                    },
                },
                ..Default::default()
            });
        }
        let mut table = KvmIrqRouting::new(entries.len()).map_err(|e| format!("{e:?}"))?;
        table.as_mut_slice().copy_from_slice(&entries);
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))?;
        let gsi = MSI_GSI_BASE + r.by_message.len() as u32;
        self.vm
            .register_irqfd(&fd, gsi)
            .map_err(|e| format!("KVM_IRQFD: {e}"))?;
        r.by_message.push((message, fd));
        let i = r.by_message.len() - 1;
        r.index.insert(message, i);
        Ok(i)
    }
}

impl MsiSink for KvmMsi {
    fn send(&self, address: u64, data: u32) {
        let mut r = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let message = (address, data);
        let index = match r.index.get(&message) {
            Some(&i) => Some(i),
            None if r.refused || r.by_message.len() >= MAX_MSI_ROUTES => None,
            None => match self.add_route(&mut r, message) {
                Ok(i) => Some(i),
                Err(e) => {
                    tracing::warn!("MSI through irqfds refused ({e}); using KVM_SIGNAL_MSI");
                    r.refused = true;
                    None
                }
            },
        };
        match index {
            Some(i) => {
                let _ = r.by_message[i].1.write(1);
            }
            None => {
                drop(r);
                self.signal(address, data);
            }
        }
    }
}

/// Doorbells that KVM turns into eventfd signals itself (KVM_IOEVENTFD, any write width, no
/// data match: each queue has its own doorbell address), so a virtio notification costs the
/// vCPU no exit to vireo.
pub struct KvmNotify(pub Arc<VmFd>);

impl vireo_virtio::pci::NotifyRegistry for KvmNotify {
    fn register(&self, addr: u64, fd: &vmm_sys_util::eventfd::EventFd) -> std::io::Result<()> {
        self.0
            .register_ioevent(
                fd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
    fn unregister(&self, addr: u64, fd: &vmm_sys_util::eventfd::EventFd) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(
                fd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// vm-superio's i8042 signals a CPU reset through a trigger: here, the guest's exit latch.
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.raise(GuestExit::Reset);
        Ok(())
    }
}

/// Ports 0x60 (data, offset 0) to 0x64 (command/status, offset 4). Writing 0xfe to the command
/// port pulses the CPU reset line, which reboots (`reboot=k`) or, with `panic=-1`, ends a
/// panicking guest.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

/// Size of the i8042 port window at 0x60.
pub const I8042_WINDOW: u64 = 5;

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            dev: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset < I8042_WINDOW {
            self.dev.read(offset as u8)
        } else {
            0
        };
        set_le_value(data, u64::from(v));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < I8042_WINDOW && !data.is_empty() {
            let _ = self.dev.write(offset as u8, data[0]);
        }
    }
}

/// QEMU's `isa-debug-exit`: a write of `v` ends the guest with status `(v << 1) | 1`, the
/// convention test kernels built for QEMU use.
pub struct DebugExit {
    exit: Arc<ExitSignal>,
}

/// Size of the isa-debug-exit port window at 0xf4.
pub const DEBUG_EXIT_WINDOW: u64 = 4;

impl DebugExit {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        set_le_value(data, 0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && !data.is_empty() {
            let v = le_value(data);
            self.exit.raise(GuestExit::Failure(((v << 1) | 1) as u16));
        }
    }
}

const RTC_SECONDS: u8 = 0x00;
const RTC_MINUTES: u8 = 0x02;
const RTC_HOURS: u8 = 0x04;
const RTC_WEEKDAY: u8 = 0x06;
const RTC_DAY: u8 = 0x07;
const RTC_MONTH: u8 = 0x08;
const RTC_YEAR: u8 = 0x09;
const RTC_STATUS_A: u8 = 0x0a;
const RTC_STATUS_B: u8 = 0x0b;
const RTC_STATUS_C: u8 = 0x0c;
const RTC_STATUS_D: u8 = 0x0d;
const RTC_CENTURY: u8 = 0x32;
const STATUS_B_24H: u8 = 1 << 1;
const STATUS_B_BINARY: u8 = 1 << 2;
const STATUS_D_VALID: u8 = 1 << 7;

/// Size of the CMOS port window at 0x70.
pub const CMOS_WINDOW: u64 = 2;

/// The MC146818 CMOS RTC as a PC's firmware leaves it: 24-hour BCD time in UTC, read through
/// the index port 0x70 (bit 7 is the NMI mask) and data port 0x71. The other registers are
/// 128 bytes of battery-backed RAM. Alarms and periodic interrupts are not modelled: Linux
/// reads the time once at boot.
pub struct Cmos {
    index: u8,
    regs: [u8; 128],
    now: fn() -> u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01, in the proleptic
/// Gregorian calendar (the era-based conversion: 400-year eras of 146097 days).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(unix_now)
    }

    /// A CMOS whose clock reads `now()` seconds since the Unix epoch (for tests).
    pub fn with_clock(now: fn() -> u64) -> Self {
        let mut regs = [0u8; 128];
        regs[usize::from(RTC_STATUS_A)] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        regs[usize::from(RTC_STATUS_B)] = STATUS_B_24H;
        regs[usize::from(RTC_STATUS_D)] = STATUS_D_VALID;
        Cmos {
            index: 0,
            regs,
            now,
        }
    }

    /// The index register and the 128 bytes (the time registers read the host clock, so
    /// their bytes are not the time).
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nvram: self.regs.to_vec(),
        }
    }

    /// Puts back what [`Cmos::state`] returned.
    pub fn restore(&mut self, s: &CmosState) -> Result<(), StateError> {
        if s.nvram.len() != self.regs.len() || s.index > 0x7f {
            return Err(StateError::Mismatch(format!(
                "CMOS with {} bytes and index {:#x}, expected {} bytes and an index below 0x80",
                s.nvram.len(),
                s.index,
                self.regs.len()
            )));
        }
        self.index = s.index;
        self.regs.copy_from_slice(&s.nvram);
        Ok(())
    }

    fn encode(&self, v: u32) -> u8 {
        let v = v as u8;
        if self.regs[usize::from(RTC_STATUS_B)] & STATUS_B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        let t = (self.now)();
        let days = (t / 86_400) as i64;
        let secs = (t % 86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        match reg {
            RTC_SECONDS => self.encode(secs % 60),
            RTC_MINUTES => self.encode(secs / 60 % 60),
            RTC_HOURS => {
                let h = secs / 3600;
                if self.regs[usize::from(RTC_STATUS_B)] & STATUS_B_24H != 0 {
                    self.encode(h)
                } else {
                    let h12 = if h.is_multiple_of(12) { 12 } else { h % 12 };
                    self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
                }
            }
            // 1970-01-01 was a Thursday; the RTC numbers Sunday as 1.
            RTC_WEEKDAY => self.encode(((days + 4).rem_euclid(7) + 1) as u32),
            RTC_DAY => self.encode(day),
            RTC_MONTH => self.encode(month),
            RTC_YEAR => self.encode(year.rem_euclid(100) as u32),
            RTC_CENTURY => self.encode((year / 100) as u32),
            RTC_STATUS_C => {
                // Reading C acknowledges (clears) pending interrupt flags.
                let v = self.regs[usize::from(RTC_STATUS_C)];
                self.regs[usize::from(RTC_STATUS_C)] = 0;
                v
            }
            r => self.regs[usize::from(r & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.index,
            1 => self.read_reg(self.index),
            _ => 0,
        };
        set_le_value(data, u64::from(v));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            // Bit 7 masks NMIs on real hardware; KVM's NMIs do not pass through here.
            0 => self.index = v & 0x7f,
            1 => match self.index {
                RTC_STATUS_A => self.regs[usize::from(RTC_STATUS_A)] = v & 0x7f, // UIP is read-only
                RTC_STATUS_C | RTC_STATUS_D => {}
                // The clock follows the host: writes to the time registers are dropped.
                RTC_SECONDS..=RTC_YEAR | RTC_CENTURY => {}
                r => self.regs[usize::from(r)] = v,
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn cmos_time_in_bcd_and_binary() {
        // 2024-02-29 13:45:56 UTC, a Thursday.
        let mut c = Cmos::with_clock(|| 1_709_214_356);
        assert_eq!(read(&mut c, RTC_SECONDS), 0x56);
        assert_eq!(read(&mut c, RTC_MINUTES), 0x45);
        assert_eq!(read(&mut c, RTC_HOURS), 0x13);
        assert_eq!(read(&mut c, RTC_DAY), 0x29);
        assert_eq!(read(&mut c, RTC_MONTH), 0x02);
        assert_eq!(read(&mut c, RTC_YEAR), 0x24);
        assert_eq!(read(&mut c, RTC_CENTURY), 0x20);
        assert_eq!(read(&mut c, RTC_WEEKDAY), 0x05);
        assert_eq!(read(&mut c, RTC_STATUS_D), 0x80);
        // Binary, 12-hour mode as a guest may select.
        c.write(0, &[RTC_STATUS_B]);
        c.write(1, &[STATUS_B_BINARY]);
        assert_eq!(read(&mut c, RTC_HOURS), 0x80 | 1);
        assert_eq!(read(&mut c, RTC_SECONDS), 56);
        // NVRAM keeps what is written; time writes are ignored; odd accesses are harmless.
        c.write(0, &[0x80 | 0x40]);
        c.write(1, &[0x5a]);
        assert_eq!(read(&mut c, 0x40), 0x5a);
        c.write(0, &[RTC_SECONDS]);
        c.write(1, &[0x00]);
        assert_eq!(read(&mut c, RTC_SECONDS), 56);
        c.write(7, &[1]);
        c.write(1, &[]);
        let mut wide = [0xffu8; 4];
        c.read(1, &mut wide);
        assert_eq!(wide[1..], [0, 0, 0]);
    }

    #[test]
    fn cmos_state_round_trips() {
        let mut c = Cmos::with_clock(|| 0);
        c.write(0, &[0x40]);
        c.write(1, &[0x5a]);
        c.write(0, &[0x41]);
        let s = c.state();
        let mut d = Cmos::with_clock(|| 0);
        d.restore(&s).unwrap();
        assert_eq!(d.state(), s);
        assert_eq!(read(&mut d, 0x40), 0x5a);
        let bad = CmosState {
            index: 0,
            nvram: vec![0; 64],
        };
        let e = d.restore(&bad).unwrap_err().to_string();
        assert!(e.contains("CMOS with 64 bytes"), "{e}");
    }

    #[test]
    fn reset_and_debug_exit() {
        let exit = Arc::new(ExitSignal::new());
        let mut kbd = I8042::new(exit.clone());
        kbd.write(0, &[0xfe]); // data port: not a command
        kbd.write(4, &[0xd1]); // another command
        assert!(!exit.is_raised());
        let mut st = [0xffu8];
        kbd.read(4, &mut st);
        assert_eq!(st[0], 0, "input buffer empty");
        kbd.write(4, &[0xfe]);
        assert_eq!(exit.get(), Some(GuestExit::Reset));

        let exit = Arc::new(ExitSignal::new());
        let mut dbg = DebugExit::new(exit.clone());
        dbg.write(1, &[3]);
        assert!(!exit.is_raised());
        dbg.write(0, &[0x10]);
        assert_eq!(exit.get(), Some(GuestExit::Failure(0x21)));
    }
}
