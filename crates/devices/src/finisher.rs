//! The `sifive,test0` finisher that QEMU's `virt` board has: one 32-bit register whose low half
//! says what to do and whose high half is a status. Linux's `syscon-poweroff`/`syscon-reboot`
//! write it, and vireo's /init writes it to hand a command's exit status to the host.

use std::sync::Arc;

use vireo_machine::bus::{le_value, set_le_value};
use vireo_machine::{BusDevice, ExitSignal, GuestExit};

const FINISHER_FAIL: u64 = 0x3333;
const FINISHER_PASS: u64 = 0x5555;
const FINISHER_RESET: u64 = 0x7777;

/// Size of the register window.
pub const FINISHER_WINDOW: u64 = 0x1000;

pub struct TestFinisher {
    exit: Arc<ExitSignal>,
}

impl TestFinisher {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        TestFinisher { exit }
    }
}

impl BusDevice for TestFinisher {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        set_le_value(data, 0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.len() < 4 {
            return;
        }
        let v = le_value(&data[..4]);
        match v & 0xffff {
            FINISHER_PASS => self.exit.raise(GuestExit::PowerOff),
            FINISHER_FAIL => self.exit.raise(GuestExit::Failure((v >> 16) as u16)),
            FINISHER_RESET => self.exit.raise(GuestExit::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let s = Arc::new(ExitSignal::new());
        let mut f = TestFinisher::new(s.clone());
        f.write(0, &[0x12, 0x34]); // too narrow: ignored
        f.write(4, &0x5555u32.to_le_bytes()); // wrong register: ignored
        f.write(0, &0x1234u32.to_le_bytes()); // unknown command: ignored
        assert!(!s.is_raised());
        f.write(0, &((7u32 << 16) | 0x3333).to_le_bytes());
        assert_eq!(s.get(), Some(GuestExit::Failure(7)));
        let s = Arc::new(ExitSignal::new());
        TestFinisher::new(s.clone()).write(0, &0x5555u32.to_le_bytes());
        assert_eq!(s.get(), Some(GuestExit::PowerOff));
    }
}
