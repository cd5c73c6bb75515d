//! A vCPU thread: a state machine whose states are functions returning the next state.
//!
//! ```text
//!            Resume                      guest exit / error / HLT without irqchip
//!   paused ─────────▶ running ─────────────────────────────────────▶ stopped
//!     ▲  ◀──────────── │                                                 │
//!     │     Pause      │ Finish                                  Finish  │
//!     └── Finish ──────┴──────────────────▶ exited ◀─────────────────────┘
//! ```
//!
//! The VMM talks to the thread only through [`VcpuEvent`]s on a channel; each event is
//! followed by a kick (a signal whose handler sets the vCPU's `immediate_exit`), so a vCPU
//! inside KVM_RUN — even one halted in the in-kernel irqchip — returns to its loop and reads
//! the channel within microseconds. Answers to the controller go back as [`VcpuResponse`]s;
//! what the guest did goes to the run loop as [`VcpuOutcome`]s. A paused vCPU also answers
//! [`VcpuEvent::Save`] with its KVM state (a running or stopped one refuses): vCPU ioctls run
//! on the vCPU's own thread.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kvm_bindings::{
    kvm_run, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vireo_machine::{Bus, ExitSignal, GuestExit};

use crate::state::{self, Caps, StateError, VcpuState};

/// What the VMM asks of a vCPU thread.
#[derive(Debug, Clone)]
pub enum VcpuEvent {
    /// Stop running guest code until `Resume`.
    Pause,
    /// Run guest code.
    Resume,
    /// Report whether this vCPU is halted with no way to wake (answered as an outcome).
    Probe,
    /// Read this vCPU's KVM state (answered on the given channel with the vCPU's index).
    /// Only a paused vCPU saves: vCPU ioctls belong on the vCPU's own thread, between runs.
    Save(Sender<(u32, Result<VcpuState, StateError>)>),
    /// End the thread.
    Finish,
}

/// A vCPU thread's answer to `Pause`/`Resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    /// The vCPU has stopped for good (the guest exited or failed); it runs no more.
    Stopped,
}

/// What happened in the guest, reported to the run loop.
#[derive(Debug)]
pub enum VcpuOutcome {
    /// A device latched a guest exit (power-off register, reset port).
    Exit(GuestExit),
    /// The vCPU cannot continue.
    Failed(VcpuError),
    /// HLT exit to user space (no in-kernel irqchip): nothing can wake this vCPU.
    Halted { cpu: u32, regs: RegisterDump },
    /// Answer to [`VcpuEvent::Probe`]: `Some` (with the registers) when the vCPU is halted with
    /// interrupts disabled, waiting for a SIPI, or stopped.
    Probed {
        cpu: u32,
        stuck: Option<RegisterDump>,
    },
    /// The controller asked the VMM to stop the guest.
    StopRequested,
}

/// Why a vCPU stopped running its guest.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM could not handle an instruction or event (on nested hosts: any guest exception).
    #[error("vCPU {cpu}: KVM internal error, suberror {suberror} ({}); {regs}", internal_error_name(*.suberror))]
    InternalError {
        cpu: u32,
        suberror: u32,
        regs: RegisterDump,
    },
    /// The guest triple-faulted (or otherwise shut down) without asking for a reset.
    #[error("vCPU {cpu}: unexpected shutdown (triple fault); {regs}")]
    Shutdown { cpu: u32, regs: RegisterDump },
    /// The hardware refused to enter the guest.
    #[error("vCPU {cpu}: VM entry failed, hardware reason {reason:#x}; {regs}")]
    FailEntry {
        cpu: u32,
        reason: u64,
        regs: RegisterDump,
    },
    /// The guest reported a crash through a KVM system event.
    #[error("vCPU {cpu}: guest crash system event (type {kind}); {regs}")]
    Crash {
        cpu: u32,
        kind: u32,
        regs: RegisterDump,
    },
    /// KVM exited for a reason vireo does not handle.
    #[error("vCPU {cpu}: unhandled KVM exit {reason}; {regs}")]
    UnhandledExit {
        cpu: u32,
        reason: String,
        regs: RegisterDump,
    },
    /// The KVM_RUN ioctl itself failed.
    #[error("vCPU {cpu}: KVM_RUN failed: {source}")]
    Run { cpu: u32, source: kvm_ioctls::Error },
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "instruction emulation failed",
        2 => "exception while delivering an exception",
        3 => "cannot deliver an event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// The registers that say where a guest was: printed in every fatal vCPU error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterDump {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub ss: u16,
    /// False when KVM would not give the registers.
    pub valid: bool,
}

