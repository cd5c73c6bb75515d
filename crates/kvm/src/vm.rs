//! The VM: KVM objects, guest RAM, the PC's buses and devices, the vCPU threads, and the run
//! loop that waits for the guest to stop.

use std::fs::OpenOptions;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vireo_devices::finisher::FINISHER_WINDOW;
use vireo_devices::serial::UART_WINDOW;
use vireo_devices::vmgenid::{VmGenId, VMGENID_WINDOW};
use vireo_devices::{ConsoleOutput, TestFinisher, Uart};
use vireo_machine::GuestMemoryMmap;
use vireo_machine::{
    BootConfig, Bus, BusError, ExitSignal, GuestExit, GuestRam, IrqLine, MemoryError, NoIrq,
    SharedDevice,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootEntry, LoadError};
use crate::layout::{
    self, BOOT_STACK_TOP, CMOS_PORT, COM1_IRQ, COM1_PORT, DEBUG_EXIT_PORT, EXIT_REGISTER_ADDR,
    I8042_PORT, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, MICRO_LOAD_MIN, MIN_MEMORY,
};
use crate::layout::{
    PCI_ECAM_BASE, PCI_GSIS, PCI_MMIO_BASE, PCI_MMIO_SIZE, VMGENID_ADDR, VMGENID_GSI,
};
use crate::mptable::{self, MpTableError};
use crate::pc::{Cmos, DebugExit, KvmIrqLine, CMOS_WINDOW, DEBUG_EXIT_WINDOW, I8042, I8042_WINDOW};
use crate::pc::{KvmMsi, KvmNotify};
use crate::regs::{self, RegsError};
use crate::state::{self, Caps, KvmState, PcState, StateError, KVM_STATE_VERSION};
use crate::vcpu::{
    cpu_time, kick_handler, kick_signal, slept, ExitCounters, ExitCounts, RegisterDump, Vcpu,
    VcpuError, VcpuEvent, VcpuOutcome, VcpuResponse,
};
use vireo_machine::MsiSink;
use vireo_pci::{
    Ecam, MmioWindow, PciRoot, PioConfig, ECAM_BUS_SIZE, PIO_CONFIG_LEN, PIO_CONFIG_PORT,
};
use vireo_virtio::VirtioDevice;

/// The device node KVM is reached through.
pub const KVM_PATH: &str = "/dev/kvm";
/// The only KVM API version there has ever been.
const KVM_API_VERSION: i32 = 12;
/// How long a vCPU thread may take to answer the controller.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a pause waits for the devices to finish their requests.
const DEVICE_PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the run loop checks for a guest that can never wake again.
const HALT_CHECK: Duration = Duration::from_millis(100);

/// Errors from the kvm accelerator.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// KVM is not usable on this host.
    #[error("KVM is unavailable: {0}; run with `--accel emu` instead")]
    Unavailable(String),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// The requested machine is outside what vireo's PC or this host supports.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Writing into guest RAM failed.
    #[error("guest RAM write failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The MP table could not be built.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// The ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] crate::acpi::AcpiError),
    /// A vCPU's initial state could not be set.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// Two devices were placed on overlapping windows (a bug in the board).
    #[error("board layout: {0}")]
    Bus(#[from] BusError),
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    /// A vCPU stopped: internal error, triple fault, failed entry or an unhandled exit.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Every vCPU is halted and nothing can wake any of them.
    #[error("guest hung: every vCPU is halted with no interrupt able to wake it ({0})")]
    AllHalted(String),
    /// The guest did not stop within the time allowed.
    #[error("guest still running after {0:?}")]
    Timeout(Duration),
    /// The controller stopped the VM.
    #[error("VM stopped by the VMM")]
    Stopped,
    /// run() was called on a VM that has already run to its end.
    #[error("this VM has already run; create a new one")]
    AlreadyRan,
    /// A controller request that the VM's current state does not allow.
    #[error("cannot {action} a VM that is {state:?}")]
    BadState {
        action: &'static str,
        state: VmState,
    },
    /// A vCPU thread did not answer the controller in time.
    #[error("vCPU {0} did not answer within {CONTROL_TIMEOUT:?}")]
    NoAnswer(u32),
    /// The vCPU threads are gone (one panicked).
    #[error("the vCPU threads ended unexpectedly")]
    ThreadsGone,
    /// The probe guest behaved in a way no host should produce.
    #[error("the exception probe guest {0}")]
    Probe(String),
    /// The micro-guest's code could not be assembled.
    #[error("micro-guest code: {0}")]
    Asm(#[from] crate::asm::AsmError),
    /// Saving or restoring KVM state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// save_state() on a VM that is not paused.
    #[error("cannot save the KVM state of a VM that is {0:?}: pause it first")]
    NotPaused(VmState),
    /// A device did not finish its requests in time when the VM was paused.
    #[error("a device did not finish its requests within {0:?}; the VM runs on")]
    DevicesBusy(Duration),
    /// dirty_pages() before enable_dirty_log().
    #[error("the dirty page log is off: call enable_dirty_log() first")]
    DirtyLogOff,
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built; run() has not started it.
    Created,
    Running,
    Paused,
    /// run() has returned; the vCPU threads are gone.
    Exited,
}

/// How a micro-guest's vCPUs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicroEntry {
    /// Real mode at `cs:ip`, with every segment register = `cs` and SP = 0xfffe - 0x100 × index.
    Real { cs: u16, ip: u16 },
    /// 64-bit mode on the VMM's identity map of the low 4 GiB (GDT selectors as for Linux: code
    /// 0x10, data 0x18), RSP = top of low RAM - 4 KiB × index.
    Long { rip: u64 },
}

/// How the application processors of a micro-guest start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApStart {
    /// The VMM sets every vCPU at the entry point (RDI = vCPU index).
    AtEntry,
    /// Only vCPU 0 starts; the others wait for INIT/SIPI through the in-kernel local APIC.
    WaitForSipi,
}

