//! A type-0 (endpoint) configuration header (PCI Local Bus 3.0 §6.1): the 256-byte
//! conventional space, with per-bit write masks so a guest can only change what hardware would
//! let it change, memory BARs with sizing, and a capability list.
//!
//! For a snapshot ([`ConfigSpace::save`]) the space is its 256 bytes and the BAR addresses.
//! A restore takes back only what the guest could have written (the write-masked bits and the
//! BARs) and checks that every other byte is what this build makes: a saved function whose
//! identity or capabilities differ from the one built is refused, not half-trusted.

use serde::{Deserialize, Serialize};

/// Config-space register offsets used here and by devices.
pub mod reg {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const CLASS_PROG: usize = 0x09;
    pub const CACHE_LINE: usize = 0x0c;
    pub const LATENCY: usize = 0x0d;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BAR0: usize = 0x10;
    pub const SUBSYS_VENDOR: usize = 0x2c;
    pub const SUBSYS_ID: usize = 0x2e;
    pub const CAP_PTR: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register bits.
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u16 = 1 << 4;

/// Size of the conventional configuration space; ECAM's extended space above it reads as zero
/// (no extended capabilities).
pub const CONFIG_SIZE: usize = 256;
const FIRST_CAP: usize = 0x40;
pub const NUM_BARS: usize = 6;

/// What a device's identity registers hold.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class code, subclass and programming interface (0xCCSSPP).
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A memory BAR the device implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bar {
    /// Power of two, at least 16 bytes; zero when the BAR is not implemented.
    size: u64,
    is64: bool,
    prefetchable: bool,
    addr: u64,
}

/// One endpoint's configuration space.
pub struct ConfigSpace {
    regs: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    /// Indexed by BAR number; the upper half of a 64-bit BAR is the next index, marked by
    /// `upper_of`.
    bars: [Bar; NUM_BARS],
    upper_of: [Option<usize>; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

/// Errors building a configuration space (programming errors in a device model, reported
/// rather than panicking).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} is out of range, in use, or has no room for a 64-bit pair")]
    BarSlot(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BarSize(u64),
    #[error("capability of {0} bytes does not fit in configuration space")]
    CapabilityFull(usize),
}

impl ConfigSpace {
    pub fn new(id: Identity) -> Self {
        let mut c = ConfigSpace {
            regs: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [Bar::default(); NUM_BARS],
            upper_of: [None; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP,
        };
        c.set_u16(reg::VENDOR_ID, id.vendor);
        c.set_u16(reg::DEVICE_ID, id.device);
        c.regs[reg::REVISION] = id.revision;
        c.regs[reg::CLASS_PROG] = id.class as u8;
        c.regs[reg::CLASS_PROG + 1] = (id.class >> 8) as u8;
        c.regs[reg::CLASS_PROG + 2] = (id.class >> 16) as u8;
        c.set_u16(reg::SUBSYS_VENDOR, id.subsystem_vendor);
        c.set_u16(reg::SUBSYS_ID, id.subsystem);
        let cmd = CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE;
        c.wmask[reg::COMMAND..reg::COMMAND + 2].copy_from_slice(&cmd.to_le_bytes());
        c.wmask[reg::CACHE_LINE] = 0xff;
        c.wmask[reg::LATENCY] = 0xff;
        c.wmask[reg::INTERRUPT_LINE] = 0xff;
        c
    }

    /// Declares that the device raises INTA# (interrupt pin 1).
    pub fn set_interrupt_pin_a(&mut self) {
        self.regs[reg::INTERRUPT_PIN] = 1;
    }

    /// Sets the interrupt-line register: the platform's routing of INTx, for drivers that read
    /// it (x86 without ACPI routing).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.regs[reg::INTERRUPT_LINE] = line;
    }

    /// Declares memory BAR `index` of `size` bytes (64-bit BARs take `index` and `index + 1`).
    pub fn add_memory_bar(
        &mut self,
        index: usize,
        size: u64,
        is64: bool,
        prefetchable: bool,
    ) -> Result<(), ConfigError> {
        let last = index + usize::from(is64);
        if last >= NUM_BARS
            || self.bars[index].size != 0
            || self.upper_of[index].is_some()
            || (is64 && (self.bars[last].size != 0 || self.upper_of[last].is_some()))
        {
            return Err(ConfigError::BarSlot(index));
        }
        if size < 16 || !size.is_power_of_two() || (!is64 && size > 1 << 31) {
            return Err(ConfigError::BarSize(size));
        }
        self.bars[index] = Bar {
            size,
            is64,
            prefetchable,
            addr: 0,
        };
        if is64 {
            self.upper_of[last] = Some(index);
        }
        Ok(())
    }

    /// Every implemented BAR: (index, size).
    pub fn bar_sizes(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.bars
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size != 0)
            .map(|(i, b)| (i, b.size))
    }

    /// Whether BAR `index` holds 64-bit addresses.
    pub fn bar_is_64(&self, index: usize) -> bool {
        self.bars.get(index).is_some_and(|b| b.is64)
    }

    /// Sets where BAR `index` decodes (firmware's assignment); the address is aligned down to
    /// the BAR's size.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        if let Some(b) = self.bars.get_mut(index).filter(|b| b.size != 0) {
            b.addr = addr & !(b.size - 1);
            if !b.is64 {
                b.addr &= 0xffff_ffff;
            }
        }
    }