impl RegisterDump {
    pub fn read(fd: &VcpuFd) -> Self {
        match (fd.get_regs(), fd.get_sregs()) {
            (Ok(r), Ok(s)) => RegisterDump {
                rip: r.rip,
                rsp: r.rsp,
                rflags: r.rflags,
                cr0: s.cr0,
                cr3: s.cr3,
                cr4: s.cr4,
                efer: s.efer,
                cs: s.cs.selector,
                ds: s.ds.selector,
                es: s.es.selector,
                fs: s.fs.selector,
                gs: s.gs.selector,
                ss: s.ss.selector,
                valid: true,
            },
            _ => RegisterDump::default(),
        }
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.valid {
            return write!(f, "registers unavailable");
        }
        write!(
            f,
            "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} \
             cs={:#x} ds={:#x} es={:#x} fs={:#x} gs={:#x} ss={:#x}",
            self.rip,
            self.rsp,
            self.rflags,
            self.cr0,
            self.cr3,
            self.cr4,
            self.efer,
            self.cs,
            self.ds,
            self.es,
            self.fs,
            self.gs,
            self.ss
        )
    }
}

/// VM exits of one vCPU by reason, updated by its thread and read by anyone.
#[derive(Debug, Default)]
pub struct ExitCounters {
    io: AtomicU64,
    mmio: AtomicU64,
    hlt: AtomicU64,
    shutdown: AtomicU64,
    internal_error: AtomicU64,
    system_event: AtomicU64,
    other: AtomicU64,
    interrupted: AtomicU64,
}

/// A snapshot of VM-exit counts, summed over vCPUs by the controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port I/O (KVM_EXIT_IO).
    pub io: u64,
    /// MMIO to addresses outside RAM and the in-kernel devices (KVM_EXIT_MMIO).
    pub mmio: u64,
    /// HLT to user space (only without the in-kernel irqchip).
    pub hlt: u64,
    /// Triple faults (KVM_EXIT_SHUTDOWN).
    pub shutdown: u64,
    /// KVM_EXIT_INTERNAL_ERROR.
    pub internal_error: u64,
    /// KVM_EXIT_SYSTEM_EVENT.
    pub system_event: u64,
    /// Every other exit reason.
    pub other: u64,
    /// KVM_RUN returns caused by a kick (EINTR or immediate_exit), not by the guest.
    pub interrupted: u64,
}

impl ExitCounts {
    /// Exits caused by the guest (everything but kicks).
    pub fn guest_exits(&self) -> u64 {
        self.io
            + self.mmio
            + self.hlt
            + self.shutdown
            + self.internal_error
            + self.system_event
            + self.other
    }
}

impl std::ops::Add for ExitCounts {
    type Output = ExitCounts;
    fn add(self, o: ExitCounts) -> ExitCounts {
        ExitCounts {
            io: self.io + o.io,
            mmio: self.mmio + o.mmio,
            hlt: self.hlt + o.hlt,
            shutdown: self.shutdown + o.shutdown,
            internal_error: self.internal_error + o.internal_error,
            system_event: self.system_event + o.system_event,
            other: self.other + o.other,
            interrupted: self.interrupted + o.interrupted,
        }
    }
}

impl ExitCounters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ExitCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExitCounts {
            io: l(&self.io),
            mmio: l(&self.mmio),
            hlt: l(&self.hlt),
            shutdown: l(&self.shutdown),
            internal_error: l(&self.internal_error),
            system_event: l(&self.system_event),
            other: l(&self.other),
            interrupted: l(&self.interrupted),
        }
    }
}

