//! One RISC-V hart: registers, CSRs, the MMU with its software TLBs, traps, and the executor.
//!
//! The hot path is: fetch a pre-decoded [`Op`] from the current code page (one compare when the
//! pc stays on the page), execute it with a match, and for loads/stores hit a direct-mapped TLB
//! whose entries map a virtual page straight to a RAM offset. Everything else (page walks, MMIO,
//! page-crossing accesses, code-page stores, CSRs, traps) is the slow path.

// `po + width <= 4096` reads as "the access fits in the page" for every width, 1 included.
#![allow(clippy::int_plus_one)]

use vireo_rvfp as fp;

use crate::csr::*;
use crate::decode::{decode16, decode32, insn_len, Kind, Op};
use crate::isa::{Ext, Isa, CACHE_BLOCK};
use crate::pmp::{Perm, Pmp};
use crate::sbi;
use crate::sys::{Sys, CLINT_MSIP, CLINT_MTIME, CLINT_MTIMECMP, CLINT_SIZE};

const TLB_SIZE: usize = 512;
const TLB_MASK: usize = TLB_SIZE - 1;
const NO_TAG: u64 = u64::MAX;
/// Mode key of untranslated accesses (M-mode, or satp off), ORed with the privilege, which
/// PMP's verdict depends on.
const BARE: u64 = 0x10;
/// ASIDs whose TLB entries a hart keeps live at once (per TLB); more are evicted, oldest first.
const LIVE_ASIDS: usize = 8;
/// Tag ids per TLB before it is cleared and they are reused (6 bits of the key).
const TAG_IDS: u8 = 64;

/// A trap about to be taken: cause (interrupt bit included) and the value for xtval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    pub cause: u64,
    pub tval: u64,
}

impl Trap {
    fn new(cause: u64, tval: u64) -> Self {
        Trap { cause, tval }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Exec,
}

impl Access {
    fn perm(self) -> Perm {
        match self {
            Access::Read => Perm::Read,
            Access::Write => Perm::Write,
            Access::Exec => Perm::Exec,
        }
    }
    fn page_fault(self, va: u64) -> Trap {
        Trap::new(
            match self {
                Access::Read => EXC_LOAD_PAGE,
                Access::Write => EXC_STORE_PAGE,
                Access::Exec => EXC_INSN_PAGE,
            },
            va,
        )
    }
    fn access_fault(self, va: u64) -> Trap {
        Trap::new(
            match self {
                Access::Read => EXC_LOAD_ACCESS,
                Access::Write => EXC_STORE_ACCESS,
                Access::Exec => EXC_INSN_ACCESS,
            },
            va,
        )
    }
}

#[derive(Clone, Copy)]
struct TlbEntry {
    /// Virtual page address | mode key.
    tag: u64,
    /// RAM offset of the page.
    off: u64,
    /// Decoded-code slot (fetch TLB only).
    slot: u32,
}

const EMPTY: TlbEntry = TlbEntry {
    tag: NO_TAG,
    off: 0,
    slot: 0,
};

/// Which ASIDs have live entries in one TLB, under which tag id (the id is bits 6..11 of the
/// key folded into every tag). Switching `satp` to another ASID switches ids, so the entries
/// of up to [`LIVE_ASIDS`] address spaces survive context switches; flushing an ASID forgets
/// its id; ids are never reused until they run out, and then the TLB is cleared.
#[derive(Clone, Copy)]
struct AsidTags {
    /// (ASID, id), most recently used first.
    live: [(u16, u8); LIVE_ASIDS],
    n: usize,
    next: u8,
}

impl AsidTags {
    const NEW: AsidTags = AsidTags {
        live: [(0, 0); LIVE_ASIDS],
        n: 0,
        next: 0,
    };

    /// The id of `asid`, allocating one if needed; true in the second value when the TLB must
    /// be cleared first because the ids ran out.
    #[inline]
    fn id(&mut self, asid: u16) -> (u8, bool) {
        if self.n > 0 && self.live[0].0 == asid {
            return (self.live[0].1, false);
        }
        if let Some(i) = self.live[..self.n].iter().position(|e| e.0 == asid) {
            let e = self.live[i];
            self.live.copy_within(0..i, 1);
            self.live[0] = e;
            return (e.1, false);
        }
        let mut clear = false;
        if self.next == TAG_IDS {
            self.next = 0;
            self.n = 0;
            clear = true;
        }
        let id = self.next;
        self.next += 1;
        self.live.copy_within(0..LIVE_ASIDS - 1, 1);
        self.live[0] = (asid, id);
        self.n = (self.n + 1).min(LIVE_ASIDS);
        (id, clear)
    }

    fn forget(&mut self, asid: u16) {
        if let Some(i) = self.live[..self.n].iter().position(|e| e.0 == asid) {
            self.live.copy_within(i + 1..self.n, i);
            self.n -= 1;
        }
    }

    fn forget_all(&mut self) {
        self.n = 0;
    }
}

/// A performance counter (cycle or instret) as the hart sees it: the retired-instruction count
/// plus an offset the CSR writes set, frozen while mcountinhibit says so.
#[derive(Clone, Copy, Default)]
struct Counter {
    off: u64,
    frozen: Option<u64>,
}

/// Why a slice of execution ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Budget used up or the hart needs its interrupts re-examined.
    Yield,
    /// WFI with nothing pending.
    Wait,
    /// The hart stopped itself (SBI HSM stop).
    Stopped,
}

pub struct Hart {
    pub id: u64,
    pub x: [u64; 32],
    pub f: [u64; 32],
    pub pc: u64,
    /// Privilege: 0 U, 1 S, 3 M.
    pub prv: u64,
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    /// Software-writable pending bits (SSIP, STIP, SEIP).
    pub mip_sw: u64,
    pub mtvec: u64,
    pub mscratch: u64,
    pub mepc: u64,
    pub mcause: u64,
    pub mtval: u64,
    pub mcounteren: u64,
    pub mcountinhibit: u64,
    pub stvec: u64,
    pub sscratch: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stval: u64,
    pub scounteren: u64,
    pub satp: u64,
    pub fcsr: u64,
    pub menvcfg: u64,
    pub senvcfg: u64,
    pub mseccfg: u64,
    pub pmp: Pmp,
    /// The extensions this hart implements.
    pub isa: Isa,
    /// Instructions retired before the current slice (never written by software: the
    /// counters the guest sees are [`Counter`]s over it).
    pub instret: u64,
    /// mcycle and minstret (cycles are counted as instructions: one per instruction).
    counters: [Counter; 2],
    /// Instructions retired in the current slice before the executing one (counters read
    /// `instret + retired`; `instret` itself advances once per slice).
    retired: u64,
    /// The supervisor timer comparator: Sstc's stimecmp, and what the built-in SBI's
    /// set_timer writes (it drives STIP when menvcfg.STCE is set or the built-in SBI runs).
    pub stimecmp: u64,
    reservation: Option<u64>,
    tlb_r: Box<[TlbEntry; TLB_SIZE]>,
    tlb_w: Box<[TlbEntry; TLB_SIZE]>,
    tlb_x: Box<[TlbEntry; TLB_SIZE]>,
    /// Keys folded into the tags of the read, write and fetch TLBs: bits 0..5 say the
    /// translation mode, bits 6..11 the TLB's generation, so a flush is a generation bump.
    rkey: u64,
    wkey: u64,
    ikey: u64,
    tags: [AsidTags; 3],
    /// Virtual range holding every TLB entry filled from a superpage or NAPOT mapping: an
    /// SFENCE.VMA of one address in it must drop the whole mapping, which the 4 KiB entries
    /// of the direct-mapped TLBs may hold at other indexes.
    big_lo: u64,
    big_hi: u64,
    fetch_vpn: u64,
    fetch_slot: u32,
    fetch_off: u64,
    write_epoch: u64,
    fetch_epoch: u64,
    /// Ends the current slice after this instruction.
    brk: bool,
    /// With `brk`: end the slice even though the hart could go on (PAUSE).
    yield_now: bool,
    stop: Stop,
}

macro_rules! load_fast {
    ($self:ident, $sys:ident, $va:expr, $w:expr, $get:ident) => {{
        let va: u64 = $va;
        let e = &$self.tlb_r[((va >> 12) as usize) & TLB_MASK];
        let po = va & 0xfff;
        if e.tag == (va & !0xfff) | $self.rkey && po + $w <= 4096 {
            match $sys.ram.$get(e.off + po) {
                Some(v) => Ok(v),
                None => $self.load_slow($sys, va, $w).map(|v| v as _),
            }
        } else {
            $self.load_slow($sys, va, $w).map(|v| v as _)
        }
    }};
}

macro_rules! store_fast {
    ($self:ident, $sys:ident, $va:expr, $w:expr, $v:expr, $put:ident, $t:ty) => {{
        let va: u64 = $va;
        let v = $v;
        let e = &$self.tlb_w[((va >> 12) as usize) & TLB_MASK];
        let po = va & 0xfff;
        if e.tag == (va & !0xfff) | $self.wkey
            && po + $w <= 4096
            && $sys.ram.$put(e.off + po, v as $t)
        {
            Ok(())
        } else {
            $self.store_slow($sys, va, $w, v as u64)
        }
    }};
}

/// The CSRs a snapshot keeps, by number, each named once: [`Hart::save`] lists them and
/// [`Hart::restore`] finds each by its number.
macro_rules! saved_csrs {
    ($($num:literal => $field:ident),* $(,)?) => {
        impl Hart {
            fn saved_csrs(&self) -> Vec<(u16, u64)> {
                vec![$(($num, self.$field)),*]
            }
            fn saved_csr(&mut self, num: u16) -> Option<&mut u64> {
                match num {
                    $($num => Some(&mut self.$field),)*
                    _ => None,
                }
            }
        }
    };
}

saved_csrs! {
    0x003 => fcsr,
    0x105 => stvec,
    0x106 => scounteren,
    0x10a => senvcfg,
    0x140 => sscratch,
    0x141 => sepc,
    0x142 => scause,
    0x143 => stval,
    0x180 => satp,
    0x300 => mstatus,
    0x302 => medeleg,
    0x303 => mideleg,
    0x304 => mie,
    0x305 => mtvec,
    0x306 => mcounteren,
    0x30a => menvcfg,
    0x320 => mcountinhibit,
    0x340 => mscratch,
    0x341 => mepc,
    0x342 => mcause,
    0x343 => mtval,
    0x344 => mip_sw,
    0x747 => mseccfg,
}

impl Hart {
    pub fn new(id: u64) -> Self {
        let mut h = Hart {
            id,
            x: [0; 32],
            f: [0; 32],
            pc: 0,
            prv: 3,
            mstatus: MS_XL64,
            medeleg: 0,
            mideleg: 0,
            mie: 0,
            mip_sw: 0,
            mtvec: 0,
            mscratch: 0,
            mepc: 0,
            mcause: 0,
            mtval: 0,
            mcounteren: 0,
            mcountinhibit: 0,
            stvec: 0,
            sscratch: 0,
            sepc: 0,
            scause: 0,
            stval: 0,
            scounteren: 0,
            satp: 0,
            fcsr: 0,
            menvcfg: 0,
            senvcfg: 0,
            mseccfg: 0,
            pmp: Pmp::default(),
            isa: Isa::max(),
            instret: 0,
            counters: [Counter::default(); 2],
            retired: 0,
            stimecmp: u64::MAX,
            reservation: None,
            tlb_r: Box::new([EMPTY; TLB_SIZE]),
            tlb_w: Box::new([EMPTY; TLB_SIZE]),
            tlb_x: Box::new([EMPTY; TLB_SIZE]),
            rkey: 0,
            wkey: 0,
            ikey: 0,
            tags: [AsidTags::NEW; 3],
            big_lo: u64::MAX,
            big_hi: 0,
            fetch_vpn: u64::MAX,
            fetch_slot: 0,
            fetch_off: 0,
            write_epoch: 0,
            fetch_epoch: 0,
            brk: false,
            yield_now: false,
            stop: Stop::Yield,
        };
        h.update_keys();
        h
    }