    /// The guest-physical window BAR `index` decodes, if memory decoding is on and the BAR is
    /// implemented and placed (address zero means unassigned).
    pub fn bar_window(&self, index: usize) -> Option<(u64, u64)> {
        let b = self.bars.get(index)?;
        (b.size != 0 && b.addr != 0 && self.command() & CMD_MEMORY != 0).then_some((b.addr, b.size))
    }

    pub fn command(&self) -> u16 {
        self.u16_at(reg::COMMAND)
    }

    /// Appends a capability: `body` starts with its ID byte and a placeholder "next" byte;
    /// `wmask` (same length) marks the bits the driver may write. Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], wmask: &[u8]) -> Result<usize, ConfigError> {
        let at = self.next_cap;
        // Capabilities are dword aligned and must fit below the end of the space.
        let len = body.len().max(2);
        if wmask.len() != body.len() || at + len > CONFIG_SIZE {
            return Err(ConfigError::CapabilityFull(body.len()));
        }
        self.regs[at..at + body.len()].copy_from_slice(body);
        self.regs[at + 1] = 0;
        self.wmask[at..at + body.len()].copy_from_slice(wmask);
        self.wmask[at] = 0;
        self.wmask[at + 1] = 0;
        match self.last_cap {
            None => self.regs[reg::CAP_PTR] = at as u8,
            Some(prev) => self.regs[prev + 1] = at as u8,
        }
        self.last_cap = Some(at);
        self.next_cap = (at + len + 3) & !3;
        let status = self.u16_at(reg::STATUS) | STATUS_CAP_LIST;
        self.set_u16(reg::STATUS, status);
        Ok(at)
    }

    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.regs[off], self.regs[off + 1]])
    }

    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.regs[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// The dword register at `off & !3` as the guest reads it.
    fn dword(&self, off: usize) -> u32 {
        let off = off & !3;
        if let Some(i) = bar_index(off) {
            return self.bar_register(i);
        }
        u32::from_le_bytes(self.regs[off..off + 4].try_into().unwrap_or([0; 4]))
    }

    fn bar_register(&self, i: usize) -> u32 {
        if let Some(lower) = self.upper_of[i] {
            return (self.bars[lower].addr >> 32) as u32;
        }
        let b = &self.bars[i];
        if b.size == 0 {
            return 0;
        }
        let flags = (u32::from(b.is64) << 2) | (u32::from(b.prefetchable) << 3);
        (b.addr as u32 & !0xf) | flags
    }

    fn write_bar_register(&mut self, i: usize, v: u32) {
        if let Some(lower) = self.upper_of[i] {
            let b = &mut self.bars[lower];
            let mask = !(b.size - 1);
            b.addr = ((u64::from(v) << 32) | (b.addr & 0xffff_ffff)) & mask;
            return;
        }
        let b = &mut self.bars[i];
        if b.size == 0 {
            return;
        }
        // Writing all ones then reading back is how software sizes a BAR: the low bits below
        // the size stay zero.
        let mask = !(b.size - 1);
        b.addr = ((b.addr & !0xffff_ffff) | u64::from(v)) & mask;
    }

    /// A config read of 1, 2 or 4 bytes at `off`; anything misaligned, wider or outside the
    /// conventional space reads as zero.
    pub fn read(&self, off: usize, data: &mut [u8]) {
        data.fill(0);
        if !aligned(off, data.len()) || off >= CONFIG_SIZE {
            return;
        }
        let v = self.dword(off).to_le_bytes();
        let s = off & 3;
        data.copy_from_slice(&v[s..s + data.len()]);
    }

    /// A config write of 1, 2 or 4 bytes at `off`, honouring the write masks; other accesses
    /// are ignored.
    pub fn write(&mut self, off: usize, data: &[u8]) {
        if !aligned(off, data.len()) || off >= CONFIG_SIZE {
            return;
        }
        if let Some(i) = bar_index(off & !3) {
            let mut v = self.bar_register(i).to_le_bytes();
            let s = off & 3;
            v[s..s + data.len()].copy_from_slice(data);
            self.write_bar_register(i, u32::from_le_bytes(v));
            return;
        }
        for (k, &byte) in data.iter().enumerate() {
            let o = off + k;
            self.regs[o] = (self.regs[o] & !self.wmask[o]) | (byte & self.wmask[o]);
        }
    }

    /// Raw access to bytes of a capability the device owns (for reading back what the driver
    /// wrote, or updating read-only state).
    pub fn bytes(&self, off: usize, len: usize) -> &[u8] {
        &self.regs[off..off + len]
    }
}

