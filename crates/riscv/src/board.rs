//! The `virt` board the emulator presents: QEMU's memory map (so the same kernels and firmware
//! work unchanged), a generated device tree, and the loop that runs the harts in turn.
//!
//! | range | device |
//! |---|---|
//! | 0x0010_0000 | `sifive,test0` finisher (power-off, reset, exit status) |
//! | 0x0010_1000 | goldfish RTC (IRQ 11) |
//! | 0x0010_2000 | VM generation ID, `microsoft,vmgenid` (IRQ 12) |
//! | 0x0200_0000 | CLINT (timer, software interrupts) |
//! | 0x0c00_0000 | PLIC |
//! | 0x1000_0000 | ns16550a UART (IRQ 10) |
//! | 0x8000_0000 | RAM |

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use vireo_devices::finisher::FINISHER_WINDOW;
use vireo_devices::rtc::RTC_WINDOW;
use vireo_devices::vmgenid::VMGENID_WINDOW;
use vireo_devices::{ConsoleOutput, GoldfishRtc, TestFinisher, Uart, VmGenId};
use vireo_machine::{
    BootConfig, Bus, ExitSignal, GuestExit, GuestRam, IrqLine, SharedDevice, VirtioTransport,
};
use vireo_pci::{Ecam, MmioWindow, PciRoot, ECAM_BUS_SIZE};
use vireo_virtio::mmio::MmioTransport;
use vireo_virtio::VirtioDevice;
use vm_fdt::FdtWriter;

use crate::hart::{Hart, Stop};
use crate::isa::{Ext, Isa, CACHE_BLOCK};
use crate::plic::{Plic, PlicIrq, NUM_SOURCES, PLIC_SIZE};
use crate::state::{ClockMode, EmuState, HartState, MachineState, MailState};
use crate::sys::{
    Clint, Clock, CodeCache, Counters, HsmState, IrqOutputs, Mailbox, Sys, SysConfig, SysState,
    CLINT_SIZE, TIMEBASE_HZ,
};

pub const FINISHER_BASE: u64 = 0x10_0000;
pub const RTC_BASE: u64 = 0x10_1000;
pub const VMGENID_BASE: u64 = 0x10_2000;
pub const CLINT_BASE: u64 = 0x200_0000;
pub const PLIC_BASE: u64 = 0xc00_0000;
pub const UART_BASE: u64 = 0x1000_0000;
pub const RAM_BASE: u64 = 0x8000_0000;
/// virtio-mmio slots: QEMU's `virt` layout, one 4 KiB page and one PLIC source each.
pub const VIRTIO_BASE: u64 = 0x1000_1000;
pub const VIRTIO_STRIDE: u64 = 0x1000;
pub const VIRTIO_SLOTS: usize = 8;
const VIRTIO_IRQ: usize = 1;
/// The PCI root (with `--virtio-transport pci`): ECAM for bus 0 where QEMU's `virt` has its
/// ECAM, and a 1 GiB memory window for BARs below RAM.
pub const PCI_ECAM_BASE: u64 = 0x3000_0000;
pub const PCI_MMIO_BASE: u64 = 0x4000_0000;
pub const PCI_MMIO_SIZE: u64 = 0x4000_0000;
/// INTA# of PCI slot n goes to PLIC source PCI_IRQ_BASE + n: one source per slot, so no two
/// devices share a level-triggered line (slots 1..31 use sources 33..63).
const PCI_IRQ_BASE: usize = 32;
const UART_IRQ: usize = 10;
const RTC_IRQ: usize = 11;
const VMGENID_IRQ: usize = 12;
/// Where a kernel Image goes when its header gives no offset, and where OpenSBI's fw_jump jumps.
const KERNEL_OFFSET: u64 = 0x20_0000;
/// Room kept for the device tree at the top of RAM.
const FDT_MAX: u64 = 0x1_0000;
/// Instructions a hart runs before the next one gets its turn.
const SLICE: u64 = 50_000;

/// Errors from building or running the emulated machine.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// A kernel or firmware file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is not something this board can boot.
    #[error("{path} is not a RISC-V kernel: {reason}")]
    NotRiscv { path: PathBuf, reason: String },
    /// Guest RAM cannot hold the payload.
    #[error("{have_mib} MiB of memory is too little: this kernel and initrd need at least {need_mib} MiB to boot (use --memory {need_mib}M or more)")]
    TooLittleMemory { have_mib: u64, need_mib: u64 },
    /// The host could not allocate guest RAM.
    #[error(transparent)]
    Memory(#[from] vireo_machine::MemoryError),
    /// The device tree could not be built.
    #[error("cannot build the device tree: {0}")]
    Fdt(String),
    /// The emulator met a state it cannot continue from.
    #[error("emulator fault: {0}")]
    Fault(String),
    /// More devices than the board has slots for.
    #[error("{count} virtio devices requested; the board has {slots} slots for the {transport} transport")]
    TooManyDevices {
        count: usize,
        slots: usize,
        transport: &'static str,
    },
}

/// Where the payload went.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub kernel: (u64, u64),
    pub initrd: Option<(u64, u64)>,
    pub fdt: u64,
    pub entry: u64,
}

/// An emulated RISC-V machine ready to run.
pub struct EmuVm {
    ram: GuestRam,
    bus: Bus,
    harts: Vec<Hart>,
    irq: Arc<IrqOutputs>,
    exit: Arc<ExitSignal>,
    console: ConsoleOutput,
    layout: Layout,
    stats: Arc<Mutex<EmuStats>>,
    control: Arc<EmuControl>,
    /// Timers, mailboxes and decoded code between two `run` calls.
    saved: Option<SysState>,
    profile: Option<std::collections::HashMap<u64, u64>>,
    devices: BoardDevices,
    /// A restored machine's clock, set when it first runs (not when it was built: the time
    /// in between is not the guest's): mtime, the wall-clock time it was saved at, the mode.
    restored_clock: Option<(u64, u64, ClockMode)>,
}

/// The board's devices with state, kept typed (the bus only knows them as bus devices) so a
/// snapshot can reach them from any thread.
#[derive(Clone)]
struct BoardDevices {
    plic: Arc<Mutex<Plic>>,
    uart: Arc<Mutex<Uart>>,
    rtc: Arc<Mutex<GoldfishRtc>>,
    vmgenid: Arc<Mutex<VmGenId>>,
    mmio: Vec<Arc<Mutex<MmioTransport>>>,
    /// With `--virtio-transport pci`: the root, and each virtio function in slot order.
    pci_root: Option<vireo_pci::SharedRoot>,
    pci: Vec<vireo_pci::SharedFunction>,
    transport: VirtioTransport,
    ram_size: u64,
    builtin_sbi: bool,
}

/// What a running machine has done so far, readable from any thread (published by the run
/// loop after every round of slices).
#[derive(Clone, Debug, Default)]
pub struct EmuStats {
    /// Instructions retired, all harts.
    pub instructions: u64,
    /// Host time spent with every hart waiting for an interrupt.
    pub idle: Duration,
    /// Most decoded-code pages allocated (16 KiB each), and times the full cache was dropped.
    pub code_pages: usize,
    pub code_evictions: u64,
    pub counters: Counters,
}

/// Pauses and resumes a machine from another thread. The run loop looks at the request
/// between rounds of slices (at most a slice, or a 10 ms idle sleep, late) and parks there;
/// the guest's clock does not advance while it is parked.
pub struct EmuControl {
    requested: AtomicBool,
    parked: Mutex<Park>,
    cv: Condvar,
    exit: Arc<ExitSignal>,
    irq: Arc<IrqOutputs>,
    /// [`ClockMode::CatchUp`]: time spent paused passes for the guest.
    catch_up: AtomicBool,
    /// The dirty log was taken while parked: the harts drop their write translations
    /// before they run again, so each page they write is marked anew.
    flush_writes: AtomicBool,
    /// What the dirty log is relative to: an opaque name the VMM gives (the snapshot the
    /// RAM was last saved as or restored from), or none when the log covers no known state.
    dirty_base: Mutex<Option<String>>,
}

/// The run loop's parking spot: whether it is parked, and a capture of the harts asked of it
/// (hart registers live on the run loop's thread; it copies them out while parked).
#[derive(Default)]
struct Park {
    parked: bool,
    want_capture: bool,
    captured: Option<CpuCapture>,
}

