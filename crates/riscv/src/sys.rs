//! What harts share: RAM, the device bus, the decoded-code cache, the CLINT, interrupt outputs of
//! the PLIC, and the mailboxes one hart uses to reach another (IPIs, remote fences, HSM starts).
//!
//! All harts run on one host thread in turn, so cross-hart requests are posted here and picked
//! up by the target hart before its next slice; a hart that is not running cannot observe the
//! difference.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vireo_devices::ConsoleOutput;
use vireo_machine::memory::RamView;
use vireo_machine::{Bus, ExitSignal};

use crate::decode::Op;

/// Slots per decoded page: one per possible 2-byte instruction start.
pub const SLOTS: usize = 2048;

/// Most decoded pages a machine keeps: 8192 × 16 KiB = 128 MiB, for 32 MiB of guest code. A
/// Debian boot to a shell and a CPU-bound command decode under 1000 of them (15 MiB).
pub const CODE_PAGES_MAX: usize = 8192;

/// Decoded instructions, keyed by guest-physical page, shared by all harts.
///
/// A page enters when a hart first fetches from it. Harts never cache a code page in their write
/// TLB, so every store to one takes the slow path, which drops the page (QEMU's approach): decode
/// caches stay coherent with stores without a check on the fast path.
pub struct CodeCache {
    pub pages: Vec<Box<[Op; SLOTS]>>,
    free: Vec<u32>,
    map: HashMap<u64, u32>,
    /// One bit per RAM page: does the page have decoded code?
    is_code: Vec<u64>,
    ram_base: u64,
    /// Bumped when a page becomes code: harts must drop write-TLB entries.
    pub write_epoch: u64,
    /// Bumped when a page's decoded code is dropped: harts must drop fetch translations.
    pub fetch_epoch: u64,
    /// Most decoded pages held at once; at the limit the whole cache is dropped and refilled.
    limit: usize,
    /// Times the cache was dropped for being full.
    pub evictions: u64,
}

impl CodeCache {
    pub fn new(ram_base: u64, ram_len: u64) -> Self {
        let pages = (ram_len >> 12) as usize;
        CodeCache {
            pages: Vec::new(),
            free: Vec::new(),
            map: HashMap::new(),
            is_code: vec![0; pages.div_ceil(64)],
            ram_base,
            write_epoch: 0,
            fetch_epoch: 0,
            limit: CODE_PAGES_MAX,
            evictions: 0,
        }
    }

    /// Sets the most pages held at once (at least one).
    pub fn set_limit(&mut self, pages: usize) {
        self.limit = pages.max(1);
    }

    /// Decoded pages held now (each [`SLOTS`] ops, 16 KiB).
    pub fn resident(&self) -> usize {
        self.map.len()
    }

    /// Pages allocated so far (resident or free for reuse): what the cache costs in memory.
    pub fn allocated(&self) -> usize {
        self.pages.len()
    }

    #[inline]
    fn bit(&self, paddr: u64) -> Option<(usize, u64)> {
        let idx = (paddr.wrapping_sub(self.ram_base) >> 12) as usize;
        (idx / 64 < self.is_code.len()).then_some((idx / 64, 1u64 << (idx % 64)))
    }

    #[inline]
    pub fn is_code(&self, paddr: u64) -> bool {
        self.bit(paddr)
            .is_some_and(|(w, m)| self.is_code[w] & m != 0)
    }

    /// The decoded page for RAM page `paddr`, created empty on first use.
    pub fn slot_for(&mut self, paddr: u64) -> u32 {
        let ppn = paddr >> 12;
        if let Some(&s) = self.map.get(&ppn) {
            return s;
        }
        if self.free.is_empty() && self.pages.len() >= self.limit {
            // Full: a guest that executes from ever more pages must not make the host
            // allocate without bound. Dropping everything (as QEMU flushes its translation
            // buffer) is simple and correct; the working set refills it.
            self.flush();
            self.evictions += 1;
        }
        let s = match self.free.pop() {
            Some(s) => {
                self.pages[s as usize].fill(Op::UNDECODED);
                s
            }
            None => {
                self.pages.push(Box::new([Op::UNDECODED; SLOTS]));
                (self.pages.len() - 1) as u32
            }
        };
        self.map.insert(ppn, s);
        if let Some((w, m)) = self.bit(paddr) {
            self.is_code[w] |= m;
        }
        self.write_epoch += 1;
        s
    }

