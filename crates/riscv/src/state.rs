//! The emulated machine's state in a snapshot: every hart's registers and CSRs, the CLINT,
//! the timebase, the PLIC, the hart mailboxes; the board's other devices (UART, RTC, virtio)
//! save their own and [`crate::EmuVm::save`] collects them.
//!
//! Everything here is architectural state, in fixed-width integers: nothing is a host
//! address, a host time or a cache (software TLBs and decoded code are rebuilt on restore), so
//! a state taken on one host restores on any other, whatever its architecture.

use serde::{Deserialize, Serialize};
use vireo_devices::UartState;
use vireo_virtio::state::{CoreState, PciFunctionState};

/// Version of [`HartState`], [`MachineState`] and their parts. Bump it when a field changes
/// meaning; a newer vireo must keep reading every earlier one.
pub const EMU_STATE_VERSION: u16 = 1;

/// One hart as the guest can observe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HartState {
    pub id: u64,
    pub x: Vec<u64>,
    pub f: Vec<u64>,
    pub pc: u64,
    /// 0 U, 1 S, 3 M.
    pub prv: u64,
    /// (CSR number, value) for every machine and supervisor CSR the hart keeps (see
    /// `Hart::save`); by number so the list can grow without a new version.
    pub csrs: Vec<(u16, u64)>,
    pub pmp_cfg: Vec<u8>,
    pub pmp_addr: Vec<u64>,
    /// The extensions (a restore onto a hart model without them is refused).
    pub isa: u32,
    pub instret: u64,
    /// mcycle and minstret: offset from `instret` and the frozen value if inhibited.
    pub counters: Vec<(u64, Option<u64>)>,
    pub stimecmp: u64,
    /// The LR reservation (physical address), if one is held.
    pub reservation: Option<u64>,
}

/// SBI HSM state and pending cross-hart requests of one hart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailState {
    pub ipi: bool,
    pub flush_tlb: bool,
    pub start: Option<(u64, u64)>,
    /// 0 started, 1 stopped, 2 start pending.
    pub hsm: u8,
}

/// The PLIC's registers and line state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlicState {
    pub priority: Vec<u32>,
    pub level: Vec<bool>,
    pub pending: Vec<bool>,
    pub claimed: Vec<bool>,
    pub rose_while_claimed: Vec<bool>,
    /// Per context: the enable words.
    pub enable: Vec<Vec<u32>>,
    pub threshold: Vec<u32>,
}

/// Board-wide state: the shape it must be restored onto and what the harts share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    pub harts: u32,
    pub ram_base: u64,
    pub ram_size: u64,
    pub builtin_sbi: bool,
    /// "mmio" or "pci".
    pub virtio_transport: String,
    /// mtime when the state was taken.
    pub mtime: u64,
    /// Host wall-clock time then (Unix ns), for a restore that catches the guest's clock up.
    pub wall_ns: u64,
    pub msip: Vec<bool>,
    pub mtimecmp: Vec<u64>,
    pub mail: Vec<MailState>,
    pub plic: PlicState,
    pub uart: UartState,
    pub rtc_latch: u32,
}

/// All of an emulated machine but its RAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmuState {
    pub machine: MachineState,
    pub harts: Vec<HartState>,
    /// The virtio devices, by slot (virtio-mmio) or in PCI slot order (virtio-pci).
    pub virtio: Vec<CoreState>,
    /// With the virtio-pci transport, each device's PCI function, in the order of `virtio`;
    /// empty with virtio-mmio.
    pub pci: Vec<PciFunctionState>,
    /// The VM generation ID (none in a snapshot taken before the board had the device).
    pub vmgenid: Option<[u8; 16]>,
}

/// What a restored guest's clocks do about the time that passed since the state was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClockMode {
    /// The guest's time stands still while it is not running: mtime continues from the value
    /// it had (what a paused physical machine cannot do, and what keeps timers and timeouts
    /// from firing all at once). The wall clock (RTC) is the host's, so the guest's
    /// `date` is right after it next reads the RTC or syncs.
    #[default]
    Pause,
    /// mtime jumps by the wall-clock time that passed, as if the guest had run on.
    CatchUp,
}
