//! Physical memory protection (privileged spec 1.12, section 3.7): 16 entries, granularity
//! G = 0 (4 bytes, so NA4 exists), TOR/NA4/NAPOT matching, the lock bit.
//!
//! The rules, as implemented here:
//! - the lowest-numbered entry that matches any byte of an access decides it; it must match
//!   every byte, or the access fails;
//! - M-mode accesses are checked only against locked entries, and succeed when none matches;
//! - S- and U-mode accesses that no entry matches fail (16 entries are implemented, so an
//!   unprogrammed PMP denies everything below M, as on hardware);
//! - a locked entry ignores writes to its pmpcfg byte and pmpaddr, and a locked TOR entry
//!   also locks the pmpaddr below it; only reset clears the lock;
//! - R = 0, W = 1 is reserved: a pmpcfg byte written with it keeps its old value (WARL).
//!
//! The harts consult [`Pmp::check`] when they fill a TLB entry (for the whole page, so that a
//! cached translation is valid for every access it serves) and, for pages that straddle a
//! rule, on every access.

pub const ENTRIES: usize = 16;

const R: u8 = 1;
const W: u8 = 2;
const X: u8 = 4;
const A_SHIFT: u8 = 3;
const L: u8 = 0x80;
const TOR: u8 = 1;
const NA4: u8 = 2;
const NAPOT: u8 = 3;
/// pmpaddr holds physical address bits 55..2.
const ADDR_MASK: u64 = (1 << 54) - 1;

/// The access kinds PMP distinguishes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Perm {
    Read,
    Write,
    Exec,
}

#[derive(Clone, Debug, Default)]
pub struct Pmp {
    cfg: [u8; ENTRIES],
    addr: [u64; ENTRIES],
    /// Byte ranges [lo, hi) of the active entries, recomputed on every write.
    range: [Option<(u64, u64)>; ENTRIES],
}

impl Pmp {
    /// The raw configuration bytes and address registers, for a snapshot.
    pub fn save(&self) -> (Vec<u8>, Vec<u64>) {
        (self.cfg.to_vec(), self.addr.to_vec())
    }

    /// Puts saved registers back as they were, locked entries included (the lock binds the
    /// guest, not a restore); false when the counts do not match this model.
    pub fn restore(&mut self, cfg: &[u8], addr: &[u64]) -> bool {
        if cfg.len() != ENTRIES || addr.len() != ENTRIES {
            return false;
        }
        self.cfg.copy_from_slice(cfg);
        self.addr.copy_from_slice(addr);
        self.recompute();
        true
    }

    /// The pmpcfg CSR with index `n` (0 or 2 on RV64; the others hold no entries).
    pub fn read_cfg(&self, n: usize) -> u64 {
        if n >= ENTRIES / 4 || !n.is_multiple_of(2) {
            return 0;
        }
        (0..8).fold(0, |v, i| v | u64::from(self.cfg[n * 4 + i]) << (8 * i))
    }

    pub fn write_cfg(&mut self, n: usize, v: u64) {
        if n >= ENTRIES / 4 || !n.is_multiple_of(2) {
            return;
        }
        for i in 0..8 {
            let e = n * 4 + i;
            let b = (v >> (8 * i)) as u8 & (L | (3 << A_SHIFT) | X | W | R);
            if self.cfg[e] & L != 0 || b & (R | W) == W {
                continue;
            }
            self.cfg[e] = b;
        }
        self.recompute();
    }

    pub fn read_addr(&self, i: usize) -> u64 {
        self.addr.get(i).copied().unwrap_or(0)
    }

    pub fn write_addr(&mut self, i: usize, v: u64) {
        if i >= ENTRIES || self.cfg[i] & L != 0 {
            return;
        }
        if let Some(&next) = self.cfg.get(i + 1) {
            if next & L != 0 && (next >> A_SHIFT) & 3 == TOR {
                return;
            }
        }
        self.addr[i] = v & ADDR_MASK;
        self.recompute();
    }

    fn recompute(&mut self) {
        for i in 0..ENTRIES {
            let a = self.addr[i];
            self.range[i] = match (self.cfg[i] >> A_SHIFT) & 3 {
                TOR => {
                    let lo = if i == 0 { 0 } else { self.addr[i - 1] << 2 };
                    let hi = a << 2;
                    (lo < hi).then_some((lo, hi))
                }
                NA4 => Some((a << 2, (a << 2) + 4)),
                NAPOT => {
                    // yyyy0111 (t trailing ones) covers 2^(t+3) bytes at yyyy0000 << 2.
                    let t = a.trailing_ones();
                    let size_log = u64::from(t) + 3;
                    if size_log >= 56 {
                        Some((0, 1 << 56))
                    } else {
                        let lo = (a & !((1u64 << t) - 1)) << 2;
                        Some((lo, lo + (1u64 << size_log)))
                    }
                }
                _ => None,
            };
        }
    }