thread_local! {
    /// This thread's kvm_run mapping, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal's handler: makes the interrupted (or next) KVM_RUN return at once.
pub extern "C" fn kick_handler(
    _num: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // `try_with`: the signal may land on a thread whose TLS is being torn down.
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's live kvm_run mapping (set while the thread
            // owns its VcpuFd, cleared before it is dropped); the handler runs on that same
            // thread, so nothing else writes the field concurrently.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// The calling thread's CPU-time clock, which any thread of the process may read.
pub fn own_cpu_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the caller; the clock id is written to a local.
    let r = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if r == 0 {
        clock
    } else {
        NO_CLOCK
    }
}

/// A thread that has not said its clock yet (or has none).
pub const NO_CLOCK: libc::clockid_t = libc::clockid_t::MIN;

/// How much CPU time the thread whose clock is `clock` has used; `None` once it is gone.
pub fn cpu_time(clock: libc::clockid_t) -> Option<std::time::Duration> {
    if clock == NO_CLOCK {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, a local.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(std::time::Duration::new(
        ts.tv_sec as u64,
        ts.tv_nsec as u32,
    ))
}

/// Whether a thread that used `used` of CPU time over `interval` was asleep (in KVM's halt
/// wait, or waiting on a channel) rather than running: under a tenth of it. Read from the
/// threads' CPU clocks, not /proc, which a jailed VMM does not have.
pub fn slept(used: std::time::Duration, interval: std::time::Duration) -> bool {
    used < interval / 10
}

/// The signal that kicks vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Everything one vCPU thread owns.
pub struct Vcpu {
    pub index: u32,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub counters: Arc<ExitCounters>,
    pub events: Receiver<VcpuEvent>,
    pub responses: Sender<(u32, VcpuResponse)>,
    pub outcomes: Sender<VcpuOutcome>,
    /// When the guest first transmitted a byte on COM1 (any vCPU), for start-up timing.
    pub first_output: Arc<OnceLock<Instant>>,
    pub com1: u16,
    /// This thread's Linux thread id, published so the VMM can see whether it is asleep.
    /// Where the thread puts its CPU-time clock ([`own_cpu_clock`]) for the hang check.
    pub clock: Arc<std::sync::atomic::AtomicI32>,
    /// What this host's KVM can save.
    pub caps: Arc<Caps>,
    /// The last KVM_RUN ended in a port or MMIO exit, which KVM completes only on the next
    /// KVM_RUN (start it false).
    pub io_pending: bool,
}

/// A state: the function to run next, or `None` when the thread is done.
struct State(Option<fn(&mut Vcpu) -> State>);

impl State {
    const PAUSED: State = State(Some(Vcpu::paused));
    const RUNNING: State = State(Some(Vcpu::running));
    const STOPPED: State = State(Some(Vcpu::stopped));
    const EXITED: State = State(None);
}

/// What one KVM_RUN came back with, after the exit was handled.
enum Step {
    Continue,
    Stop(VcpuOutcome),
}

impl Vcpu {
    /// The thread body: starts paused, ends when told to finish.
    pub fn run_thread(mut self) {
        KVM_RUN.with(|p| p.set(self.fd.get_kvm_run() as *mut kvm_run));
        self.clock.store(own_cpu_clock(), Ordering::Release);
        let mut state = State::PAUSED;
        while let State(Some(f)) = state {
            state = f(&mut self);
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }

    fn respond(&self, r: VcpuResponse) {
        let _ = self.responses.send((self.index, r));
    }

    fn report(&self, o: VcpuOutcome) {
        let _ = self.outcomes.send(o);
    }

    fn paused(&mut self) -> State {
        loop {
            match self.events.recv() {
                Ok(VcpuEvent::Resume) => {
                    self.respond(VcpuResponse::Resumed);
                    return State::RUNNING;
                }
                Ok(VcpuEvent::Pause) => self.respond(VcpuResponse::Paused),
                Ok(VcpuEvent::Probe) => self.report(VcpuOutcome::Probed {
                    cpu: self.index,
                    stuck: None,
                }),
                Ok(VcpuEvent::Save(reply)) => {
                    let saved = self
                        .complete_io()
                        .and_then(|()| state::save_vcpu(&self.fd, self.index, &self.caps));
                    let _ = reply.send((self.index, saved));
                }
                Ok(VcpuEvent::Finish) | Err(_) => return State::EXITED,
            }
        }
    }

    fn running(&mut self) -> State {
        loop {
            // Every queued event is handled before the next KVM_RUN: the kicks that announced
            // them may all have been spent on one return from the guest.
            loop {
                match self.events.try_recv() {
                    Ok(VcpuEvent::Pause) => {
                        self.respond(VcpuResponse::Paused);
                        return State::PAUSED;
                    }
                    Ok(VcpuEvent::Resume) => self.respond(VcpuResponse::Resumed),
                    Ok(VcpuEvent::Probe) => {
                        let stuck = self.stuck();
                        self.report(VcpuOutcome::Probed {
                            cpu: self.index,
                            stuck,
                        });
                    }
                    // The controller saves only a paused VM; a request that raced a resume
                    // gets a refusal, not a torn state.
                    Ok(VcpuEvent::Save(reply)) => {
                        let refused = Err(StateError::Running { cpu: self.index });
                        let _ = reply.send((self.index, refused));
                    }
                    Ok(VcpuEvent::Finish) | Err(TryRecvError::Disconnected) => {
                        return State::EXITED
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if let Step::Stop(outcome) = self.run_once() {
                self.report(outcome);
                return State::STOPPED;
            }
        }
    }

    /// The guest can run no more; answer the VMM until it says finish.
    fn stopped(&mut self) -> State {
        loop {
            match self.events.recv() {
                Ok(VcpuEvent::Pause) | Ok(VcpuEvent::Resume) => self.respond(VcpuResponse::Stopped),
                Ok(VcpuEvent::Probe) => self.report(VcpuOutcome::Probed {
                    cpu: self.index,
                    stuck: Some(RegisterDump::read(&self.fd)),
                }),
                Ok(VcpuEvent::Save(reply)) => {
                    let refused = Err(StateError::Stopped { cpu: self.index });
                    let _ = reply.send((self.index, refused));
                }
                Ok(VcpuEvent::Finish) | Err(_) => return State::EXITED,
            }
        }
    }

    /// Finishes the I/O instruction of the last exit without running guest code. The KVM API
    /// says an IO or MMIO exit is complete, and the vCPU state consistent, only once KVM_RUN
    /// is entered again (an MMIO read's data lands then, and RIP moves past the instruction);
    /// that pending part is in no state userspace can read. KVM_RUN with `immediate_exit` set
    /// completes it and returns EINTR before the guest runs (a `rep ins/outs` may first exit
    /// again for its next element, which is handled here the same way).
    fn complete_io(&mut self) -> Result<(), StateError> {
        if !self.io_pending {
            return Ok(());
        }
        let cpu = self.index;
        self.fd.set_kvm_immediate_exit(1);
        let result = loop {
            match self.fd.run() {
                Ok(VcpuExit::IoIn(..)) | Ok(VcpuExit::IoOut(..)) => self.handle_io(),
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        data.fill(0);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => break Ok(()),
                // Anything else also means KVM went through the completion first.
                Ok(_) => break Ok(()),
                Err(source) => {
                    break Err(StateError::Vcpu {
                        cpu,
                        what: "KVM_RUN (completing the last I/O exit)",
                        source,
                    })
                }
            }
        };
        self.fd.set_kvm_immediate_exit(0);
        self.io_pending = false;
        result
    }

    /// Halted with interrupts off, or waiting for INIT/SIPI: only another vCPU could wake it.
    fn stuck(&self) -> Option<RegisterDump> {
        let mp = self.fd.get_mp_state().ok()?.mp_state;
        let regs = RegisterDump::read(&self.fd);
        let interrupts_off = regs.rflags & (1 << 9) == 0;
        let waiting = mp == KVM_MP_STATE_UNINITIALIZED || mp == KVM_MP_STATE_INIT_RECEIVED;
        ((mp == KVM_MP_STATE_HALTED && interrupts_off) || waiting).then_some(regs)
    }

    fn fail(&self, f: impl FnOnce(RegisterDump) -> VcpuError) -> Step {
        Step::Stop(VcpuOutcome::Failed(f(RegisterDump::read(&self.fd))))
    }

    fn run_once(&mut self) -> Step {
        let cpu = self.index;
        let c = &self.counters;
        let result = self.fd.run();
        self.io_pending = matches!(
            result,
            Ok(VcpuExit::IoIn(..)
                | VcpuExit::IoOut(..)
                | VcpuExit::MmioRead(..)
                | VcpuExit::MmioWrite(..))
        );
        let step = match result {
            Ok(VcpuExit::IoIn(..)) | Ok(VcpuExit::IoOut(..)) => {
                ExitCounters::bump(&c.io);
                self.handle_io();
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ExitCounters::bump(&c.mmio);
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ExitCounters::bump(&c.mmio);
                self.mmio.write(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => {
                ExitCounters::bump(&c.hlt);
                Step::Stop(VcpuOutcome::Halted {
                    cpu,
                    regs: RegisterDump::read(&self.fd),
                })
            }
            Ok(VcpuExit::Shutdown) => {
                ExitCounters::bump(&c.shutdown);
                self.fail(|regs| VcpuError::Shutdown { cpu, regs })
            }
            Ok(VcpuExit::InternalError) => {
                ExitCounters::bump(&c.internal_error);
                let run = self.fd.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // union member KVM filled in.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                self.fail(|regs| VcpuError::InternalError {
                    cpu,
                    suberror,
                    regs,
                })
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                ExitCounters::bump(&c.system_event);
                match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(VcpuOutcome::Exit(GuestExit::PowerOff)),
                    KVM_SYSTEM_EVENT_RESET => Step::Stop(VcpuOutcome::Exit(GuestExit::Reset)),
                    kind => self.fail(|regs| VcpuError::Crash { cpu, kind, regs }),
                }
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                ExitCounters::bump(&c.other);
                self.fail(|regs| VcpuError::FailEntry { cpu, reason, regs })
            }
            Ok(VcpuExit::Intr) => {
                ExitCounters::bump(&c.interrupted);
                Step::Continue
            }
            Ok(other) => {
                ExitCounters::bump(&c.other);
                let reason = format!("{other:?}");
                self.fail(|regs| VcpuError::UnhandledExit { cpu, reason, regs })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ExitCounters::bump(&c.interrupted);
                Step::Continue
            }
            Err(source) => Step::Stop(VcpuOutcome::Failed(VcpuError::Run { cpu, source })),
        };
        // Cleared after every return: a kick that arrives from here on is for an event that
        // is already in the channel, which the loop reads before the next KVM_RUN.
        self.fd.set_kvm_immediate_exit(0);
        match step {
            Step::Continue if self.exit.is_raised() => Step::Stop(VcpuOutcome::Exit(
                self.exit.get().unwrap_or(GuestExit::PowerOff),
            )),
            s => s,
        }
    }

    /// Port I/O, including `rep ins/outs` (count > 1): each element is a separate access.
    /// Unassigned ports read as all ones, as on a PC's ISA bus.
    fn handle_io(&mut self) {
        let run = self.fd.get_kvm_run();
        // SAFETY: called only for KVM_EXIT_IO, so `io` is the union member KVM filled in.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let len = size * io.count as usize;
        if size == 0 || len == 0 {
            return;
        }
        let base = run as *mut kvm_run as *mut u8;
        // SAFETY: KVM places the data at `data_offset` inside the vCPU's kvm_run mapping (the
        // mapping is KVM_GET_VCPU_MMAP_SIZE bytes and the kernel sized it for `size * count`);
        // the slice is dropped before the next KVM_RUN.
        let data =
            unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
        let port = u64::from(io.port);
        for chunk in data.chunks_mut(size) {
            if u32::from(io.direction) == kvm_bindings::KVM_EXIT_IO_IN {
                if !self.pio.read(port, chunk) {
                    chunk.fill(0xff);
                }
            } else {
                if io.port == self.com1 && self.first_output.get().is_none() {
                    let _ = self.first_output.set(Instant::now());
                }
                self.pio.write(port, chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_display_names_every_register() {
        let d = RegisterDump {
            rip: 0x1000,
            rsp: 0x8ff0,
            rflags: 2,
            cr0: 0x8000_0031,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
            cs: 0x10,
            ds: 0x18,
            es: 0x18,
            fs: 0x18,
            gs: 0x18,
            ss: 0x18,
            valid: true,
        };
        let s = d.to_string();
        for k in [
            "rip=0x1000",
            "rsp=0x8ff0",
            "rflags=0x2",
            "cr0=0x80000031",
            "cr3=0x9000",
            "cr4=0x20",
            "efer=0x500",
            "cs=0x10",
            "ss=0x18",
        ] {
            assert!(s.contains(k), "{s}");
        }
        assert_eq!(RegisterDump::default().to_string(), "registers unavailable");
    }

    #[test]
    fn sleeping_threads_are_told_from_running_ones_by_their_cpu_clocks() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let t = std::thread::spawn(move || {
            tx.send(own_cpu_clock()).unwrap();
            while let Ok(spin) = go_rx.recv() {
                let until = Instant::now() + std::time::Duration::from_millis(100);
                while spin && Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
        });
        let clock = rx.recv().unwrap();
        let interval = std::time::Duration::from_millis(100);
        let measure = |spin: bool| {
            let before = cpu_time(clock).unwrap();
            go_tx.send(spin).unwrap();
            std::thread::sleep(interval);
            cpu_time(clock).unwrap() - before
        };
        assert!(slept(measure(false), interval), "a waiting thread sleeps");
        // Two cores are shared: a spinning thread gets most of an interval, not all.
        assert!(!slept(measure(true), interval), "a spinning thread runs");
        drop(go_tx);
        t.join().unwrap();
        assert_eq!(cpu_time(NO_CLOCK), None);
    }

    #[test]
    fn counts_add_up() {
        let a = ExitCounts {
            io: 1,
            mmio: 2,
            interrupted: 5,
            ..Default::default()
        };
        let b = a + a;
        assert_eq!((b.io, b.mmio, b.interrupted), (2, 4, 10));
        assert_eq!(b.guest_exits(), 6);
    }
}
