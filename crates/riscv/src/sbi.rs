//! The built-in SBI (Supervisor Binary Interface, spec v2.0): what OpenSBI would do in M-mode,
//! done by the emulator when a supervisor executes `ecall`. Extensions: BASE, TIME, IPI, RFENCE,
//! HSM, SRST, PMU, DBCN and the legacy console calls.
//!
//! PMU offers the three fixed counters, as OpenSBI numbers them: 0 is `cycle` (0xc00), 1 is
//! `time` (0xc01, never configurable), 2 is `instret` (0xc02), each 64 bits wide. Only the
//! generic hardware events CPU_CYCLES (counter 0) and INSTRUCTIONS (counter 2) match; there
//! are no firmware counters, no sampling (no Sscofpmf) and no snapshot area. Starting and
//! stopping a counter clears and sets its mcountinhibit bit.

use std::io::Write;

use vireo_machine::GuestExit;

use crate::hart::Hart;
use crate::sys::{HsmState, Sys};

const EXT_BASE: u64 = 0x10;
const EXT_TIME: u64 = 0x5449_4d45;
const EXT_IPI: u64 = 0x73_5049;
const EXT_RFENCE: u64 = 0x5246_4e43;
const EXT_HSM: u64 = 0x48_534d;
const EXT_SRST: u64 = 0x5352_5354;
const EXT_DBCN: u64 = 0x4442_434e;
const EXT_PMU: u64 = 0x50_4d55;
const LEGACY_SET_TIMER: u64 = 0x00;
const LEGACY_PUTCHAR: u64 = 0x01;
const LEGACY_GETCHAR: u64 = 0x02;

const SUCCESS: i64 = 0;
const ERR_FAILED: i64 = -1;
const ERR_NOT_SUPPORTED: i64 = -2;
const ERR_INVALID_PARAM: i64 = -3;
const ERR_ALREADY_AVAILABLE: i64 = -6;
const ERR_ALREADY_STARTED: i64 = -7;
const ERR_ALREADY_STOPPED: i64 = -8;

/// SBI implementation ID reported by BASE: not one of the registered IDs.
const IMPL_ID: u64 = 0x7669_7265;

/// Handles the call in a7/a6 with arguments a0..a5; results go to a0 (error) and a1 (value).
pub fn call(h: &mut Hart, sys: &mut Sys) {
    let (eid, fid) = (h.x[17], h.x[16]);
    let a = [h.x[10], h.x[11], h.x[12], h.x[13], h.x[14], h.x[15]];
    let (err, val): (i64, u64) = match eid {
        EXT_BASE => match fid {
            0 => (SUCCESS, 2 << 24),
            1 => (SUCCESS, IMPL_ID),
            2 => (SUCCESS, 1),
            3 => (
                SUCCESS,
                u64::from(matches!(
                    a[0],
                    EXT_BASE
                        | EXT_TIME
                        | EXT_IPI
                        | EXT_RFENCE
                        | EXT_HSM
                        | EXT_SRST
                        | EXT_DBCN
                        | EXT_PMU
                        | LEGACY_SET_TIMER
                        | LEGACY_PUTCHAR
                        | LEGACY_GETCHAR
                )),
            ),
            4..=6 => (SUCCESS, 0),
            _ => (ERR_NOT_SUPPORTED, 0),
        },
        EXT_TIME | LEGACY_SET_TIMER if fid == 0 || eid == LEGACY_SET_TIMER => {
            h.stimecmp = a[0];
            (SUCCESS, 0)
        }
        EXT_IPI if fid == 0 => match harts(sys, a[0], a[1]) {
            Some(set) => {
                for i in set {
                    sys.mail[i].ipi = true;
                }
                (SUCCESS, 0)
            }
            None => (ERR_INVALID_PARAM, 0),
        },
        EXT_RFENCE if fid <= 6 => match harts(sys, a[0], a[1]) {
            Some(set) => {
                if fid == 0 {
                    sys.code.flush();
                } else {
                    for i in set {
                        sys.mail[i].flush_tlb = true;
                    }
                    if sys.mail.get(h.id as usize).is_some_and(|m| m.flush_tlb) {
                        sys.mail[h.id as usize].flush_tlb = false;
                        h.flush_tlb();
                    }
                }
                (SUCCESS, 0)
            }
            None => (ERR_INVALID_PARAM, 0),
        },
        EXT_HSM => hsm(h, sys, fid, &a),
        EXT_PMU => pmu(h, fid, &a),
        EXT_SRST if fid == 0 => match (a[0], a[1]) {
            (0, 0) => {
                sys.exit.raise(GuestExit::PowerOff);
                (SUCCESS, 0)
            }
            (0, _) => {
                sys.exit.raise(GuestExit::Failure(1));
                (SUCCESS, 0)
            }
            (1 | 2, _) => {
                sys.exit.raise(GuestExit::Reset);
                (SUCCESS, 0)
            }
            _ => (ERR_INVALID_PARAM, 0),
        },
        EXT_DBCN => match fid {
            // console_write(len, base_lo, base_hi): the buffer must be RAM (never device
            // registers, whose reads have side effects); on RV64 base_hi must be zero. At most
            // 4 KiB per call, which the spec allows (the caller retries the rest).
            0 => {
                let len = a[0].min(4096);
                let off = (a[2] == 0).then(|| sys.ram.offset(a[1], len)).flatten();
                let mut buf = vec![0u8; len as usize];
                match off {
                    Some(off) if sys.ram.read_bytes(off, &mut buf) => {
                        let _ = sys.console.write_all(&buf);
                        (SUCCESS, len)
                    }
                    _ => (ERR_INVALID_PARAM, 0),
                }
            }
            1 => (SUCCESS, 0),
            2 => {
                let _ = sys.console.write_all(&[a[0] as u8]);
                (SUCCESS, 0)
            }
            _ => (ERR_NOT_SUPPORTED, 0),
        },
        LEGACY_PUTCHAR => {
            let _ = sys.console.write_all(&[a[0] as u8]);
            (SUCCESS, 0)
        }
        LEGACY_GETCHAR => (ERR_FAILED, 0),
        _ => (ERR_NOT_SUPPORTED, 0),
    };
    if eid == LEGACY_GETCHAR {
        h.x[10] = u64::MAX;
        return;
    }
    h.x[10] = err as u64;
    if eid > 0xf {
        h.x[11] = val;
    }
}