    /// The hart's architectural state, for a snapshot. Called between slices (the run loop
    /// is parked), when no instruction is half-executed and `retired` is folded into
    /// `instret`.
    pub fn save(&self) -> crate::state::HartState {
        let (pmp_cfg, pmp_addr) = self.pmp.save();
        crate::state::HartState {
            id: self.id,
            x: self.x.to_vec(),
            f: self.f.to_vec(),
            pc: self.pc,
            prv: self.prv,
            csrs: self.saved_csrs(),
            pmp_cfg,
            pmp_addr,
            isa: self.isa.bits(),
            instret: self.instret + self.retired,
            counters: self.counters.iter().map(|c| (c.off, c.frozen)).collect(),
            stimecmp: self.stimecmp,
            reservation: self.reservation,
        }
    }

    /// A hart in the state [`Hart::save`] gave, with empty TLBs; an error names what does not
    /// fit this hart model.
    pub fn restore(st: &crate::state::HartState) -> Result<Hart, String> {
        let isa = Isa::from_bits(st.isa).ok_or_else(|| {
            format!(
                "hart {}: the snapshot's hart has extensions {:#x} this emulator does not implement",
                st.id, st.isa
            )
        })?;
        let mut h = Hart::new(st.id);
        h.set_isa(isa);
        let regs = |v: &[u64], what: &str| -> Result<[u64; 32], String> {
            v.try_into().map_err(|_| {
                format!(
                    "hart {}: {} {what} registers saved, expected 32",
                    st.id,
                    v.len()
                )
            })
        };
        h.x = regs(&st.x, "integer")?;
        h.f = regs(&st.f, "floating-point")?;
        if st.x[0] != 0 {
            return Err(format!(
                "hart {}: x0 is {:#x}, must be zero",
                st.id, st.x[0]
            ));
        }
        if !matches!(st.prv, 0 | 1 | 3) {
            return Err(format!(
                "hart {}: privilege {} is not U, S or M",
                st.id, st.prv
            ));
        }
        h.pc = st.pc;
        h.prv = st.prv;
        for &(n, v) in &st.csrs {
            let slot = h.saved_csr(n).ok_or_else(|| {
                format!(
                    "hart {}: the snapshot holds CSR {n:#x}, which this emulator does not keep",
                    st.id
                )
            })?;
            *slot = v;
        }
        // The translation code trusts satp to hold a mode the hart implements (its writes
        // ignore any other), so a restore must too.
        if !matches!(h.satp >> 60, SATP_BARE | SATP_SV39 | SATP_SV48) {
            return Err(format!(
                "hart {}: satp selects translation mode {}, which this hart does not implement",
                st.id,
                h.satp >> 60
            ));
        }
        if !h.pmp.restore(&st.pmp_cfg, &st.pmp_addr) {
            return Err(format!(
                "hart {}: {} PMP entries saved, this hart has a different count",
                st.id,
                st.pmp_cfg.len()
            ));
        }
        if st.counters.len() != h.counters.len() {
            return Err(format!(
                "hart {}: {} counters saved, expected 2",
                st.id,
                st.counters.len()
            ));
        }
        for (c, &(off, frozen)) in h.counters.iter_mut().zip(&st.counters) {
            c.off = off;
            c.frozen = frozen;
        }
        h.instret = st.instret;
        h.stimecmp = st.stimecmp;
        h.reservation = st.reservation;
        // Also recomputes the TLB keys from the privilege, satp and mstatus just set.
        h.flush_tlb();
        Ok(h)
    }

