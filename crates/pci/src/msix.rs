//! MSI-X (PCI Local Bus 3.0 §6.8.2): the capability, the vector table and pending-bit array a
//! device exposes in one of its BARs, and delivery through the platform's [`MsiSink`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use vireo_machine::bus::{le_value, set_le_value};
use vireo_machine::MsiSink;

pub const CAP_ID: u8 = 0x11;
/// Length of the capability structure in configuration space.
pub const CAP_LEN: usize = 12;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_SIZE: u64 = 16;
const VECTOR_MASKED: u32 = 1;

/// The capability bytes and their write mask for a table of `vectors` entries at `table_off` in
/// BAR `bar`, with the pending bits at `pba_off` in the same BAR. Only the enable and
/// function-mask bits are writable.
pub fn capability(
    vectors: u16,
    bar: u8,
    table_off: u32,
    pba_off: u32,
) -> ([u8; CAP_LEN], [u8; CAP_LEN]) {
    let mut c = [0u8; CAP_LEN];
    c[0] = CAP_ID;
    c[2..4].copy_from_slice(&(vectors.saturating_sub(1) & 0x7ff).to_le_bytes());
    c[4..8].copy_from_slice(&(table_off | u32::from(bar & 7)).to_le_bytes());
    c[8..12].copy_from_slice(&(pba_off | u32::from(bar & 7)).to_le_bytes());
    let mut m = [0u8; CAP_LEN];
    m[3] = ((CTRL_ENABLE | CTRL_FUNCTION_MASK) >> 8) as u8;
    (c, m)
}

/// Bytes of table space for `vectors` entries.
pub fn table_size(vectors: u16) -> u64 {
    u64::from(vectors) * ENTRY_SIZE
}

/// Bytes of pending-bit array for `vectors` entries (whole qwords).
pub fn pba_size(vectors: u16) -> u64 {
    u64::from(vectors).div_ceil(64) * 8
}

/// Table and PBA accesses must be aligned dwords or qwords (§6.8.2); others are ignored.
fn dword_or_qword(off: u64, len: usize) -> bool {
    matches!(len, 4 | 8) && off.is_multiple_of(len as u64)
}

#[derive(Clone, Copy)]
struct Entry {
    addr: u64,
    data: u32,
    ctrl: u32,
}

/// An MSI-X table as a snapshot holds it: per vector (address, data, control), the pending
/// bits, and the capability's enable and function-mask bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    pub entries: Vec<(u64, u32, u32)>,
    pub pending: Vec<bool>,
    pub enabled: bool,
    pub function_masked: bool,
}

/// The vector table and pending bits of one function.
pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    sink: Arc<dyn MsiSink>,
}

impl MsixTable {
    pub fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> Self {
        let n = usize::from(vectors);
        MsixTable {
            // Every vector starts masked (§6.8.2.9).
            entries: vec![
                Entry {
                    addr: 0,
                    data: 0,
                    ctrl: VECTOR_MASKED
                };
                n
            ],
            pending: vec![false; n],
            enabled: false,
            function_masked: false,
            sink,
        }
    }

    pub fn vectors(&self) -> usize {
        self.entries.len()
    }

    /// Whether the driver turned MSI-X on (then INTx is not used).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Takes the Message Control word the driver wrote to the capability.
    pub fn set_control(&mut self, ctrl: u16) {
        self.enabled = ctrl & CTRL_ENABLE != 0;
        self.function_masked = ctrl & CTRL_FUNCTION_MASK != 0;
        self.deliver_pending();
    }

    /// Signals `vector`: sent now, or left pending while it (or the function) is masked. A
    /// vector number past the table, which only a confused driver can cause, is dropped.
    pub fn notify(&mut self, vector: u16) {
        let v = usize::from(vector);
        let Some(e) = self.entries.get(v).copied() else {
            return;
        };
        if !self.enabled {
            return;
        }
        if self.function_masked || e.ctrl & VECTOR_MASKED != 0 {
            self.pending[v] = true;
        } else {
            self.sink.send(e.addr, e.data);
        }
    }