const PMU_COUNTERS: u64 = 3;
const PMU_TIME: u64 = 1;

/// The counters an SBI (base, mask) pair names, or None if it names one that does not exist.
fn pmu_set(base: u64, mask: u64) -> Option<Vec<u64>> {
    let mut v = Vec::new();
    for bit in 0..64 {
        if mask & (1 << bit) != 0 {
            let i = base.checked_add(bit)?;
            if i >= PMU_COUNTERS {
                return None;
            }
            v.push(i);
        }
    }
    Some(v)
}

/// mcountinhibit's bit for counter `i` (its CSR's index).
fn inhibit_bit(i: u64) -> u64 {
    1 << i
}

fn pmu(h: &mut Hart, fid: u64, a: &[u64; 6]) -> (i64, u64) {
    match fid {
        // num_counters
        0 => (SUCCESS, PMU_COUNTERS),
        // counter_get_info(idx): hardware counter, CSR number, width - 1.
        1 if a[0] < PMU_COUNTERS => (SUCCESS, (63 << 12) | (0xc00 + a[0])),
        1 => (ERR_INVALID_PARAM, 0),
        // counter_config_matching(base, mask, flags, event_idx, event_data)
        2 => {
            let Some(set) = pmu_set(a[0], a[1]) else {
                return (ERR_INVALID_PARAM, 0);
            };
            let flags = a[2];
            let idx = if flags & 1 != 0 {
                // SKIP_MATCH: the caller names the counter it already has.
                a[0]
            } else {
                let want = match (a[3] >> 16 & 0xf, a[3] & 0xffff) {
                    (0, 1) => 0,
                    (0, 2) => 2,
                    _ => return (ERR_NOT_SUPPORTED, 0),
                };
                // The fixed counters are not handed out exclusively (as in OpenSBI): every
                // cycles event shares counter 0, every instructions event counter 2.
                if !set.contains(&want) {
                    return (ERR_NOT_SUPPORTED, 0);
                }
                want
            };
            if idx == PMU_TIME || idx >= PMU_COUNTERS {
                return (ERR_INVALID_PARAM, 0);
            }
            let i = (idx == 2) as usize;
            if flags & 2 != 0 {
                h.counter_write(i, 0);
            }
            if flags & 4 != 0 {
                h.set_inhibit(h.mcountinhibit & !inhibit_bit(idx));
            }
            (SUCCESS, idx)
        }
        // counter_start(base, mask, flags, initial_value)
        3 => {
            let Some(set) = pmu_set(a[0], a[1]) else {
                return (ERR_INVALID_PARAM, 0);
            };
            if set.contains(&PMU_TIME) {
                return (ERR_INVALID_PARAM, 0);
            }
            if set.iter().any(|&i| h.mcountinhibit & inhibit_bit(i) == 0) {
                return (ERR_ALREADY_STARTED, 0);
            }
            for &i in &set {
                if a[2] & 1 != 0 {
                    h.counter_write((i == 2) as usize, a[3]);
                }
                h.set_inhibit(h.mcountinhibit & !inhibit_bit(i));
            }
            (SUCCESS, 0)
        }
        // counter_stop(base, mask, flags): RESET (flag 1) releases nothing, as the fixed
        // counters are shared.
        4 => {
            let Some(set) = pmu_set(a[0], a[1]) else {
                return (ERR_INVALID_PARAM, 0);
            };
            if set.contains(&PMU_TIME) {
                return (ERR_INVALID_PARAM, 0);
            }
            if set.iter().any(|&i| h.mcountinhibit & inhibit_bit(i) != 0) {
                return (ERR_ALREADY_STOPPED, 0);
            }
            for &i in &set {
                h.set_inhibit(h.mcountinhibit | inhibit_bit(i));
            }
            (SUCCESS, 0)
        }
        // counter_fw_read / _hi: there are no firmware counters.
        5 | 6 => (ERR_INVALID_PARAM, 0),
        _ => (ERR_NOT_SUPPORTED, 0),
    }
}