    /// Whether an access of `len` bytes at physical `pa` from privilege `prv` (0 U, 1 S, 3 M)
    /// is allowed.
    pub fn check(&self, pa: u64, len: u64, perm: Perm, prv: u64) -> bool {
        let end = pa.saturating_add(len);
        for i in 0..ENTRIES {
            let Some((lo, hi)) = self.range[i] else {
                continue;
            };
            if end <= lo || pa >= hi {
                continue;
            }
            if pa < lo || end > hi {
                return false;
            }
            let c = self.cfg[i];
            if prv == 3 && c & L == 0 {
                return true;
            }
            let bit = match perm {
                Perm::Read => R,
                Perm::Write => W,
                Perm::Exec => X,
            };
            return c & bit != 0;
        }
        prv == 3
    }

    /// Sets up what an SBI firmware leaves for its supervisor: entry 0 covers all memory with
    /// every permission (the built-in SBI has no memory of its own to protect).
    pub fn allow_all(&mut self) {
        *self = Pmp::default();
        self.addr[0] = ADDR_MASK;
        self.cfg[0] = (NAPOT << A_SHIFT) | X | W | R;
        self.recompute();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Perm::*;

    #[test]
    fn empty_pmp_denies_below_m() {
        let p = Pmp::default();
        assert!(p.check(0x8000_0000, 8, Read, 3));
        assert!(!p.check(0x8000_0000, 8, Read, 1));
        assert!(!p.check(0x8000_0000, 8, Exec, 0));
    }

    #[test]
    fn tor_na4_napot_and_priority() {
        let mut p = Pmp::default();
        // Entry 0: NA4 at 0x8000_0000, read-only. Entry 1: TOR [0x8000_0000, 0x8000_1000) RW.
        // Entry 2: NAPOT 0x8000_0000 + 64 KiB, RWX.
        p.write_addr(0, 0x8000_0000 >> 2);
        p.write_addr(1, 0x8000_1000 >> 2);
        p.write_addr(2, (0x8000_0000 >> 2) | ((0x1_0000 >> 3) - 1));
        let cfg = (NA4 << 3 | R) as u64
            | ((TOR << 3 | R | W) as u64) << 8
            | ((NAPOT << 3 | R | W | X) as u64) << 16;
        p.write_cfg(0, cfg);
        assert_eq!(p.read_cfg(0), cfg);
        assert!(p.check(0x8000_0000, 4, Read, 1));
        assert!(!p.check(0x8000_0000, 4, Write, 1), "entry 0 decides first");
        // Entry 1's TOR range starts at pmpaddr0, i.e. 0x8000_0000; entry 0 matches first there.
        assert!(p.check(0x8000_0004, 4, Write, 1));
        assert!(!p.check(0x8000_0002, 4, Read, 1), "straddles entry 0's end");
        assert!(
            !p.check(0x8000_0ffc, 8, Write, 1),
            "straddles entry 1's end"
        );
        assert!(p.check(0x8000_1000, 8, Exec, 0));
        assert!(!p.check(0x8001_0000, 4, Read, 0), "past every entry");
        assert!(
            p.check(0x8001_0000, 4, Read, 3),
            "M is not checked by unlocked entries"
        );
        assert!(p.check(0x8000_0000, 4, Write, 3));
    }

    #[test]
    fn lock_binds_m_and_freezes_the_entry() {
        let mut p = Pmp::default();
        p.write_addr(0, 0x8000_0000 >> 2);
        p.write_addr(1, 0x8010_0000 >> 2);
        // Entry 1: locked TOR, no permissions: M loses access too.
        p.write_cfg(0, ((L | TOR << 3) as u64) << 8);
        assert!(!p.check(0x8000_0000, 8, Read, 3));
        assert!(p.check(0x7fff_fff8, 8, Read, 3));
        p.write_cfg(0, 0);
        p.write_addr(1, 0);
        p.write_addr(0, 0);
        assert_eq!(p.read_cfg(0) >> 8 & 0xff, u64::from(L | TOR << 3));
        assert_eq!(p.read_addr(1), 0x8010_0000 >> 2);
        assert_eq!(
            p.read_addr(0),
            0x8000_0000 >> 2,
            "a locked TOR locks the entry below"
        );
    }

    #[test]
    fn reserved_rw_combination_and_absent_registers() {
        let mut p = Pmp::default();
        p.write_cfg(0, 0x1f);
        p.write_cfg(0, 0x1a); // W without R: ignored
        assert_eq!(p.read_cfg(0), 0x1f);
        p.write_cfg(1, u64::MAX);
        assert_eq!(p.read_cfg(1), 0, "pmpcfg1 does not exist on RV64");
        p.write_cfg(4, u64::MAX);
        assert_eq!(p.read_cfg(4), 0, "no entries past 15");
        p.write_addr(20, 5);
        assert_eq!(p.read_addr(20), 0);
        p.write_addr(3, u64::MAX);
        assert_eq!(p.read_addr(3), ADDR_MASK);
    }

    #[test]
    fn allow_all_covers_the_physical_space() {
        let mut p = Pmp::default();
        p.allow_all();
        assert!(p.check(0, 8, Exec, 0));
        assert!(p.check((1 << 56) - 8, 8, Write, 1));
    }
}