    fn deliver_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for (v, e) in self.entries.iter().enumerate() {
            if self.pending[v] && e.ctrl & VECTOR_MASKED == 0 {
                self.pending[v] = false;
                self.sink.send(e.addr, e.data);
            }
        }
    }

    /// A read in the table; dword or qword, aligned, else zero.
    pub fn table_read(&self, off: u64, data: &mut [u8]) {
        set_le_value(data, 0);
        if !dword_or_qword(off, data.len()) {
            return;
        }
        let lo = self.table_dword(off);
        let v = if data.len() == 8 {
            u64::from(lo) | (u64::from(self.table_dword(off + 4)) << 32)
        } else {
            u64::from(lo)
        };
        set_le_value(data, v);
    }

    fn table_dword(&self, off: u64) -> u32 {
        let Some(e) = usize::try_from(off / ENTRY_SIZE)
            .ok()
            .and_then(|i| self.entries.get(i))
        else {
            return 0;
        };
        match off % ENTRY_SIZE {
            0 => e.addr as u32,
            4 => (e.addr >> 32) as u32,
            8 => e.data,
            _ => e.ctrl,
        }
    }

    /// A write in the table; dword or qword, aligned, else ignored.
    pub fn table_write(&mut self, off: u64, data: &[u8]) {
        if !dword_or_qword(off, data.len()) {
            return;
        }
        let v = le_value(data);
        self.table_write_dword(off, v as u32);
        if data.len() == 8 {
            self.table_write_dword(off + 4, (v >> 32) as u32);
        }
        self.deliver_pending();
    }

    fn table_write_dword(&mut self, off: u64, v: u32) {
        let Some(e) = usize::try_from(off / ENTRY_SIZE)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        else {
            return;
        };
        match off % ENTRY_SIZE {
            0 => e.addr = (e.addr & !0xffff_ffff) | u64::from(v & !3),
            4 => e.addr = (e.addr & 0xffff_ffff) | (u64::from(v) << 32),
            8 => e.data = v,
            _ => e.ctrl = v & VECTOR_MASKED,
        }
    }

    pub fn save(&self) -> MsixState {
        MsixState {
            entries: self
                .entries
                .iter()
                .map(|e| (e.addr, e.data, e.ctrl))
                .collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Puts a saved table back, refusing one of another size. Nothing is sent: a message
    /// pending in the snapshot stays pending until the guest unmasks its vector, as it would
    /// have.
    pub fn restore(&mut self, st: &MsixState) -> Result<(), String> {
        let n = self.entries.len();
        if st.entries.len() != n || st.pending.len() != n {
            return Err(format!(
                "an MSI-X table of {} vectors ({} pending bits), this build has {n}",
                st.entries.len(),
                st.pending.len()
            ));
        }
        for (e, &(addr, data, ctrl)) in self.entries.iter_mut().zip(&st.entries) {
            // The same reserved bits a guest write drops.
            *e = Entry {
                addr: addr & !3,
                data,
                ctrl: ctrl & VECTOR_MASKED,
            };
        }
        self.pending.clone_from(&st.pending);
        self.enabled = st.enabled;
        self.function_masked = st.function_masked;
        Ok(())
    }

    /// A read of the pending-bit array (read-only to software).
    pub fn pba_read(&self, off: u64, data: &mut [u8]) {
        set_le_value(data, 0);
        if !dword_or_qword(off, data.len()) {
            return;
        }
        let first = off.saturating_mul(8);
        let mut v = 0u64;
        for bit in 0..data.len() as u64 * 8 {
            if first
                .checked_add(bit)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| self.pending.get(i))
                .copied()
                .unwrap_or(false)
            {
                v |= 1 << bit;
            }
        }
        set_le_value(data, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Sent(Mutex<Vec<(u64, u32)>>);
    impl MsiSink for Sent {
        fn send(&self, address: u64, data: u32) {
            self.0.lock().unwrap().push((address, data));
        }
    }

    fn table(n: u16) -> (MsixTable, Arc<Sent>) {
        let s = Arc::new(Sent::default());
        (MsixTable::new(n, s.clone()), s)
    }

    fn program(t: &mut MsixTable, v: u64, addr: u64, data: u32, masked: bool) {
        t.table_write(v * 16, &addr.to_le_bytes());
        t.table_write(v * 16 + 8, &data.to_le_bytes());
        t.table_write(v * 16 + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn capability_layout() {
        let (c, m) = capability(3, 0, 0x4000, 0x5000);
        assert_eq!(c[0], CAP_ID);
        assert_eq!(u16::from_le_bytes([c[2], c[3]]), 2);
        assert_eq!(u32::from_le_bytes(c[4..8].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(c[8..12].try_into().unwrap()), 0x5000);
        assert_eq!(m[3], 0xc0);
        assert_eq!(pba_size(65), 16);
        assert_eq!(table_size(3), 48);
    }

    #[test]
    fn delivers_when_enabled_and_unmasked() {
        let (mut t, s) = table(2);
        program(&mut t, 1, 0xfee0_0000, 0x41, false);
        t.notify(1);
        assert!(s.0.lock().unwrap().is_empty(), "disabled: nothing sent");
        t.set_control(CTRL_ENABLE);
        t.notify(1);
        assert_eq!(*s.0.lock().unwrap(), vec![(0xfee0_0000, 0x41)]);
    }

    #[test]
    fn masked_vector_pends_and_fires_on_unmask() {
        let (mut t, s) = table(2);
        t.set_control(CTRL_ENABLE);
        program(&mut t, 0, 0xfee0_1000, 0x22, true);
        t.notify(0);
        assert!(s.0.lock().unwrap().is_empty());
        let mut p = [0u8; 8];
        t.pba_read(0, &mut p);
        assert_eq!(u64::from_le_bytes(p), 1);
        t.table_write(12, &0u32.to_le_bytes());
        assert_eq!(*s.0.lock().unwrap(), vec![(0xfee0_1000, 0x22)]);
        t.pba_read(0, &mut p);
        assert_eq!(u64::from_le_bytes(p), 0);
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let (mut t, s) = table(1);
        program(&mut t, 0, 0xfee0_0000, 0x30, false);
        t.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        t.notify(0);
        assert!(s.0.lock().unwrap().is_empty());
        t.set_control(CTRL_ENABLE);
        assert_eq!(s.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_saved_table_restores_with_its_pending_bits_and_sends_nothing() {
        let (mut t, s) = table(2);
        t.set_control(CTRL_ENABLE);
        program(&mut t, 0, 0xfee0_0000, 0x31, false);
        program(&mut t, 1, 0xfee0_1000, 0x32, true);
        t.notify(1);
        let st = t.save();
        let (mut r, rs) = table(2);
        r.restore(&st).unwrap();
        assert!(rs.0.lock().unwrap().is_empty(), "a restore sends nothing");
        assert_eq!(r.save(), st);
        // The pending vector fires when the guest unmasks it, as it would have before.
        r.table_write(16 + 12, &0u32.to_le_bytes());
        assert_eq!(*rs.0.lock().unwrap(), vec![(0xfee0_1000, 0x32)]);
        assert_eq!(s.0.lock().unwrap().len(), 0);
        let (mut small, _) = table(1);
        assert!(small.restore(&st).unwrap_err().contains("2 vectors"));
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let (mut t, s) = table(1);
        t.set_control(CTRL_ENABLE);
        // Past the table, misaligned, odd widths, a vector number past the table.
        t.table_write(0x1000, &1u32.to_le_bytes());
        t.table_write(2, &1u32.to_le_bytes());
        t.table_write(0, &[1, 2]);
        t.notify(7);
        t.notify(u16::MAX);
        let mut b = [0xffu8; 4];
        t.table_read(0x1000, &mut b);
        assert_eq!(b, [0; 4]);
        t.pba_read(u64::MAX - 7, &mut b);
        assert_eq!(b, [0; 4]);
        assert!(s.0.lock().unwrap().is_empty());
        // Reserved control bits do not stick; the address's low two bits are reserved too.
        t.table_write(12, &0xffff_fffeu32.to_le_bytes());
        t.table_write(0, &0xffff_ffffu32.to_le_bytes());
        let mut c = [0u8; 4];
        t.table_read(12, &mut c);
        assert_eq!(u32::from_le_bytes(c), 0);
        t.table_read(0, &mut c);
        assert_eq!(u32::from_le_bytes(c), 0xffff_fffc);
    }
}
