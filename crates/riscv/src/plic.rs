//! The platform-level interrupt controller (SiFive PLIC layout, as on QEMU's `virt` board):
//! per-source priorities and pending bits, per-context enables, thresholds and claim/complete.
//! Context 2h is hart h's M-mode, 2h+1 its S-mode.

use std::sync::{Arc, Mutex};

use vireo_machine::bus::{le_value, set_le_value};
use vireo_machine::{BusDevice, IrqLine};

use crate::sys::IrqOutputs;

/// Interrupt sources (1..NUM_SOURCES; 0 means "none").
pub const NUM_SOURCES: usize = 64;
pub const PLIC_SIZE: u64 = 0x60_0000;

const WORDS: usize = NUM_SOURCES / 32;

pub struct Plic {
    priority: [u32; NUM_SOURCES],
    level: [bool; NUM_SOURCES],
    pending: [bool; NUM_SOURCES],
    claimed: [bool; NUM_SOURCES],
    /// A rising level seen while the source was claimed. Devices that signal events pulse
    /// their line (the 16550 model raises and lowers it at once); a pulse that lands while the
    /// handler runs must come back at completion instead of being lost with the level.
    rose_while_claimed: [bool; NUM_SOURCES],
    enable: Vec<[u32; WORDS]>,
    threshold: Vec<u32>,
    out: Arc<IrqOutputs>,
}

impl Plic {
    pub fn new(harts: usize, out: Arc<IrqOutputs>) -> Self {
        Plic {
            priority: [0; NUM_SOURCES],
            level: [false; NUM_SOURCES],
            pending: [false; NUM_SOURCES],
            claimed: [false; NUM_SOURCES],
            rose_while_claimed: [false; NUM_SOURCES],
            enable: vec![[0; WORDS]; 2 * harts],
            threshold: vec![0; 2 * harts],
            out,
        }
    }

    /// The registers and line state, for a snapshot.
    pub fn save(&self) -> crate::state::PlicState {
        crate::state::PlicState {
            priority: self.priority.to_vec(),
            level: self.level.to_vec(),
            pending: self.pending.to_vec(),
            claimed: self.claimed.to_vec(),
            rose_while_claimed: self.rose_while_claimed.to_vec(),
            enable: self.enable.iter().map(|w| w.to_vec()).collect(),
            threshold: self.threshold.clone(),
        }
    }

    /// Puts saved registers back and drives the harts' external-interrupt inputs from them.
    pub fn restore(&mut self, st: &crate::state::PlicState) -> Result<(), String> {
        let fixed = |v: usize, what: &str| {
            if v == NUM_SOURCES {
                Ok(())
            } else {
                Err(format!(
                    "PLIC: {v} {what} saved, this PLIC has {NUM_SOURCES} sources"
                ))
            }
        };
        fixed(st.priority.len(), "priorities")?;
        fixed(st.level.len(), "levels")?;
        fixed(st.pending.len(), "pending bits")?;
        fixed(st.claimed.len(), "claimed bits")?;
        fixed(st.rose_while_claimed.len(), "edge bits")?;
        if st.enable.len() != self.enable.len() || st.threshold.len() != self.threshold.len() {
            return Err(format!(
                "PLIC: {} contexts saved, this machine has {}",
                st.enable.len(),
                self.enable.len()
            ));
        }
        for (i, &p) in st.priority.iter().enumerate() {
            self.priority[i] = p & 7;
            self.level[i] = st.level[i];
            self.pending[i] = st.pending[i];
            self.claimed[i] = st.claimed[i];
            self.rose_while_claimed[i] = st.rose_while_claimed[i];
        }
        for (ctx, words) in st.enable.iter().enumerate() {
            if words.len() != WORDS {
                return Err(format!(
                    "PLIC: context {ctx} has {} enable words saved, expected {WORDS}",
                    words.len()
                ));
            }
            self.enable[ctx].copy_from_slice(words);
            // Source 0 does not exist and cannot be enabled.
            self.enable[ctx][0] &= !1;
        }
        // Masked as the guest's own writes are: a snapshot holds nothing a guest could not set.
        for (t, &v) in self.threshold.iter_mut().zip(&st.threshold) {
            *t = v & 7;
        }
        self.update();
        Ok(())
    }