    /// Drops the decoded code of RAM page `paddr` (a store hit it).
    pub fn invalidate(&mut self, paddr: u64) {
        if let Some(s) = self.map.remove(&(paddr >> 12)) {
            self.free.push(s);
            self.fetch_epoch += 1;
        }
        if let Some((w, m)) = self.bit(paddr) {
            self.is_code[w] &= !m;
        }
    }

    /// Drops everything (FENCE.I: device DMA may have written code behind the harts' backs).
    pub fn flush(&mut self) {
        if self.map.is_empty() {
            return;
        }
        for &s in self.map.values() {
            self.free.push(s);
        }
        self.map.clear();
        self.is_code.fill(0);
        self.fetch_epoch += 1;
    }
}

/// The machine timer: `mtime` at a fixed frequency derived from the host's monotonic clock,
/// counting on from `base` (zero at power-on, the saved value after a restore: a restored
/// guest's mtime must not depend on how long the new host has been up).
pub struct Clock {
    start: Instant,
    base: u64,
}

/// mtime ticks per second (the timebase-frequency in the device tree).
pub const TIMEBASE_HZ: u64 = 10_000_000;

impl Clock {
    pub fn new() -> Self {
        Self::at(0)
    }
    /// A clock reading `mtime` now.
    pub fn at(mtime: u64) -> Self {
        Clock {
            start: Instant::now(),
            base: mtime,
        }
    }
    /// Moves the clock back by `d`: time the machine spent paused does not pass for the guest.
    pub fn skip(&mut self, d: Duration) {
        self.start += d;
    }
    #[inline]
    pub fn now(&self) -> u64 {
        self.base.wrapping_add(
            (self.start.elapsed().as_nanos() / (1_000_000_000 / TIMEBASE_HZ as u128)) as u64,
        )
    }
    /// Host time until `mtime` reaches `t` (zero if it has).
    pub fn until(&self, t: u64) -> Duration {
        let now = self.now();
        if t <= now {
            Duration::ZERO
        } else {
            Duration::from_nanos((t - now).saturating_mul(1_000_000_000 / TIMEBASE_HZ))
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The CLINT's per-hart state: software-interrupt bits and timer comparators.
pub struct Clint {
    pub msip: Vec<bool>,
    pub mtimecmp: Vec<u64>,
}

/// CLINT register layout (SiFive/ACLINT compatible).
pub const CLINT_MSIP: u64 = 0x0;
pub const CLINT_MTIMECMP: u64 = 0x4000;
pub const CLINT_MTIME: u64 = 0xbff8;
pub const CLINT_SIZE: u64 = 0x10000;

/// The PLIC's outputs: one external-interrupt line per hart and privilege (context 2h is M, 2h+1
/// is S), written under the PLIC's lock and read lock-free by the harts.
pub struct IrqOutputs {
    pub eip: Vec<AtomicBool>,
    wake: Wake,
}

impl IrqOutputs {
    pub fn new(contexts: usize) -> Self {
        IrqOutputs {
            eip: (0..contexts).map(|_| AtomicBool::new(false)).collect(),
            wake: Wake::default(),
        }
    }
    #[inline]
    pub fn get(&self, ctx: usize) -> bool {
        self.eip.get(ctx).is_some_and(|b| b.load(Ordering::Acquire))
    }
    pub fn set(&self, ctx: usize, v: bool) {
        if let Some(b) = self.eip.get(ctx) {
            if b.swap(v, Ordering::AcqRel) != v && v {
                self.wake.notify();
            }
        }
    }
    pub fn wake(&self) -> &Wake {
        &self.wake
    }
}

/// Wakes the run loop when every hart waits for an interrupt.
#[derive(Default)]
pub struct Wake {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        let mut f = self.flag.lock().unwrap_or_else(|p| p.into_inner());
        *f = true;
        self.cv.notify_all();
    }
    /// Sleeps until notified or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut f = self.flag.lock().unwrap_or_else(|p| p.into_inner());
        if !*f {
            f = self
                .cv
                .wait_timeout(f, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *f = false;
    }
}

/// SBI HSM states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HsmState {
    Started = 0,
    Stopped = 1,
    StartPending = 2,
}

/// Requests to one hart from the others.
pub struct Mailbox {
    pub ipi: bool,
    pub flush_tlb: bool,
    pub start: Option<(u64, u64)>,
    pub hsm: HsmState,
}

/// What the emulator counts as it runs: the trap-and-emulate machinery made visible. Every
/// counter sits on a slow path (a trap, an MMIO access, a translation the software TLB missed),
/// so counting costs the fast path nothing.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Synchronous exceptions taken, by cause (`mcause` code; the built-in SBI's ecalls too).
    pub exceptions: [u64; 32],
    /// Interrupts taken, by cause.
    pub interrupts: [u64; 16],
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    /// Translations done on the slow path: software-TLB misses, MMIO and uncached pages.
    pub tlb_misses: u64,
    /// Page-table walks (Sv39/Sv48/Sv57) among those.
    pub page_walks: u64,
}

/// Names of exception causes, as the privileged spec's table (index = cause code).
const EXCEPTION_NAMES: [&str; 16] = [
    "insn_misaligned",
    "insn_access_fault",
    "illegal_insn",
    "breakpoint",
    "load_misaligned",
    "load_access_fault",
    "store_misaligned",
    "store_access_fault",
    "ecall_u",
    "ecall_s",
    "cause_10",
    "ecall_m",
    "insn_page_fault",
    "load_page_fault",
    "cause_14",
    "store_page_fault",
];

/// Names of interrupt causes (index = cause code).
const INTERRUPT_NAMES: [&str; 12] = [
    "cause_0", "ssi", "cause_2", "msi", "cause_4", "sti", "cause_6", "mti", "cause_8", "sei",
    "cause_10", "mei",
];

impl Counters {
    /// The counters that are not zero, as (name, value): `traps.<cause>`,
    /// `interrupts.<cause>`, `mmio_reads`, `mmio_writes`, `tlb_misses`, `page_walks`.
    pub fn named(&self) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        for (i, &n) in self.exceptions.iter().enumerate() {
            if n != 0 {
                let name = EXCEPTION_NAMES
                    .get(i)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| format!("cause_{i}"));
                v.push((format!("traps.{name}"), n));
            }
        }
        for (i, &n) in self.interrupts.iter().enumerate() {
            if n != 0 {
                let name = INTERRUPT_NAMES
                    .get(i)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| format!("cause_{i}"));
                v.push((format!("interrupts.{name}"), n));
            }
        }
        v.push(("mmio_reads".into(), self.mmio_reads));
        v.push(("mmio_writes".into(), self.mmio_writes));
        v.push(("tlb_misses".into(), self.tlb_misses));
        v.push(("page_walks".into(), self.page_walks));
        v
    }
}

