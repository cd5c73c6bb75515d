//! The built-in SBI (Supervisor Binary Interface, spec v2.0): what OpenSBI would do in M-mode,
//! done by the emulator when a supervisor executes `ecall`. Extensions: BASE, TIME, IPI, RFENCE,
//! HSM, SRST, DBCN and the legacy console calls.

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
const LEGACY_SET_TIMER: u64 = 0x00;
const LEGACY_PUTCHAR: u64 = 0x01;
const LEGACY_GETCHAR: u64 = 0x02;

const SUCCESS: i64 = 0;
const ERR_FAILED: i64 = -1;
const ERR_NOT_SUPPORTED: i64 = -2;
const ERR_INVALID_PARAM: i64 = -3;
const ERR_ALREADY_AVAILABLE: i64 = -6;

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
                        | LEGACY_SET_TIMER
                        | LEGACY_PUTCHAR
                        | LEGACY_GETCHAR
                )),
            ),
            4..=6 => (SUCCESS, 0),
            _ => (ERR_NOT_SUPPORTED, 0),
        },
        EXT_TIME | LEGACY_SET_TIMER if fid == 0 || eid == LEGACY_SET_TIMER => {
            h.sbi_timecmp = a[0];
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
            0 => {
                // console_write(len, base_lo, base_hi): physical buffer.
                let len = a[0].min(4096) as usize;
                let mut buf = vec![0u8; len];
                if h.read_phys_bytes(sys, a[1], &mut buf) {
                    let _ = sys.console.write_all(&buf);
                    (SUCCESS, len as u64)
                } else {
                    (ERR_INVALID_PARAM, 0)
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