/// A configuration space as a snapshot holds it (fixed widths; a BAR address is where the
/// guest placed it, zero for an unplaced or unimplemented BAR).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigState {
    /// The 256 bytes of conventional space (the BAR registers in it are zero: see `bars`).
    pub regs: Vec<u8>,
    pub bars: Vec<u64>,
}

impl ConfigSpace {
    /// What a snapshot holds of this space.
    pub fn save(&self) -> ConfigState {
        ConfigState {
            regs: self.regs.to_vec(),
            bars: self.bars.iter().map(|b| b.addr).collect(),
        }
    }

    /// Puts back what the guest had written; refuses a state of another shape or device
    /// (a read-only byte that differs, a BAR address where this build has no BAR or one not
    /// aligned to its size) and then changes nothing.
    pub fn restore(&mut self, st: &ConfigState) -> Result<(), String> {
        if st.regs.len() != CONFIG_SIZE || st.bars.len() != NUM_BARS {
            return Err(format!(
                "configuration space of {} bytes and {} BARs, expected {CONFIG_SIZE} and {NUM_BARS}",
                st.regs.len(),
                st.bars.len()
            ));
        }
        for (off, (&saved, (&built, &mask))) in st
            .regs
            .iter()
            .zip(self.regs.iter().zip(&self.wmask))
            .enumerate()
        {
            if saved & !mask != built & !mask {
                return Err(format!(
                    "configuration byte {off:#x} is {saved:#04x} in the snapshot and {built:#04x} in this build: not the same PCI function"
                ));
            }
        }
        for (i, (&addr, b)) in st.bars.iter().zip(&self.bars).enumerate() {
            let fits = if b.size == 0 {
                addr == 0
            } else {
                addr & (b.size - 1) == 0 && (b.is64 || addr <= 0xffff_ffff)
            };
            if !fits {
                return Err(format!(
                    "BAR {i} at {addr:#x} does not fit this build's BAR ({:#x} bytes)",
                    b.size
                ));
            }
        }
        for (off, &saved) in st.regs.iter().enumerate() {
            self.regs[off] = (self.regs[off] & !self.wmask[off]) | (saved & self.wmask[off]);
        }
        for (b, &addr) in self.bars.iter_mut().zip(&st.bars) {
            b.addr = addr;
        }
        Ok(())
    }
}

fn bar_index(off: usize) -> Option<usize> {
    (reg::BAR0..reg::BAR0 + 4 * NUM_BARS)
        .contains(&off)
        .then(|| (off - reg::BAR0) / 4)
}

