//! The root complex: bus 0 with up to 32 single-function devices, reached through ECAM (memory
//! mapped, PCIe §7.2.2) or the legacy CF8/CFC port pair, and the memory window their BARs
//! decode in. BARs may be moved by the guest at any time, so the window is one bus device
//! that looks BARs up on each access instead of fixed entries on the machine's bus.
//!
//! Locking: each function has its own lock. The root's lock covers the slot table and a
//! decode table of the enabled BAR windows, rebuilt after every configuration write (the only
//! way a window moves); a BAR access holds it only for the lookup, then takes the function's
//! lock alone, so vCPUs reaching different devices never wait on each other. The order is
//! always root, then function.

use std::sync::{Arc, Mutex, MutexGuard};

use vireo_machine::bus::SyncBusDevice;
use vireo_machine::bus::{le_value, set_le_value};
use vireo_machine::BusDevice;
use vm_allocator::{AddressAllocator, AllocPolicy};

use crate::config::{ConfigSpace, Identity, NUM_BARS};

/// A PCI function on the root bus.
pub trait PciDevice: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// Called after the guest wrote configuration space at `offset` (to react to capability
    /// changes such as MSI-X enable).
    fn config_written(&mut self, offset: usize) {
        let _ = offset;
    }
    /// The function as `Any`, for a board that must reach its own device type behind the
    /// root (to save or restore it); `None` for functions nobody needs to reach.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
    /// An access inside BAR `bar` at `offset` (bounded by the BAR's size).
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// Errors building the root complex.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("no free device number on PCI bus 0 (32 at most)")]
    BusFull,
    #[error("the PCI memory window {base:#x}+{size:#x} has no room for a {bar_size:#x}-byte BAR")]
    WindowFull { base: u64, size: u64, bar_size: u64 },
    #[error("the PCI memory window {base:#x}+{size:#x} is invalid")]
    BadWindow { base: u64, size: u64 },
}

/// Slots on bus 0.
pub const SLOTS: usize = 32;