/// The part of a [`Sys`] that outlives one [`crate::EmuVm::run`] call: a machine paused (or
/// stopped to be saved) keeps its timers, mailboxes and decoded code, and a later `run`
/// continues from them.
pub struct SysState {
    pub code: CodeCache,
    pub clint: Clint,
    pub mail: Vec<Mailbox>,
    pub clock: Clock,
    pub counters: Counters,
}

/// Everything a hart touches besides its own registers.
pub struct Sys<'a> {
    pub ram: RamView<'a>,
    pub bus: &'a Bus,
    pub code: CodeCache,
    pub clint: Clint,
    pub clint_base: u64,
    pub irq: Arc<IrqOutputs>,
    pub exit: Arc<ExitSignal>,
    pub console: ConsoleOutput,
    /// SBI is implemented by the emulator (no M-mode firmware runs).
    pub builtin_sbi: bool,
    pub mail: Vec<Mailbox>,
    pub clock: Clock,
    pub counters: Counters,
    /// Set when the emulator meets something it cannot continue from.
    pub fault: Option<String>,
}

/// How a [`Sys`] is wired: everything but RAM and the bus, which it borrows.
pub struct SysConfig {
    /// Guest-physical address of the start of RAM (the decoded-code cache's base).
    pub ram_base: u64,
    pub clint_base: u64,
    pub harts: usize,
    /// The emulator serves SBI calls itself; only hart 0 starts (the rest wait for HSM).
    pub builtin_sbi: bool,
    pub irq: Arc<IrqOutputs>,
    pub exit: Arc<ExitSignal>,
    pub console: ConsoleOutput,
}