/// The harts named by an SBI hart mask, or None if it names one that does not exist.
fn harts(sys: &Sys, mask: u64, base: u64) -> Option<Vec<usize>> {
    let n = sys.mail.len();
    if base == u64::MAX {
        return Some((0..n).collect());
    }
    let mut out = Vec::new();
    for bit in 0..64 {
        if mask & (1 << bit) != 0 {
            let id = base.checked_add(bit)? as usize;
            if id >= n {
                return None;
            }
            out.push(id);
        }
    }
    Some(out)
}

fn hsm(h: &mut Hart, sys: &mut Sys, fid: u64, a: &[u64; 6]) -> (i64, u64) {
    match fid {
        // hart_start(hartid, start_addr, opaque)
        0 => {
            let Some(m) = sys.mail.get_mut(a[0] as usize) else {
                return (ERR_INVALID_PARAM, 0);
            };
            if m.hsm != HsmState::Stopped {
                return (ERR_ALREADY_AVAILABLE, 0);
            }
            if sys.ram.offset(a[1], 4).is_none() {
                return (ERR_INVALID_PARAM, 0);
            }
            m.hsm = HsmState::StartPending;
            m.start = Some((a[1], a[2]));
            (SUCCESS, 0)
        }
        // hart_stop()
        1 => {
            sys.mail[h.id as usize].hsm = HsmState::Stopped;
            (SUCCESS, 0)
        }
        2 => match sys.mail.get(a[0] as usize) {
            Some(m) => (SUCCESS, m.hsm as u64),
            None => (ERR_INVALID_PARAM, 0),
        },
        // hart_suspend(type, resume_addr, opaque): only the retentive kind, which is a WFI.
        3 if a[0] as u32 == 0 => (SUCCESS, 0),
        3 => (ERR_NOT_SUPPORTED, 0),
        _ => (ERR_NOT_SUPPORTED, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use vireo_devices::ConsoleOutput;
    use vireo_machine::{Bus, BusDevice, ExitSignal, GuestRam};

    use crate::sys::{IrqOutputs, SysConfig};

    const RAM: u64 = 0x8000_0000;
    const DEV: u64 = 0x1000_0000;

    /// Counts reads: a device whose registers the SBI must never read for a buffer.
    struct Reads(Arc<AtomicUsize>);
    impl BusDevice for Reads {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            self.0.fetch_add(1, Ordering::SeqCst);
            data.fill(b'!');
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    /// Calls DBCN console_write(len, lo, hi) and returns (error, value, console output).
    fn console_write(len: u64, lo: u64, hi: u64, reads: &Arc<AtomicUsize>) -> (i64, u64, Vec<u8>) {
        let ram = GuestRam::new(&[(RAM, 0x10000)]).unwrap();
        ram.write(RAM + 0x100, b"hello, sbi").unwrap();
        let mut bus = Bus::new();
        bus.insert(DEV, 0x100, Arc::new(Mutex::new(Reads(reads.clone()))))
            .unwrap();
        let view = ram.view_at(RAM).unwrap();
        let console = ConsoleOutput::new();
        let mut sys = Sys::new(
            view,
            &bus,
            SysConfig {
                ram_base: RAM,
                clint_base: 0x200_0000,
                harts: 1,
                builtin_sbi: true,
                irq: Arc::new(IrqOutputs::new(2)),
                exit: Arc::new(ExitSignal::new()),
                console: console.clone(),
            },
        );
        let mut h = Hart::new(0);
        h.x[17] = EXT_DBCN;
        h.x[16] = 0;
        h.x[10] = len;
        h.x[11] = lo;
        h.x[12] = hi;
        call(&mut h, &mut sys);
        (h.x[10] as i64, h.x[11], console.take())
    }

    #[test]
    fn console_write_reads_ram_only() {
        let reads = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            console_write(10, RAM + 0x100, 0, &reads),
            (SUCCESS, 10, b"hello, sbi".to_vec())
        );
        // Device registers, a high half on RV64, and a buffer running off the end of RAM are
        // refused without printing anything or touching the device.
        for (len, lo, hi) in [
            (4, DEV, 0),
            (10, RAM + 0x100, 1),
            (16, RAM + 0x10000 - 8, 0),
            (4, u64::MAX - 1, 0),
        ] {
            let (err, _, out) = console_write(len, lo, hi, &reads);
            assert_eq!(err, ERR_INVALID_PARAM, "{len} {lo:#x} {hi}");
            assert!(out.is_empty());
        }
        assert_eq!(
            reads.load(Ordering::SeqCst),
            0,
            "the SBI read device registers"
        );
        // A huge length is capped, not allocated: the first 4 KiB are written.
        let (err, n, out) = console_write(u64::MAX, RAM, 0, &reads);
        assert_eq!((err, n, out.len()), (SUCCESS, 4096, 4096));
    }
}