/// A host bridge at 00.0, which x86 Linux's CF8/CFC sanity check looks for before it trusts
/// the mechanism. It implements nothing else.
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    pub fn new() -> Self {
        // Red Hat's ID for a generic host bridge, the one QEMU's virt and microvm machines
        // present; no driver binds to it.
        HostBridge {
            config: ConfigSpace::new(Identity {
                vendor: 0x1b36,
                device: 0x0008,
                revision: 0,
                class: 0x06_00_00,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// One function as the root and its access paths share it.
pub type SharedFunction = Arc<Mutex<Box<dyn PciDevice>>>;

fn lock_function(f: &SharedFunction) -> MutexGuard<'_, Box<dyn PciDevice>> {
    f.lock().unwrap_or_else(|p| p.into_inner())
}

/// An enabled BAR window: base, size, slot, BAR index.
type Window = (u64, u64, usize, usize);

/// Bus 0 and the memory window its BARs are placed in.
pub struct PciRoot {
    slots: Vec<Option<SharedFunction>>,
    /// Every enabled BAR window, for the lookup of a memory access.
    windows: Vec<Window>,
    allocator: AddressAllocator,
    window: (u64, u64),
}

/// The root complex as shared by its access paths (ECAM, CF8/CFC, the BAR window).
pub type SharedRoot = Arc<Mutex<PciRoot>>;

impl PciRoot {
    /// A root with the host bridge at 00.0, placing BARs in `[base, base + size)`.
    pub fn new(base: u64, size: u64) -> Result<Self, PciError> {
        let allocator =
            AddressAllocator::new(base, size).map_err(|_| PciError::BadWindow { base, size })?;
        let mut root = PciRoot {
            slots: (0..SLOTS).map(|_| None).collect(),
            windows: Vec::new(),
            allocator,
            window: (base, size),
        };
        root.add(Box::new(HostBridge::new()))?;
        Ok(root)
    }

    /// The device number the next [`PciRoot::add`] will use.
    pub fn next_free_slot(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|s| s as u8)
    }

    /// Puts `dev` in the first free slot, assigns its BARs in the window (as firmware would;
    /// the guest may move them), and returns its device number.
    pub fn add(&mut self, mut dev: Box<dyn PciDevice>) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        let bars: Vec<(usize, u64)> = dev.config().bar_sizes().collect();
        for (i, size) in bars {
            let (base, wsize) = self.window;
            let r = self
                .allocator
                .allocate(size, size, AllocPolicy::FirstMatch)
                .map_err(|_| PciError::WindowFull {
                    base,
                    size: wsize,
                    bar_size: size,
                })?;
            dev.config_mut().set_bar_address(i, r.start());
        }
        self.slots[slot] = Some(Arc::new(Mutex::new(dev)));
        self.refresh_windows(slot);
        Ok(slot as u8)
    }

    /// Rebuilds `slot`'s entries in the decode table from its configuration space.
    fn refresh_windows(&mut self, slot: usize) {
        self.windows.retain(|w| w.2 != slot);
        if let Some(Some(f)) = self.slots.get(slot) {
            let f = lock_function(f);
            for bar in 0..NUM_BARS {
                if let Some((base, size)) = f.config().bar_window(bar) {
                    self.windows.push((base, size, slot, bar));
                }
            }
        }
    }

    /// The function in `slot`, if there is one.
    pub fn function_at(&self, slot: u8) -> Option<SharedFunction> {
        self.slots.get(usize::from(slot))?.clone()
    }

    /// Rebuilds the decode table from every function's configuration space: after the board
    /// changed them directly (a restore put the guest's BAR placements back).
    pub fn refresh(&mut self) {
        for slot in 0..self.slots.len() {
            self.refresh_windows(slot);
        }
    }

    /// The guest-physical window the BARs were first placed in.
    pub fn window(&self) -> (u64, u64) {
        self.window
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&SharedFunction> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// A configuration read; an absent function reads as all ones (no device).
    pub fn config_read(&mut self, bus: u8, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        match self.function(bus, dev, func) {
            Some(d) => lock_function(d).config().read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn config_write(&mut self, bus: u8, dev: u8, func: u8, offset: usize, data: &[u8]) {
        if let Some(d) = self.function(bus, dev, func) {
            {
                let mut d = lock_function(d);
                d.config_mut().write(offset, data);
                d.config_written(offset);
            }
            self.refresh_windows(usize::from(dev));
        }
    }

    /// The function and BAR decoding `[addr, addr + len)`, with the offset in that BAR.
    pub fn decode(&self, addr: u64, len: usize) -> Option<(SharedFunction, usize, u64)> {
        self.windows.iter().find_map(|&(base, size, slot, bar)| {
            let off = addr.checked_sub(base)?;
            (off.checked_add(len as u64)? <= size)
                .then(|| self.slots[slot].clone().map(|f| (f, bar, off)))
                .flatten()
        })
    }

    /// A load from guest-physical `addr` in the BAR window; false when no BAR decodes it.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        bar_read(self.decode(addr, data.len()), data)
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        bar_write(self.decode(addr, data.len()), data)
    }
}

fn bar_read(hit: Option<(SharedFunction, usize, u64)>, data: &mut [u8]) -> bool {
    match hit {
        Some((d, bar, off)) => {
            lock_function(&d).bar_read(bar, off, data);
            true
        }
        None => false,
    }
}

fn bar_write(hit: Option<(SharedFunction, usize, u64)>, data: &[u8]) -> bool {
    match hit {
        Some((d, bar, off)) => {
            lock_function(&d).bar_write(bar, off, data);
            true
        }
        None => false,
    }
}

fn lock(root: &SharedRoot) -> MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(|p| p.into_inner())
}

/// Size of an ECAM region for bus 0 only.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// Memory-mapped configuration access: 4 KiB per function, 1 MiB per bus.
pub struct Ecam(pub SharedRoot);

fn ecam_decode(offset: u64) -> (u8, u8, u8, usize) {
    (
        (offset >> 20) as u8,
        ((offset >> 15) & 31) as u8,
        ((offset >> 12) & 7) as u8,
        (offset & 0xfff) as usize,
    )
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (b, d, f, r) = ecam_decode(offset);
        lock(&self.0).config_read(b, d, f, r, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let (b, d, f, r) = ecam_decode(offset);
        lock(&self.0).config_write(b, d, f, r, data);
    }
}

/// The legacy configuration mechanism #1: an address latch at port 0xCF8 and a data window at
/// 0xCFC..0xCFF. Goes on the port-I/O bus at [`PIO_CONFIG_PORT`] with [`PIO_CONFIG_LEN`].
pub struct PioConfig {
    root: SharedRoot,
    address: u32,
}

pub const PIO_CONFIG_PORT: u64 = 0xcf8;
pub const PIO_CONFIG_LEN: u64 = 8;
const CF8_ENABLE: u32 = 1 << 31;

impl PioConfig {
    pub fn new(root: SharedRoot) -> Self {
        PioConfig { root, address: 0 }
    }

    /// The selected function and register for a data-port access at `offset` (4..8), if the
    /// latch is enabled.
    fn target(&self, offset: u64) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        (a & CF8_ENABLE != 0).then(|| {
            (
                (a >> 16) as u8,
                ((a >> 11) & 31) as u8,
                ((a >> 8) & 7) as u8,
                (a & 0xfc) as usize + (offset as usize - 4),
            )
        })
    }
}

impl BusDevice for PioConfig {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            // Only a full dword access reaches the latch (byte accesses to 0xCF8..0xCFB belong
            // to other chipset registers on real hardware).
            if offset == 0 && data.len() == 4 {
                set_le_value(data, u64::from(self.address));
            } else {
                data.fill(0xff);
            }
            return;
        }
        match self.target(offset) {
            Some((b, d, f, r)) => lock(&self.root).config_read(b, d, f, r, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                self.address = le_value(data) as u32;
            }
            return;
        }
        if let Some((b, d, f, r)) = self.target(offset) {
            lock(&self.root).config_write(b, d, f, r, data);
        }
    }
}