/// A guest that is raw machine code rather than a kernel: the probe guest, tests, the bench.
#[derive(Debug, Clone)]
pub struct MicroGuest {
    /// Bytes copied to `load_addr` (at least [`layout::MICRO_LOAD_MIN`]).
    pub image: Vec<u8>,
    pub load_addr: u64,
    pub entry: MicroEntry,
    pub cpus: u32,
    pub memory: u64,
    /// Create KVM's in-kernel PIC/IOAPIC/LAPIC/PIT (HLT then waits in the kernel).
    pub irqchip: bool,
    pub ap_start: ApStart,
}

impl MicroGuest {
    /// One vCPU, 16 MiB, in-kernel irqchip, entering `image` at its first byte.
    pub fn new(image: Vec<u8>, load_addr: u64, entry: MicroEntry) -> Self {
        MicroGuest {
            image,
            load_addr,
            entry,
            cpus: 1,
            memory: 16 << 20,
            irqchip: true,
            ap_start: ApStart::AtEntry,
        }
    }
}

/// What the board boots.
enum Payload<'a> {
    Linux(&'a BootConfig),
    Micro(&'a MicroGuest),
}

/// State shared by the VM, its controller handles and the run loop.
struct Inner {
    events: Vec<Sender<VcpuEvent>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Answers from vCPU threads; holding the lock serialises controller requests.
    control: Mutex<Receiver<(u32, VcpuResponse)>>,
    state: Mutex<VmState>,
    counters: Vec<Arc<ExitCounters>>,
    first_output: Arc<OnceLock<Instant>>,
    stop: Sender<VcpuOutcome>,
    /// The vCPU threads' CPU-time clocks.
    clocks: Vec<Arc<AtomicI32>>,
    /// run() has been called (a VM runs once).
    started: AtomicBool,
    vm: Arc<VmFd>,
    irqchip: bool,
    cmos: Arc<Mutex<Cmos>>,
    /// A handle on guest RAM (the same mappings KVM has), for slots and snapshots.
    mem: GuestMemoryMmap,
    /// KVM_MEM_LOG_DIRTY_PAGES is set on every RAM slot.
    dirty_log: AtomicBool,
    /// COM1 and the virtio-pci functions (in slot order) with the root they sit on: paused
    /// with the vCPUs, and saved for snapshots.
    uart: Arc<Mutex<Uart>>,
    vmgenid: Arc<Mutex<VmGenId>>,
    pci: Vec<vireo_pci::SharedFunction>,
    /// What [`VmController::take_dirty`]'s log is relative to (a snapshot's id).
    dirty_base: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn state(&self) -> VmState {
        *lock(&self.state)
    }

    fn kick_all(&self) {
        let threads = lock(&self.threads);
        for t in threads.iter() {
            // Fails only for a thread that is already gone, which needs no kick.
            let _ = t.kill(kick_signal());
        }
    }

    /// Sends `event` to every vCPU, kicks them, and (when `wait`) waits for each one's answer
    /// to this event (`Stopped` counts: such a vCPU runs no more either way).
    fn broadcast(
        &self,
        control: &Receiver<(u32, VcpuResponse)>,
        event: VcpuEvent,
        wait: bool,
    ) -> Result<(), KvmError> {
        let expected = match event {
            VcpuEvent::Pause => VcpuResponse::Paused,
            _ => VcpuResponse::Resumed,
        };
        let mut waiting: Vec<bool> = self
            .events
            .iter()
            .map(|s| s.send(event.clone()).is_ok())
            .collect();
        self.kick_all();
        if !wait {
            return Ok(());
        }
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        while let Some(cpu) = waiting.iter().position(|w| *w) {
            let left = deadline.saturating_duration_since(Instant::now());
            match control.recv_timeout(left) {
                // Answers to earlier requests that were not waited for are skipped.
                Ok((i, r)) if r == expected || r == VcpuResponse::Stopped => {
                    if let Some(w) = waiting.get_mut(i as usize) {
                        *w = false;
                    }
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Err(KvmError::NoAnswer(cpu as u32)),
                Err(RecvTimeoutError::Disconnected) => return Err(KvmError::ThreadsGone),
            }
        }
        Ok(())
    }

    fn transition(
        &self,
        action: &'static str,
        from: VmState,
        to: VmState,
        event: VcpuEvent,
        wait: bool,
    ) -> Result<(), KvmError> {
        let control = lock(&self.control);
        let state = self.state();
        if state == to {
            return Ok(());
        }
        if state != from {
            return Err(KvmError::BadState { action, state });
        }
        self.broadcast(&control, event, wait)?;
        *lock(&self.state) = to;
        Ok(())
    }

    /// The vCPU threads' CPU time so far (`None` for one not started or gone).
    fn cpu_times(&self) -> Vec<Option<Duration>> {
        self.clocks
            .iter()
            .map(|c| cpu_time(c.load(Ordering::Acquire)))
            .collect()
    }

    fn counts(&self) -> ExitCounts {
        self.counters
            .iter()
            .map(|c| c.snapshot())
            .fold(ExitCounts::default(), |a, b| a + b)
    }

    /// (Re-)registers every RAM region as KVM memory slot `index`, with `flags`.
    fn set_slots(&self, flags: u32) -> Result<(), KvmError> {
        register_slots(&self.vm, &self.mem, flags)
    }

    /// Ends every vCPU thread and waits for them.
    fn finish(&self) {
        *lock(&self.state) = VmState::Exited;
        for s in &self.events {
            let _ = s.send(VcpuEvent::Finish);
        }
        self.kick_all();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A handle that drives a VM from any thread while [`KvmVm::run`] blocks.
#[derive(Clone)]
pub struct VmController {
    inner: Arc<Inner>,
}

impl VmController {
    /// Stops every vCPU from running guest code; returns once all have stopped. On a VM that
    /// has not run yet it makes [`KvmVm::run`] start paused (until [`VmController::resume`]).
    ///
    /// Then the devices are paused too (`VirtioDevice::pause`): no device thread touches guest
    /// memory and no request is half-served, so the VM's state is complete (what a snapshot
    /// takes). A device that does not get there in time fails the pause and the VM runs on.
    pub fn pause(&self) -> Result<(), KvmError> {
        let was = {
            let _control = lock(&self.inner.control);
            let mut state = lock(&self.inner.state);
            let was = *state;
            if was == VmState::Created {
                // The threads are parked in their paused state already.
                *state = VmState::Paused;
            }
            was
        };
        if was == VmState::Paused {
            return Ok(());
        }
        if was != VmState::Created {
            self.inner.transition(
                "pause",
                VmState::Running,
                VmState::Paused,
                VcpuEvent::Pause,
                true,
            )?;
        }
        if !vireo_virtio::pci::pause_functions(&self.inner.pci, DEVICE_PAUSE_TIMEOUT) {
            vireo_virtio::pci::resume_functions(&self.inner.pci);
            if was == VmState::Created {
                *lock(&self.inner.state) = VmState::Created;
            } else {
                self.resume()?;
            }
            return Err(KvmError::DevicesBusy(DEVICE_PAUSE_TIMEOUT));
        }
        Ok(())
    }

    /// Lets a paused VM run again. Returns once every vCPU thread has been told; each runs as
    /// soon as the host schedules it (waiting for their answers would only measure how long
    /// the host takes to schedule this thread next to busy vCPUs).
    pub fn resume(&self) -> Result<(), KvmError> {
        if self.inner.state() == VmState::Paused {
            vireo_virtio::pci::resume_functions(&self.inner.pci);
        }
        self.inner.transition(
            "resume",
            VmState::Paused,
            VmState::Running,
            VcpuEvent::Resume,
            false,
        )
    }

    pub fn state(&self) -> VmState {
        self.inner.state()
    }

    /// VM exits so far, by reason, summed over vCPUs.
    pub fn exit_counters(&self) -> ExitCounts {
        self.inner.counts()
    }

    /// VM exits so far, per vCPU.
    pub fn exit_counters_per_vcpu(&self) -> Vec<ExitCounts> {
        self.inner.counters.iter().map(|c| c.snapshot()).collect()
    }

    /// Makes [`KvmVm::run`] return [`KvmError::Stopped`].
    pub fn stop(&self) {
        let _ = self.inner.stop.send(VcpuOutcome::StopRequested);
    }

    /// When the guest first wrote a byte to COM1's transmit port.
    pub fn first_output_at(&self) -> Option<Instant> {
        self.inner.first_output.get().copied()
    }

    /// Reads KVM's state of a paused VM: each vCPU's (read by its own thread), the in-kernel
    /// irqchip and PIT, the KVM clock and the PC's CMOS. Guest RAM and the UART and virtio
    /// devices are not in it: their owners save them (RAM through [`Self::guest_memory`]).
    /// A VM that is not paused is refused with [`KvmError::NotPaused`].
    pub fn save_state(&self) -> Result<KvmState, KvmError> {
        // Holding the control lock keeps pause/resume out until the save is done.
        let _control = lock(&self.inner.control);
        let vm_state = self.inner.state();
        if vm_state != VmState::Paused {
            return Err(KvmError::NotPaused(vm_state));
        }
        let (tx, answers) = channel();
        for s in &self.inner.events {
            s.send(VcpuEvent::Save(tx.clone()))
                .map_err(|_| KvmError::ThreadsGone)?;
        }
        drop(tx);
        // Paused threads block on their channel: no kick is needed.
        let n = self.inner.events.len();
        let mut vcpus: Vec<Option<state::VcpuState>> = vec![None; n];
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        while let Some(cpu) = vcpus.iter().position(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match answers.recv_timeout(left) {
                Ok((i, saved)) => {
                    if let Some(slot) = vcpus.get_mut(i as usize) {
                        *slot = Some(saved?);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(KvmError::NoAnswer(cpu as u32)),
                Err(RecvTimeoutError::Disconnected) => return Err(KvmError::ThreadsGone),
            }
        }
        let pc = PcState {
            cmos: lock(&self.inner.cmos).state(),
        };
        let vm = state::save_vm(&self.inner.vm, self.inner.irqchip, pc)?;
        Ok(KvmState {
            version: KVM_STATE_VERSION,
            vcpus: vcpus.into_iter().flatten().collect(),
            vm,
        })
    }

    /// The state of the devices vireo shares with the emulator (COM1, virtio-pci) of a paused
    /// VM; [`KvmVm::restore`] puts it back.
    pub fn save_devices(&self) -> Result<state::DevicesState, KvmError> {
        let _control = lock(&self.inner.control);
        let vm_state = self.inner.state();
        if vm_state != VmState::Paused {
            return Err(KvmError::NotPaused(vm_state));
        }
        let (virtio, pci) = vireo_virtio::pci::save_functions(&self.inner.pci)
            .map_err(|e| KvmError::State(StateError::Mismatch(e)))?;
        Ok(state::DevicesState {
            uart: lock(&self.inner.uart).save_state(),
            vmgenid: Some(lock(&self.inner.vmgenid).id()),
            virtio,
            pci,
        })
    }

    /// The guest-physical pages (numbers, address / 4096) written since the last call, by the
    /// vCPUs (KVM's dirty log) and by the VMM's own threads (vm-memory's bitmap, which every
    /// device write marks), with what the log was relative to (see
    /// [`VmController::set_dirty_base`]), which it no longer is. The first call turns KVM's
    /// log on and returns no base: nothing is known of the writes before it. The VM must be
    /// paused, or not have run yet.
    pub fn take_dirty(&self) -> Result<(vireo_machine::DirtyPages, Option<String>), KvmError> {
        let first = !self.inner.dirty_log.load(Ordering::Acquire);
        self.start_dirty_log()?;
        let mut pages = vireo_machine::memory::take_dirty(&self.inner.mem);
        if first {
            *lock(&self.inner.dirty_base) = None;
            return Ok((Vec::new(), None));
        }
        for (base, bitmap) in self.dirty_pages()? {
            for (w, word) in bitmap.into_iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    pages.push(base / 4096 + w as u64 * 64 + b);
                }
            }
        }
        pages.sort_unstable();
        pages.dedup();
        Ok((pages, lock(&self.inner.dirty_base).take()))
    }

    /// Turns KVM's log on for a VM that has not run yet (a restore), leaving vm-memory's
    /// bitmap as it is: what the devices wrote while they were put back is the guest's too, and
    /// the next [`VmController::take_dirty`] reports it.
    pub fn start_dirty_log(&self) -> Result<(), KvmError> {
        let vm_state = self.inner.state();
        if !matches!(vm_state, VmState::Paused | VmState::Created) {
            return Err(KvmError::NotPaused(vm_state));
        }
        if !self.inner.dirty_log.load(Ordering::Acquire) {
            self.enable_dirty_log()?;
        }
        Ok(())
    }

    /// What the dirty log is relative to from now on (a snapshot's id once it is whole, the
    /// snapshot a VM was restored from).
    pub fn set_dirty_base(&self, base: Option<String>) {
        *lock(&self.inner.dirty_base) = base;
    }

    /// See [`VmController::set_dirty_base`].
    pub fn dirty_base(&self) -> Option<String> {
        lock(&self.inner.dirty_base).clone()
    }

    /// Guest RAM: a handle on the same mappings the VM runs on (copy it while the VM is
    /// paused for a consistent snapshot).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.inner.mem
    }

    /// Sets KVM_MEM_LOG_DIRTY_PAGES on every RAM slot: from now on KVM records each page a
    /// vCPU writes. Only vCPU writes are recorded: what the VMM's own threads write into
    /// guest RAM (virtio devices filling buffers and rings, the loader) is not in KVM's log,
    /// so a diff snapshot must add the pages its devices wrote (or save those devices' buffers
    /// by other means).
    pub fn enable_dirty_log(&self) -> Result<(), KvmError> {
        self.inner.set_slots(KVM_MEM_LOG_DIRTY_PAGES)?;
        self.inner.dirty_log.store(true, Ordering::Release);
        Ok(())
    }

    /// Clears KVM_MEM_LOG_DIRTY_PAGES again.
    pub fn disable_dirty_log(&self) -> Result<(), KvmError> {
        self.inner.dirty_log.store(false, Ordering::Release);
        self.inner.set_slots(0)
    }

    /// The pages vCPUs wrote since the log was enabled or last read, per RAM region: (the
    /// region's guest-physical base, a bitmap with bit `i % 64` of word `i / 64` set when the
    /// region's 4 KiB page `i` was written). Reading clears the log (KVM_GET_DIRTY_LOG). Pages
    /// written by the VMM's threads (devices) are not reported; see
    /// [`Self::enable_dirty_log`].
    pub fn dirty_pages(&self) -> Result<Vec<(u64, Vec<u64>)>, KvmError> {
        if !self.inner.dirty_log.load(Ordering::Acquire) {
            return Err(KvmError::DirtyLogOff);
        }
        self.inner
            .mem
            .iter()
            .enumerate()
            .map(|(slot, region)| {
                let bitmap = self
                    .inner
                    .vm
                    .get_dirty_log(slot as u32, region.len() as usize)
                    .map_err(ioctl("KVM_GET_DIRTY_LOG"))?;
                Ok((region.start_addr().0, bitmap))
            })
            .collect()
    }
}

/// Registers each region of `mem` as the KVM memory slot of its index.
fn register_slots(vm: &VmFd, mem: &GuestMemoryMmap, flags: u32) -> Result<(), KvmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region.get_host_address(vm_memory::MemoryRegionAddress(0))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes that `mem` refers to; the
        // VM's shared state keeps a handle on it for as long as any vCPU thread can run, and
        // KVM follows the mapping through its MMU notifier, so the guest never reaches host
        // memory outside it.
        unsafe { vm.set_user_memory_region(r) }.map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// An x86-64 virtual machine on KVM: vireo's PC board.
pub struct KvmVm {
    inner: Arc<Inner>,
    outcomes: Receiver<VcpuOutcome>,
    uart: Arc<Mutex<Uart>>,
    ram: GuestRam,
    cpus: u32,
    /// The PCI functions' MSI delivery, when the board has it.
    msi: Option<Arc<KvmMsi>>,
    // Kept open for the VM's lifetime (the irq lines hold the VM fd too).
    _vm: Arc<VmFd>,
    _kvm: Kvm,
}

static KICK_HANDLER: Once = Once::new();

impl KvmVm {
    /// MSI messages the PCI functions have sent through irqfds (each has its GSI route).
    pub fn msi_routes(&self) -> usize {
        self.msi.as_ref().map_or(0, |m| m.routed())
    }

    /// Checks that /dev/kvm exists, can be opened read-write, and speaks API version 12.
    pub fn probe() -> Result<(), KvmError> {
        open_kvm().map(|_| ())
    }

    /// Builds the PC for a Linux kernel per the [`BootConfig`] contract: COM1 as the console,
    /// the exit register at [`EXIT_REGISTER_ADDR`] named on the command line.
    pub fn new(cfg: &BootConfig, console: ConsoleOutput) -> Result<Self, KvmError> {
        Self::with_devices(cfg, console, Vec::new())
    }

    /// Like [`KvmVm::new`], with virtio devices as PCI functions on slots 1, 2, ... in order.
    pub fn with_devices(
        cfg: &BootConfig,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
    ) -> Result<Self, KvmError> {
        if cfg.firmware.is_some() {
            return Err(KvmError::Config(
                "the kvm accelerator boots kernels directly and takes no firmware".into(),
            ));
        }
        Self::build(Payload::Linux(cfg), console, devices, None)
    }

    /// Builds the PC around raw machine code.
    pub fn new_micro(guest: &MicroGuest, console: ConsoleOutput) -> Result<Self, KvmError> {
        Self::build(Payload::Micro(guest), console, Vec::new(), None)
    }

    /// A micro-guest with virtio devices as PCI functions (slots 1, 2, ... in order).
    pub fn new_micro_with_devices(
        guest: &MicroGuest,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
    ) -> Result<Self, KvmError> {
        Self::build(Payload::Micro(guest), console, devices, None)
    }

    /// Builds the PC for `cfg` as [`KvmVm::with_devices`] does, but continues a saved guest
    /// instead of loading the kernel: `ram` (already holding the guest's memory, e.g. a
    /// private mapping of a snapshot file) becomes guest RAM as it is, and `state` is put into
    /// the vCPUs and KVM's devices before any vCPU runs. [`KvmVm::run`] then continues the
    /// guest; [`VmController::pause`] before it makes the VM start paused. `shared`, when
    /// given ([`VmController::save_devices`]), puts COM1 and the virtio-pci functions back as
    /// they were (the `devices` must be built from the same definition); without it they
    /// start at reset.
    pub fn restore(
        cfg: &BootConfig,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
        ram: GuestRam,
        state: &KvmState,
        shared: Option<&state::DevicesState>,
    ) -> Result<Self, KvmError> {
        if cfg.firmware.is_some() {
            return Err(KvmError::Config(
                "the kvm accelerator boots kernels directly and takes no firmware".into(),
            ));
        }
        Self::build(
            Payload::Linux(cfg),
            console,
            devices,
            Some((ram, state, shared)),
        )
    }

    /// [`KvmVm::restore`] for a micro-guest (its image is not copied again: `ram` has it).
    pub fn restore_micro(
        guest: &MicroGuest,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
        ram: GuestRam,
        state: &KvmState,
        shared: Option<&state::DevicesState>,
    ) -> Result<Self, KvmError> {
        Self::build(
            Payload::Micro(guest),
            console,
            devices,
            Some((ram, state, shared)),
        )
    }

    /// COM1, for the host console thread to feed input.
    pub fn uart(&self) -> Arc<Mutex<Uart>> {
        self.uart.clone()
    }

    /// Guest RAM (one vm-memory object; KVM maps the same host pages).
    pub fn guest_memory(&self) -> &GuestRam {
        &self.ram
    }

    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// A handle for pausing, resuming and watching the VM from other threads.
    pub fn controller(&self) -> VmController {
        VmController {
            inner: self.inner.clone(),
        }
    }

    /// Runs the guest until it stops, and ends the vCPU threads.
    pub fn run(&mut self) -> Result<GuestExit, KvmError> {
        self.run_until(None)
    }

    /// As [`KvmVm::run`], but gives up with [`KvmError::Timeout`] after `limit`.
    pub fn run_timeout(&mut self, limit: Duration) -> Result<GuestExit, KvmError> {
        self.run_until(Some(Instant::now() + limit))
            .map_err(|e| match e {
                KvmError::Timeout(_) => KvmError::Timeout(limit),
                e => e,
            })
    }

    fn run_until(&mut self, deadline: Option<Instant>) -> Result<GuestExit, KvmError> {
        {
            let control = lock(&self.inner.control);
            let state = self.inner.state();
            if self.inner.started.swap(true, Ordering::AcqRel) || state == VmState::Exited {
                return Err(KvmError::AlreadyRan);
            }
            // Paused before run() (start paused), or already resumed from there: as it is.
            if state == VmState::Created {
                self.inner.broadcast(&control, VcpuEvent::Resume, true)?;
                *lock(&self.inner.state) = VmState::Running;
            }
        }
        let result = self.wait(deadline);
        self.inner.finish();
        result
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<GuestExit, KvmError> {
        let n = self.cpus as usize;
        let mut halted: Vec<Option<RegisterDump>> = vec![None; n];
        let mut probe: Option<Vec<Option<Option<RegisterDump>>>> = None;
        let mut last_exits = self.inner.counts().guest_exits();
        let mut last_times = (Instant::now(), self.inner.cpu_times());
        loop {
            let mut wait = HALT_CHECK;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(KvmError::Timeout(Duration::ZERO));
                }
                wait = wait.min(left);
            }
            match self.outcomes.recv_timeout(wait) {
                Ok(VcpuOutcome::Exit(e)) => return Ok(e),
                Ok(VcpuOutcome::Failed(e)) => return Err(e.into()),
                Ok(VcpuOutcome::StopRequested) => return Err(KvmError::Stopped),
                Ok(VcpuOutcome::Halted { cpu, regs }) => {
                    if let Some(h) = halted.get_mut(cpu as usize) {
                        *h = Some(regs);
                    }
                    if halted.iter().all(Option::is_some) {
                        return Err(KvmError::AllHalted(describe_halted(
                            "HLT with no in-kernel irqchip",
                            &halted,
                        )));
                    }
                }
                Ok(VcpuOutcome::Probed { cpu, stuck }) => {
                    if let Some(p) = probe.as_mut() {
                        if let Some(slot) = p.get_mut(cpu as usize) {
                            *slot = Some(stuck);
                        }
                        if p.iter().all(Option::is_some) {
                            let answers: Vec<Option<RegisterDump>> =
                                p.drain(..).map(Option::flatten).collect();
                            probe = None;
                            if answers.iter().all(Option::is_some) {
                                return Err(KvmError::AllHalted(describe_halted(
                                    "halted with interrupts disabled or waiting for a SIPI",
                                    &answers,
                                )));
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let exits = self.inner.counts().guest_exits();
                    let idle = exits == last_exits;
                    last_exits = exits;
                    let now = (Instant::now(), self.inner.cpu_times());
                    let interval = now.0 - last_times.0;
                    // Every vCPU thread asleep over the interval (a vCPU in guest mode is
                    // always running).
                    let all_asleep = now.1.iter().zip(&last_times.1).all(|(t, l)| match (t, l) {
                        (Some(t), Some(l)) => slept(t.saturating_sub(*l), interval),
                        _ => false,
                    });
                    last_times = now;
                    // Only a VM that made no exits for a whole interval and whose vCPU threads
                    // all sleep is asked: a running guest is never kicked by this check.
                    if idle
                        && probe.is_none()
                        && self.inner.state() == VmState::Running
                        && all_asleep
                    {
                        probe = Some(vec![None; n]);
                        for s in &self.inner.events {
                            let _ = s.send(VcpuEvent::Probe);
                        }
                        self.inner.kick_all();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(KvmError::ThreadsGone),
            }
        }
    }

    fn build(
        payload: Payload<'_>,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
        restore: Option<(GuestRam, &KvmState, Option<&state::DevicesState>)>,
    ) -> Result<Self, KvmError> {
        if devices.len() > PCI_GSIS.len() {
            return Err(KvmError::Config(format!(
                "{} virtio devices requested; the kvm board has {} PCI slots",
                devices.len(),
                PCI_GSIS.len()
            )));
        }
        let (cpus, memory, irqchip) = match payload {
            Payload::Linux(cfg) => (cfg.cpus, cfg.memory, true),
            Payload::Micro(g) => (g.cpus, g.memory, g.irqchip),
        };
        let kvm = open_kvm()?;
        let max_cpus = (kvm.get_max_vcpus() as u32).min(mptable::MAX_CPUS);
        if cpus == 0 || cpus > max_cpus {
            return Err(KvmError::Config(format!(
                "{cpus} vCPUs requested; this host allows 1 to {max_cpus}"
            )));
        }
        if memory < MIN_MEMORY || memory % 4096 != 0 {
            return Err(KvmError::Config(format!(
                "guest memory of {memory} bytes: need a multiple of 4 KiB, at least {} MiB",
                MIN_MEMORY >> 20
            )));
        }
        if let Payload::Micro(g) = payload {
            check_micro(g)?;
        }
        if let Some((ram, saved, _)) = &restore {
            check_restore(ram, saved, cpus, memory)?;
        }

        KICK_HANDLER.call_once(|| {
            // Failure leaves kicks undeliverable; the vCPU threads still stop on their own
            // exits, and pause requests then report that a vCPU did not answer.
            let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
        });

        let vm = Arc::new(kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?);
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        if irqchip {
            vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        }

        let (ram, saved, shared) = match restore {
            Some((ram, saved, shared)) => (ram, Some(saved), shared),
            None => (GuestRam::new(&layout::ram_ranges(memory))?, None, None),
        };
        register_slots(&vm, ram.memory(), 0)?;
        let mem = ram.memory();
        if saved.is_none() {
            // A restored guest's RAM has the tables already, as the guest left them.
            regs::write_tables(mem)?;
            mptable::write(mem, cpus)?;
            crate::acpi::write(mem, cpus)?;
        }
        let caps = Arc::new(Caps::probe(&kvm, &vm, irqchip)?);

        // Devices.
        let exit = Arc::new(ExitSignal::new());
        let irq = |gsi: u32| -> Arc<dyn IrqLine> {
            if irqchip {
                Arc::new(KvmIrqLine::new(vm.clone(), gsi))
            } else {
                Arc::new(NoIrq)
            }
        };
        let uart = Arc::new(Mutex::new(Uart::new(irq(COM1_IRQ), console)));
        let mut pio = Bus::new();
        pio.insert(
            u64::from(COM1_PORT),
            UART_WINDOW,
            uart.clone() as SharedDevice,
        )?;
        pio.insert(
            u64::from(I8042_PORT),
            I8042_WINDOW,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        let cmos = Arc::new(Mutex::new(Cmos::new()));
        if let Some(saved) = saved {
            lock(&cmos).restore(&saved.vm.pc.cmos)?;
        }
        pio.insert(u64::from(CMOS_PORT), CMOS_WINDOW, cmos.clone())?;
        pio.insert(
            u64::from(DEBUG_EXIT_PORT),
            DEBUG_EXIT_WINDOW,
            Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
        )?;
        let mut mmio = Bus::new();
        mmio.insert(
            EXIT_REGISTER_ADDR,
            FINISHER_WINDOW,
            Arc::new(Mutex::new(TestFinisher::new(exit.clone()))),
        )?;
        // The VM generation ID (ACPI \\_SB.VGEN; its interrupt is the generic event device's).
        let vmgenid = Arc::new(Mutex::new(
            VmGenId::new(irq(VMGENID_GSI)).map_err(|e| KvmError::Config(e.to_string()))?,
        ));
        mmio.insert(VMGENID_ADDR, VMGENID_WINDOW, vmgenid.clone())?;
        let mut msi = None;
        let mut functions = Vec::new();
        let mut pci_root = None;
        if !devices.is_empty() {
            let pci = |e: &dyn std::fmt::Display| KvmError::Config(format!("PCI: {e}"));
            let mut root = PciRoot::new(PCI_MMIO_BASE, PCI_MMIO_SIZE).map_err(|e| pci(&e))?;
            // MSIs are writes to the local APICs' window, delivered through irqfds.
            msi = irqchip.then(|| Arc::new(KvmMsi::new(vm.clone())));
            let placed = vireo_virtio::pci::add_functions(
                &mut root,
                devices,
                ram.memory(),
                |i, _slot| PCI_GSIS.get(i).map(|&gsi| (irq(gsi), gsi as u8)),
                msi.clone().map(|m| m as Arc<dyn MsiSink>),
                Some(Arc::new(KvmNotify(vm.clone()))),
            )
            .map_err(|e| pci(&e))?;
            for (slot, _) in placed {
                functions.push(
                    root.function_at(slot)
                        .ok_or_else(|| pci(&format!("slot {slot} is empty after placing")))?,
                );
            }
            let root = Arc::new(Mutex::new(root));
            pci_root = Some(root.clone());
            pio.insert(
                PIO_CONFIG_PORT,
                PIO_CONFIG_LEN,
                Arc::new(Mutex::new(PioConfig::new(root.clone()))),
            )?;
            mmio.insert(
                PCI_ECAM_BASE,
                ECAM_BUS_SIZE,
                Arc::new(Mutex::new(Ecam(root.clone()))),
            )?;
            mmio.insert_sync(
                PCI_MMIO_BASE,
                PCI_MMIO_SIZE,
                Arc::new(MmioWindow::new(root)),
            )?;
        }

        if let Some(shared) = shared {
            // Before the vCPUs and the irqchip: the lines these drive are set again by the
            // irqchip's saved state.
            let bad = |e: String| KvmError::State(StateError::Mismatch(e));
            lock(&uart)
                .restore_state(&shared.uart)
                .map_err(|e| bad(format!("COM1: {e}")))?;
            match &pci_root {
                Some(root) => vireo_virtio::pci::restore_functions(
                    root,
                    &functions,
                    &shared.virtio,
                    &shared.pci,
                )
                .map_err(bad)?,
                None if shared.virtio.is_empty() => {}
                None => {
                    return Err(bad(format!(
                        "the snapshot has {} virtio devices, the definition none",
                        shared.virtio.len()
                    )))
                }
            }
        }

        // What to run.
        let start = match payload {
            _ if saved.is_some() => None,
            Payload::Linux(cfg) => {
                let cmdline = board_cmdline(&cfg.cmdline);
                let entry = boot::load(mem, memory, &cfg.kernel, &cmdline, cfg.initrd.as_deref())?;
                Some(Start::Kernel(entry))
            }
            Payload::Micro(g) => {
                mem.write_slice(&g.image, GuestAddress(g.load_addr))?;
                Some(Start::Micro(g.entry, g.ap_start))
            }
        };

        // vCPUs.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let low_end = layout::low_ram_end(memory);
        let mut fds = Vec::with_capacity(cpus as usize);
        for i in 0..cpus {
            let fd = vm
                .create_vcpu(u64::from(i))
                .map_err(ioctl("KVM_CREATE_VCPU"))?;
            let mut entries = supported.as_slice().to_vec();
            crate::cpuid::patch(&mut entries, i, cpus);
            let cpuid = CpuId::from_entries(&entries).map_err(|_| {
                KvmError::Config(format!("{} CPUID entries are too many", entries.len()))
            })?;
            fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
            match (&start, saved) {
                (Some(start), _) => {
                    regs::setup_cpu_state(&fd, irqchip)?;
                    start.set_registers(&fd, i, low_end)?;
                }
                (None, Some(saved)) => {
                    state::restore_vcpu(&fd, i, &caps, &saved.vcpus[i as usize])?;
                }
                (None, None) => unreachable!("a VM either starts or is restored"),
            }
            fds.push(fd);
        }
        if let Some(saved) = saved {
            // After the vCPUs (their TSCs are set): irqchip, PIT, then the clock.
            state::restore_vm(&vm, irqchip, &saved.vm)?;
        }
        if let Some(shared) = shared {
            // The guest runs again from a saved state: a new generation, announced once the
            // irqchip is back (a pulse before would be overwritten by its saved state), so the
            // event is pending when the first vCPU runs.
            let mut genid = lock(&vmgenid);
            if let Some(id) = shared.vmgenid {
                genid.set(id);
            }
            genid
                .new_generation()
                .map_err(|e| KvmError::Config(e.to_string()))?;
        }

        // Threads, parked in their paused state until run().
        let (out_tx, outcomes) = channel();
        let (resp_tx, responses) = channel();
        let first_output = Arc::new(OnceLock::new());
        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);
        let mut events = Vec::new();
        let mut threads = Vec::new();
        let mut counters = Vec::new();
        let mut clocks = Vec::new();
        for (i, fd) in fds.into_iter().enumerate() {
            let clock = Arc::new(AtomicI32::new(crate::vcpu::NO_CLOCK));
            clocks.push(clock.clone());
            let (ev_tx, ev_rx) = channel();
            let c = Arc::new(ExitCounters::default());
            let vcpu = Vcpu {
                index: i as u32,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit: exit.clone(),
                counters: c.clone(),
                events: ev_rx,
                responses: resp_tx.clone(),
                outcomes: out_tx.clone(),
                first_output: first_output.clone(),
                com1: COM1_PORT,
                clock,
                caps: caps.clone(),
                io_pending: false,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("vireo-vcpu{i}"))
                .spawn(move || {
                    let _ = vmm_sys_util::signal::unblock_signal(kick_signal());
                    // Before the vCPU first runs the guest.
                    vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Vcpu);
                    vcpu.run_thread()
                });
            let handle = match spawned {
                Ok(h) => h,
                Err(e) => {
                    // Threads already started would wait for ever: end them first.
                    for s in &events {
                        let _: Result<(), _> = Sender::send(s, VcpuEvent::Finish);
                    }
                    for t in threads {
                        let _ = JoinHandle::join(t);
                    }
                    return Err(KvmError::Thread(e));
                }
            };
            events.push(ev_tx);
            threads.push(handle);
            counters.push(c);
        }
        let inner = Arc::new(Inner {
            events,
            threads: Mutex::new(threads),
            control: Mutex::new(responses),
            state: Mutex::new(VmState::Created),
            counters,
            first_output,
            stop: out_tx,
            clocks,
            started: AtomicBool::new(false),
            vm: vm.clone(),
            irqchip,
            cmos,
            mem: ram.memory().clone(),
            dirty_log: AtomicBool::new(false),
            uart: uart.clone(),
            vmgenid,
            pci: functions,
            dirty_base: Mutex::new(None),
        });
        Ok(KvmVm {
            inner,
            outcomes,
            uart,
            ram,
            cpus,
            msi,
            _vm: vm,
            _kvm: kvm,
        })
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        if !lock(&self.inner.threads).is_empty() {
            self.inner.finish();
        }
    }
}

/// The command line with the board's exit-register parameter appended.
pub fn board_cmdline(cmdline: &str) -> String {
    let base = cmdline.trim();
    let exit = format!("vireo.exit={EXIT_REGISTER_ADDR:#x}");
    if base.is_empty() {
        exit
    } else {
        format!("{base} {exit}")
    }
}

fn describe_halted(why: &str, regs: &[Option<RegisterDump>]) -> String {
    let per_cpu: Vec<String> = regs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| format!("vCPU {i}: {r}")))
        .collect();
    format!("{why}; {}", per_cpu.join("; "))
}

/// A saved state and RAM must fit the machine being built.
fn check_restore(ram: &GuestRam, saved: &KvmState, cpus: u32, memory: u64) -> Result<(), KvmError> {
    let mismatch = |m: String| KvmError::State(StateError::Mismatch(m));
    if saved.version != KVM_STATE_VERSION {
        return Err(mismatch(format!(
            "it is version {}, this vireo reads version {KVM_STATE_VERSION}",
            saved.version
        )));
    }
    if saved.vcpus.len() != cpus as usize {
        return Err(mismatch(format!(
            "it has {} vCPUs and this VM {cpus}",
            saved.vcpus.len()
        )));
    }
    let want = layout::ram_ranges(memory);
    let have: Vec<(u64, u64)> = ram
        .memory()
        .iter()
        .map(|r| (r.start_addr().0, r.len()))
        .collect();
    if have != want {
        return Err(mismatch(format!(
            "guest RAM regions {have:x?} (base, size), expected {want:x?} for {memory} bytes"
        )));
    }
    Ok(())
}

fn check_micro(g: &MicroGuest) -> Result<(), KvmError> {
    let low_end = layout::low_ram_end(g.memory);
    let end = g.load_addr.checked_add(g.image.len() as u64);
    if g.load_addr < MICRO_LOAD_MIN || end.is_none_or(|e| e > low_end) {
        return Err(KvmError::Config(format!(
            "micro-guest image {:#x}+{:#x} must lie between {MICRO_LOAD_MIN:#x} and the end of low RAM {low_end:#x}",
            g.load_addr,
            g.image.len()
        )));
    }
    if let MicroEntry::Real { cs, ip } = g.entry {
        let linear = (u64::from(cs) << 4) + u64::from(ip);
        if linear >= low_end.min(1 << 20) {
            return Err(KvmError::Config(format!(
                "real-mode entry {cs:#x}:{ip:#x} is outside RAM below 1 MiB"
            )));
        }
    }
    if g.ap_start == ApStart::WaitForSipi && !g.irqchip {
        return Err(KvmError::Config(
            "INIT/SIPI start needs the in-kernel irqchip".into(),
        ));
    }
    Ok(())
}

/// Opens /dev/kvm with messages that say what is wrong.
fn open_kvm() -> Result<Kvm, KvmError> {
    // Opening it ourselves first turns the errno into a sentence.
    if let Err(e) = OpenOptions::new().read(true).write(true).open(KVM_PATH) {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{KVM_PATH} does not exist (no KVM module loaded, or not exposed in this container)"
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "{KVM_PATH} is not readable and writable by this user (add the user to the `kvm` group)"
            ),
            _ => format!("cannot open {KVM_PATH}: {e}"),
        };
        return Err(KvmError::Unavailable(why));
    }
    let kvm =
        Kvm::new().map_err(|e| KvmError::Unavailable(format!("cannot open {KVM_PATH}: {e}")))?;
    let v = kvm.get_api_version();
    if v != KVM_API_VERSION {
        return Err(KvmError::Unavailable(format!(
            "{KVM_PATH} speaks KVM API version {v}, not {KVM_API_VERSION}"
        )));
    }
    Ok(kvm)
}

/// How each vCPU's registers start.
enum Start {
    Kernel(BootEntry),
    Micro(MicroEntry, ApStart),
}

impl Start {
    fn set_registers(&self, fd: &VcpuFd, cpu: u32, low_end: u64) -> Result<(), KvmError> {
        let bsp = cpu == 0;
        let mut sregs = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        let regs = match *self {
            // Application processors of a kernel wait for the kernel's INIT/SIPI.
            Start::Kernel(_) | Start::Micro(_, ApStart::WaitForSipi) if !bsp => return Ok(()),
            Start::Kernel(BootEntry::Linux64 { rip, zero_page }) => {
                regs::long_mode(&mut sregs);
                kvm_bindings::kvm_regs {
                    rsi: zero_page,
                    rsp: BOOT_STACK_TOP,
                    rbp: BOOT_STACK_TOP,
                    ..regs::base_regs(rip)
                }
            }
            Start::Kernel(BootEntry::Pvh { eip, start_info }) => {
                regs::protected_mode(&mut sregs);
                kvm_bindings::kvm_regs {
                    rbx: start_info,
                    ..regs::base_regs(eip)
                }
            }
            Start::Micro(MicroEntry::Real { cs, ip }, _) => {
                regs::real_mode(&mut sregs, cs);
                kvm_bindings::kvm_regs {
                    rdi: u64::from(cpu),
                    rsp: 0xfffe - 0x100 * u64::from(cpu % 0xff),
                    ..regs::base_regs(u64::from(ip))
                }
            }
            Start::Micro(MicroEntry::Long { rip }, _) => {
                regs::long_mode(&mut sregs);
                kvm_bindings::kvm_regs {
                    rdi: u64::from(cpu),
                    rsp: low_end - 4096 * u64::from(cpu),
                    ..regs::base_regs(rip)
                }
            }
        };
        fd.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        fd.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        if !bsp {
            // With the in-kernel irqchip KVM parks APs until a SIPI; these start at once.
            let mp = kvm_bindings::kvm_mp_state {
                mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
            };
            fd.set_mp_state(mp).map_err(ioctl("KVM_SET_MP_STATE"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_the_exit_register() {
        assert_eq!(board_cmdline(""), "vireo.exit=0xfeb00000");
        assert_eq!(
            board_cmdline("console=ttyS0 "),
            "console=ttyS0 vireo.exit=0xfeb00000"
        );
    }

    #[test]
    fn micro_guest_placement_is_checked() {
        let mut g = MicroGuest::new(vec![0xf4], 0x1000, MicroEntry::Long { rip: 0x1000 });
        assert!(check_micro(&g).is_err(), "over the boot structures");
        g.load_addr = 0x10_0000;
        assert!(check_micro(&g).is_ok());
        g.load_addr = 16 << 20;
        assert!(check_micro(&g).is_err(), "past the end of RAM");
        g.load_addr = u64::MAX;
        assert!(check_micro(&g).is_err(), "wraps");
        let mut r = MicroGuest::new(
            vec![0xf4],
            0x1_0000,
            MicroEntry::Real {
                cs: 0xffff,
                ip: 0xffff,
            },
        );
        assert!(check_micro(&r).is_err());
        r.entry = MicroEntry::Real { cs: 0x1000, ip: 0 };
        r.irqchip = false;
        r.ap_start = ApStart::WaitForSipi;
        assert!(check_micro(&r).is_err());
    }
}