    /// Sets the extensions this hart implements, with their reset state (hardware updating of
    /// A/D bits on, as before Svadu made it switchable).
    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = isa;
        self.menvcfg = if isa.has(Ext::Svadu) { ENVCFG_ADUE } else { 0 };
        self.update_keys();
    }

    /// Puts the hart where the built-in SBI hands over to a supervisor: S-mode at `pc` with the
    /// delegation an SBI firmware sets up (everything but S-mode ecalls goes to S).
    pub fn enter_supervisor(&mut self, pc: u64, a0: u64, a1: u64) {
        self.prv = 1;
        self.pc = pc;
        self.x[10] = a0;
        self.x[11] = a1;
        self.medeleg = 0xb1ff & !(1 << EXC_ECALL_S);
        self.mideleg = S_IRQS;
        self.mcounteren = 0xffff_ffff;
        // User-mode cycle/time/instret (the vDSO's clock_gettime reads `time`). Linux sets
        // scounteren from its SBI PMU driver; with no SBI PMU it keeps its legacy driver and
        // relies on this (architecturally unspecified) reset value.
        self.scounteren = 0x7;
        // What OpenSBI enables for its supervisor when the hart has the extension: the
        // supervisor timer, page-based memory types, and the seed CSR.
        let isa = self.isa;
        self.menvcfg = [
            (Ext::Sstc, ENVCFG_STCE),
            (Ext::Svpbmt, ENVCFG_PBMTE),
            (Ext::Svadu, ENVCFG_ADUE),
            (Ext::Zicbom, ENVCFG_CBIE | ENVCFG_CBCFE),
            (Ext::Zicboz, ENVCFG_CBZE),
        ]
        .iter()
        .filter(|(e, _)| isa.has(*e))
        .fold(0, |v, (_, b)| v | b);
        self.mseccfg = if isa.has(Ext::Zkr) { MSECCFG_SSEED } else { 0 };
        self.pmp.allow_all();
        self.mstatus &= !(MS_SIE | MS_SPIE | MS_SPP);
        self.satp = 0;
        self.flush_tlb();
        self.update_keys();
    }

    // ----------------------------------------------------------------- MMU

    fn update_keys(&mut self) {
        let mprv = self.mstatus & MS_MPRV != 0 && self.prv == 3;
        let dprv = if mprv {
            (self.mstatus & MS_MPP) >> MS_MPP_SHIFT
        } else {
            self.prv
        };
        let paging = self.satp >> 60 != SATP_BARE;
        let flags = (u64::from(self.mstatus & MS_SUM != 0) << 2)
            | (u64::from(self.mstatus & MS_MXR != 0) << 3);
        let dmode = if dprv == 3 || !paging {
            BARE | dprv
        } else {
            dprv | flags | 0x20
        };
        let imode = if self.prv == 3 || !paging {
            BARE | self.prv
        } else {
            self.prv | 0x20
        };
        let asid = self.asid();
        let mut ids = [0u64; 3];
        for (t, id) in ids.iter_mut().enumerate() {
            let (v, clear) = self.tags[t].id(asid);
            if clear {
                self.clear_tlb(t);
            }
            *id = u64::from(v);
        }
        self.rkey = dmode | (ids[0] << 6);
        self.wkey = dmode | (ids[1] << 6);
        self.ikey = imode | (ids[2] << 6);
        self.fetch_vpn = u64::MAX;
    }

    fn asid(&self) -> u16 {
        (self.satp >> 44) as u16
    }

    /// Drops every cached write translation (the dirty log was taken: see
    /// `vireo_machine::memory`).
    pub(crate) fn forget_write_translations(&mut self) {
        self.clear_tlb(1);
    }

    fn clear_tlb(&mut self, which: usize) {
        match which {
            0 => self.tlb_r.fill(EMPTY),
            1 => self.tlb_w.fill(EMPTY),
            _ => self.tlb_x.fill(EMPTY),
        }
    }

    /// Invalidates one TLB (0 read, 1 write, 2 fetch) for every ASID: its live ids are
    /// forgotten, so no entry tagged with them matches again.
    fn bump_tlb(&mut self, which: usize) {
        self.tags[which].forget_all();
        self.update_keys();
    }

    /// Invalidates every translation of every ASID.
    pub fn flush_tlb(&mut self) {
        for t in &mut self.tags {
            t.forget_all();
        }
        self.big_lo = u64::MAX;
        self.big_hi = 0;
        self.update_keys();
    }

    /// Invalidates the translations of one ASID.
    fn flush_asid(&mut self, asid: u16) {
        for t in &mut self.tags {
            t.forget(asid);
        }
        self.update_keys();
    }

    /// Invalidates the translations of virtual address `va`, in one ASID or all.
    fn flush_va(&mut self, va: u64, asid: Option<u16>) {
        if (self.big_lo..self.big_hi).contains(&va) {
            // It may be part of a larger mapping cached at other indexes.
            match asid {
                Some(a) => self.flush_asid(a),
                None => self.flush_tlb(),
            }
            return;
        }
        // Direct-mapped: an entry for `va`, of any ASID, can only be at this index.
        let idx = ((va >> 12) as usize) & TLB_MASK;
        self.tlb_r[idx] = EMPTY;
        self.tlb_w[idx] = EMPTY;
        self.tlb_x[idx] = EMPTY;
        self.fetch_vpn = u64::MAX;
    }

    /// Drops what other harts' code-cache changes made stale.
    fn sync_epochs(&mut self, sys: &Sys) {
        if self.write_epoch != sys.code.write_epoch {
            self.write_epoch = sys.code.write_epoch;
            self.bump_tlb(1);
        }
        if self.fetch_epoch != sys.code.fetch_epoch {
            self.fetch_epoch = sys.code.fetch_epoch;
            self.bump_tlb(2);
        }
    }

    /// Translates `va` for an access of `w` bytes (within one page), setting A/D bits as
    /// hardware does when Svadu's updating is on, checks PMP, and fills the matching TLB when
    /// the target is RAM and PMP allows the whole page.
    fn translate(&mut self, sys: &mut Sys, va: u64, w: u64, acc: Access) -> Result<u64, Trap> {
        self.translate_page(sys, va, w, acc).map(|(pa, _)| pa)
    }

    /// [`Hart::translate`], also saying whether PMP allows the whole page (so that its
    /// translation may be cached); when not, only the `w` bytes at `va` were checked.
    fn translate_page(
        &mut self,
        sys: &mut Sys,
        va: u64,
        w: u64,
        acc: Access,
    ) -> Result<(u64, bool), Trap> {
        let key = match acc {
            Access::Read => self.rkey,
            Access::Write => self.wkey,
            Access::Exec => self.ikey,
        };
        sys.counters.tlb_misses += 1;
        let pa = if key & 0x30 == BARE {
            va
        } else {
            sys.counters.page_walks += 1;
            self.walk(sys, va, acc, key)?
        };
        // Physical addresses are 56 bits.
        if pa >> 56 != 0 {
            return Err(acc.access_fault(va));
        }
        let prv = key & 3;
        if !self.pmp.check(pa & !0xfff, 4096, acc.perm(), prv) {
            if !self.pmp.check(pa, w, acc.perm(), prv) {
                return Err(acc.access_fault(va));
            }
            // Allowed, but not for the whole page: nothing may cache it.
            return Ok((pa, false));
        }
        if let Some(off) = sys.ram.offset(pa & !0xfff, 4096) {
            let idx = ((va >> 12) as usize) & TLB_MASK;
            let tag = (va & !0xfff) | key;
            match acc {
                Access::Read => self.tlb_r[idx] = TlbEntry { tag, off, slot: 0 },
                Access::Write => {
                    if !sys.code.is_code(pa) {
                        // Stores through the cached entry are not marked one by one: the
                        // page is marked now, and the entry dropped when the log is taken.
                        sys.ram.mark_dirty(off, 4096);
                        self.tlb_w[idx] = TlbEntry { tag, off, slot: 0 };
                    }
                }
                Access::Exec => {}
            }
        }
        Ok((pa, true))
    }

    fn walk(&mut self, sys: &mut Sys, va: u64, acc: Access, key: u64) -> Result<u64, Trap> {
        let prv = key & 3;
        let sum = key & 4 != 0;
        let mxr = key & 8 != 0;
        let levels = match self.satp >> 60 {
            SATP_SV39 => 3,
            _ => 4,
        };
        let va_bits = 12 + 9 * levels;
        // The upper bits must all equal the top translated bit.
        let top = ((va as i64) >> (va_bits - 1)) as u64;
        if top != 0 && top != u64::MAX {
            return Err(acc.page_fault(va));
        }
        let mut table = (self.satp & ((1 << 44) - 1)) << 12;
        for level in (0..levels).rev() {
            let idx = (va >> (12 + 9 * level)) & 0x1ff;
            let pte_addr = table + idx * 8;
            // The walk's own accesses are S-mode accesses for PMP.
            if !self.pmp.check(pte_addr, 8, Perm::Read, 1) {
                return Err(acc.access_fault(va));
            }
            let pte_off = sys
                .ram
                .offset(pte_addr, 8)
                .ok_or_else(|| acc.access_fault(va))?;
            let mut pte = sys
                .ram
                .load_u64(pte_off)
                .ok_or_else(|| acc.access_fault(va))?;
            let (v, r, w, x, u, a, d) = (
                pte & 1 != 0,
                pte & 2 != 0,
                pte & 4 != 0,
                pte & 8 != 0,
                pte & 16 != 0,
                pte & 64 != 0,
                pte & 128 != 0,
            );
            // Bits 60..54 are reserved; PBMT (62..61) needs Svpbmt with menvcfg.PBMTE, and
            // its value 3 is reserved; N (63) needs Svnapot.
            let pbmt = (pte >> 61) & 3;
            let napot = pte >> 63 != 0;
            let pbmt_on = self.isa.has(Ext::Svpbmt) && self.menvcfg & ENVCFG_PBMTE != 0;
            if !v
                || (!r && w)
                || (pte >> 54) & 0x7f != 0
                || (pbmt != 0 && !pbmt_on)
                || pbmt == 3
                || (napot && !self.isa.has(Ext::Svnapot))
            {
                return Err(acc.page_fault(va));
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if !r && !x {
                // N and PBMT are reserved in pointers to the next level.
                if a || d || u || napot || pbmt != 0 {
                    return Err(acc.page_fault(va));
                }
                table = ppn << 12;
                continue;
            }
            // Leaf: permission checks.
            let ok = match acc {
                Access::Exec => x,
                Access::Read => r || (mxr && x),
                Access::Write => w,
            };
            let priv_ok = match prv {
                0 => u,
                _ => !u || (sum && acc != Access::Exec),
            };
            if !ok || !priv_ok {
                return Err(acc.page_fault(va));
            }
            // Superpages must be aligned; Svnapot defines only 64 KiB (ppn[3:0] = 1000) at
            // the 4 KiB level.
            let low = if napot {
                if level != 0 || ppn & 0xf != 0b1000 {
                    return Err(acc.page_fault(va));
                }
                0xf
            } else {
                let low = (1u64 << (9 * level)) - 1;
                if ppn & low != 0 {
                    return Err(acc.page_fault(va));
                }
                low
            };
            let need = 64 | if acc == Access::Write { 128 } else { 0 };
            if pte & need != need {
                // Svade (Svadu with menvcfg.ADUE clear): software manages A and D.
                if self.isa.has(Ext::Svadu) && self.menvcfg & ENVCFG_ADUE == 0 {
                    return Err(acc.page_fault(va));
                }
                if !self.pmp.check(pte_addr, 8, Perm::Write, 1) {
                    return Err(acc.access_fault(va));
                }
                pte |= need;
                sys.ram.store_u64(pte_off, pte);
                sys.ram.mark_dirty(pte_off, 8);
                if sys.code.is_code(pte_addr) {
                    sys.code.invalidate(pte_addr);
                }
            }
            let size = 1u64 << (12 + if napot { 4 } else { 9 * level });
            if size > 4096 {
                let base = va & !(size - 1);
                self.big_lo = self.big_lo.min(base);
                self.big_hi = self.big_hi.max(base.saturating_add(size));
            }
            return Ok(((ppn & !low) << 12) | (va & (size - 1)));
        }
        Err(acc.page_fault(va))
    }

    // ------------------------------------------------------- loads/stores

    fn load_slow(&mut self, sys: &mut Sys, va: u64, w: u64) -> Result<u64, Trap> {
        self.sync_epochs(sys);
        if (va & 0xfff) + w > 4096 {
            let mut v = 0u64;
            for i in 0..w {
                v |= self.load_slow(sys, va.wrapping_add(i), 1)? << (8 * i);
            }
            return Ok(v);
        }
        let pa = self.translate(sys, va, w, Access::Read)?;
        self.phys_read(sys, pa, w)
            .ok_or(Trap::new(EXC_LOAD_ACCESS, va))
    }

    fn phys_read(&mut self, sys: &mut Sys, pa: u64, w: u64) -> Option<u64> {
        if let Some(off) = sys.ram.offset(pa, w) {
            return match w {
                1 => sys.ram.load_u8(off).map(u64::from),
                2 => sys.ram.load_u16(off).map(u64::from),
                4 => sys.ram.load_u32(off).map(u64::from),
                _ => sys.ram.load_u64(off),
            };
        }
        let coff = pa.wrapping_sub(sys.clint_base);
        if coff < CLINT_SIZE {
            return Some(self.clint_read(sys, coff, w));
        }
        sys.counters.mmio_reads += 1;
        let mut b = [0u8; 8];
        sys.bus
            .read(pa, &mut b[..w as usize])
            .then(|| u64::from_le_bytes(b))
    }

    fn store_slow(&mut self, sys: &mut Sys, va: u64, w: u64, v: u64) -> Result<(), Trap> {
        self.sync_epochs(sys);
        if (va & 0xfff) + w > 4096 {
            // Check both pages before writing either, so a fault leaves memory untouched.
            self.translate(sys, va, 1, Access::Write)?;
            self.translate(sys, (va | 0xfff).wrapping_add(1), 1, Access::Write)?;
            for i in 0..w {
                self.store_slow(sys, va.wrapping_add(i), 1, v >> (8 * i))?;
            }
            return Ok(());
        }
        let pa = self.translate(sys, va, w, Access::Write)?;
        if sys.code.is_code(pa) {
            sys.code.invalidate(pa);
            self.sync_epochs(sys);
        }
        if self.phys_write(sys, pa, w, v) {
            Ok(())
        } else {
            Err(Trap::new(EXC_STORE_ACCESS, va))
        }
    }

    fn phys_write(&mut self, sys: &mut Sys, pa: u64, w: u64, v: u64) -> bool {
        if let Some(off) = sys.ram.offset(pa, w) {
            // Writes that no cached translation covers (code pages, pages PMP splits) are
            // marked one by one; the first write of a miss is marked twice, here and when
            // its translation was cached (which a translation checked for a store but not
            // followed by one, as cbo.clean's, needs).
            sys.ram.mark_dirty(off, w);
            return match w {
                1 => sys.ram.store_u8(off, v as u8),
                2 => sys.ram.store_u16(off, v as u16),
                4 => sys.ram.store_u32(off, v as u32),
                _ => sys.ram.store_u64(off, v),
            };
        }
        let coff = pa.wrapping_sub(sys.clint_base);
        if coff < CLINT_SIZE {
            self.clint_write(sys, coff, w, v);
            return true;
        }
        sys.counters.mmio_writes += 1;
        let ok = sys.bus.write(pa, &v.to_le_bytes()[..w as usize]);
        // A device write may have raised an interrupt or asked to stop the machine.
        self.brk = true;
        ok
    }

    fn clint_read(&self, sys: &Sys, off: u64, w: u64) -> u64 {
        let harts = sys.clint.msip.len() as u64;
        let v = if (CLINT_MTIME..CLINT_MTIME + 8).contains(&off) {
            sys.clock.now() >> (8 * (off - CLINT_MTIME))
        } else if (CLINT_MTIMECMP..CLINT_MTIMECMP + 8 * harts).contains(&off) {
            let h = ((off - CLINT_MTIMECMP) / 8) as usize;
            sys.clint.mtimecmp[h] >> (8 * (off % 8))
        } else if off < 4 * harts {
            u64::from(sys.clint.msip[(off / 4) as usize]) * u64::from(off.is_multiple_of(4))
        } else {
            0
        };
        if w == 8 {
            v
        } else {
            v & ((1 << (8 * w)) - 1)
        }
    }

    fn clint_write(&mut self, sys: &mut Sys, off: u64, w: u64, v: u64) {
        let harts = sys.clint.msip.len() as u64;
        if (CLINT_MTIMECMP..CLINT_MTIMECMP + 8 * harts).contains(&off) {
            let h = ((off - CLINT_MTIMECMP) / 8) as usize;
            let shift = 8 * (off % 8);
            let mask = if w == 8 {
                u64::MAX
            } else {
                ((1u64 << (8 * w)) - 1) << shift
            };
            let old = sys.clint.mtimecmp[h];
            sys.clint.mtimecmp[h] = (old & !mask) | ((v << shift) & mask);
        } else if off < 4 * harts && off.is_multiple_of(4) {
            sys.clint.msip[(off / 4) as usize] = v & 1 != 0;
        }
        let _ = CLINT_MSIP;
        self.brk = true;
    }

    // ---------------------------------------------------------- fetching

    #[inline(always)]
    fn fetch(&mut self, sys: &mut Sys) -> Result<Op, Trap> {
        let pc = self.pc;
        if pc >> 12 != self.fetch_vpn {
            self.fetch_refill(sys, pc)?;
        }
        // An undecoded slot comes back as is; `exec` decodes it (one arm of its jump table
        // rather than a test on every instruction).
        Ok(sys.code.pages[self.fetch_slot as usize][((pc & 0xfff) >> 1) as usize])
    }

    fn fetch_refill(&mut self, sys: &mut Sys, pc: u64) -> Result<(), Trap> {
        self.sync_epochs(sys);
        let idx = ((pc >> 12) as usize) & TLB_MASK;
        let tag = (pc & !0xfff) | self.ikey;
        let e = self.tlb_x[idx];
        let (off, slot) = if e.tag == tag {
            (e.off, e.slot)
        } else {
            let (pa, whole_page) = self.translate_page(sys, pc, 2, Access::Exec)?;
            let off = sys
                .ram
                .offset(pa & !0xfff, 4096)
                .ok_or(Trap::new(EXC_INSN_ACCESS, pc))?;
            let slot = sys.code.slot_for(pa);
            // A page that just became code must leave this hart's write TLB.
            self.sync_epochs(sys);
            if !whole_page {
                // PMP allows this instruction's first parcel but not all of the page: check
                // the whole instruction, and every fetch after it.
                let po = pc & 0xfff;
                let lo = sys.ram.load_u16(off + po).unwrap_or(0);
                let len = u64::from(insn_len(lo)).min(4096 - po);
                if !self.pmp.check(pa, len, Perm::Exec, self.ikey & 3) {
                    return Err(Trap::new(EXC_INSN_ACCESS, pc));
                }
                self.fetch_slot = slot;
                self.fetch_off = off;
                self.fetch_vpn = u64::MAX;
                return Ok(());
            }
            self.tlb_x[idx] = TlbEntry { tag, off, slot };
            (off, slot)
        };
        self.fetch_vpn = pc >> 12;
        self.fetch_slot = slot;
        self.fetch_off = off;
        Ok(())
    }

    fn decode_at(&mut self, sys: &mut Sys, pc: u64) -> Result<Op, Trap> {
        let po = pc & 0xfff;
        let lo = sys
            .ram
            .load_u16(self.fetch_off + po)
            .ok_or(Trap::new(EXC_INSN_ACCESS, pc))?;
        if insn_len(lo) == 2 {
            let op = decode16(lo);
            sys.code.pages[self.fetch_slot as usize][(po >> 1) as usize] = op;
            return Ok(op);
        }
        if po <= 4092 {
            let w = sys
                .ram
                .load_u32(self.fetch_off + po)
                .ok_or(Trap::new(EXC_INSN_ACCESS, pc))?;
            let op = decode32(w, self.isa);
            sys.code.pages[self.fetch_slot as usize][(po >> 1) as usize] = op;
            return Ok(op);
        }
        // The instruction straddles two pages: decode it every time, never cache it.
        let next = pc.wrapping_add(2);
        let pa = self.translate(sys, next, 2, Access::Exec)?;
        let hi = self
            .phys_read(sys, pa, 2)
            .filter(|_| sys.ram.offset(pa, 2).is_some())
            .ok_or(Trap::new(EXC_INSN_ACCESS, next))?;
        // The translation may have changed the fetch page; re-establish it.
        self.fetch_vpn = u64::MAX;
        Ok(decode32(u32::from(lo) | ((hi as u32) << 16), self.isa))
    }

    /// The raw bits of the instruction at pc, for xtval on illegal-instruction traps.
    fn raw_insn(&mut self, sys: &mut Sys) -> u64 {
        let pc = self.pc;
        let mut bits = 0u64;
        for i in 0..2 {
            let Ok(pa) = self.translate(sys, pc.wrapping_add(2 * i), 2, Access::Exec) else {
                break;
            };
            let Some(h) = self.phys_read(sys, pa, 2) else {
                break;
            };
            bits |= h << (16 * i);
            if i == 0 && insn_len(h as u16) == 2 {
                break;
            }
        }
        self.fetch_vpn = u64::MAX;
        bits
    }

    // ------------------------------------------------------- interrupts

    /// Pending interrupt bits, devices and timers included.
    pub fn mip(&self, sys: &Sys) -> u64 {
        let id = self.id as usize;
        let mut v = self.mip_sw;
        if sys.clint.msip[id] {
            v |= IRQ_MSI;
        }
        let now = sys.clock.now();
        if now >= sys.clint.mtimecmp[id] {
            v |= IRQ_MTI;
        }
        if self.menvcfg & ENVCFG_STCE != 0 {
            // Sstc: STIP is stimecmp's, and software cannot set it.
            v &= !IRQ_STI;
            if now >= self.stimecmp {
                v |= IRQ_STI;
            }
        } else if sys.builtin_sbi && now >= self.stimecmp {
            v |= IRQ_STI;
        }
        if sys.irq.get(2 * id) {
            v |= IRQ_MEI;
        }
        if sys.irq.get(2 * id + 1) {
            v |= IRQ_SEI;
        }
        v
    }

    /// Whether WFI should stop waiting: some interrupt is pending and enabled in mie.
    pub fn wakeup_pending(&self, sys: &Sys) -> bool {
        self.mip(sys) & self.mie != 0
    }

    /// Takes the highest-priority interrupt that is pending and enabled, if any.
    pub fn check_interrupts(&mut self, sys: &mut Sys) -> bool {
        let pending = self.mip(sys) & self.mie;
        if pending == 0 {
            return false;
        }
        let m = pending & !self.mideleg;
        let s = pending & self.mideleg;
        let m_on = self.prv < 3 || self.mstatus & MS_MIE != 0;
        let s_on = self.prv == 0 || (self.prv == 1 && self.mstatus & MS_SIE != 0);
        let set = if m_on && m != 0 {
            m
        } else if s_on && s != 0 {
            s
        } else {
            return false;
        };
        for bit in [11u64, 3, 7, 9, 1, 5] {
            if set & (1 << bit) != 0 {
                self.trap(sys, Trap::new(INTERRUPT | bit, 0));
                return true;
            }
        }
        false
    }

    /// Picks up IPIs and remote fences other harts posted.
    fn poll_mail(&mut self, sys: &mut Sys) {
        let m = &mut sys.mail[self.id as usize];
        if m.ipi {
            m.ipi = false;
            self.mip_sw |= IRQ_SSI;
        }
        if m.flush_tlb {
            m.flush_tlb = false;
            self.flush_tlb();
        }
    }

    // ------------------------------------------------------------ traps

    pub fn trap(&mut self, sys: &mut Sys, t: Trap) {
        let irq = t.cause & INTERRUPT != 0;
        let code = t.cause & 63;
        let counter = if irq {
            sys.counters.interrupts.get_mut(code as usize)
        } else {
            sys.counters.exceptions.get_mut(code as usize)
        };
        if let Some(n) = counter {
            *n += 1;
        }
        if sys.builtin_sbi && t.cause == EXC_ECALL_S {
            sbi::call(self, sys);
            self.pc = self.pc.wrapping_add(4);
            self.brk = true;
            return;
        }
        self.reservation = None;
        let deleg = if irq { self.mideleg } else { self.medeleg };
        if self.prv <= 1 && (deleg >> code) & 1 != 0 {
            self.scause = t.cause;
            self.sepc = self.pc;
            self.stval = t.tval;
            let sie = self.mstatus & MS_SIE != 0;
            self.mstatus &= !(MS_SPIE | MS_SIE | MS_SPP);
            if sie {
                self.mstatus |= MS_SPIE;
            }
            if self.prv == 1 {
                self.mstatus |= MS_SPP;
            }
            self.prv = 1;
            self.pc = vector(self.stvec, irq, code);
        } else {
            if sys.builtin_sbi {
                sys.fault = Some(format!(
                    "hart {} took a trap with no firmware to handle it: cause {:#x}, tval {:#x}, pc {:#x}, privilege {}",
                    self.id, t.cause, t.tval, self.pc, self.prv
                ));
                self.brk = true;
                return;
            }
            self.mcause = t.cause;
            self.mepc = self.pc;
            self.mtval = t.tval;
            let mie = self.mstatus & MS_MIE != 0;
            self.mstatus &= !(MS_MPIE | MS_MIE | MS_MPP);
            if mie {
                self.mstatus |= MS_MPIE;
            }
            self.mstatus |= self.prv << MS_MPP_SHIFT;
            self.prv = 3;
            self.pc = vector(self.mtvec, irq, code);
        }
        self.update_keys();
    }

    fn illegal(&mut self, sys: &mut Sys) -> Trap {
        Trap::new(EXC_ILLEGAL, self.raw_insn(sys))
    }

    // -------------------------------------------------------------- CSRs

    fn counter_ok(&self, csr: u16) -> bool {
        let bit = 1u64 << (csr & 31);
        match self.prv {
            3 => true,
            1 => self.mcounteren & bit != 0,
            _ => self.mcounteren & bit != 0 && self.scounteren & bit != 0,
        }
    }

    fn fs_on(&self) -> bool {
        self.mstatus & MS_FS != 0
    }

    fn fs_dirty(&mut self) {
        self.mstatus |= MS_FS;
    }

    fn csr_read(&mut self, sys: &mut Sys, csr: u16) -> Option<u64> {
        if u64::from((csr >> 8) & 3) > self.prv {
            return None;
        }
        Some(match csr {
            FFLAGS if self.fs_on() => self.fcsr & 0x1f,
            FRM if self.fs_on() => (self.fcsr >> 5) & 7,
            FCSR if self.fs_on() => self.fcsr & 0xff,
            CYCLE | INSTRET if self.counter_ok(csr) => self.counter((csr == INSTRET) as usize),
            TIME if self.counter_ok(csr) => sys.clock.now(),
            0xc03..=0xc1f if self.counter_ok(csr) => 0,
            SSTATUS => self.read_mstatus() & SSTATUS_MASK,
            SIE => self.mie & self.mideleg,
            STVEC => self.stvec,
            SCOUNTEREN => self.scounteren,
            SENVCFG => self.senvcfg,
            STIMECMP if self.stimecmp_ok() => self.stimecmp,
            SSCRATCH => self.sscratch,
            SEPC => self.sepc,
            SCAUSE => self.scause,
            STVAL => self.stval,
            SIP => self.mip(sys) & self.mideleg,
            SATP if self.prv == 3 || self.mstatus & MS_TVM == 0 => self.satp,
            MVENDORID | MARCHID | MIMPID | MCONFIGPTR => 0,
            MHARTID => self.id,
            MSTATUS => self.read_mstatus(),
            MISA => MISA_VALUE,
            MEDELEG => self.medeleg,
            MIDELEG => self.mideleg,
            MIE => self.mie,
            MTVEC => self.mtvec,
            MCOUNTEREN => self.mcounteren,
            MENVCFG => self.menvcfg,
            MSECCFG if self.isa.has(Ext::Zkr) => self.mseccfg,
            MCOUNTINHIBIT => self.mcountinhibit,
            MSCRATCH => self.mscratch,
            MEPC => self.mepc,
            MCAUSE => self.mcause,
            MTVAL => self.mtval,
            MIP => self.mip(sys),
            // pmpcfg1/3/... do not exist on RV64; entries past 15 read as zero.
            0x3a0..=0x3af if csr.is_multiple_of(2) => self.pmp.read_cfg((csr - PMPCFG0) as usize),
            0x3b0..=0x3ef => self.pmp.read_addr((csr - PMPADDR0) as usize),
            // Sdtrig with no triggers: tselect holds only 0, where tdata1's type 0 says "no
            // trigger" and tinfo lists only that type. tinfo's version field stays 0: OpenSBI
            // counts a trigger unless tinfo reads exactly 1.
            TSELECT | TDATA1 | TDATA2 | TDATA3 => 0,
            TINFO => 1,
            MCYCLE | MINSTRET => self.counter((csr == MINSTRET) as usize),
            0xb03..=0xb1f | 0x323..=0x33f => 0,
            _ => return None,
        })
    }

    fn read_mstatus(&self) -> u64 {
        let mut v = self.mstatus | MS_XL64;
        if v & MS_FS == MS_FS {
            v |= MS_SD;
        }
        v
    }

    fn csr_write(&mut self, sys: &mut Sys, csr: u16, v: u64) -> Option<()> {
        if u64::from((csr >> 8) & 3) > self.prv || (csr >> 10) & 3 == 3 {
            return None;
        }
        match csr {
            FFLAGS if self.fs_on() => {
                self.fcsr = (self.fcsr & !0x1f) | (v & 0x1f);
                self.fs_dirty();
            }
            FRM if self.fs_on() => {
                self.fcsr = (self.fcsr & 0x1f) | ((v & 7) << 5);
                self.fs_dirty();
            }
            FCSR if self.fs_on() => {
                self.fcsr = v & 0xff;
                self.fs_dirty();
            }
            SSTATUS => {
                self.mstatus = (self.mstatus & !SSTATUS_WMASK) | (v & SSTATUS_WMASK);
                self.update_keys();
                self.brk = true;
            }
            SIE => {
                self.mie = (self.mie & !self.mideleg) | (v & self.mideleg);
                self.brk = true;
            }
            STVEC => self.stvec = v & !2,
            SCOUNTEREN => self.scounteren = v & 0xffff_ffff,
            SENVCFG => {
                let mask = ENVCFG_FIOM | self.cbo_env_bits();
                self.senvcfg = envcfg_write(self.senvcfg, v, mask);
            }
            STIMECMP if self.stimecmp_ok() => {
                self.stimecmp = v;
                self.brk = true;
            }
            SSCRATCH => self.sscratch = v,
            SEPC => self.sepc = v & !1,
            SCAUSE => self.scause = v,
            STVAL => self.stval = v,
            SIP => {
                let m = self.mideleg & IRQ_SSI;
                self.mip_sw = (self.mip_sw & !m) | (v & m);
                self.brk = true;
            }
            SATP if self.prv == 3 || self.mstatus & MS_TVM == 0 => {
                let mode = v >> 60;
                // Writes selecting a mode we lack have no effect (that is how Linux probes).
                if matches!(mode, SATP_BARE | SATP_SV39 | SATP_SV48) {
                    // All 16 ASID bits are implemented. Another ASID keeps its own cached
                    // translations (what ASIDs are for); the same ASID with another root is
                    // flushed, though the spec asks software to fence, since an ASID-unaware
                    // kernel switches roots that way.
                    let old = self.satp;
                    self.satp = v;
                    if self.satp >> 44 == old >> 44 && self.satp != old {
                        self.flush_asid(self.asid());
                    } else {
                        self.update_keys();
                    }
                }
            }
            MSTATUS => {
                let mut nv = (self.mstatus & !MSTATUS_WMASK) | (v & MSTATUS_WMASK);
                if (nv & MS_MPP) >> MS_MPP_SHIFT == 2 {
                    nv &= !MS_MPP;
                }
                self.mstatus = nv;
                self.update_keys();
                self.brk = true;
            }
            MISA | MVENDORID | MARCHID | MIMPID | MHARTID | MCONFIGPTR => {}
            MEDELEG => self.medeleg = v & 0xb3ff,
            MIDELEG => {
                self.mideleg = v & S_IRQS;
                self.brk = true;
            }
            MIE => {
                self.mie = v & ALL_IRQS;
                self.brk = true;
            }
            MTVEC => self.mtvec = v & !2,
            MCOUNTEREN => self.mcounteren = v & 0xffff_ffff,
            MENVCFG => {
                let mut mask = ENVCFG_FIOM | self.cbo_env_bits();
                for (e, b) in [
                    (Ext::Svadu, ENVCFG_ADUE),
                    (Ext::Svpbmt, ENVCFG_PBMTE),
                    (Ext::Sstc, ENVCFG_STCE),
                ] {
                    if self.isa.has(e) {
                        mask |= b;
                    }
                }
                let old = self.menvcfg;
                self.menvcfg = envcfg_write(old, v, mask);
                if (old ^ self.menvcfg) & (ENVCFG_ADUE | ENVCFG_PBMTE) != 0 {
                    self.flush_tlb();
                }
                self.brk = true;
            }
            MSECCFG if self.isa.has(Ext::Zkr) => {
                self.mseccfg = v & (MSECCFG_USEED | MSECCFG_SSEED);
            }
            MCOUNTINHIBIT => self.set_inhibit(v & 0xffff_fffd),
            MSCRATCH => self.mscratch = v,
            MEPC => self.mepc = v & !1,
            MCAUSE => self.mcause = v,
            MTVAL => self.mtval = v,
            MIP => {
                let mut m = MIP_WMASK;
                if self.menvcfg & ENVCFG_STCE != 0 {
                    m &= !IRQ_STI;
                }
                self.mip_sw = (self.mip_sw & !m) | (v & m);
                self.brk = true;
            }
            0x3a0..=0x3af if csr.is_multiple_of(2) => {
                self.pmp.write_cfg((csr - PMPCFG0) as usize, v);
                self.flush_tlb();
            }
            0x3b0..=0x3ef => {
                self.pmp.write_addr((csr - PMPADDR0) as usize, v);
                self.flush_tlb();
            }
            TSELECT | TDATA1 | TDATA2 | TDATA3 | TINFO => {}
            MCYCLE | MINSTRET => self.counter_write((csr == MINSTRET) as usize, v),
            0xb03..=0xb1f | 0x323..=0x33f => {}
            _ => return None,
        }
        let _ = sys;
        Some(())
    }

    /// Whether the current privilege may access stimecmp (Sstc: S needs mcounteren.TM and
    /// menvcfg.STCE; U never can, by the CSR's number).
    fn stimecmp_ok(&self) -> bool {
        self.isa.has(Ext::Sstc)
            && (self.prv == 3 || (self.mcounteren & 2 != 0 && self.menvcfg & ENVCFG_STCE != 0))
    }

    /// The envcfg fields of the cache-block extensions this hart has.
    fn cbo_env_bits(&self) -> u64 {
        let mut m = 0;
        if self.isa.has(Ext::Zicbom) {
            m |= ENVCFG_CBIE | ENVCFG_CBCFE;
        }
        if self.isa.has(Ext::Zicboz) {
            m |= ENVCFG_CBZE;
        }
        m
    }

    /// The value of counter `i` (0 mcycle, 1 minstret) as the current instruction sees it.
    pub fn counter(&self, i: usize) -> u64 {
        let c = self.counters[i];
        c.frozen
            .unwrap_or_else(|| self.instret.wrapping_add(self.retired).wrapping_add(c.off))
    }

    /// Sets counter `i` so that the next instruction reads `v`.
    pub fn counter_write(&mut self, i: usize, v: u64) {
        let raw = self.instret.wrapping_add(self.retired);
        let c = &mut self.counters[i];
        match c.frozen {
            Some(_) => c.frozen = Some(v),
            None => c.off = v.wrapping_sub(raw.wrapping_add(1)),
        }
    }

    /// Writes mcountinhibit: CY (bit 0) and IR (bit 2) freeze mcycle and minstret.
    pub fn set_inhibit(&mut self, v: u64) {
        for (i, bit) in [(0usize, 1u64), (1, 4)] {
            let now = self.counter(i);
            let raw = self.instret.wrapping_add(self.retired);
            let c = &mut self.counters[i];
            match (v & bit != 0, c.frozen) {
                (true, None) => c.frozen = Some(now),
                (false, Some(f)) => {
                    c.frozen = None;
                    c.off = f.wrapping_sub(raw.wrapping_add(1));
                }
                _ => {}
            }
        }
        self.mcountinhibit = v;
    }

    /// Zkr's seed: only read-write accesses (a read-only one is illegal), from M, or from S/U
    /// when mseccfg.SSEED/USEED allows. Entropy comes from the host's random source, 16 bits
    /// per read with status ES16.
    fn seed(&mut self, sys: &mut Sys, op: Op, write: bool) -> Result<(), Trap> {
        let allowed = match self.prv {
            3 => true,
            1 => self.mseccfg & MSECCFG_SSEED != 0,
            _ => self.mseccfg & MSECCFG_USEED != 0,
        };
        if !write || !allowed {
            return Err(self.illegal(sys));
        }
        let mut b = [0u8; 2];
        crate::board::getrandom(&mut b);
        self.set_x(op.rd, (0b10 << 30) | u64::from(u16::from_le_bytes(b)));
        Ok(())
    }

    fn csr_op(&mut self, sys: &mut Sys, op: Op) -> Result<(), Trap> {
        let csr = op.imm as u16 & 0xfff;
        let src = match op.kind {
            Kind::Csrrwi | Kind::Csrrsi | Kind::Csrrci => u64::from(op.rs1),
            _ => self.x[op.rs1 as usize & 31],
        };
        let (read, write) = match op.kind {
            Kind::Csrrw | Kind::Csrrwi => (op.rd != 0, true),
            _ => (true, op.rs1 != 0),
        };
        if csr == SEED && self.isa.has(Ext::Zkr) {
            return self.seed(sys, op, write);
        }
        let old = if read || write {
            match self.csr_read(sys, csr) {
                Some(v) => v,
                None => return Err(self.illegal(sys)),
            }
        } else {
            0
        };
        if write {
            let nv = match op.kind {
                Kind::Csrrw | Kind::Csrrwi => src,
                Kind::Csrrs | Kind::Csrrsi => old | src,
                _ => old & !src,
            };
            if self.csr_write(sys, csr, nv).is_none() {
                return Err(self.illegal(sys));
            }
        }
        self.set_x(op.rd, old);
        Ok(())
    }

    #[inline(always)]
    fn set_x(&mut self, rd: u8, v: u64) {
        self.x[(rd & 31) as usize] = v;
        self.x[0] = 0;
    }

    #[inline(always)]
    fn rs1(&self, op: &Op) -> u64 {
        self.x[op.rs1 as usize & 31]
    }

    #[inline(always)]
    fn rs2(&self, op: &Op) -> u64 {
        self.x[op.rs2 as usize & 31]
    }

    // --------------------------------------------------------- execution

    /// Runs up to `budget` instructions. Returns why it stopped and how many ran.
    pub fn run(&mut self, sys: &mut Sys, budget: u64) -> (Stop, u64) {
        // Other harts ran since this hart's last slice and may have stored to the reserved
        // address; harts never run concurrently, so dropping the reservation here is exact
        // (an SC may then fail spuriously, which the ISA allows).
        self.reservation = None;
        self.sync_epochs(sys);
        self.poll_mail(sys);
        self.check_interrupts(sys);
        self.stop = Stop::Yield;
        let mut n = 0;
        while n < budget {
            n += 1;
            self.retired = n - 1;
            let r = match self.fetch(sys) {
                Ok(op) => self.exec(sys, op),
                Err(t) => Err(t),
            };
            if let Err(t) = r {
                self.trap(sys, t);
            }
            if self.brk {
                self.brk = false;
                if self.stop != Stop::Yield
                    || sys.fault.is_some()
                    || sys.exit.is_raised()
                    || std::mem::take(&mut self.yield_now)
                {
                    break;
                }
                self.sync_epochs(sys);
                self.poll_mail(sys);
                if sys.mail[self.id as usize].hsm == crate::sys::HsmState::Stopped {
                    self.stop = Stop::Stopped;
                    break;
                }
                self.check_interrupts(sys);
            }
        }
        self.instret = self.instret.wrapping_add(n);
        (self.stop, n)
    }

    fn rm(&mut self, sys: &mut Sys, op: &Op) -> Result<fp::Rm, Trap> {
        if !self.fs_on() {
            return Err(self.illegal(sys));
        }
        let field = (op.imm & 7) as u32;
        let rm = if field == 7 {
            ((self.fcsr >> 5) & 7) as u32
        } else {
            field
        };
        match fp::Rm::from_bits(rm) {
            Some(r) => Ok(r),
            None => Err(self.illegal(sys)),
        }
    }

    #[inline(always)]
    fn fs(&self, r: u8) -> u32 {
        fp::unbox_f32(self.f[r as usize & 31])
    }

    #[inline(always)]
    fn fd(&self, r: u8) -> u64 {
        self.f[r as usize & 31]
    }

    #[inline(always)]
    fn set_fs(&mut self, rd: u8, v: u32, flags: fp::Flags) {
        self.f[(rd & 31) as usize] = fp::box_f32(v);
        self.fcsr |= u64::from(flags);
        self.mstatus |= MS_FS;
    }

    #[inline(always)]
    fn set_fd(&mut self, rd: u8, v: u64, flags: fp::Flags) {
        self.f[(rd & 31) as usize] = v;
        self.fcsr |= u64::from(flags);
        self.mstatus |= MS_FS;
    }

    fn fp_on(&mut self, sys: &mut Sys) -> Result<(), Trap> {
        if self.fs_on() {
            Ok(())
        } else {
            Err(self.illegal(sys))
        }
    }

    #[inline(always)]
    fn exec(&mut self, sys: &mut Sys, op: Op) -> Result<(), Trap> {
        use Kind::*;
        let pc = self.pc;
        let npc = pc.wrapping_add(op.len());
        let imm = op.imm as i64 as u64;
        match op.kind {
            Undecoded => {
                let op = self.decode_at(sys, pc)?;
                return self.exec_decoded(sys, op);
            }
            Addi => {
                let v = self.rs1(&op).wrapping_add(imm);
                self.set_x(op.rd, v);
            }
            Lui => self.set_x(op.rd, imm),
            Auipc => self.set_x(op.rd, pc.wrapping_add(imm)),
            Jal => {
                self.set_x(op.rd, npc);
                self.pc = pc.wrapping_add(imm);
                return Ok(());
            }
            Jalr => {
                let t = self.rs1(&op).wrapping_add(imm) & !1;
                self.set_x(op.rd, npc);
                self.pc = t;
                return Ok(());
            }
            Beq | Bne | Blt | Bge | Bltu | Bgeu => {
                let (a, b) = (self.rs1(&op), self.rs2(&op));
                let taken = match op.kind {
                    Beq => a == b,
                    Bne => a != b,
                    Blt => (a as i64) < (b as i64),
                    Bge => (a as i64) >= (b as i64),
                    Bltu => a < b,
                    _ => a >= b,
                };
                self.pc = if taken { pc.wrapping_add(imm) } else { npc };
                return Ok(());
            }
            Lb => {
                let v: u8 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 1, load_u8)?;
                self.set_x(op.rd, v as i8 as i64 as u64);
            }
            Lh => {
                let v: u16 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 2, load_u16)?;
                self.set_x(op.rd, v as i16 as i64 as u64);
            }
            Lw => {
                let v: u32 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 4, load_u32)?;
                self.set_x(op.rd, v as i32 as i64 as u64);
            }
            Ld => {
                let v: u64 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 8, load_u64)?;
                self.set_x(op.rd, v);
            }
            Lbu => {
                let v: u8 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 1, load_u8)?;
                self.set_x(op.rd, u64::from(v));
            }
            Lhu => {
                let v: u16 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 2, load_u16)?;
                self.set_x(op.rd, u64::from(v));
            }
            Lwu => {
                let v: u32 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 4, load_u32)?;
                self.set_x(op.rd, u64::from(v));
            }
            Sb => store_fast!(
                self,
                sys,
                self.rs1(&op).wrapping_add(imm),
                1,
                self.rs2(&op),
                store_u8,
                u8
            )?,
            Sh => store_fast!(
                self,
                sys,
                self.rs1(&op).wrapping_add(imm),
                2,
                self.rs2(&op),
                store_u16,
                u16
            )?,
            Sw => store_fast!(
                self,
                sys,
                self.rs1(&op).wrapping_add(imm),
                4,
                self.rs2(&op),
                store_u32,
                u32
            )?,
            Sd => store_fast!(
                self,
                sys,
                self.rs1(&op).wrapping_add(imm),
                8,
                self.rs2(&op),
                store_u64,
                u64
            )?,
            Slti => self.set_x(op.rd, u64::from((self.rs1(&op) as i64) < (imm as i64))),
            Sltiu => self.set_x(op.rd, u64::from(self.rs1(&op) < imm)),
            Xori => self.set_x(op.rd, self.rs1(&op) ^ imm),
            Ori => self.set_x(op.rd, self.rs1(&op) | imm),
            Andi => self.set_x(op.rd, self.rs1(&op) & imm),
            Slli => self.set_x(op.rd, self.rs1(&op) << (imm & 63)),
            Srli => self.set_x(op.rd, self.rs1(&op) >> (imm & 63)),
            Srai => self.set_x(op.rd, ((self.rs1(&op) as i64) >> (imm & 63)) as u64),
            Add => self.set_x(op.rd, self.rs1(&op).wrapping_add(self.rs2(&op))),
            Sub => self.set_x(op.rd, self.rs1(&op).wrapping_sub(self.rs2(&op))),
            Sll => self.set_x(op.rd, self.rs1(&op) << (self.rs2(&op) & 63)),
            Slt => self.set_x(
                op.rd,
                u64::from((self.rs1(&op) as i64) < (self.rs2(&op) as i64)),
            ),
            Sltu => self.set_x(op.rd, u64::from(self.rs1(&op) < self.rs2(&op))),
            Xor => self.set_x(op.rd, self.rs1(&op) ^ self.rs2(&op)),
            Srl => self.set_x(op.rd, self.rs1(&op) >> (self.rs2(&op) & 63)),
            Sra => self.set_x(
                op.rd,
                ((self.rs1(&op) as i64) >> (self.rs2(&op) & 63)) as u64,
            ),
            Or => self.set_x(op.rd, self.rs1(&op) | self.rs2(&op)),
            And => self.set_x(op.rd, self.rs1(&op) & self.rs2(&op)),
            Addiw => self.set_x(op.rd, sext32(self.rs1(&op).wrapping_add(imm))),
            Slliw => self.set_x(op.rd, sext32(self.rs1(&op) << (imm & 31))),
            Srliw => self.set_x(
                op.rd,
                sext32(u64::from((self.rs1(&op) as u32) >> (imm & 31))),
            ),
            Sraiw => self.set_x(op.rd, ((self.rs1(&op) as i32) >> (imm & 31)) as i64 as u64),
            Addw => self.set_x(op.rd, sext32(self.rs1(&op).wrapping_add(self.rs2(&op)))),
            Subw => self.set_x(op.rd, sext32(self.rs1(&op).wrapping_sub(self.rs2(&op)))),
            Sllw => self.set_x(op.rd, sext32(self.rs1(&op) << (self.rs2(&op) & 31))),
            Srlw => self.set_x(
                op.rd,
                sext32(u64::from((self.rs1(&op) as u32) >> (self.rs2(&op) & 31))),
            ),
            Sraw => self.set_x(
                op.rd,
                ((self.rs1(&op) as i32) >> (self.rs2(&op) & 31)) as i64 as u64,
            ),
            Mul => self.set_x(op.rd, self.rs1(&op).wrapping_mul(self.rs2(&op))),
            Mulh => {
                let v = (i128::from(self.rs1(&op) as i64) * i128::from(self.rs2(&op) as i64)) >> 64;
                self.set_x(op.rd, v as u64);
            }
            Mulhsu => {
                let v = (i128::from(self.rs1(&op) as i64) * i128::from(self.rs2(&op))) >> 64;
                self.set_x(op.rd, v as u64);
            }
            Mulhu => {
                let v = (u128::from(self.rs1(&op)) * u128::from(self.rs2(&op))) >> 64;
                self.set_x(op.rd, v as u64);
            }
            Div => {
                let (a, b) = (self.rs1(&op) as i64, self.rs2(&op) as i64);
                let v = if b == 0 { -1 } else { a.wrapping_div(b) };
                self.set_x(op.rd, v as u64);
            }
            Divu => {
                let (a, b) = (self.rs1(&op), self.rs2(&op));
                self.set_x(op.rd, a.checked_div(b).unwrap_or(u64::MAX));
            }
            Rem => {
                let (a, b) = (self.rs1(&op) as i64, self.rs2(&op) as i64);
                let v = if b == 0 { a } else { a.wrapping_rem(b) };
                self.set_x(op.rd, v as u64);
            }
            Remu => {
                let (a, b) = (self.rs1(&op), self.rs2(&op));
                self.set_x(op.rd, if b == 0 { a } else { a % b });
            }
            Mulw => self.set_x(op.rd, sext32(self.rs1(&op).wrapping_mul(self.rs2(&op)))),
            Divw => {
                let (a, b) = (self.rs1(&op) as i32, self.rs2(&op) as i32);
                let v = if b == 0 { -1 } else { a.wrapping_div(b) };
                self.set_x(op.rd, v as i64 as u64);
            }
            Divuw => {
                let (a, b) = (self.rs1(&op) as u32, self.rs2(&op) as u32);
                let v = a.checked_div(b).unwrap_or(u32::MAX);
                self.set_x(op.rd, sext32(u64::from(v)));
            }
            Remw => {
                let (a, b) = (self.rs1(&op) as i32, self.rs2(&op) as i32);
                let v = if b == 0 { a } else { a.wrapping_rem(b) };
                self.set_x(op.rd, v as i64 as u64);
            }
            Remuw => {
                let (a, b) = (self.rs1(&op) as u32, self.rs2(&op) as u32);
                let v = if b == 0 { a } else { a % b };
                self.set_x(op.rd, sext32(u64::from(v)));
            }
            AddUw => self.set_x(
                op.rd,
                self.rs2(&op).wrapping_add(self.rs1(&op) as u32 as u64),
            ),
            Sh1add | Sh2add | Sh3add => {
                let n = match op.kind {
                    Sh1add => 1,
                    Sh2add => 2,
                    _ => 3,
                };
                self.set_x(op.rd, self.rs2(&op).wrapping_add(self.rs1(&op) << n));
            }
            Sh1addUw | Sh2addUw | Sh3addUw => {
                let n = match op.kind {
                    Sh1addUw => 1,
                    Sh2addUw => 2,
                    _ => 3,
                };
                let a = u64::from(self.rs1(&op) as u32) << n;
                self.set_x(op.rd, self.rs2(&op).wrapping_add(a));
            }
            SlliUw => self.set_x(op.rd, u64::from(self.rs1(&op) as u32) << (imm & 63)),
            Andn => self.set_x(op.rd, self.rs1(&op) & !self.rs2(&op)),
            Orn => self.set_x(op.rd, self.rs1(&op) | !self.rs2(&op)),
            Xnor => self.set_x(op.rd, !(self.rs1(&op) ^ self.rs2(&op))),
            Clz => self.set_x(op.rd, u64::from(self.rs1(&op).leading_zeros())),
            Clzw => self.set_x(op.rd, u64::from((self.rs1(&op) as u32).leading_zeros())),
            Ctz => self.set_x(op.rd, u64::from(self.rs1(&op).trailing_zeros())),
            Ctzw => self.set_x(op.rd, u64::from((self.rs1(&op) as u32).trailing_zeros())),
            Cpop => self.set_x(op.rd, u64::from(self.rs1(&op).count_ones())),
            Cpopw => self.set_x(op.rd, u64::from((self.rs1(&op) as u32).count_ones())),
            Max => self.set_x(
                op.rd,
                (self.rs1(&op) as i64).max(self.rs2(&op) as i64) as u64,
            ),
            Maxu => self.set_x(op.rd, self.rs1(&op).max(self.rs2(&op))),
            Min => self.set_x(
                op.rd,
                (self.rs1(&op) as i64).min(self.rs2(&op) as i64) as u64,
            ),
            Minu => self.set_x(op.rd, self.rs1(&op).min(self.rs2(&op))),
            SextB => self.set_x(op.rd, self.rs1(&op) as i8 as i64 as u64),
            SextH => self.set_x(op.rd, self.rs1(&op) as i16 as i64 as u64),
            ZextH => self.set_x(op.rd, u64::from(self.rs1(&op) as u16)),
            Rol => self.set_x(
                op.rd,
                self.rs1(&op).rotate_left((self.rs2(&op) & 63) as u32),
            ),
            Ror => self.set_x(
                op.rd,
                self.rs1(&op).rotate_right((self.rs2(&op) & 63) as u32),
            ),
            Rori => self.set_x(op.rd, self.rs1(&op).rotate_right((imm & 63) as u32)),
            Rolw => {
                let v = (self.rs1(&op) as u32).rotate_left((self.rs2(&op) & 31) as u32);
                self.set_x(op.rd, sext32(u64::from(v)));
            }
            Rorw => {
                let v = (self.rs1(&op) as u32).rotate_right((self.rs2(&op) & 31) as u32);
                self.set_x(op.rd, sext32(u64::from(v)));
            }
            Roriw => {
                let v = (self.rs1(&op) as u32).rotate_right((imm & 31) as u32);
                self.set_x(op.rd, sext32(u64::from(v)));
            }
            OrcB => {
                let a = self.rs1(&op);
                let v = (0..8).fold(0u64, |v, i| {
                    if (a >> (8 * i)) & 0xff != 0 {
                        v | (0xff << (8 * i))
                    } else {
                        v
                    }
                });
                self.set_x(op.rd, v);
            }
            Rev8 => self.set_x(op.rd, self.rs1(&op).swap_bytes()),
            Clmul => self.set_x(op.rd, clmul(self.rs1(&op), self.rs2(&op)).1),
            Clmulh => self.set_x(op.rd, clmul(self.rs1(&op), self.rs2(&op)).0),
            Clmulr => {
                let (hi, lo) = clmul(self.rs1(&op), self.rs2(&op));
                self.set_x(op.rd, (hi << 1) | (lo >> 63));
            }
            Bclr => self.set_x(op.rd, self.rs1(&op) & !(1 << (self.rs2(&op) & 63))),
            Bclri => self.set_x(op.rd, self.rs1(&op) & !(1 << (imm & 63))),
            Bext => self.set_x(op.rd, (self.rs1(&op) >> (self.rs2(&op) & 63)) & 1),
            Bexti => self.set_x(op.rd, (self.rs1(&op) >> (imm & 63)) & 1),
            Binv => self.set_x(op.rd, self.rs1(&op) ^ (1 << (self.rs2(&op) & 63))),
            Binvi => self.set_x(op.rd, self.rs1(&op) ^ (1 << (imm & 63))),
            Bset => self.set_x(op.rd, self.rs1(&op) | (1 << (self.rs2(&op) & 63))),
            Bseti => self.set_x(op.rd, self.rs1(&op) | (1 << (imm & 63))),
            CzeroEqz => {
                let v = if self.rs2(&op) == 0 { 0 } else { self.rs1(&op) };
                self.set_x(op.rd, v);
            }
            CzeroNez => {
                let v = if self.rs2(&op) != 0 { 0 } else { self.rs1(&op) };
                self.set_x(op.rd, v);
            }
            Fence => {}
            FenceI => {
                sys.code.flush();
                self.sync_epochs(sys);
            }
            Ecall => {
                return Err(Trap::new(
                    match self.prv {
                        0 => EXC_ECALL_U,
                        1 => EXC_ECALL_S,
                        _ => EXC_ECALL_M,
                    },
                    0,
                ))
            }
            Ebreak => return Err(Trap::new(EXC_BREAKPOINT, pc)),
            Mret => {
                if self.prv != 3 {
                    return Err(self.illegal(sys));
                }
                let mpp = (self.mstatus & MS_MPP) >> MS_MPP_SHIFT;
                let mpie = self.mstatus & MS_MPIE != 0;
                self.mstatus &= !(MS_MIE | MS_MPP);
                self.mstatus |= MS_MPIE;
                if mpie {
                    self.mstatus |= MS_MIE;
                }
                if mpp != 3 {
                    self.mstatus &= !MS_MPRV;
                }
                self.prv = mpp;
                self.pc = self.mepc;
                self.update_keys();
                self.brk = true;
                return Ok(());
            }
            Sret => {
                if self.prv == 0 || (self.prv == 1 && self.mstatus & MS_TSR != 0) {
                    return Err(self.illegal(sys));
                }
                let spp = u64::from(self.mstatus & MS_SPP != 0);
                let spie = self.mstatus & MS_SPIE != 0;
                self.mstatus &= !(MS_SIE | MS_SPP | MS_MPRV);
                self.mstatus |= MS_SPIE;
                if spie {
                    self.mstatus |= MS_SIE;
                }
                self.prv = spp;
                self.pc = self.sepc;
                self.update_keys();
                self.brk = true;
                return Ok(());
            }
            Wfi => {
                if self.prv == 0 || (self.prv == 1 && self.mstatus & MS_TW != 0) {
                    return Err(self.illegal(sys));
                }
                self.pc = npc;
                if !self.wakeup_pending(sys) {
                    self.stop = Stop::Wait;
                    self.brk = true;
                }
                return Ok(());
            }
            SfenceVma | SinvalVma => {
                if self.prv == 0 || (self.prv == 1 && self.mstatus & MS_TVM != 0) {
                    return Err(self.illegal(sys));
                }
                let asid = (op.rs2 & 31 != 0).then(|| self.rs2(&op) as u16);
                match (op.rs1 & 31 != 0, asid) {
                    (false, None) => self.flush_tlb(),
                    (false, Some(a)) => self.flush_asid(a),
                    (true, a) => self.flush_va(self.rs1(&op), a),
                }
            }
            Csrrw | Csrrs | Csrrc | Csrrwi | Csrrsi | Csrrci => self.csr_op(sys, op)?,
            LrW | LrD => {
                let va = self.rs1(&op);
                let w = if op.kind == LrW { 4 } else { 8 };
                if !va.is_multiple_of(w) {
                    return Err(Trap::new(EXC_LOAD_ACCESS - 1, va));
                }
                let v = self.load_slow(sys, va, w)?;
                self.reservation = Some(va);
                self.set_x(op.rd, if w == 4 { sext32(v) } else { v });
            }
            ScW | ScD => {
                let va = self.rs1(&op);
                let w = if op.kind == ScW { 4 } else { 8 };
                if !va.is_multiple_of(w) {
                    return Err(Trap::new(EXC_STORE_ACCESS - 1, va));
                }
                if self.reservation.take() == Some(va) {
                    self.store_slow(sys, va, w, self.rs2(&op))?;
                    self.set_x(op.rd, 0);
                } else {
                    self.set_x(op.rd, 1);
                }
            }
            AmoW | AmoD => {
                let va = self.rs1(&op);
                let w = if op.kind == AmoW { 4 } else { 8 };
                if !va.is_multiple_of(w) {
                    return Err(Trap::new(EXC_STORE_ACCESS - 1, va));
                }
                // Translate for writing first: an AMO faults as a store.
                let pa = self.translate(sys, va, w, Access::Write)?;
                if sys.ram.offset(pa, w).is_none() {
                    return Err(Trap::new(EXC_STORE_ACCESS, va));
                }
                if sys.code.is_code(pa) {
                    sys.code.invalidate(pa);
                    self.sync_epochs(sys);
                }
                let old = self.phys_read(sys, pa, w).unwrap_or(0);
                let old = if w == 4 { sext32(old) } else { old };
                let src = self.rs2(&op);
                let src = if w == 4 { sext32(src) } else { src };
                let nv = match op.funct5() {
                    0x00 => old.wrapping_add(src),
                    0x01 => src,
                    0x04 => old ^ src,
                    0x0c => old & src,
                    0x08 => old | src,
                    0x10 => (old as i64).min(src as i64) as u64,
                    0x14 => (old as i64).max(src as i64) as u64,
                    0x18 => old.min(src),
                    _ => old.max(src),
                };
                self.phys_write(sys, pa, w, nv);
                self.set_x(op.rd, old);
            }
            Flw => {
                self.fp_on(sys)?;
                let v: u32 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 4, load_u32)?;
                self.set_fs(op.rd, v, 0);
            }
            Fld => {
                self.fp_on(sys)?;
                let v: u64 = load_fast!(self, sys, self.rs1(&op).wrapping_add(imm), 8, load_u64)?;
                self.set_fd(op.rd, v, 0);
            }
            Fsw => {
                self.fp_on(sys)?;
                let v = self.f[op.rs2 as usize & 31] as u32;
                store_fast!(
                    self,
                    sys,
                    self.rs1(&op).wrapping_add(imm),
                    4,
                    v,
                    store_u32,
                    u32
                )?;
            }
            Fsd => {
                self.fp_on(sys)?;
                let v = self.fd(op.rs2);
                store_fast!(
                    self,
                    sys,
                    self.rs1(&op).wrapping_add(imm),
                    8,
                    v,
                    store_u64,
                    u64
                )?;
            }
            _ => self.exec_fp(sys, op)?,
        }
        self.pc = npc;
        Ok(())
    }

    /// Executes an op just decoded (kept out of line: it runs once per decode).
    #[inline(never)]
    fn exec_decoded(&mut self, sys: &mut Sys, op: Op) -> Result<(), Trap> {
        if op.kind == Kind::Undecoded {
            return Err(self.illegal(sys));
        }
        self.exec(sys, op)
    }

    fn exec_fp(&mut self, sys: &mut Sys, op: Op) -> Result<(), Trap> {
        use Kind::*;
        const S_SIGN: u32 = 1 << 31;
        const D_SIGN: u64 = 1 << 63;
        match op.kind {
            Illegal | Undecoded => return Err(self.illegal(sys)),
            FmaddS | FmsubS | FnmsubS | FnmaddS => {
                let rm = self.rm(sys, &op)?;
                let (mut a, b, mut c) = (self.fs(op.rs1), self.fs(op.rs2), self.fs(op.rs3()));
                if matches!(op.kind, FnmsubS | FnmaddS) {
                    a ^= S_SIGN;
                }
                if matches!(op.kind, FmsubS | FnmaddS) {
                    c ^= S_SIGN;
                }
                let (v, fl) = fp::f32_fma(a, b, c, rm);
                self.set_fs(op.rd, v, fl);
            }
            FmaddD | FmsubD | FnmsubD | FnmaddD => {
                let rm = self.rm(sys, &op)?;
                let (mut a, b, mut c) = (self.fd(op.rs1), self.fd(op.rs2), self.fd(op.rs3()));
                if matches!(op.kind, FnmsubD | FnmaddD) {
                    a ^= D_SIGN;
                }
                if matches!(op.kind, FmsubD | FnmaddD) {
                    c ^= D_SIGN;
                }
                let (v, fl) = fp::f64_fma(a, b, c, rm);
                self.set_fd(op.rd, v, fl);
            }
            FaddS | FsubS | FmulS | FdivS => {
                let rm = self.rm(sys, &op)?;
                let (a, b) = (self.fs(op.rs1), self.fs(op.rs2));
                let (v, fl) = match op.kind {
                    FaddS => fp::f32_add(a, b, rm),
                    FsubS => fp::f32_sub(a, b, rm),
                    FmulS => fp::f32_mul(a, b, rm),
                    _ => fp::f32_div(a, b, rm),
                };
                self.set_fs(op.rd, v, fl);
            }
            FaddD | FsubD | FmulD | FdivD => {
                let rm = self.rm(sys, &op)?;
                let (a, b) = (self.fd(op.rs1), self.fd(op.rs2));
                let (v, fl) = match op.kind {
                    FaddD => fp::f64_add(a, b, rm),
                    FsubD => fp::f64_sub(a, b, rm),
                    FmulD => fp::f64_mul(a, b, rm),
                    _ => fp::f64_div(a, b, rm),
                };
                self.set_fd(op.rd, v, fl);
            }
            FsqrtS => {
                let rm = self.rm(sys, &op)?;
                let (v, fl) = fp::f32_sqrt(self.fs(op.rs1), rm);
                self.set_fs(op.rd, v, fl);
            }
            FsqrtD => {
                let rm = self.rm(sys, &op)?;
                let (v, fl) = fp::f64_sqrt(self.fd(op.rs1), rm);
                self.set_fd(op.rd, v, fl);
            }
            FsgnjS | FsgnjnS | FsgnjxS => {
                self.fp_on(sys)?;
                let (a, b) = (self.fs(op.rs1), self.fs(op.rs2));
                let sign = match op.kind {
                    FsgnjS => b & S_SIGN,
                    FsgnjnS => !b & S_SIGN,
                    _ => (a ^ b) & S_SIGN,
                };
                self.set_fs(op.rd, (a & !S_SIGN) | sign, 0);
            }
            FsgnjD | FsgnjnD | FsgnjxD => {
                self.fp_on(sys)?;
                let (a, b) = (self.fd(op.rs1), self.fd(op.rs2));
                let sign = match op.kind {
                    FsgnjD => b & D_SIGN,
                    FsgnjnD => !b & D_SIGN,
                    _ => (a ^ b) & D_SIGN,
                };
                self.set_fd(op.rd, (a & !D_SIGN) | sign, 0);
            }
            FminS | FmaxS => {
                self.fp_on(sys)?;
                let (a, b) = (self.fs(op.rs1), self.fs(op.rs2));
                let (v, fl) = if op.kind == FminS {
                    fp::f32_min(a, b)
                } else {
                    fp::f32_max(a, b)
                };
                self.set_fs(op.rd, v, fl);
            }
            FminD | FmaxD => {
                self.fp_on(sys)?;
                let (a, b) = (self.fd(op.rs1), self.fd(op.rs2));
                let (v, fl) = if op.kind == FminD {
                    fp::f64_min(a, b)
                } else {
                    fp::f64_max(a, b)
                };
                self.set_fd(op.rd, v, fl);
            }
            FcvtSD => {
                let rm = self.rm(sys, &op)?;
                let (v, fl) = fp::f64_to_f32(self.fd(op.rs1), rm);
                self.set_fs(op.rd, v, fl);
            }
            FcvtDS => {
                self.fp_on(sys)?;
                let (v, fl) = fp::f32_to_f64(self.fs(op.rs1));
                self.set_fd(op.rd, v, fl);
            }
            FeqS | FltS | FleS => {
                self.fp_on(sys)?;
                let (a, b) = (self.fs(op.rs1), self.fs(op.rs2));
                let (v, fl) = match op.kind {
                    FeqS => fp::f32_eq(a, b),
                    FltS => fp::f32_lt(a, b),
                    _ => fp::f32_le(a, b),
                };
                self.fcsr |= u64::from(fl);
                self.mstatus |= MS_FS;
                self.set_x(op.rd, u64::from(v));
            }
            FeqD | FltD | FleD => {
                self.fp_on(sys)?;
                let (a, b) = (self.fd(op.rs1), self.fd(op.rs2));
                let (v, fl) = match op.kind {
                    FeqD => fp::f64_eq(a, b),
                    FltD => fp::f64_lt(a, b),
                    _ => fp::f64_le(a, b),
                };
                self.fcsr |= u64::from(fl);
                self.mstatus |= MS_FS;
                self.set_x(op.rd, u64::from(v));
            }
            FclassS => {
                self.fp_on(sys)?;
                let v = fp::f32_class(self.fs(op.rs1));
                self.set_x(op.rd, v);
            }
            FclassD => {
                self.fp_on(sys)?;
                let v = fp::f64_class(self.fd(op.rs1));
                self.set_x(op.rd, v);
            }
            FmvXW => {
                self.fp_on(sys)?;
                let v = sext32(self.f[op.rs1 as usize & 31]);
                self.set_x(op.rd, v);
            }
            FmvWX => {
                self.fp_on(sys)?;
                let v = self.rs1(&op) as u32;
                self.set_fs(op.rd, v, 0);
            }
            FmvXD => {
                self.fp_on(sys)?;
                let v = self.fd(op.rs1);
                self.set_x(op.rd, v);
            }
            FmvDX => {
                self.fp_on(sys)?;
                let v = self.rs1(&op);
                self.set_fd(op.rd, v, 0);
            }
            FcvtIntS => {
                let rm = self.rm(sys, &op)?;
                let a = self.fs(op.rs1);
                let (v, fl) = match op.rs2 {
                    0 => {
                        let (v, f) = fp::f32_to_i32(a, rm);
                        (v as u64, f)
                    }
                    1 => {
                        let (v, f) = fp::f32_to_u32(a, rm);
                        (v, f)
                    }
                    2 => {
                        let (v, f) = fp::f32_to_i64(a, rm);
                        (v as u64, f)
                    }
                    _ => {
                        let (v, f) = fp::f32_to_u64(a, rm);
                        (v, f)
                    }
                };
                self.fcsr |= u64::from(fl);
                self.mstatus |= MS_FS;
                self.set_x(op.rd, v);
            }
            FcvtIntD => {
                let rm = self.rm(sys, &op)?;
                let a = self.fd(op.rs1);
                let (v, fl) = match op.rs2 {
                    0 => {
                        let (v, f) = fp::f64_to_i32(a, rm);
                        (v as u64, f)
                    }
                    1 => {
                        let (v, f) = fp::f64_to_u32(a, rm);
                        (v, f)
                    }
                    2 => {
                        let (v, f) = fp::f64_to_i64(a, rm);
                        (v as u64, f)
                    }
                    _ => {
                        let (v, f) = fp::f64_to_u64(a, rm);
                        (v, f)
                    }
                };
                self.fcsr |= u64::from(fl);
                self.mstatus |= MS_FS;
                self.set_x(op.rd, v);
            }
            FcvtSInt => {
                let rm = self.rm(sys, &op)?;
                let x = self.rs1(&op);
                let (v, fl) = match op.rs2 {
                    0 => fp::f32_from_i32(x as i32, rm),
                    1 => fp::f32_from_u32(x as u32, rm),
                    2 => fp::f32_from_i64(x as i64, rm),
                    _ => fp::f32_from_u64(x, rm),
                };
                self.set_fs(op.rd, v, fl);
            }
            FcvtDInt => {
                let rm = self.rm(sys, &op)?;
                let x = self.rs1(&op);
                let (v, fl) = match op.rs2 {
                    0 => fp::f64_from_i32(x as i32, rm),
                    1 => fp::f64_from_u32(x as u32, rm),
                    2 => fp::f64_from_i64(x as i64, rm),
                    _ => fp::f64_from_u64(x, rm),
                };
                self.set_fd(op.rd, v, fl);
            }
            _ => return self.exec_ext(sys, op),
        }
        Ok(())
    }

    /// The rarer extension instructions: Zfa, cache-block operations, PAUSE, Svinval's fences.
    fn exec_ext(&mut self, sys: &mut Sys, op: Op) -> Result<(), Trap> {
        use Kind::*;
        match op.kind {
            Pause => {
                // A spinning hart gives the others (which run on this same host thread)
                // their turn now rather than at the end of its slice.
                if sys.mail.len() > 1 {
                    self.yield_now = true;
                    self.brk = true;
                }
            }
            SfenceInval => {
                if self.prv == 0 {
                    return Err(self.illegal(sys));
                }
            }
            Cbo => self.cbo(sys, op)?,
            FliS => {
                self.fp_on(sys)?;
                self.set_fs(op.rd, fp::fli_f32(op.rs1 & 31), 0);
            }
            FliD => {
                self.fp_on(sys)?;
                self.set_fd(op.rd, fp::fli_f64(op.rs1 & 31), 0);
            }
            FminmS | FmaxmS => {
                self.fp_on(sys)?;
                let (a, b) = (self.fs(op.rs1), self.fs(op.rs2));
                let (v, fl) = fp::f32_minmax_m(a, b, op.kind == FmaxmS);
                self.set_fs(op.rd, v, fl);
            }
            FminmD | FmaxmD => {
                self.fp_on(sys)?;
                let (a, b) = (self.fd(op.rs1), self.fd(op.rs2));
                let (v, fl) = fp::f64_minmax_m(a, b, op.kind == FmaxmD);
                self.set_fd(op.rd, v, fl);
            }
            FroundS => {
                let rm = self.rm(sys, &op)?;
                let (v, fl) = fp::f32_round_int(self.fs(op.rs1), rm, op.rs2 == 5);
                self.set_fs(op.rd, v, fl);
            }
            FroundD => {
                let rm = self.rm(sys, &op)?;
                let (v, fl) = fp::f64_round_int(self.fd(op.rs1), rm, op.rs2 == 5);
                self.set_fd(op.rd, v, fl);
            }
            FcvtmodWD => {
                self.fp_on(sys)?;
                let (v, fl) = fp::f64_to_i32_mod(self.fd(op.rs1));
                self.fcsr |= u64::from(fl);
                self.mstatus |= MS_FS;
                self.set_x(op.rd, v as i64 as u64);
            }
            FleqS | FltqS => {
                self.fp_on(sys)?;
                let (a, b) = (self.fs(op.rs1), self.fs(op.rs2));
                let (v, fl) = if op.kind == FleqS {
                    fp::f32_le_quiet(a, b)
                } else {
                    fp::f32_lt_quiet(a, b)
                };
                self.fcsr |= u64::from(fl);
                self.mstatus |= MS_FS;
                self.set_x(op.rd, u64::from(v));
            }
            FleqD | FltqD => {
                self.fp_on(sys)?;
                let (a, b) = (self.fd(op.rs1), self.fd(op.rs2));
                let (v, fl) = if op.kind == FleqD {
                    fp::f64_le_quiet(a, b)
                } else {
                    fp::f64_lt_quiet(a, b)
                };
                self.fcsr |= u64::from(fl);
                self.mstatus |= MS_FS;
                self.set_x(op.rd, u64::from(v));
            }
            _ => return Err(self.illegal(sys)),
        }
        Ok(())
    }

    /// CBO.INVAL/CLEAN/FLUSH/ZERO on the cache block holding the address in rs1.
    ///
    /// Below M, menvcfg (and for U also senvcfg) must enable the operation: CBIE for INVAL
    /// (00 illegal; 01 and 11, flush or invalidate, are the same here, with no cache), CBCFE
    /// for CLEAN/FLUSH, CBZE for ZERO. CLEAN/FLUSH/INVAL need load or store permission,
    /// ZERO store permission; their faults are store faults with the rs1 address in xtval.
    fn cbo(&mut self, sys: &mut Sys, op: Op) -> Result<(), Trap> {
        let f = op.imm as u64;
        let enabled = |env: u64| match f {
            0 => env & ENVCFG_CBIE != 0,
            1 | 2 => env & ENVCFG_CBCFE != 0,
            _ => env & ENVCFG_CBZE != 0,
        };
        if (self.prv != 3 && !enabled(self.menvcfg)) || (self.prv == 0 && !enabled(self.senvcfg)) {
            return Err(self.illegal(sys));
        }
        let va = self.rs1(&op);
        let block = va & !(CACHE_BLOCK - 1);
        self.sync_epochs(sys);
        if f == 4 {
            // Linux clears every page this way: take the write TLB when it maps the block.
            let e = self.tlb_w[((block >> 12) as usize) & TLB_MASK];
            if e.tag == (block & !0xfff) | self.wkey
                && sys
                    .ram
                    .write_bytes(e.off + (block & 0xfff), &[0u8; CACHE_BLOCK as usize])
            {
                return Ok(());
            }
            let pa = self
                .translate(sys, block, CACHE_BLOCK, Access::Write)
                .map_err(|t| Trap::new(t.cause, va))?;
            if sys.code.is_code(pa) {
                sys.code.invalidate(pa);
                self.sync_epochs(sys);
            }
            for i in 0..CACHE_BLOCK / 8 {
                if !self.phys_write(sys, pa + 8 * i, 8, 0) {
                    return Err(Trap::new(EXC_STORE_ACCESS, va));
                }
            }
            return Ok(());
        }
        // Load permission, or else store permission; a fault is reported as a store's.
        if self
            .translate(sys, block, CACHE_BLOCK, Access::Read)
            .is_err()
        {
            self.translate(sys, block, CACHE_BLOCK, Access::Write)
                .map_err(|t| Trap::new(t.cause, va))?;
        }
        Ok(())
    }
}

/// A write to menvcfg/senvcfg: the bits in `mask`, except that CBIE's reserved value 10
/// leaves the field as it was (WARL).
fn envcfg_write(old: u64, v: u64, mask: u64) -> u64 {
    let mut nv = (old & !mask) | (v & mask);
    if mask & ENVCFG_CBIE != 0 && (v & ENVCFG_CBIE) >> 4 == 0b10 {
        nv = (nv & !ENVCFG_CBIE) | (old & ENVCFG_CBIE);
    }
    nv
}

/// Carry-less product of `a` and `b`: (high, low) 64-bit halves.
fn clmul(a: u64, b: u64) -> (u64, u64) {
    let (mut hi, mut lo) = (0u64, 0u64);
    for i in 0..64 {
        if (b >> i) & 1 != 0 {
            lo ^= a << i;
            if i != 0 {
                hi ^= a >> (64 - i);
            }
        }
    }
    (hi, lo)
}

#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

fn vector(tvec: u64, irq: bool, code: u64) -> u64 {
    let base = tvec & !3;
    if irq && tvec & 1 == 1 {
        base.wrapping_add(4 * code)
    } else {
        base
    }
}