/// The memory window BARs decode in, as one device on the machine's MMIO bus at `base`.
pub struct MmioWindow {
    root: SharedRoot,
    base: u64,
}

impl MmioWindow {
    pub fn new(root: SharedRoot) -> Self {
        let base = lock(&root).window.0;
        MmioWindow { root, base }
    }
}

impl SyncBusDevice for MmioWindow {
    // The root's lock is let go before the function's is taken (see the module doc).
    fn read(&self, offset: u64, data: &mut [u8]) {
        let hit = lock(&self.root).decode(self.base + offset, data.len());
        if !bar_read(hit, data) {
            data.fill(0);
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        let hit = lock(&self.root).decode(self.base + offset, data.len());
        bar_write(hit, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{reg, CMD_MEMORY};

    /// Accesses a test function saw: (bar, offset, value written or 0 for a read).
    type Seen = Arc<Mutex<Vec<(usize, u64, u64)>>>;

    /// A function with one 64-bit BAR that records accesses.
    struct Dev {
        config: ConfigSpace,
        seen: Seen,
    }

    fn dev(seen: Seen) -> Box<Dev> {
        let mut config = ConfigSpace::new(Identity {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0xff_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config.add_memory_bar(0, 0x1000, true, false).unwrap();
        Box::new(Dev { config, seen })
    }

    impl PciDevice for Dev {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            set_le_value(data, 0x5a5a_5a5a_5a5a_5a5a);
            self.seen.lock().unwrap().push((bar, offset, 0));
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .push((bar, offset, le_value(data)));
        }
    }

    fn rig() -> (SharedRoot, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut root = PciRoot::new(0x4000_0000, 0x1000_0000).unwrap();
        assert_eq!(root.add(dev(seen.clone())).unwrap(), 1);
        (Arc::new(Mutex::new(root)), seen)
    }

    fn cf8(p: &mut PioConfig, dev: u32, reg: u32) {
        p.write(0, &(CF8_ENABLE | (dev << 11) | reg).to_le_bytes());
    }

    #[test]
    fn cf8_cfc_enumerates_bus_zero() {
        let (root, _) = rig();
        let mut p = PioConfig::new(root);
        let mut b = [0u8; 4];
        cf8(&mut p, 0, 0);
        p.read(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0008_1b36, "host bridge");
        cf8(&mut p, 0, 8);
        p.read(4, &mut b);
        assert_eq!(u32::from_le_bytes(b) >> 8, 0x06_00_00);
        cf8(&mut p, 1, 0);
        p.read(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1044_1af4);
        // Byte access through CFE reaches byte 2 of the selected dword.
        let mut one = [0u8; 2];
        p.read(6, &mut one);
        assert_eq!(u16::from_le_bytes(one), 0x1044);
        cf8(&mut p, 2, 0);
        p.read(4, &mut b);
        assert_eq!(b, [0xff; 4], "empty slot");
        // The latch reads back; with the enable bit clear, data reads as all ones.
        p.write(0, &0x0000_0800u32.to_le_bytes());
        p.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x800);
        p.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn ecam_reaches_functions_and_rejects_others() {
        let (root, _) = rig();
        let mut e = Ecam(root);
        let mut b = [0u8; 4];
        e.read(1 << 15, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1044_1af4);
        // Function 1, bus 1 and the extended space of a present function.
        e.read((1 << 15) | (1 << 12), &mut b);
        assert_eq!(b, [0xff; 4]);
        e.read((1 << 20) | (1 << 15), &mut b);
        assert_eq!(b, [0xff; 4]);
        e.read((1 << 15) | 0x100, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn bars_decode_where_the_guest_moves_them() {
        let (root, seen) = rig();
        let mut e = Ecam(root.clone());
        let w = MmioWindow::new(root.clone());
        let mut b = [0u8; 4];
        e.read((1 << 15) | reg::BAR0 as u64, &mut b);
        let first = u64::from(u32::from_le_bytes(b) & !0xf);
        assert_eq!(first & 0xfff, 0);
        assert!(first >= 0x4000_0000);
        // Memory decoding is off: nothing reaches the device.
        w.write(first - 0x4000_0000, &1u32.to_le_bytes());
        assert!(seen.lock().unwrap().is_empty());
        e.write((1 << 15) | reg::COMMAND as u64, &CMD_MEMORY.to_le_bytes());
        w.write(first - 0x4000_0000 + 8, &7u32.to_le_bytes());
        assert_eq!(seen.lock().unwrap().pop(), Some((0, 8, 7)));
        // Moved by the guest: the old address is dead, the new one decodes.
        e.write((1 << 15) | reg::BAR0 as u64, &0x4800_0000u32.to_le_bytes());
        w.write(first - 0x4000_0000 + 8, &9u32.to_le_bytes());
        assert!(seen.lock().unwrap().is_empty());
        w.write(0x0800_0010, &9u32.to_le_bytes());
        assert_eq!(seen.lock().unwrap().pop(), Some((0, 0x10, 9)));
        // An access straddling the end of the BAR goes nowhere.
        w.write(0x0800_0ffe, &9u32.to_le_bytes());
        assert!(seen.lock().unwrap().is_empty());
        let mut r = [0xffu8; 4];
        w.read(0x0900_0000, &mut r);
        assert_eq!(r, [0; 4]);
    }

    #[test]
    fn a_space_restored_behind_the_root_decodes_after_a_refresh() {
        let (root, seen) = rig();
        let w = MmioWindow::new(root.clone());
        // A restore puts the guest's placement and command register back directly.
        let f = lock(&root).function_at(1).unwrap();
        assert!(lock(&root).function_at(2).is_none());
        {
            let mut f = lock_function(&f);
            let mut st = f.config().save();
            st.bars[0] = 0x4c00_0000;
            st.regs[reg::COMMAND] = CMD_MEMORY as u8;
            f.config_mut().restore(&st).unwrap();
        }
        w.write(0x0c00_0004, &3u32.to_le_bytes());
        assert!(
            seen.lock().unwrap().is_empty(),
            "decoded before the refresh"
        );
        lock(&root).refresh();
        w.write(0x0c00_0004, &3u32.to_le_bytes());
        assert_eq!(seen.lock().unwrap().pop(), Some((0, 4, 3)));
    }

    #[test]
    fn bus_fills_up_and_window_runs_out() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut root = PciRoot::new(0x4000_0000, 0x2000).unwrap();
        root.add(dev(seen.clone())).unwrap();
        root.add(dev(seen.clone())).unwrap();
        assert!(matches!(
            root.add(dev(seen.clone())),
            Err(PciError::WindowFull { .. })
        ));
        let mut root = PciRoot::new(0x4000_0000, 0x10_0000).unwrap();
        for _ in 1..SLOTS {
            root.add(dev(seen.clone())).unwrap();
        }
        assert_eq!(root.add(dev(seen)).err(), Some(PciError::BusFull));
    }
}