    fn enabled(&self, ctx: usize, src: usize) -> bool {
        self.enable[ctx][src / 32] & (1 << (src % 32)) != 0
    }

    fn best(&self, ctx: usize) -> usize {
        let mut best = 0;
        let mut best_prio = self.threshold[ctx];
        for src in 1..NUM_SOURCES {
            if self.pending[src] && self.enabled(ctx, src) && self.priority[src] > best_prio {
                best = src;
                best_prio = self.priority[src];
            }
        }
        best
    }

    fn update(&self) {
        for ctx in 0..self.threshold.len() {
            self.out.set(ctx, self.best(ctx) != 0);
        }
    }

    /// Drives source `src`'s level (the gateway latches a rising level as pending).
    pub fn set_level(&mut self, src: usize, high: bool) {
        if src == 0 || src >= NUM_SOURCES {
            return;
        }
        let rose = high && !self.level[src];
        self.level[src] = high;
        if high && !self.claimed[src] {
            self.pending[src] = true;
        } else if rose {
            self.rose_while_claimed[src] = true;
        }
        self.update();
    }

    fn claim(&mut self, ctx: usize) -> u32 {
        let src = self.best(ctx);
        if src != 0 {
            self.pending[src] = false;
            self.claimed[src] = true;
        }
        self.update();
        src as u32
    }

    fn complete(&mut self, src: usize) {
        if src == 0 || src >= NUM_SOURCES {
            return;
        }
        self.claimed[src] = false;
        if self.level[src] || self.rose_while_claimed[src] {
            self.pending[src] = true;
        }
        self.rose_while_claimed[src] = false;
        self.update();
    }
}