/// What the run loop hands out while parked: the harts and what they share.
#[derive(Clone, Debug)]
struct CpuCapture {
    harts: Vec<HartState>,
    mtime: u64,
    msip: Vec<bool>,
    mtimecmp: Vec<u64>,
    mail: Vec<MailState>,
}

impl EmuControl {
    /// Asks the machine to pause and waits (up to `wait`) until it has: true once it is
    /// parked, false if it is not running (it will park when it runs) or has stopped.
    pub fn pause(&self, wait: Duration) -> bool {
        self.requested.store(true, Ordering::Release);
        // Ends an idle sleep at once.
        self.irq.wake().notify();
        let deadline = std::time::Instant::now() + wait;
        let mut park = self.lock_park();
        while !park.parked && !self.exit.is_raised() {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            park = self
                .cv
                .wait_timeout(park, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        park.parked
    }

    fn lock_park(&self) -> std::sync::MutexGuard<'_, Park> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a paused machine run on.
    pub fn resume(&self) {
        self.requested.store(false, Ordering::Release);
        let _g = self.lock_park();
        self.cv.notify_all();
    }

    /// Whether a pause is asked for (the machine is parked or about to be).
    pub fn is_paused(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Chooses what the guest's clock does while the machine is paused.
    pub fn set_clock_mode(&self, mode: ClockMode) {
        self.catch_up
            .store(mode == ClockMode::CatchUp, Ordering::Release);
    }

    /// Stops the machine, paused or not: `run` returns `why`.
    pub fn stop(&self, why: GuestExit) {
        self.exit.raise(why);
        self.irq.wake().notify();
        let _g = self.lock_park();
        self.cv.notify_all();
    }

    /// Has the parked run loop copy out the harts; an error when it is not parked.
    fn capture(&self, wait: Duration) -> Result<CpuCapture, String> {
        let deadline = std::time::Instant::now() + wait;
        let mut park = self.lock_park();
        if !park.parked {
            return Err("the machine is not paused".into());
        }
        park.want_capture = true;
        park.captured = None;
        self.cv.notify_all();
        loop {
            if let Some(c) = park.captured.take() {
                return Ok(c);
            }
            if !park.parked || self.exit.is_raised() {
                park.want_capture = false;
                return Err("the machine stopped while its state was being taken".into());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                park.want_capture = false;
                return Err("the run loop did not hand over the harts within the time".into());
            }
            park = self
                .cv
                .wait_timeout(park, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Called by the run loop: parks while a pause is asked for and the machine is not
    /// stopped, answering captures; returns how long it was parked.
    fn park(&self, capture: &mut dyn FnMut() -> CpuCapture) -> Duration {
        let t0 = std::time::Instant::now();
        let mut park = self.lock_park();
        park.parked = true;
        self.cv.notify_all();
        while self.requested.load(Ordering::Acquire) && !self.exit.is_raised() {
            if park.want_capture {
                park.want_capture = false;
                park.captured = Some(capture());
                self.cv.notify_all();
                continue;
            }
            park = self
                .cv
                .wait_timeout(park, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        park.parked = false;
        park.captured = None;
        self.cv.notify_all();
        t0.elapsed()
    }
}

/// Reaches a machine's state from any thread: pauses and resumes its devices, and takes or
/// (nothing else) reads the state of a parked machine. The VMM's control thread holds one.
#[derive(Clone)]
pub struct EmuStateHandle {
    control: Arc<EmuControl>,
    devices: BoardDevices,
}

impl EmuStateHandle {
    /// Stops every device's host-side deliveries and waits for their threads to be done with
    /// guest memory (see `VirtioDevice::pause`): false when one did not within `timeout`.
    pub fn pause_devices(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut all = true;
        for t in &self.devices.mmio {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            all &= lock(t).pause(left);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        all &= vireo_virtio::pci::pause_functions(&self.devices.pci, left);
        all
    }

    /// The guest-physical pages (numbers, address / 4096) written since the last call, or
    /// since the RAM was made or restored, cleared; with what the log was relative to (see
    /// [`EmuStateHandle::set_dirty_base`]), which it no longer is. The run loop must be
    /// parked and the devices paused: the harts drop their write translations before they
    /// run again, so every page they write from now on is marked.
    pub fn take_dirty(
        &self,
        mem: &vireo_machine::GuestMemoryMmap,
    ) -> Result<(vireo_machine::DirtyPages, Option<String>), EmuError> {
        if !self.control.lock_park().parked {
            return Err(EmuError::Fault("the machine is not paused".into()));
        }
        self.control.flush_writes.store(true, Ordering::Release);
        let base = lock(&self.control.dirty_base).take();
        Ok((vireo_machine::memory::take_dirty(mem), base))
    }

    /// What the dirty log is relative to from now on (a snapshot's id once it is whole, the
    /// snapshot a machine was restored from).
    pub fn set_dirty_base(&self, base: Option<String>) {
        *lock(&self.control.dirty_base) = base;
    }

    /// See [`EmuStateHandle::set_dirty_base`].
    pub fn dirty_base(&self) -> Option<String> {
        lock(&self.control.dirty_base).clone()
    }

    /// Lets the devices deliver again.
    pub fn resume_devices(&self) {
        for t in &self.devices.mmio {
            lock(t).resume();
        }
        vireo_virtio::pci::resume_functions(&self.devices.pci);
    }

    /// The machine's state: the run loop must be parked and the devices paused.
    pub fn save(&self) -> Result<EmuState, EmuError> {
        let cpu = self
            .control
            .capture(Duration::from_secs(5))
            .map_err(EmuError::Fault)?;
        let d = &self.devices;
        let machine = MachineState {
            harts: cpu.harts.len() as u32,
            ram_base: RAM_BASE,
            ram_size: d.ram_size,
            builtin_sbi: d.builtin_sbi,
            virtio_transport: transport_name(d.transport).into(),
            mtime: cpu.mtime,
            wall_ns: wall_ns(),
            msip: cpu.msip,
            mtimecmp: cpu.mtimecmp,
            mail: cpu.mail,
            plic: lock(&d.plic).save(),
            uart: lock(&d.uart).save_state(),
            rtc_latch: lock(&d.rtc).latched(),
        };
        // One transport or the other holds the devices: the other list is empty.
        let (mut virtio, pci) =
            vireo_virtio::pci::save_functions(&d.pci).map_err(EmuError::Fault)?;
        for (i, t) in d.mmio.iter().enumerate() {
            virtio.push(
                lock(t)
                    .save_state()
                    .map_err(|e| EmuError::Fault(format!("virtio slot {i}: {e}")))?,
            );
        }
        Ok(EmuState {
            machine,
            harts: cpu.harts,
            vmgenid: Some(lock(&d.vmgenid).id()),
            virtio,
            pci,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn transport_name(t: VirtioTransport) -> &'static str {
    match t {
        VirtioTransport::Mmio => "mmio",
        VirtioTransport::Pci => "pci",
    }
}

fn hsm_code(h: HsmState) -> u8 {
    h as u8
}

fn hsm_from(code: u8) -> Option<HsmState> {
    match code {
        0 => Some(HsmState::Started),
        1 => Some(HsmState::Stopped),
        2 => Some(HsmState::StartPending),
        _ => None,
    }
}

/// Copies the harts and what they share out of a parked run loop.
fn capture(harts: &[Hart], sys: &Sys) -> CpuCapture {
    CpuCapture {
        harts: harts.iter().map(Hart::save).collect(),
        mtime: sys.clock.now(),
        msip: sys.clint.msip.clone(),
        mtimecmp: sys.clint.mtimecmp.clone(),
        mail: sys
            .mail
            .iter()
            .map(|m| MailState {
                ipi: m.ipi,
                flush_tlb: m.flush_tlb,
                start: m.start,
                hsm: hsm_code(m.hsm),
            })
            .collect(),
    }
}

impl EmuVm {
    /// Builds the board, loads the payload and sets up the harts.
    pub fn new(cfg: &BootConfig, console: ConsoleOutput) -> Result<Self, EmuError> {
        Self::with_devices(cfg, console, Vec::new())
    }

    /// Like [`EmuVm::new`], with virtio devices on the virtio-mmio slots in order.
    pub fn with_devices(
        cfg: &BootConfig,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
    ) -> Result<Self, EmuError> {
        Self::build(cfg, console, devices, Isa::max())
    }

    /// Like [`EmuVm::with_devices`], with harts implementing `isa`.
    pub fn build(
        cfg: &BootConfig,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
        isa: Isa,
    ) -> Result<Self, EmuError> {
        let ram = GuestRam::new(&[(RAM_BASE, cfg.memory)])?;
        let (mut vm, virtio) = Self::assemble(cfg, console, devices, ram)?;
        let harts = vm.harts.len();
        let cmdline = format!("{} vireo.exit={FINISHER_BASE:#x}", cfg.cmdline)
            .trim()
            .to_string();
        let layout = load_payload(&vm.ram, cfg, &cmdline, harts, &virtio, isa)?;
        vm.layout = layout;
        for h in vm.harts.iter_mut() {
            h.set_isa(isa);
            if vm.devices.builtin_sbi {
                if h.id == 0 {
                    h.enter_supervisor(layout.entry, 0, layout.fdt);
                }
            } else {
                h.pc = RAM_BASE;
                h.x[10] = h.id;
                h.x[11] = layout.fdt;
            }
        }
        Ok(vm)
    }

    /// A machine continuing from a snapshot: the same board as [`EmuVm::build`] makes for
    /// `cfg` (the snapshot's definition), around `ram` (the snapshot's memory, typically
    /// mapped copy-on-write from its file) and fresh `devices`, with every hart, timer,
    /// interrupt controller and virtio transport put back as `st` has them. Nothing is loaded:
    /// the kernel, its device tree and everything else the guest had are in `ram`. `clock`
    /// says whether the guest's time resumes where it stood or catches up.
    ///
    /// Everything in `st` is checked against the board before it is used; a state that does
    /// not fit is an error naming the part, and nothing runs.
    pub fn restore(
        cfg: &BootConfig,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
        ram: GuestRam,
        st: &EmuState,
        clock: ClockMode,
    ) -> Result<Self, EmuError> {
        let bad = |what: String| EmuError::Fault(format!("cannot restore: {what}"));
        let m = &st.machine;
        let n = cfg.cpus.max(1) as usize;
        if m.harts as usize != n || st.harts.len() != n {
            return Err(bad(format!(
                "the snapshot has {} harts, the definition {n}",
                m.harts
            )));
        }
        if m.ram_base != RAM_BASE || m.ram_size != cfg.memory || ram.size() != cfg.memory {
            return Err(bad(format!(
                "the snapshot's RAM is {} MiB at {:#x}, the definition's {} MiB (mapped: {} MiB)",
                m.ram_size >> 20,
                m.ram_base,
                cfg.memory >> 20,
                ram.size() >> 20
            )));
        }
        if m.builtin_sbi != cfg.firmware.is_none() {
            return Err(bad(
                "the snapshot and the definition differ in firmware (built-in SBI or not)".into(),
            ));
        }
        let transport = transport_name(cfg.virtio_transport);
        if m.virtio_transport != transport {
            return Err(bad(format!(
                "the snapshot uses the {} virtio transport, the definition {transport}",
                m.virtio_transport
            )));
        }
        let pci_states = match cfg.virtio_transport {
            VirtioTransport::Mmio => 0,
            VirtioTransport::Pci => st.virtio.len(),
        };
        if st.pci.len() != pci_states {
            return Err(bad(format!(
                "the snapshot has {} PCI function states for {} virtio devices on {transport}",
                st.pci.len(),
                st.virtio.len()
            )));
        }
        if devices.len() != st.virtio.len() {
            return Err(bad(format!(
                "the snapshot has {} virtio devices, the definition {}",
                st.virtio.len(),
                devices.len()
            )));
        }
        if m.msip.len() != n || m.mtimecmp.len() != n || m.mail.len() != n {
            return Err(bad(
                "the CLINT or hart mailboxes do not match the hart count".into(),
            ));
        }
        let (mut vm, _) = Self::assemble(cfg, console, devices, ram)?;
        let mut harts = Vec::with_capacity(n);
        for (i, hs) in st.harts.iter().enumerate() {
            if hs.id != i as u64 {
                return Err(bad(format!("hart {i} is saved with id {}", hs.id)));
            }
            harts.push(Hart::restore(hs).map_err(bad)?);
        }
        vm.harts = harts;
        for (i, (t, ts)) in vm.devices.mmio.iter().zip(&st.virtio).enumerate() {
            lock(t)
                .restore_state(ts)
                .map_err(|e| bad(format!("virtio slot {i}: {e}")))?;
        }
        if let Some(root) = &vm.devices.pci_root {
            vireo_virtio::pci::restore_functions(root, &vm.devices.pci, &st.virtio, &st.pci)
                .map_err(bad)?;
        }
        lock(&vm.devices.uart).restore_state(&m.uart).map_err(bad)?;
        lock(&vm.devices.rtc).set_latched(m.rtc_latch);
        // Last: the devices above drove their lines; the PLIC's saved levels are the truth.
        lock(&vm.devices.plic).restore(&m.plic).map_err(bad)?;
        // The guest runs again from a saved state: a new generation, announced after the
        // PLIC is back so the interrupt is pending when the first hart runs. (A snapshot from
        // before the device has no ID; its guest never probed one and ignores the line.)
        let mut genid = lock(&vm.devices.vmgenid);
        if let Some(id) = st.vmgenid {
            genid.set(id);
        }
        genid
            .new_generation()
            .map_err(|e| EmuError::Fault(e.to_string()))?;
        drop(genid);
        let mut mail = Vec::with_capacity(n);
        for (i, ms) in m.mail.iter().enumerate() {
            mail.push(Mailbox {
                ipi: ms.ipi,
                flush_tlb: ms.flush_tlb,
                start: ms.start,
                hsm: hsm_from(ms.hsm)
                    .ok_or_else(|| bad(format!("hart {i}: HSM state {} is unknown", ms.hsm)))?,
            });
        }
        vm.restored_clock = Some((m.mtime, m.wall_ns, clock));
        vm.control.set_clock_mode(clock);
        vm.saved = Some(SysState {
            code: CodeCache::new(RAM_BASE, vm.ram.size()),
            clint: Clint {
                msip: m.msip.clone(),
                mtimecmp: m.mtimecmp.clone(),
            },
            mail,
            clock: Clock::at(m.mtime),
            counters: Counters::default(),
        });
        Ok(vm)
    }

    /// The board around `ram`: buses, interrupt controller, devices, virtio transports, and
    /// harts at reset; nothing loaded.
    fn assemble(
        cfg: &BootConfig,
        console: ConsoleOutput,
        devices: Vec<Box<dyn VirtioDevice>>,
        ram: GuestRam,
    ) -> Result<(Self, VirtioLayout), EmuError> {
        let (slots, transport) = match cfg.virtio_transport {
            VirtioTransport::Mmio => (VIRTIO_SLOTS, "mmio"),
            VirtioTransport::Pci => (vireo_pci::root::SLOTS - 1, "pci"),
        };
        if devices.len() > slots {
            return Err(EmuError::TooManyDevices {
                count: devices.len(),
                slots,
                transport,
            });
        }
        let harts = cfg.cpus.max(1) as usize;
        let exit = Arc::new(ExitSignal::new());
        let irq = Arc::new(IrqOutputs::new(2 * harts));
        let plic = Arc::new(Mutex::new(Plic::new(harts, irq.clone())));
        let uart = Arc::new(Mutex::new(Uart::new(
            Arc::new(PlicIrq {
                plic: plic.clone(),
                source: UART_IRQ,
            }),
            console.clone(),
        )));
        let mut bus = Bus::new();
        let place = |bus: &mut Bus, base, len, dev: SharedDevice| {
            bus.insert(base, len, dev)
                .map_err(|e| EmuError::Fault(e.to_string()))
        };
        place(&mut bus, UART_BASE, 0x100, uart.clone())?;
        place(&mut bus, PLIC_BASE, PLIC_SIZE, plic.clone())?;
        place(
            &mut bus,
            FINISHER_BASE,
            FINISHER_WINDOW,
            Arc::new(Mutex::new(TestFinisher::new(exit.clone()))),
        )?;
        let rtc = Arc::new(Mutex::new(GoldfishRtc::new()));
        place(&mut bus, RTC_BASE, RTC_WINDOW, rtc.clone())?;
        let vmgenid = Arc::new(Mutex::new(
            VmGenId::new(Arc::new(PlicIrq {
                plic: plic.clone(),
                source: VMGENID_IRQ,
            }))
            .map_err(|e| EmuError::Fault(e.to_string()))?,
        ));
        place(&mut bus, VMGENID_BASE, VMGENID_WINDOW, vmgenid.clone())?;
        let mut mmio = Vec::new();
        let mut pci = Vec::new();
        let mut pci_root = None;

        let plic_line = |source: usize| -> Arc<dyn IrqLine> {
            Arc::new(PlicIrq {
                plic: plic.clone(),
                source,
            })
        };
        let mut virtio = VirtioLayout::default();
        match cfg.virtio_transport {
            VirtioTransport::Mmio => {
                for (i, dev) in devices.into_iter().enumerate() {
                    let base = VIRTIO_BASE + i as u64 * VIRTIO_STRIDE;
                    let irq = VIRTIO_IRQ + i;
                    let transport = Arc::new(Mutex::new(MmioTransport::new(
                        dev,
                        ram.memory().clone(),
                        plic_line(irq),
                    )));
                    // The device tree gives each slot a page; the transport answers beyond its
                    // registers (zero config bytes) so a driver reading the whole page cannot
                    // fault.
                    place(&mut bus, base, VIRTIO_STRIDE, transport.clone())?;
                    mmio.push(transport);
                    virtio.mmio.push((base, irq));
                }
            }
            VirtioTransport::Pci => {
                let fault = |e: &dyn std::fmt::Display| EmuError::Fault(e.to_string());
                let mut root = PciRoot::new(PCI_MMIO_BASE, PCI_MMIO_SIZE).map_err(|e| fault(&e))?;
                // No MSI controller on this board (no AIA/IMSIC): INTx only, a PLIC source
                // per slot.
                let placed = vireo_virtio::pci::add_functions(
                    &mut root,
                    devices,
                    ram.memory(),
                    |_, slot| {
                        let irq = PCI_IRQ_BASE + usize::from(slot);
                        Some((plic_line(irq), irq as u8))
                    },
                    None,
                    None,
                )
                .map_err(|e| fault(&e))?;
                for &(slot, irq) in &placed {
                    virtio.pci.push((slot, usize::from(irq)));
                    pci.push(root.function_at(slot).ok_or_else(|| {
                        EmuError::Fault(format!("PCI slot {slot} is empty after placing"))
                    })?);
                }
                let root = Arc::new(Mutex::new(root));
                pci_root = Some(root.clone());
                place(
                    &mut bus,
                    PCI_ECAM_BASE,
                    ECAM_BUS_SIZE,
                    Arc::new(Mutex::new(Ecam(root.clone()))),
                )?;
                bus.insert_sync(
                    PCI_MMIO_BASE,
                    PCI_MMIO_SIZE,
                    Arc::new(MmioWindow::new(root)),
                )
                .map_err(|e| EmuError::Fault(e.to_string()))?;
            }
        }
        let builtin_sbi = cfg.firmware.is_none();
        let hs: Vec<Hart> = (0..harts as u64).map(Hart::new).collect();
        let devices = BoardDevices {
            plic,
            uart,
            rtc,
            vmgenid,
            mmio,
            pci_root,
            pci,
            transport: cfg.virtio_transport,
            ram_size: ram.size(),
            builtin_sbi,
        };
        let vm = EmuVm {
            ram,
            bus,
            harts: hs,
            irq: irq.clone(),
            exit: exit.clone(),
            console,
            layout: Layout {
                kernel: (0, 0),
                initrd: None,
                fdt: 0,
                entry: 0,
            },
            stats: Default::default(),
            control: Arc::new(EmuControl {
                requested: AtomicBool::new(false),
                parked: Mutex::new(Park::default()),
                cv: Condvar::new(),
                exit: exit.clone(),
                irq: irq.clone(),
                catch_up: AtomicBool::new(false),
                flush_writes: AtomicBool::new(false),
                dirty_base: Mutex::new(None),
            }),
            saved: None,
            profile: std::env::var_os("VIREO_PROFILE").map(|_| Default::default()),
            devices,
            restored_clock: None,
        };
        Ok((vm, virtio))
    }

    /// Reaches the machine's state from another thread (for snapshots).
    pub fn state_handle(&self) -> EmuStateHandle {
        EmuStateHandle {
            control: self.control.clone(),
            devices: self.devices.clone(),
        }
    }

    /// The console UART, for feeding host input.
    pub fn uart(&self) -> Arc<Mutex<Uart>> {
        self.devices.uart.clone()
    }

    /// The latch that stops the guest; raising it from another thread ends [`EmuVm::run`].
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Where the payload was placed.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Host time spent with every hart waiting for an interrupt.
    pub fn idle_time(&self) -> Duration {
        self.stats().idle
    }

    /// What the machine has done so far.
    pub fn stats(&self) -> EmuStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The same, readable from another thread while [`EmuVm::run`] runs.
    pub fn stats_handle(&self) -> Arc<Mutex<EmuStats>> {
        self.stats.clone()
    }

    /// Pauses, resumes and stops the machine from another thread.
    pub fn control(&self) -> Arc<EmuControl> {
        self.control.clone()
    }

    /// Guest RAM, for a host that reads or saves it.
    pub fn guest_memory(&self) -> &GuestRam {
        &self.ram
    }

    /// With VIREO_PROFILE set: how often each guest pc was seen at a slice boundary.
    pub fn profile(&self) -> Option<&std::collections::HashMap<u64, u64>> {
        self.profile.as_ref()
    }

    /// The decoded-code cache: most pages allocated (16 KiB each) and times it was dropped
    /// for being full.
    pub fn code_cache_stats(&self) -> (usize, u64) {
        let s = self.stats();
        (s.code_pages, s.code_evictions)
    }

    /// Instructions retired so far, all harts.
    pub fn instructions(&self) -> u64 {
        self.stats().instructions
    }

    /// Runs until the guest powers off, resets or faults, or another thread stops it
    /// ([`EmuControl::stop`]). A later call continues the same machine: its timers, hart
    /// mailboxes and decoded code are kept between calls.
    pub fn run(&mut self) -> Result<GuestExit, EmuError> {
        let view = self
            .ram
            .view_at(RAM_BASE)
            .ok_or_else(|| EmuError::Fault("guest RAM is not mapped".into()))?;
        let n = self.harts.len();
        let cfg = SysConfig {
            ram_base: RAM_BASE,
            clint_base: CLINT_BASE,
            harts: n,
            builtin_sbi: self.devices.builtin_sbi,
            irq: self.irq.clone(),
            exit: self.exit.clone(),
            console: self.console.clone(),
        };
        let mut sys = match self.saved.take() {
            Some(mut state) => {
                if let Some((mtime, saved_wall, mode)) = self.restored_clock.take() {
                    let now = match mode {
                        ClockMode::Pause => mtime,
                        ClockMode::CatchUp => mtime.saturating_add(
                            wall_ns().saturating_sub(saved_wall) / (1_000_000_000 / TIMEBASE_HZ),
                        ),
                    };
                    state.clock = Clock::at(now);
                }
                Sys::resume(view, &self.bus, cfg, state)
            }
            None => Sys::new(view, &self.bus, cfg),
        };
        let r = run_harts(
            &mut self.harts,
            &mut sys,
            &self.stats,
            &self.control,
            &mut self.profile,
        );
        self.saved = Some(sys.into_state());
        r
    }
}

/// The run loop of [`EmuVm::run`]: the harts in turn, a slice each, until something stops the
/// machine.
fn run_harts(
    harts: &mut [Hart],
    sys: &mut Sys,
    stats: &Mutex<EmuStats>,
    control: &EmuControl,
    profile: &mut Option<std::collections::HashMap<u64, u64>>,
) -> Result<GuestExit, EmuError> {
    let n = harts.len();
    let mut waiting = vec![false; n];
    let (mut instructions, mut idle) = {
        let s = stats.lock().unwrap_or_else(|p| p.into_inner());
        (s.instructions, s.idle)
    };
    let publish = |instructions: u64, idle: Duration, sys: &Sys| {
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
        s.instructions = instructions;
        s.idle = idle;
        s.code_pages = s.code_pages.max(sys.code.allocated());
        s.code_evictions = sys.code.evictions;
        s.counters.clone_from(&sys.counters);
    };
    loop {
        // Before any slice: a machine restored paused must not run an instruction first.
        if control.requested.load(Ordering::Acquire) && !sys.exit.is_raised() {
            let frozen = sys.clock.now();
            let catch_up = control.catch_up.load(Ordering::Acquire);
            let parked = control.park(&mut || {
                let mut c = capture(harts, sys);
                if !catch_up {
                    // The guest's time stands still from the moment it parked.
                    c.mtime = frozen;
                }
                c
            });
            if !catch_up {
                sys.clock.skip(parked);
            }
            if control.flush_writes.swap(false, Ordering::AcqRel) {
                for h in harts.iter_mut() {
                    h.forget_write_translations();
                }
            }
            continue;
        }
        let mut busy = false;
        for (i, h) in harts.iter_mut().enumerate() {
            if let Some((pc, opaque)) = sys.mail[i].start.take() {
                h.enter_supervisor(pc, i as u64, opaque);
                sys.mail[i].hsm = HsmState::Started;
                waiting[i] = false;
            }
            if sys.mail[i].hsm != HsmState::Started {
                continue;
            }
            if waiting[i] {
                if sys.mail[i].ipi || h.wakeup_pending(sys) {
                    waiting[i] = false;
                } else {
                    continue;
                }
            }
            let budget = if profile.is_some() { 997 } else { SLICE };
            let (stop, ran) = h.run(sys, budget);
            if let Some(p) = profile.as_mut() {
                *p.entry(h.pc).or_default() += 1;
            }
            instructions += ran;
            match stop {
                Stop::Wait => waiting[i] = true,
                Stop::Stopped | Stop::Yield => {}
            }
            busy |= stop == Stop::Yield;
            if sys.fault.is_some() || sys.exit.is_raised() {
                break;
            }
        }
        publish(instructions, idle, sys);
        if let Some(f) = sys.fault.take() {
            return Err(EmuError::Fault(f));
        }
        if let Some(e) = sys.exit.get() {
            return Ok(e);
        }
        if control.requested.load(Ordering::Acquire) {
            continue;
        }
        if !busy {
            if sys.mail.iter().all(|m| m.hsm == HsmState::Stopped) {
                return Err(EmuError::Fault("every hart has stopped".into()));
            }
            // Every hart waits for an interrupt: sleep until the nearest timer or a device.
            let next = harts
                .iter()
                .map(|h| {
                    let m = sys.clint.mtimecmp[h.id as usize];
                    if sys.builtin_sbi || h.menvcfg & crate::csr::ENVCFG_STCE != 0 {
                        m.min(h.stimecmp)
                    } else {
                        m
                    }
                })
                .min()
                .unwrap_or(u64::MAX);
            let d = sys.clock.until(next).min(Duration::from_millis(10));
            if !d.is_zero() {
                let t0 = std::time::Instant::now();
                sys.irq.wake().wait(d);
                idle += t0.elapsed();
            }
        }
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, EmuError> {
    std::fs::read(path).map_err(|source| EmuError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A loaded image: its extent in guest-physical memory and its entry point.
struct Loaded {
    start: u64,
    end: u64,
    entry: u64,
}

fn need_mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Loads a RISC-V Linux `Image` (flat, with its 64-byte header) or an ELF64 RISC-V executable.
fn load_image(
    ram: &GuestRam,
    path: &Path,
    data: &[u8],
    default_at: u64,
) -> Result<Loaded, EmuError> {
    let bad = |reason: String| EmuError::NotRiscv {
        path: path.to_path_buf(),
        reason,
    };
    let ram_end = RAM_BASE + ram.size();
    let too_small = |end: u64| EmuError::TooLittleMemory {
        have_mib: ram.size() >> 20,
        need_mib: need_mib(end - RAM_BASE) + 16,
    };
    if data.len() >= 4 && &data[..4] == b"\x7fELF" {
        return load_elf(ram, data, ram_end).map_err(|e| match e {
            ElfError::Bad(r) => bad(r),
            ElfError::TooBig(end) => too_small(end),
        });
    }
    if data.len() >= 64 {
        let magic = &data[0x30..0x38];
        let magic2 = &data[0x38..0x3c];
        if magic == b"RISCV\0\0\0" || magic2 == b"RSC\x05" {
            let text_offset = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
            let image_size = u64::from_le_bytes(data[16..24].try_into().unwrap_or_default());
            let at = if text_offset == 0 {
                default_at
            } else {
                RAM_BASE + text_offset
            };
            // The image reserves its bss beyond the file; keep room for it.
            let size = image_size.max(data.len() as u64);
            let end = at + size;
            if end > ram_end {
                return Err(too_small(end));
            }
            ram.write(at, data)?;
            return Ok(Loaded {
                start: at,
                end,
                entry: at,
            });
        }
    }
    if data.len() >= 2 && data[..2] == [0x1f, 0x8b] {
        return Err(bad(
            "it is gzip-compressed; decompress it first (the raw Image is what boots)".into(),
        ));
    }
    Err(bad(
        "no RISC-V Image header (magic \"RSC\\x05\" at offset 0x38) and no ELF header".into(),
    ))
}

enum ElfError {
    Bad(String),
    TooBig(u64),
}

/// Why `data` cannot be a raw program for this board (it starts executing at its first byte),
/// if it cannot: empty, compressed, text, or a first instruction that does not decode.
pub fn plausible_raw_program(data: &[u8]) -> Result<(), String> {
    if data.len() < 2 {
        return Err("it is empty".into());
    }
    if data.starts_with(&[0x1f, 0x8b]) {
        return Err("it is gzip-compressed".into());
    }
    let head = &data[..data.len().min(64)];
    if head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return Err("it looks like text, not a program".into());
    }
    let lo = u16::from_le_bytes([data[0], data[1]]);
    let op = if crate::decode::insn_len(lo) == 2 {
        crate::decode::decode16(lo)
    } else if data.len() >= 4 {
        crate::decode::decode32(
            u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            Isa::max(),
        )
    } else {
        return Err("it is too short for its first instruction".into());
    };
    if op.kind == crate::decode::Kind::Illegal {
        return Err(format!(
            "its first bytes ({}) are not a RISC-V instruction",
            head[..4.min(head.len())]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(())
}

fn load_elf(ram: &GuestRam, d: &[u8], ram_end: u64) -> Result<Loaded, ElfError> {
    let bad = |s: &str| ElfError::Bad(s.to_string());
    let u16at = |o: usize| d.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32at = |o: usize| {
        d.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u64at = |o: usize| {
        d.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    if d.len() < 64 || d[4] != 2 || d[5] != 1 {
        return Err(bad("ELF file is not 64-bit little-endian"));
    }
    let machine = u16at(18).ok_or_else(|| bad("truncated ELF header"))?;
    if machine != 243 {
        return Err(ElfError::Bad(format!(
            "ELF machine is {machine}, not RISC-V (243)"
        )));
    }
    let entry = u64at(24).ok_or_else(|| bad("truncated ELF header"))?;
    let phoff = u64at(32).ok_or_else(|| bad("truncated ELF header"))? as usize;
    let phentsize = u16at(54).ok_or_else(|| bad("truncated ELF header"))? as usize;
    let phnum = u16at(56).ok_or_else(|| bad("truncated ELF header"))? as usize;
    if phentsize < 56 || phnum == 0 {
        return Err(bad("ELF file has no program headers"));
    }
    let (mut start, mut end, mut pentry) = (u64::MAX, 0u64, None);
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .ok_or_else(|| bad("bad program header offset"))?;
        let ptype = u32at(ph).ok_or_else(|| bad("program header beyond end of file"))?;
        if ptype != 1 {
            continue;
        }
        let off = u64at(ph + 8).ok_or_else(|| bad("truncated program header"))? as usize;
        let vaddr = u64at(ph + 16).ok_or_else(|| bad("truncated program header"))?;
        let paddr = u64at(ph + 24).ok_or_else(|| bad("truncated program header"))?;
        let filesz = u64at(ph + 32).ok_or_else(|| bad("truncated program header"))? as usize;
        let memsz = u64at(ph + 40).ok_or_else(|| bad("truncated program header"))?;
        let seg = off
            .checked_add(filesz)
            .and_then(|e| d.get(off..e))
            .ok_or_else(|| bad("segment extends beyond end of file"))?;
        let seg_end = paddr
            .checked_add(memsz.max(filesz as u64))
            .ok_or_else(|| bad("segment wraps the address space"))?;
        if paddr < RAM_BASE || paddr >= ram_end {
            return Err(ElfError::Bad(format!(
                "program header {i} (a loadable segment at {paddr:#x}..{seg_end:#x}) is \
                 outside RAM ({RAM_BASE:#x}..{ram_end:#x})"
            )));
        }
        if seg_end > ram_end {
            return Err(ElfError::TooBig(seg_end));
        }
        ram.write(paddr, seg)
            .map_err(|e| ElfError::Bad(e.to_string()))?;
        start = start.min(paddr);
        end = end.max(seg_end);
        if entry >= vaddr && entry < vaddr + memsz {
            pentry = Some(entry - vaddr + paddr);
        }
    }
    if end == 0 {
        return Err(bad("ELF file has no loadable segments"));
    }
    let entry = pentry.ok_or_else(|| bad("entry point is not inside a loadable segment"))?;
    Ok(Loaded { start, end, entry })
}

fn load_payload(
    ram: &GuestRam,
    cfg: &BootConfig,
    cmdline: &str,
    harts: usize,
    virtio: &VirtioLayout,
    isa: Isa,
) -> Result<Layout, EmuError> {
    let ram_end = RAM_BASE + ram.size();
    let bare = cfg.kernel.as_os_str().is_empty();
    if bare && cfg.firmware.is_none() {
        return Err(EmuError::NotRiscv {
            path: cfg.kernel.clone(),
            reason: "no kernel given".into(),
        });
    }
    let mut floor = RAM_BASE;
    if let Some(fw) = &cfg.firmware {
        let data = read_file("firmware", fw)?;
        let l = if data.starts_with(b"\x7fELF") {
            load_image(ram, fw, &data, RAM_BASE)?
        } else {
            if let Err(reason) = plausible_raw_program(&data) {
                return Err(EmuError::NotRiscv {
                    path: fw.clone(),
                    reason: format!("{reason}; firmware is an ELF or a raw RISC-V binary loaded at {RAM_BASE:#x}"),
                });
            }
            if RAM_BASE + data.len() as u64 > ram_end {
                return Err(EmuError::TooLittleMemory {
                    have_mib: ram.size() >> 20,
                    need_mib: need_mib(data.len() as u64) + 16,
                });
            }
            ram.write(RAM_BASE, &data)?;
            Loaded {
                start: RAM_BASE,
                end: RAM_BASE + data.len() as u64,
                entry: RAM_BASE,
            }
        };
        if !bare && l.end > RAM_BASE + KERNEL_OFFSET {
            return Err(EmuError::NotRiscv {
                path: fw.clone(),
                reason: format!(
                    "firmware is {} bytes; at most {KERNEL_OFFSET:#x} fit before the kernel",
                    l.end - l.start
                ),
            });
        }
        floor = l.end;
    }
    // Firmware alone (bare-metal programs, ISA tests) boots with no kernel.
    let k = if bare {
        Loaded {
            start: floor,
            end: floor,
            entry: RAM_BASE,
        }
    } else {
        let kernel_data = read_file("kernel", &cfg.kernel)?;
        load_image(ram, &cfg.kernel, &kernel_data, RAM_BASE + KERNEL_OFFSET)?
    };
    if k.start < floor {
        return Err(EmuError::NotRiscv {
            path: cfg.kernel.clone(),
            reason: "kernel would overlap the firmware".into(),
        });
    }
    let fdt_addr = (ram_end - FDT_MAX) & !0xfff;
    let initrd_len = cfg.initrd.as_ref().map_or(0, |i| i.len() as u64);
    let initrd_start = fdt_addr.saturating_sub(initrd_len) & !0xfff;
    // The kernel needs working room beyond its image, and the initramfs is held compressed
    // while it unpacks into page cache. Measured with Debian's 6.12 riscv64 kernel (30 MiB
    // image) and vireo's 2.4 MiB initramfs: 96 MiB boots to /init, 92 MiB hangs in the OOM
    // killer, 88 MiB oopses, 80 MiB resets before the console is up. Twice the image's size
    // of working room and five times the initramfs put the floor at 104 MiB there; a small
    // bare-metal payload keeps 16 MiB.
    let reserve = ((k.end - k.start) * 2).max(16 << 20);
    let need = k.end + initrd_len * 5 + FDT_MAX + reserve;
    if initrd_start < k.end || need > ram_end {
        return Err(EmuError::TooLittleMemory {
            have_mib: ram.size() >> 20,
            need_mib: need_mib(need - RAM_BASE),
        });
    }
    let initrd = match &cfg.initrd {
        Some(data) => {
            ram.write(initrd_start, data)?;
            Some((initrd_start, initrd_start + data.len() as u64))
        }
        None => None,
    };
    let fdt = build_fdt(ram.size(), cmdline, initrd, harts, virtio, isa)?;
    if fdt.len() as u64 > FDT_MAX {
        return Err(EmuError::Fdt(format!("device tree is {} bytes", fdt.len())));
    }
    ram.write(fdt_addr, &fdt)?;
    Ok(Layout {
        kernel: (k.start, k.end),
        initrd,
        fdt: fdt_addr,
        entry: k.entry,
    })
}

/// The device tree describing this board to the firmware and kernel.
pub fn build_fdt(
    ram_size: u64,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    harts: usize,
    virtio: &VirtioLayout,
    isa: Isa,
) -> Result<Vec<u8>, EmuError> {
    build_fdt_inner(ram_size, cmdline, initrd, harts, virtio, isa)
        .map_err(|e| EmuError::Fdt(e.to_string()))
}

fn build_fdt_inner(
    ram_size: u64,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    harts: usize,
    virtio: &VirtioLayout,
    isa: Isa,
) -> Result<Vec<u8>, vm_fdt::Error> {
    const PH_PLIC: u32 = 1;
    const PH_TEST: u32 = 2;
    let intc = |h: usize| 0x100 + h as u32;
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "riscv-virtio")?;
    f.property_string("model", "vireo,virt")?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", cmdline)?;
    f.property_string("stdout-path", &format!("/soc/serial@{UART_BASE:x}"))?;
    if let Some((s, e)) = initrd {
        f.property_u64("linux,initrd-start", s)?;
        f.property_u64("linux,initrd-end", e)?;
    }
    // Seed the guest's RNG so it does not stall collecting entropy on an emulated CPU.
    let mut seed = [0u8; 64];
    getrandom(&mut seed);
    f.property("rng-seed", &seed)?;
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[RAM_BASE, ram_size])?;
    f.end_node(mem)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    f.property_u32("timebase-frequency", TIMEBASE_HZ as u32)?;
    for h in 0..harts {
        let cpu = f.begin_node(&format!("cpu@{h}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_u32("reg", h as u32)?;
        f.property_string("status", "okay")?;
        f.property_string("compatible", "riscv")?;
        f.property_string("riscv,isa", &isa.to_string())?;
        f.property_string("riscv,isa-base", "rv64i")?;
        f.property_string_list("riscv,isa-extensions", isa.dt_extensions())?;
        if isa.has(Ext::Zicbom) {
            f.property_u32("riscv,cbom-block-size", CACHE_BLOCK as u32)?;
        }
        if isa.has(Ext::Zicboz) {
            f.property_u32("riscv,cboz-block-size", CACHE_BLOCK as u32)?;
        }
        if isa.has(Ext::Zicbop) {
            f.property_u32("riscv,cbop-block-size", CACHE_BLOCK as u32)?;
        }
        f.property_string("mmu-type", "riscv,sv48")?;
        f.property_u32("phandle", 0x80 + h as u32)?;
        let ic = f.begin_node("interrupt-controller")?;
        f.property_u32("#interrupt-cells", 1)?;
        f.property_null("interrupt-controller")?;
        f.property_string("compatible", "riscv,cpu-intc")?;
        f.property_u32("phandle", intc(h))?;
        f.end_node(ic)?;
        f.end_node(cpu)?;
    }
    let map = f.begin_node("cpu-map")?;
    let cluster = f.begin_node("cluster0")?;
    for h in 0..harts {
        let core = f.begin_node(&format!("core{h}"))?;
        f.property_u32("cpu", 0x80 + h as u32)?;
        f.end_node(core)?;
    }
    f.end_node(cluster)?;
    f.end_node(map)?;
    f.end_node(cpus)?;

    let soc = f.begin_node("soc")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "simple-bus")?;
    f.property_null("ranges")?;

    let clint = f.begin_node(&format!("clint@{CLINT_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,clint0".into(), "riscv,clint0".into()],
    )?;
    f.property_array_u64("reg", &[CLINT_BASE, CLINT_SIZE])?;
    let mut ie = Vec::new();
    for h in 0..harts {
        ie.extend_from_slice(&[intc(h), 3, intc(h), 7]);
    }
    f.property_array_u32("interrupts-extended", &ie)?;
    f.end_node(clint)?;

    let plic = f.begin_node(&format!("plic@{PLIC_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    f.property_array_u64("reg", &[PLIC_BASE, PLIC_SIZE])?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_u32("#address-cells", 0)?;
    f.property_null("interrupt-controller")?;
    f.property_u32("riscv,ndev", (NUM_SOURCES - 1) as u32)?;
    let mut ie = Vec::new();
    for h in 0..harts {
        ie.extend_from_slice(&[intc(h), 11, intc(h), 9]);
    }
    f.property_array_u32("interrupts-extended", &ie)?;
    f.property_u32("phandle", PH_PLIC)?;
    f.end_node(plic)?;

    let uart = f.begin_node(&format!("serial@{UART_BASE:x}"))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[UART_BASE, 0x100])?;
    f.property_u32("clock-frequency", 3_686_400)?;
    f.property_u32("interrupts", UART_IRQ as u32)?;
    f.property_u32("interrupt-parent", PH_PLIC)?;
    f.end_node(uart)?;

    let rtc = f.begin_node(&format!("rtc@{RTC_BASE:x}"))?;
    f.property_string("compatible", "google,goldfish-rtc")?;
    f.property_array_u64("reg", &[RTC_BASE, RTC_WINDOW])?;
    f.property_u32("interrupts", RTC_IRQ as u32)?;
    f.property_u32("interrupt-parent", PH_PLIC)?;
    f.end_node(rtc)?;

    let genid = f.begin_node(&format!("vmgenid@{VMGENID_BASE:x}"))?;
    f.property_string("compatible", "microsoft,vmgenid")?;
    f.property_array_u64("reg", &[VMGENID_BASE, VMGENID_WINDOW])?;
    f.property_u32("interrupts", VMGENID_IRQ as u32)?;
    f.property_u32("interrupt-parent", PH_PLIC)?;
    f.end_node(genid)?;

    for &(base, irq) in &virtio.mmio {
        let v = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[base, VIRTIO_STRIDE])?;
        f.property_u32("interrupts", irq as u32)?;
        f.property_u32("interrupt-parent", PH_PLIC)?;
        f.end_node(v)?;
    }

    if !virtio.pci.is_empty() {
        pci_host_node(&mut f, &virtio.pci, PH_PLIC)?;
    }

    let test = f.begin_node(&format!("test@{FINISHER_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec![
            "sifive,test1".into(),
            "sifive,test0".into(),
            "syscon".into(),
        ],
    )?;
    f.property_array_u64("reg", &[FINISHER_BASE, FINISHER_WINDOW])?;
    f.property_u32("phandle", PH_TEST)?;
    f.end_node(test)?;
    f.end_node(soc)?;

    let off = f.begin_node("poweroff")?;
    f.property_string("compatible", "syscon-poweroff")?;
    f.property_u32("regmap", PH_TEST)?;
    f.property_u32("offset", 0)?;
    f.property_u32("value", 0x5555)?;
    f.end_node(off)?;
    let rb = f.begin_node("reboot")?;
    f.property_string("compatible", "syscon-reboot")?;
    f.property_u32("regmap", PH_TEST)?;
    f.property_u32("offset", 0)?;
    f.property_u32("value", 0x7777)?;
    f.end_node(rb)?;

    f.end_node(root)?;
    f.finish()
}

/// Where the virtio devices went, for the device tree: virtio-mmio (base, PLIC source) and
/// PCI (device number, PLIC source of its INTA#).
#[derive(Debug, Default)]
pub struct VirtioLayout {
    pub mmio: Vec<(u64, usize)>,
    pub pci: Vec<(u8, usize)>,
}

/// A generic ECAM host bridge (Linux's pci-host-generic): bus 0, one non-prefetchable 32-bit
/// memory window mapped 1:1, and an interrupt map sending each slot's INTA# to its own PLIC
/// source.
fn pci_host_node(f: &mut FdtWriter, slots: &[(u8, usize)], plic: u32) -> Result<(), vm_fdt::Error> {
    let n = f.begin_node(&format!("pci@{PCI_ECAM_BASE:x}"))?;
    f.property_string("compatible", "pci-host-ecam-generic")?;
    f.property_string("device_type", "pci")?;
    f.property_u32("#address-cells", 3)?;
    f.property_u32("#size-cells", 2)?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_array_u64("reg", &[PCI_ECAM_BASE, ECAM_BUS_SIZE])?;
    f.property_array_u32("bus-range", &[0, 0])?;
    f.property_u32("linux,pci-domain", 0)?;
    f.property_null("dma-coherent")?;
    // PCI address (space code 0x0200_0000 = 32-bit memory, then 64-bit address), CPU address,
    // size.
    let hi = |v: u64| (v >> 32) as u32;
    let lo = |v: u64| v as u32;
    f.property_array_u32(
        "ranges",
        &[
            0x0200_0000,
            hi(PCI_MMIO_BASE),
            lo(PCI_MMIO_BASE),
            hi(PCI_MMIO_BASE),
            lo(PCI_MMIO_BASE),
            hi(PCI_MMIO_SIZE),
            lo(PCI_MMIO_SIZE),
        ],
    )?;
    // Match on device number and pin; child unit address is (devfn << 8) in the high cell.
    f.property_array_u32("interrupt-map-mask", &[0xf800, 0, 0, 7])?;
    let mut map = Vec::new();
    for &(slot, irq) in slots {
        map.extend_from_slice(&[u32::from(slot) << 11, 0, 0, 1, plic, irq as u32]);
    }
    f.property_array_u32("interrupt-map", &map)?;
    f.end_node(n)
}

pub(crate) fn getrandom(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n <= 0 {
            break;
        }
        filled += n as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `addi x1, x1, 1; j .-4`: counts forever.
    const SPIN: [u32; 2] = [0x0010_8093, 0xffdf_f06f];

    /// x2 = RAM_BASE + 1 MiB; then for ever: x1 += 1, sd x1, 0(x2).
    const STORE_LOOP: [u32; 6] = [
        0x0000_0117, // auipc x2, 0
        0x0010_01b7, // lui x3, 0x100
        0x0031_0133, // add x2, x2, x3
        0x0010_8093, // addi x1, x1, 1
        0x0011_3023, // sd x1, 0(x2)
        0xff9f_f06f, // j -8
    ];

    #[test]
    fn the_dirty_log_sees_stores_through_cached_translations_after_it_is_taken() {
        let (vm, _dir) = vm_running(&STORE_LOOP);
        let mem = vm.guest_memory().memory().clone();
        let (control, handle) = (vm.control(), vm.state_handle());
        let t = std::thread::spawn(move || {
            let mut vm = vm;
            vm.run().unwrap()
        });
        let target = (RAM_BASE + 0x10_0000) / 4096;
        std::thread::sleep(Duration::from_millis(30));
        assert!(control.pause(Duration::from_secs(5)));
        let (first, _) = handle.take_dirty(&mem).unwrap();
        assert!(first.contains(&target), "{first:?}");
        assert!(
            first.contains(&(RAM_BASE / 4096)),
            "the loaded program: {first:?}"
        );
        // The loop's store now hits its cached translation: the log must see it again.
        control.resume();
        std::thread::sleep(Duration::from_millis(30));
        assert!(control.pause(Duration::from_secs(5)));
        let (again, _) = handle.take_dirty(&mem).unwrap();
        assert_eq!(again, [target]);
        control.stop(GuestExit::PowerOff);
        assert_eq!(t.join().unwrap(), GuestExit::PowerOff);
    }

    fn spinning_vm() -> (EmuVm, tempdir::Dir) {
        vm_running(&SPIN)
    }

    /// A machine whose firmware (M-mode, from RAM_BASE) is `program`.
    fn vm_running(program: &[u32]) -> (EmuVm, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let prog = dir.0.join("spin.bin");
        let bytes: Vec<u8> = program.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(&prog, bytes).unwrap();
        let vm = EmuVm::build(
            &spin_cfg(&dir),
            ConsoleOutput::new(),
            Vec::new(),
            Isa::max(),
        )
        .unwrap();
        (vm, dir)
    }

    /// The definition of [`spinning_vm`]'s machine.
    fn spin_cfg(dir: &tempdir::Dir) -> BootConfig {
        BootConfig {
            kernel: PathBuf::new(),
            firmware: Some(dir.0.join("spin.bin")),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory: 64 << 20,
            virtio_transport: Default::default(),
        }
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "vireo-board-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn pause_stops_the_harts_and_resume_continues() {
        let (mut vm, _dir) = spinning_vm();
        let control = vm.control();
        let stats = vm.stats_handle();
        let count = move || stats.lock().unwrap().instructions;
        let t = std::thread::spawn(move || vm.run().map_err(|e| e.to_string()));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            control.pause(Duration::from_secs(5)),
            "the machine did not park"
        );
        assert!(control.is_paused());
        let a = count();
        assert!(a > 0, "the guest ran before the pause");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(count(), a, "instructions retired while paused");
        control.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(count() > a, "the guest did not continue after resume");
        // Stopping works on a paused machine too.
        assert!(control.pause(Duration::from_secs(5)));
        control.stop(GuestExit::PowerOff);
        assert_eq!(t.join().unwrap(), Ok(GuestExit::PowerOff));
    }

    #[test]
    fn run_continues_the_same_machine() {
        let (mut vm, _dir) = spinning_vm();
        let control = vm.control();
        // A pause asked for before `run` parks the machine at its first round.
        assert!(!control.pause(Duration::from_millis(1)));
        let c2 = control.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.stop(GuestExit::Reset);
        });
        assert_eq!(vm.run().unwrap(), GuestExit::Reset);
        t.join().unwrap();
        let first = vm.instructions();
        assert!(first <= 2 * SLICE, "it ran on while paused: {first}");
        // The saved state is what the next run continues from.
        assert!(vm.saved.is_some());
    }

    /// Runs `vm` on a thread until it has retired some instructions, pauses it, and returns
    /// its state with the thread (still parked) and the control.
    fn run_and_save(
        vm: EmuVm,
    ) -> (
        EmuState,
        Arc<EmuControl>,
        std::thread::JoinHandle<(EmuVm, GuestExit)>,
    ) {
        let control = vm.control();
        let handle = vm.state_handle();
        let t = std::thread::spawn(move || {
            let mut vm = vm;
            let e = vm.run().unwrap();
            (vm, e)
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(control.pause(Duration::from_secs(5)));
        assert!(handle.pause_devices(Duration::from_secs(1)));
        let st = handle.save().unwrap();
        (st, control, t)
    }

    fn copy_ram(from: &GuestRam) -> GuestRam {
        let mut bytes = vec![0u8; from.size() as usize];
        from.read(RAM_BASE, &mut bytes).unwrap();
        let ram = GuestRam::new(&[(RAM_BASE, from.size())]).unwrap();
        ram.write(RAM_BASE, &bytes).unwrap();
        ram
    }

    #[test]
    fn a_restored_machine_continues_where_it_was() {
        let (vm, dir) = spinning_vm();
        let cfg = spin_cfg(&dir);
        let (st, control, t) = run_and_save(vm);
        let counted = st.harts[0].x[1];
        assert!(counted > 0, "the guest counted before the pause");
        // Saving is only possible parked.
        control.resume();
        std::thread::sleep(Duration::from_millis(20));
        control.stop(GuestExit::PowerOff);
        let (old, _) = t.join().unwrap();
        assert!(
            old.state_handle().save().is_err(),
            "saved a machine that is not parked"
        );
        let ram = copy_ram(old.guest_memory());
        drop(old);

        // Restored paused, the state read back is the one put in (but for the wall clock).
        let vm = EmuVm::restore(
            &cfg,
            ConsoleOutput::new(),
            Vec::new(),
            ram,
            &st,
            ClockMode::Pause,
        )
        .unwrap();
        let control = vm.control();
        assert!(!control.pause(Duration::from_millis(1)));
        let handle = vm.state_handle();
        let t = std::thread::spawn(move || {
            let mut vm = vm;
            vm.run().unwrap()
        });
        assert!(control.pause(Duration::from_secs(5)));
        let mut again = handle.save().unwrap();
        again.machine.wall_ns = st.machine.wall_ns;
        // The clock runs from `run` to the first park (microseconds), not before.
        let drift = again.machine.mtime - st.machine.mtime;
        assert!(
            drift < TIMEBASE_HZ / 100,
            "mtime moved {drift} ticks while parked"
        );
        again.machine.mtime = st.machine.mtime;
        // A restore is a new generation: another ID, its interrupt pending.
        assert!(st.vmgenid.is_some());
        assert_ne!(
            again.vmgenid, st.vmgenid,
            "the restore kept the generation ID"
        );
        assert!(again.machine.plic.pending[VMGENID_IRQ] && !st.machine.plic.pending[VMGENID_IRQ]);
        again.vmgenid = st.vmgenid;
        again.machine.plic.pending[VMGENID_IRQ] = false;
        assert_eq!(again, st, "a restore then a save changed the state");

        // Running on, it counts from where it was, not from zero.
        control.resume();
        std::thread::sleep(Duration::from_millis(30));
        assert!(control.pause(Duration::from_secs(5)));
        let later = handle.save().unwrap();
        assert!(
            later.harts[0].x[1] > counted,
            "x1 went from {counted} to {}",
            later.harts[0].x[1]
        );
        assert!(later.machine.mtime >= st.machine.mtime);
        control.stop(GuestExit::PowerOff);
        assert_eq!(t.join().unwrap(), GuestExit::PowerOff);
    }

    #[test]
    fn a_state_that_does_not_fit_is_refused() {
        let (vm, dir) = spinning_vm();
        let mut cfg = spin_cfg(&dir);
        let (st, control, t) = run_and_save(vm);
        control.stop(GuestExit::PowerOff);
        let (old, _) = t.join().unwrap();
        let ram = || copy_ram(old.guest_memory());
        let err = |cfg: &BootConfig, st: &EmuState| match EmuVm::restore(
            cfg,
            ConsoleOutput::new(),
            Vec::new(),
            ram(),
            st,
            ClockMode::Pause,
        ) {
            Ok(_) => panic!("restored a state that does not fit"),
            Err(e) => e.to_string(),
        };
        cfg.cpus = 2;
        assert!(err(&cfg, &st).contains("1 harts, the definition 2"));
        cfg.cpus = 1;
        let mut bad = st.clone();
        bad.harts[0].prv = 2;
        assert!(err(&cfg, &bad).contains("privilege 2"));
        let mut bad = st.clone();
        for c in bad.harts[0].csrs.iter_mut().filter(|c| c.0 == 0x180) {
            c.1 = 10 << 60;
        }
        assert!(err(&cfg, &bad).contains("translation mode 10"));
        let mut bad = st.clone();
        bad.harts[0].csrs.push((0x7c0, 1));
        assert!(err(&cfg, &bad).contains("CSR 0x7c0"));
        let mut bad = st.clone();
        bad.machine.plic.priority.pop();
        assert!(err(&cfg, &bad).contains("PLIC"));
        let mut bad = st.clone();
        bad.virtio
            .push(
                bad.virtio
                    .first()
                    .cloned()
                    .unwrap_or_else(|| vireo_virtio::state::CoreState {
                        device_type: 2,
                        offered: 0,
                        driver_features: 0,
                        device_features_sel: 0,
                        driver_features_sel: 0,
                        queue_sel: 0,
                        status: 0,
                        config_generation: 0,
                        interrupt_status: 0,
                        active: false,
                        queues: Vec::new(),
                        device: Vec::new(),
                    }),
            );
        assert!(err(&cfg, &bad).contains("1 virtio devices, the definition 0"));
        let mut pci = cfg.clone();
        pci.virtio_transport = VirtioTransport::Pci;
        assert!(err(&pci, &st).contains("the mmio virtio transport, the definition pci"));
    }
}