fn aligned(off: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && off.is_multiple_of(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> Identity {
        Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_80_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    fn space() -> ConfigSpace {
        ConfigSpace::new(ident())
    }

    fn r32(c: &ConfigSpace, off: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(c: &mut ConfigSpace, off: usize, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = space();
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        assert_eq!(r32(&c, 8) >> 8, 0x01_80_00);
        w32(&mut c, 0, 0xdead_beef);
        w32(&mut c, 8, 0xffff_ffff);
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        assert_eq!(r32(&c, 8), 0x0180_0001);
    }

    #[test]
    fn command_keeps_only_implemented_bits() {
        let mut c = space();
        c.write(reg::COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE);
    }

    #[test]
    fn bar64_sizing_and_placement() {
        let mut c = space();
        c.add_memory_bar(0, 0x4000, true, false).unwrap();
        w32(&mut c, 0x10, 0xffff_ffff);
        w32(&mut c, 0x14, 0xffff_ffff);
        // Size mask with the 64-bit type bits.
        assert_eq!(r32(&c, 0x10), 0xffff_c004);
        assert_eq!(r32(&c, 0x14), 0xffff_ffff);
        w32(&mut c, 0x10, 0x1234_5678);
        w32(&mut c, 0x14, 0x1);
        assert_eq!(r32(&c, 0x10), 0x1234_4004);
        // Decoding is off until the command register enables memory space.
        assert_eq!(c.bar_window(0), None);
        c.write(reg::COMMAND, &CMD_MEMORY.to_le_bytes());
        assert_eq!(c.bar_window(0), Some((0x1_1234_4000, 0x4000)));
        // The upper slot is not a BAR of its own.
        assert_eq!(c.bar_window(1), None);
    }

    #[test]
    fn unimplemented_bars_and_rom_read_zero() {
        let mut c = space();
        for off in (0x10..0x28).step_by(4).chain([0x30]) {
            w32(&mut c, off, 0xffff_ffff);
            assert_eq!(r32(&c, off), 0, "offset {off:#x}");
        }
    }

    #[test]
    fn bad_bar_declarations_are_refused() {
        let mut c = space();
        assert_eq!(
            c.add_memory_bar(5, 0x1000, true, false),
            Err(ConfigError::BarSlot(5))
        );
        assert_eq!(
            c.add_memory_bar(0, 0x1001, false, false),
            Err(ConfigError::BarSize(0x1001))
        );
        c.add_memory_bar(0, 0x1000, true, false).unwrap();
        assert_eq!(
            c.add_memory_bar(1, 0x1000, false, false),
            Err(ConfigError::BarSlot(1))
        );
    }

    #[test]
    fn capability_chain_and_masks() {
        let mut c = space();
        let a = c.add_capability(&[0x09, 0, 4, 1], &[0, 0, 0, 0]).unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0, 0], &[0, 0, 0, 0xc0])
            .unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x44);
        assert_eq!(c.bytes(reg::CAP_PTR, 1)[0], 0x40);
        assert_eq!(c.bytes(a + 1, 1)[0], 0x44);
        assert_eq!(c.bytes(b + 1, 1)[0], 0);
        assert_ne!(c.u16_at(reg::STATUS) & STATUS_CAP_LIST, 0);
        // Only the masked bits change; the ID and next pointer never do.
        w32(&mut c, b, 0xffff_ffff);
        assert_eq!(r32(&c, b), 0xc000_0011);
    }

    #[test]
    fn a_saved_space_restores_what_the_guest_wrote_and_only_that() {
        let mut c = space();
        c.add_memory_bar(0, 0x4000, true, false).unwrap();
        w32(&mut c, 0x10, 0x8000_4000);
        w32(&mut c, 0x14, 0x2);
        c.write(reg::COMMAND, &CMD_MEMORY.to_le_bytes());
        c.write(reg::INTERRUPT_LINE, &[9]);
        let st = c.save();

        let mut fresh = space();
        fresh.add_memory_bar(0, 0x4000, true, false).unwrap();
        fresh.restore(&st).unwrap();
        assert_eq!(fresh.bar_window(0), Some((0x2_8000_4000, 0x4000)));
        assert_eq!(fresh.bytes(reg::INTERRUPT_LINE, 1), &[9]);
        for off in (0..CONFIG_SIZE).step_by(4) {
            assert_eq!(r32(&fresh, off), r32(&c, off), "offset {off:#x}");
        }

        // Another device, a BAR this build lacks or cannot hold, a short state: refused, and
        // the space is left as it was.
        let mut other = ConfigSpace::new(Identity {
            device: 0x1041,
            ..ident()
        });
        other.add_memory_bar(0, 0x4000, true, false).unwrap();
        let before = other.save();
        let e = other.restore(&st).unwrap_err();
        assert!(e.contains("byte 0x2") && e.contains("not the same"), "{e}");
        assert_eq!(other.save(), before);
        let mut no_bar = space();
        let mut s2 = st.clone();
        s2.regs = no_bar.save().regs;
        s2.regs[reg::COMMAND] = CMD_MEMORY as u8;
        assert!(no_bar.restore(&s2).unwrap_err().contains("BAR 0"));
        let mut odd = st.clone();
        odd.bars[0] |= 0x10;
        assert!(fresh.restore(&odd).unwrap_err().contains("BAR 0"));
        let mut short = st;
        short.regs.pop();
        assert!(fresh.restore(&short).unwrap_err().contains("255 bytes"));
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut c = space();
        let mut b3 = [0xaa; 3];
        c.read(0, &mut b3);
        assert_eq!(b3, [0; 3]);
        let mut b2 = [0xaa; 2];
        c.read(1, &mut b2);
        assert_eq!(b2, [0; 2]);
        c.read(0x1000, &mut b2);
        assert_eq!(b2, [0; 2]);
        c.write(0xfff, &[1]);
        c.write(3, &[1, 2]);
        let mut b8 = [0u8; 8];
        c.read(0, &mut b8);
        assert_eq!(b8, [0; 8]);
        assert_eq!(r32(&c, 0), 0x1042_1af4);
    }
}