impl<'a> Sys<'a> {
    /// A machine at power-on: timers off, no interrupt pending, every hart started (with an
    /// M-mode firmware) or hart 0 only (with the built-in SBI).
    pub fn new(ram: RamView<'a>, bus: &'a Bus, c: SysConfig) -> Self {
        Sys {
            ram,
            bus,
            code: CodeCache::new(c.ram_base, ram.len()),
            clint: Clint {
                msip: vec![false; c.harts],
                mtimecmp: vec![u64::MAX; c.harts],
            },
            clint_base: c.clint_base,
            irq: c.irq,
            exit: c.exit,
            console: c.console,
            builtin_sbi: c.builtin_sbi,
            mail: (0..c.harts)
                .map(|i| Mailbox {
                    ipi: false,
                    flush_tlb: false,
                    start: None,
                    hsm: if !c.builtin_sbi || i == 0 {
                        HsmState::Started
                    } else {
                        HsmState::Stopped
                    },
                })
                .collect(),
            clock: Clock::new(),
            counters: Counters::default(),
            fault: None,
        }
    }

    /// A machine continuing from `state` (an earlier run's [`Sys::into_state`]).
    pub fn resume(ram: RamView<'a>, bus: &'a Bus, c: SysConfig, state: SysState) -> Self {
        let mut s = Self::new(ram, bus, c);
        s.code = state.code;
        s.clint = state.clint;
        s.mail = state.mail;
        s.clock = state.clock;
        s.counters = state.counters;
        s
    }

    /// What a later run continues from.
    pub fn into_state(self) -> SysState {
        SysState {
            code: self.code,
            clint: self.clint,
            mail: self.mail,
            clock: self.clock,
            counters: self.counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x8000_0000;

    #[test]
    fn code_cache_is_bounded() {
        let mut c = CodeCache::new(BASE, 64 << 12);
        c.set_limit(3);
        let epoch = c.fetch_epoch;
        for p in 0..3 {
            c.slot_for(BASE + (p << 12));
        }
        assert_eq!((c.resident(), c.allocated(), c.evictions), (3, 3, 0));
        // A fourth page: everything goes, the new page takes a reused slot.
        c.slot_for(BASE + (3 << 12));
        assert_eq!((c.resident(), c.allocated(), c.evictions), (1, 3, 1));
        assert!(!c.is_code(BASE) && c.is_code(BASE + (3 << 12)));
        assert!(
            c.fetch_epoch > epoch,
            "harts must drop their fetch translations"
        );
        // A guest touching page after page never makes it grow past the limit.
        for p in 0..64 {
            c.slot_for(BASE + (p << 12));
            assert!(c.allocated() <= 3);
        }
        // Invalidated pages are reused before the limit forces a drop.
        let e = c.evictions;
        c.invalidate(BASE + (63 << 12));
        c.slot_for(BASE + (5 << 12));
        assert_eq!(c.evictions, e);
    }
}