impl BusDevice for Plic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let ctxs = self.threshold.len() as u64;
        let v: u32 = match offset {
            0..=0xfff => self
                .priority
                .get((offset / 4) as usize)
                .copied()
                .unwrap_or(0),
            0x1000..=0x1fff => {
                let w = ((offset - 0x1000) / 4) as usize;
                (0..32)
                    .filter(|b| {
                        let s = w * 32 + b;
                        s < NUM_SOURCES && self.pending[s]
                    })
                    .fold(0, |acc, b| acc | (1 << b))
            }
            0x2000..=0x1f_ffff => {
                let ctx = (offset - 0x2000) / 0x80;
                let w = ((offset - 0x2000) % 0x80 / 4) as usize;
                if ctx < ctxs && w < WORDS {
                    self.enable[ctx as usize][w]
                } else {
                    0
                }
            }
            _ => {
                let ctx = (offset - 0x20_0000) / 0x1000;
                if ctx >= ctxs {
                    0
                } else {
                    match offset % 0x1000 {
                        0 => self.threshold[ctx as usize],
                        4 => self.claim(ctx as usize),
                        _ => 0,
                    }
                }
            }
        };
        set_le_value(data, u64::from(v));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let v = le_value(data) as u32;
        let ctxs = self.threshold.len() as u64;
        match offset {
            0..=0xfff => {
                let s = (offset / 4) as usize;
                if s > 0 && s < NUM_SOURCES {
                    self.priority[s] = v & 7;
                }
            }
            0x2000..=0x1f_ffff => {
                let ctx = (offset - 0x2000) / 0x80;
                let w = ((offset - 0x2000) % 0x80 / 4) as usize;
                if ctx < ctxs && w < WORDS {
                    // Source 0 does not exist.
                    self.enable[ctx as usize][w] = if w == 0 { v & !1 } else { v };
                }
            }
            0x20_0000.. => {
                let ctx = (offset - 0x20_0000) / 0x1000;
                if ctx < ctxs {
                    match offset % 0x1000 {
                        0 => self.threshold[ctx as usize] = v & 7,
                        4 => self.complete(v as usize),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        self.update();
    }
}

/// A device's interrupt line into the PLIC.
pub struct PlicIrq {
    pub plic: Arc<Mutex<Plic>>,
    pub source: usize,
}

impl IrqLine for PlicIrq {
    fn set_level(&self, high: bool) {
        self.plic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_level(self.source, high);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(p: &mut Plic, off: u64) -> u32 {
        let mut b = [0u8; 4];
        p.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn claim_complete_threshold() {
        let out = Arc::new(IrqOutputs::new(2));
        let mut p = Plic::new(1, out.clone());
        p.write(10 * 4, &1u32.to_le_bytes());
        p.write(3 * 4, &2u32.to_le_bytes());
        // Enable sources 3 and 10 for context 1 (S-mode of hart 0).
        p.write(0x2080, &((1u32 << 10) | (1 << 3)).to_le_bytes());
        p.set_level(10, true);
        p.set_level(10, false);
        assert!(out.get(1));
        assert!(!out.get(0), "M context has nothing enabled");
        p.set_level(3, true);
        assert_eq!(rd(&mut p, 0x20_1004), 3, "higher priority first");
        assert_eq!(rd(&mut p, 0x20_1004), 10);
        assert_eq!(rd(&mut p, 0x20_1004), 0);
        assert!(!out.get(1));
        // Source 3 is still high: completing makes it pending again.
        p.write(0x20_1004, &3u32.to_le_bytes());
        assert!(out.get(1));
        // A threshold at its priority masks it.
        p.write(0x20_1000, &2u32.to_le_bytes());
        assert!(!out.get(1));
        // Hostile offsets and source numbers are ignored.
        p.write(0x20_1004, &999u32.to_le_bytes());
        p.write(0x5f_fff0, &1u32.to_le_bytes());
        assert_eq!(rd(&mut p, 0x3f_0004), 0);
        p.set_level(0, true);
        p.set_level(4096, true);
    }

    #[test]
    fn pulse_while_claimed_comes_back_at_completion() {
        let out = Arc::new(IrqOutputs::new(2));
        let mut p = Plic::new(1, out.clone());
        p.write(10 * 4, &1u32.to_le_bytes());
        p.write(0x2080, &(1u32 << 10).to_le_bytes());
        p.set_level(10, true);
        p.set_level(10, false);
        assert_eq!(rd(&mut p, 0x20_1004), 10);
        // The handler runs; the device signals a new event meanwhile.
        p.set_level(10, true);
        p.set_level(10, false);
        assert!(!out.get(1), "held while claimed");
        p.write(0x20_1004, &10u32.to_le_bytes());
        assert!(out.get(1), "the event is not lost");
        assert_eq!(rd(&mut p, 0x20_1004), 10);
        p.write(0x20_1004, &10u32.to_le_bytes());
        assert!(!out.get(1), "and delivered once");
    }

    #[test]
    fn a_restore_keeps_the_registers_within_what_a_guest_can_write() {
        let out = Arc::new(IrqOutputs::new(2));
        let mut p = Plic::new(1, out.clone());
        p.write(10 * 4, &1u32.to_le_bytes());
        let mut st = p.save();
        st.threshold[1] = 9;
        st.priority[3] = 0xff;
        st.enable[1][0] = 0xffff_ffff;
        let mut q = Plic::new(1, out);
        q.restore(&st).unwrap();
        let back = q.save();
        assert_eq!(back.threshold[1], 1);
        assert_eq!(back.priority[3], 7);
        assert_eq!(back.priority[10], 1);
        assert_eq!(back.enable[1][0], 0xffff_fffe);
        st.threshold.pop();
        assert!(q.restore(&st).unwrap_err().contains("contexts"));
    }
}
