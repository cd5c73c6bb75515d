//! The KVM half of a VM snapshot: what KVM holds of a vCPU and of the VM, as serde structs
//! with explicit field widths (our own mirrors of the kernel's structures, so the format is
//! ours to version and never carries a host pointer or a padding byte), and the ioctls that
//! read and write them.
//!
//! Guest RAM and the devices vireo shares with the emulator (UART, virtio) are saved by their
//! owners; this module holds the vCPUs, KVM's in-kernel PIC/IOAPIC/PIT and clock, and the
//! PC's own little devices ([`PcState`]).
//!
//! # Order
//! Saving reads, per vCPU on its own thread with every vCPU paused: MP state first
//! (KVM_GET_MP_STATE runs `kvm_apic_accept_events`, which may change the vCPU and LAPIC state
//! the later reads see), then registers, special registers, XSAVE (or FPU), XCRs, debug
//! registers, LAPIC, MSRs, and the vCPU events last (the pending exception/interrupt/NMI state
//! that the other reads may have folded in).
//!
//! Restoring ([`restore_vcpu`]) writes, after KVM_SET_CPUID2 (done when the vCPU is built, as
//! for a fresh boot: other ioctls check features against it):
//! 1. MP state — whether the vCPU runs or waits for INIT/SIPI; later writes may depend on it.
//! 2. regs, then sregs — KVM_SET_REGS drops a pending exception, and KVM_SET_SREGS restores
//!    the APIC base (and the interrupt bitmap), which the LAPIC write needs in place.
//! 3. XSAVE/FPU, XCRs, debug registers — independent of the rest.
//! 4. LAPIC — after sregs (APIC base, above), before MSRs: the TSC-deadline MSR is accepted
//!    only once the LAPIC's timer is in TSC-deadline mode.
//! 5. MSRs — including the TSC, so the guest's TSC continues from its saved value.
//! 6. vCPU events last — pending exceptions, interrupts, NMIs, the interrupt shadow; every
//!    earlier write may clear them.
//!
//! VM-wide state ([`restore_vm`]) goes in after every vCPU's (so their TSCs are in place) and
//! before any vCPU thread first runs: the PICs and the IOAPIC (KVM_SET_IRQCHIP), the PIT
//! (KVM_SET_PIT2), then the KVM clock (KVM_SET_CLOCK) last, so kvmclock continues from the
//! saved value. It is set with no flags: the guest's clock
//! resumes where it stopped rather than jumping by the wall-clock time the snapshot spent on
//! disk (`KVM_CLOCK_REALTIME` would do that).

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_dtable, kvm_fpu, kvm_ioapic_state, kvm_irqchip,
    kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pic_state, kvm_pit_channel_state,
    kvm_pit_state2, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events, kvm_xcr, kvm_xcrs,
    kvm_xsave, Msrs, Xsave, KVM_APIC_REG_SIZE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// The version of the structures below; bumped whenever a field changes meaning or shape.
pub const KVM_STATE_VERSION: u32 = 1;

/// Size in bytes of the legacy `struct kvm_xsave` region.
const XSAVE_LEGACY_BYTES: usize = std::mem::size_of::<kvm_xsave>();

/// Errors while saving or restoring KVM state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl on one vCPU failed.
    #[error("vCPU {cpu}: KVM {what} failed: {source}")]
    Vcpu {
        cpu: u32,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// A VM-wide KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Vm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_MSRS stopped before the end of the saved list.
    #[error("vCPU {cpu}: KVM accepted {set} of {wanted} saved MSRs (first refused: {refused:#x})")]
    Msrs {
        cpu: u32,
        set: usize,
        wanted: usize,
        refused: u32,
    },
    /// A save reached a vCPU that is running guest code.
    #[error("vCPU {cpu} is running: KVM state is saved only from a paused VM")]
    Running { cpu: u32 },
    /// A save reached a vCPU that has stopped for good.
    #[error(
        "vCPU {cpu} has stopped (the guest exited or failed): there is no state to continue from"
    )]
    Stopped { cpu: u32 },
    /// The saved state does not fit the VM it is being restored into, or is malformed.
    #[error("saved KVM state does not fit this VM: {0}")]
    Mismatch(String),
}

/// What this host's KVM offers for saving state, probed once per VM.
#[derive(Debug, Clone, Default)]
pub struct Caps {
    /// Bytes KVM_GET_XSAVE2 copies (KVM_CAP_XSAVE2), 0 when the ioctl is missing.
    pub xsave2_size: usize,
    /// KVM_GET_XSAVE exists (KVM_CAP_XSAVE).
    pub xsave: bool,
    /// KVM_GET_XCRS exists.
    pub xcrs: bool,
    /// KVM_GET_DEBUGREGS exists.
    pub debugregs: bool,
    /// KVM_GET_VCPU_EVENTS exists.
    pub vcpu_events: bool,
    /// The in-kernel irqchip was created, so each vCPU has a LAPIC.
    pub lapic: bool,
    /// MSRs KVM_GET_MSR_INDEX_LIST reports as saveable.
    pub msr_indices: Vec<u32>,
}

impl Caps {
    /// Probes `kvm` and `vm`.
    pub fn probe(kvm: &Kvm, vm: &VmFd, lapic: bool) -> Result<Caps, StateError> {
        let xsave2 = vm.check_extension_int(Cap::Xsave2);
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(|source| StateError::Vm {
                what: "KVM_GET_MSR_INDEX_LIST",
                source,
            })?
            .as_slice()
            .to_vec();
        Ok(Caps {
            xsave2_size: if xsave2 > 0 { xsave2 as usize } else { 0 },
            xsave: vm.check_extension(Cap::Xsave),
            xcrs: vm.check_extension(Cap::Xcrs),
            debugregs: vm.check_extension(Cap::Debugregs),
            vcpu_events: vm.check_extension(Cap::VcpuEvents),
            lapic,
            msr_indices,
        })
    }
}

/// Generates a serde mirror of a kernel structure whose fields are all plain integers or
/// arrays of them, with conversions both ways (the kernel's padding fields left zero).
macro_rules! mirror {
    ($(#[$m:meta])* $name:ident = $kvm:ty { $($(#[$fm:meta])* $f:ident: $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
        }
        impl From<&$kvm> for $name {
            fn from(k: &$kvm) -> Self {
                $name { $($f: k.$f,)* }
            }
        }
        impl From<&$name> for $kvm {
            fn from(s: &$name) -> Self {
                let mut k = <$kvm>::default();
                $(k.$f = s.$f;)*
                k
            }
        }
    };
}

mirror!(
    /// General-purpose registers, RIP and RFLAGS (KVM_GET_REGS).
    Regs = kvm_regs {
        rax: u64, rbx: u64, rcx: u64, rdx: u64, rsi: u64, rdi: u64, rsp: u64, rbp: u64,
        r8: u64, r9: u64, r10: u64, r11: u64, r12: u64, r13: u64, r14: u64, r15: u64,
        rip: u64, rflags: u64,
    }
);

mirror!(
    /// A segment register's hidden part as KVM describes it.
    Segment = kvm_segment {
        base: u64, limit: u32, selector: u16, type_: u8, present: u8, dpl: u8, db: u8,
        s: u8, l: u8, g: u8, avl: u8, unusable: u8,
    }
);

mirror!(
    /// GDTR or IDTR.
    DescriptorTable = kvm_dtable { base: u64, limit: u16 }
);

/// Segment, control and descriptor-table registers, EFER, the APIC base and the pending
/// external interrupt bitmap (KVM_GET_SREGS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sregs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    pub interrupt_bitmap: [u64; 4],
}

impl From<&kvm_sregs> for Sregs {
    fn from(k: &kvm_sregs) -> Self {
        Sregs {
            cs: (&k.cs).into(),
            ds: (&k.ds).into(),
            es: (&k.es).into(),
            fs: (&k.fs).into(),
            gs: (&k.gs).into(),
            ss: (&k.ss).into(),
            tr: (&k.tr).into(),
            ldt: (&k.ldt).into(),
            gdt: (&k.gdt).into(),
            idt: (&k.idt).into(),
            cr0: k.cr0,
            cr2: k.cr2,
            cr3: k.cr3,
            cr4: k.cr4,
            cr8: k.cr8,
            efer: k.efer,
            apic_base: k.apic_base,
            interrupt_bitmap: k.interrupt_bitmap,
        }
    }
}

impl From<&Sregs> for kvm_sregs {
    fn from(s: &Sregs) -> Self {
        kvm_sregs {
            cs: (&s.cs).into(),
            ds: (&s.ds).into(),
            es: (&s.es).into(),
            fs: (&s.fs).into(),
            gs: (&s.gs).into(),
            ss: (&s.ss).into(),
            tr: (&s.tr).into(),
            ldt: (&s.ldt).into(),
            gdt: (&s.gdt).into(),
            idt: (&s.idt).into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

mirror!(
    /// The legacy x87/SSE state (KVM_GET_FPU), used only where KVM has no XSAVE.
    Fpu = kvm_fpu {
        fpr: [[u8; 16]; 8], fcw: u16, fsw: u16, ftwx: u8, last_opcode: u16, last_ip: u64,
        last_dp: u64, xmm: [[u8; 16]; 16], mxcsr: u32,
    }
);

/// The vCPU's floating-point and vector state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FpuState {
    /// The XSAVE area as KVM_GET_XSAVE2 (or KVM_GET_XSAVE, 1024 words) returns it, in 32-bit
    /// words: the hardware's XSAVE layout (legacy region, header, extended components).
    Xsave(Vec<u32>),
    /// KVM_GET_FPU, on a KVM without XSAVE.
    Fpu(Box<Fpu>),
}

/// An extended control register (XCR0 is the only one today).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xcr {
    pub index: u32,
    pub value: u64,
}

/// One model-specific register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msr {
    pub index: u32,
    pub data: u64,
}

mirror!(
    /// A pending or injected exception.
    PendingException = kvm_bindings::kvm_vcpu_events__bindgen_ty_1 {
        injected: u8, nr: u8, has_error_code: u8, pending: u8, error_code: u32,
    }
);
mirror!(
    /// An injected external interrupt and the interrupt shadow.
    PendingInterrupt = kvm_bindings::kvm_vcpu_events__bindgen_ty_2 {
        injected: u8, nr: u8, soft: u8, shadow: u8,
    }
);
mirror!(
    /// NMI state.
    PendingNmi = kvm_bindings::kvm_vcpu_events__bindgen_ty_3 { injected: u8, pending: u8, masked: u8 }
);
mirror!(
    /// System-management mode state and a latched INIT.
    SmiState = kvm_bindings::kvm_vcpu_events__bindgen_ty_4 {
        smm: u8, pending: u8, smm_inside_nmi: u8, latched_init: u8,
    }
);

/// Exceptions, interrupts and NMIs pending or being injected (KVM_GET_VCPU_EVENTS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuEvents {
    pub exception: PendingException,
    pub interrupt: PendingInterrupt,
    pub nmi: PendingNmi,
    pub sipi_vector: u32,
    /// KVM_VCPUEVENT_VALID_*: which of the fields KVM filled in (and the restore applies).
    pub flags: u32,
    pub smi: SmiState,
    pub triple_fault_pending: u8,
    pub exception_has_payload: u8,
    pub exception_payload: u64,
}

impl From<&kvm_vcpu_events> for VcpuEvents {
    fn from(k: &kvm_vcpu_events) -> Self {
        VcpuEvents {
            exception: (&k.exception).into(),
            interrupt: (&k.interrupt).into(),
            nmi: (&k.nmi).into(),
            sipi_vector: k.sipi_vector,
            flags: k.flags,
            smi: (&k.smi).into(),
            triple_fault_pending: k.triple_fault.pending,
            exception_has_payload: k.exception_has_payload,
            exception_payload: k.exception_payload,
        }
    }
}

impl From<&VcpuEvents> for kvm_vcpu_events {
    fn from(s: &VcpuEvents) -> Self {
        let mut k = kvm_vcpu_events {
            exception: (&s.exception).into(),
            interrupt: (&s.interrupt).into(),
            nmi: (&s.nmi).into(),
            sipi_vector: s.sipi_vector,
            flags: s.flags,
            smi: (&s.smi).into(),
            exception_has_payload: s.exception_has_payload,
            exception_payload: s.exception_payload,
            ..Default::default()
        };
        k.triple_fault.pending = s.triple_fault_pending;
        k
    }
}

mirror!(
    /// DR0-3, DR6, DR7 (KVM_GET_DEBUGREGS).
    DebugRegs = kvm_debugregs { db: [u64; 4], dr6: u64, dr7: u64, flags: u64 }
);

/// Everything KVM holds of one vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// KVM_MP_STATE_*: runnable, halted, waiting for INIT/SIPI.
    pub mp_state: u32,
    pub regs: Regs,
    pub sregs: Sregs,
    pub fpu: FpuState,
    /// None on a KVM without KVM_GET_XCRS.
    pub xcrs: Option<Vec<Xcr>>,
    /// None on a KVM without KVM_GET_DEBUGREGS.
    pub debug_regs: Option<DebugRegs>,
    /// The local APIC's 1 KiB register page (KVM_GET_LAPIC), when the in-kernel irqchip
    /// exists.
    pub lapic: Option<Vec<u8>>,
    /// The saveable MSRs KVM_GET_MSRS read.
    pub msrs: Vec<Msr>,
    /// Saveable MSRs (per KVM_GET_MSR_INDEX_LIST) that KVM_GET_MSRS refused on this vCPU;
    /// they are not restored.
    pub msrs_skipped: Vec<u32>,
    /// None on a KVM without KVM_GET_VCPU_EVENTS.
    pub events: Option<VcpuEvents>,
}

mirror!(
    /// One 8259A (KVM_GET_IRQCHIP, PIC master or slave).
    PicState = kvm_pic_state {
        last_irr: u8, irr: u8, imr: u8, isr: u8, priority_add: u8, irq_base: u8,
        read_reg_select: u8, poll: u8, special_mask: u8, init_state: u8, auto_eoi: u8,
        rotate_on_auto_eoi: u8, special_fully_nested_mode: u8, init4: u8, elcr: u8,
        elcr_mask: u8,
    }
);

/// The IOAPIC (KVM_GET_IRQCHIP, chip 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicState {
    pub base_address: u64,
    pub ioregsel: u32,
    pub id: u32,
    pub irr: u32,
    /// The 24 redirection table entries, as 64-bit register values.
    pub redirtbl: Vec<u64>,
}

mirror!(
    /// One 8254 channel (KVM_GET_PIT2). `count_load_time` is the host's monotonic time of
    /// the last count load; KVM_SET_PIT2 reloads the count from now instead.
    PitChannel = kvm_pit_channel_state {
        count: u32, latched_count: u16, count_latched: u8, status_latched: u8, status: u8,
        read_state: u8, write_state: u8, write_latch: u8, rw_mode: u8, mode: u8, bcd: u8,
        gate: u8, count_load_time: i64,
    }
);

/// The 8254 PIT (KVM_GET_PIT2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    pub channels: [PitChannel; 3],
    pub flags: u32,
}

/// KVM's in-kernel interrupt controllers and PIT (present with the irqchip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqchipState {
    pub pic_master: PicState,
    pub pic_slave: PicState,
    pub ioapic: IoapicState,
    pub pit: PitState,
}

/// The KVM clock (KVM_GET_CLOCK): kvmclock's nanoseconds, and the flags KVM reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    pub clock: u64,
    pub flags: u32,
    /// The host's CLOCK_REALTIME at the read, when flags has KVM_CLOCK_REALTIME (informative).
    pub realtime: u64,
}

/// The CMOS RTC's index register and its 128 bytes (the time registers follow the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    pub index: u8,
    pub nvram: Vec<u8>,
}

/// The PC's devices that vireo-kvm models itself. The i8042 (only its reset line), the
/// isa-debug-exit port and the exit register keep no state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcState {
    pub cmos: CmosState,
}

/// The PC's devices that vireo shares with the emulator, each in its own state type: COM1,
/// the VM generation ID and the virtio-pci functions (transport cores and PCI functions, in slot order). The VMM
/// writes them as their own sections, as it does the emulator's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    pub uart: vireo_devices::UartState,
    /// The VM generation ID's 16 bytes.
    pub vmgenid: Option<[u8; 16]>,
    pub virtio: Vec<vireo_virtio::state::CoreState>,
    pub pci: Vec<vireo_virtio::state::PciFunctionState>,
}

/// VM-wide state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmWideState {
    /// None for a VM built without the in-kernel irqchip (a micro-guest's choice).
    pub irqchip: Option<IrqchipState>,
    pub clock: ClockState,
    pub pc: PcState,
}

/// The KVM accelerator's whole share of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmState {
    /// [`KVM_STATE_VERSION`] when saved.
    pub version: u32,
    /// One per vCPU, in vCPU index order.
    pub vcpus: Vec<VcpuState>,
    pub vm: VmWideState,
}

fn vcpu_err(cpu: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Vcpu { cpu, what, source }
}

fn vm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Vm { what, source }
}

/// Reads the XSAVE area: KVM_GET_XSAVE2 sized by KVM_CAP_XSAVE2, else KVM_GET_XSAVE, else the
/// legacy FPU.
fn save_fpu(fd: &VcpuFd, cpu: u32, caps: &Caps) -> Result<FpuState, StateError> {
    if caps.xsave2_size > XSAVE_LEGACY_BYTES {
        let extra = (caps.xsave2_size - XSAVE_LEGACY_BYTES).div_ceil(4);
        let mut x = Xsave::new(extra)
            .map_err(|e| StateError::Mismatch(format!("XSAVE area of {extra} words: {e:?}")))?;
        // SAFETY: `x` holds 4096 bytes plus `extra` words, at least the KVM_CAP_XSAVE2 size
        // KVM copies; vireo never enables XSTATE features with arch_prctl, which is what could
        // grow that size after the probe.
        unsafe { fd.get_xsave2(&mut x) }.map_err(vcpu_err(cpu, "KVM_GET_XSAVE2"))?;
        let mut words = x.as_fam_struct_ref().xsave.region.to_vec();
        words.extend_from_slice(x.as_slice());
        Ok(FpuState::Xsave(words))
    } else if caps.xsave {
        let x = fd.get_xsave().map_err(vcpu_err(cpu, "KVM_GET_XSAVE"))?;
        Ok(FpuState::Xsave(x.region.to_vec()))
    } else {
        let f = fd.get_fpu().map_err(vcpu_err(cpu, "KVM_GET_FPU"))?;
        Ok(FpuState::Fpu(Box::new((&f).into())))
    }
}

fn restore_fpu(fd: &VcpuFd, cpu: u32, caps: &Caps, fpu: &FpuState) -> Result<(), StateError> {
    match fpu {
        FpuState::Fpu(f) => fd
            .set_fpu(&(&**f).into())
            .map_err(vcpu_err(cpu, "KVM_SET_FPU")),
        FpuState::Xsave(words) if caps.xsave2_size > XSAVE_LEGACY_BYTES => {
            let legacy = XSAVE_LEGACY_BYTES / 4;
            if words.len() < legacy {
                return Err(StateError::Mismatch(format!(
                    "vCPU {cpu}: XSAVE area of {} words, expected at least {legacy}",
                    words.len()
                )));
            }
            // KVM reads its own KVM_CAP_XSAVE2 size: the buffer is at least that, and at
            // least what was saved.
            let host_extra = (caps.xsave2_size - XSAVE_LEGACY_BYTES).div_ceil(4);
            let extra = host_extra.max(words.len() - legacy);
            let mut x = Xsave::new(extra)
                .map_err(|e| StateError::Mismatch(format!("XSAVE area of {extra} words: {e:?}")))?;
            // SAFETY: only the fixed region is written through this reference; the FAM length
            // field, which must match the allocation, is left as Xsave::new set it.
            let fam = unsafe { x.as_mut_fam_struct() };
            fam.xsave.region.copy_from_slice(&words[..legacy]);
            x.as_mut_slice()[..words.len() - legacy].copy_from_slice(&words[legacy..]);
            // SAFETY: the buffer is at least the KVM_CAP_XSAVE2 size that KVM_SET_XSAVE reads.
            unsafe { fd.set_xsave2(&x) }.map_err(vcpu_err(cpu, "KVM_SET_XSAVE"))
        }
        FpuState::Xsave(words) if caps.xsave => {
            let mut x = kvm_xsave::default();
            if words.len() > x.region.len() {
                return Err(StateError::Mismatch(format!(
                    "vCPU {cpu}: XSAVE area of {} words, but this host's KVM takes only {} \
                     (no KVM_CAP_XSAVE2)",
                    words.len(),
                    x.region.len()
                )));
            }
            x.region[..words.len()].copy_from_slice(words);
            // SAFETY: without KVM_CAP_XSAVE2, KVM_SET_XSAVE reads exactly the 4096-byte
            // `struct kvm_xsave` that `x` is.
            unsafe { fd.set_xsave(&x) }.map_err(vcpu_err(cpu, "KVM_SET_XSAVE"))
        }
        FpuState::Xsave(_) => Err(StateError::Mismatch(format!(
            "vCPU {cpu}: the state has an XSAVE area and this host's KVM has no KVM_SET_XSAVE"
        ))),
    }
}

/// Reads every saveable MSR KVM_GET_MSRS accepts; returns them and the refused indices.
fn save_msrs(fd: &VcpuFd, cpu: u32, caps: &Caps) -> Result<(Vec<Msr>, Vec<u32>), StateError> {
    let mut got = Vec::new();
    let mut skipped = Vec::new();
    let mut rest: &[u32] = &caps.msr_indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| StateError::Mismatch(format!("{} MSRs: {e:?}", entries.len())))?;
        // KVM_GET_MSRS stops at the first MSR it cannot read and returns how many it did.
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(vcpu_err(cpu, "KVM_GET_MSRS"))?;
        got.extend(msrs.as_slice()[..n].iter().map(|e| Msr {
            index: e.index,
            data: e.data,
        }));
        if n < chunk.len() {
            skipped.push(chunk[n]);
            rest = &rest[n + 1..];
        } else {
            rest = &rest[n..];
        }
    }
    Ok((got, skipped))
}

fn restore_msrs(fd: &VcpuFd, cpu: u32, msrs: &[Msr]) -> Result<(), StateError> {
    for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let k = Msrs::from_entries(&entries)
            .map_err(|e| StateError::Mismatch(format!("{} MSRs: {e:?}", entries.len())))?;
        let set = fd.set_msrs(&k).map_err(vcpu_err(cpu, "KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(StateError::Msrs {
                cpu,
                set,
                wanted: entries.len(),
                refused: entries[set].index,
            });
        }
    }
    Ok(())
}

/// Reads one vCPU's state; the vCPU must not be running (call it on the vCPU's own thread,
/// between KVM_RUNs, with every vCPU of the VM paused). The order is explained in the module
/// documentation.
pub fn save_vcpu(fd: &VcpuFd, cpu: u32, caps: &Caps) -> Result<VcpuState, StateError> {
    let mp_state = fd
        .get_mp_state()
        .map_err(vcpu_err(cpu, "KVM_GET_MP_STATE"))?
        .mp_state;
    let regs = fd.get_regs().map_err(vcpu_err(cpu, "KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(vcpu_err(cpu, "KVM_GET_SREGS"))?;
    let fpu = save_fpu(fd, cpu, caps)?;
    let xcrs = if caps.xcrs {
        let x = fd.get_xcrs().map_err(vcpu_err(cpu, "KVM_GET_XCRS"))?;
        let n = (x.nr_xcrs as usize).min(x.xcrs.len());
        Some(
            x.xcrs[..n]
                .iter()
                .map(|x| Xcr {
                    index: x.xcr,
                    value: x.value,
                })
                .collect(),
        )
    } else {
        None
    };
    let debug_regs = if caps.debugregs {
        let d = fd
            .get_debug_regs()
            .map_err(vcpu_err(cpu, "KVM_GET_DEBUGREGS"))?;
        Some((&d).into())
    } else {
        None
    };
    let lapic = if caps.lapic {
        let l = fd.get_lapic().map_err(vcpu_err(cpu, "KVM_GET_LAPIC"))?;
        Some(l.regs.iter().map(|&b| b as u8).collect())
    } else {
        None
    };
    let (msrs, msrs_skipped) = save_msrs(fd, cpu, caps)?;
    let events = if caps.vcpu_events {
        let e = fd
            .get_vcpu_events()
            .map_err(vcpu_err(cpu, "KVM_GET_VCPU_EVENTS"))?;
        Some((&e).into())
    } else {
        None
    };
    Ok(VcpuState {
        mp_state,
        regs: (&regs).into(),
        sregs: (&sregs).into(),
        fpu,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        msrs_skipped,
        events,
    })
}

/// Writes one vCPU's state, after KVM_SET_CPUID2 and before its first KVM_RUN, in the order
/// the module documentation gives and explains.
pub fn restore_vcpu(fd: &VcpuFd, cpu: u32, caps: &Caps, s: &VcpuState) -> Result<(), StateError> {
    if s.lapic.is_some() != caps.lapic {
        return Err(StateError::Mismatch(format!(
            "vCPU {cpu}: the state {} a local APIC and this VM {} the in-kernel irqchip",
            if s.lapic.is_some() { "has" } else { "has no" },
            if caps.lapic { "has" } else { "has no" },
        )));
    }
    fd.set_mp_state(kvm_mp_state {
        mp_state: s.mp_state,
    })
    .map_err(vcpu_err(cpu, "KVM_SET_MP_STATE"))?;
    fd.set_regs(&(&s.regs).into())
        .map_err(vcpu_err(cpu, "KVM_SET_REGS"))?;
    fd.set_sregs(&(&s.sregs).into())
        .map_err(vcpu_err(cpu, "KVM_SET_SREGS"))?;
    restore_fpu(fd, cpu, caps, &s.fpu)?;
    if let Some(xcrs) = &s.xcrs {
        let mut k = kvm_xcrs::default();
        if xcrs.len() > k.xcrs.len() {
            return Err(StateError::Mismatch(format!(
                "vCPU {cpu}: {} XCRs, at most {} expected",
                xcrs.len(),
                k.xcrs.len()
            )));
        }
        k.nr_xcrs = xcrs.len() as u32;
        for (slot, x) in k.xcrs.iter_mut().zip(xcrs) {
            *slot = kvm_xcr {
                xcr: x.index,
                value: x.value,
                ..Default::default()
            };
        }
        fd.set_xcrs(&k).map_err(vcpu_err(cpu, "KVM_SET_XCRS"))?;
    }
    if let Some(d) = &s.debug_regs {
        fd.set_debug_regs(&d.into())
            .map_err(vcpu_err(cpu, "KVM_SET_DEBUGREGS"))?;
    }
    if let Some(page) = &s.lapic {
        let mut k = kvm_lapic_state::default();
        if page.len() != KVM_APIC_REG_SIZE as usize {
            return Err(StateError::Mismatch(format!(
                "vCPU {cpu}: LAPIC page of {} bytes, expected {KVM_APIC_REG_SIZE}",
                page.len()
            )));
        }
        for (d, &b) in k.regs.iter_mut().zip(page) {
            *d = b as _;
        }
        fd.set_lapic(&k).map_err(vcpu_err(cpu, "KVM_SET_LAPIC"))?;
    }
    restore_msrs(fd, cpu, &s.msrs)?;
    if let Some(e) = &s.events {
        fd.set_vcpu_events(&e.into())
            .map_err(vcpu_err(cpu, "KVM_SET_VCPU_EVENTS"))?;
    }
    Ok(())
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(vm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the in-kernel PICs, IOAPIC and PIT (only with the irqchip) and the KVM clock.
pub fn save_vm(vm: &VmFd, irqchip: bool, pc: PcState) -> Result<VmWideState, StateError> {
    let irqchip = if irqchip {
        let master = get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?;
        let slave = get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?;
        let ioapic = get_chip(vm, KVM_IRQCHIP_IOAPIC)?;
        // SAFETY: KVM filled the union member that `chip_id` names; every member is plain
        // integers, valid for any bit pattern.
        let (m, s, io) = unsafe { (master.chip.pic, slave.chip.pic, ioapic.chip.ioapic) };
        let pit = vm.get_pit2().map_err(vm_err("KVM_GET_PIT2"))?;
        Some(IrqchipState {
            pic_master: (&m).into(),
            pic_slave: (&s).into(),
            ioapic: IoapicState {
                base_address: io.base_address,
                ioregsel: io.ioregsel,
                id: io.id,
                irr: io.irr,
                // SAFETY: `bits` covers the whole 64-bit entry; any bit pattern is valid.
                redirtbl: io.redirtbl.iter().map(|e| unsafe { e.bits }).collect(),
            },
            pit: PitState {
                channels: pit.channels.map(|c| (&c).into()),
                flags: pit.flags,
            },
        })
    } else {
        None
    };
    let c = vm.get_clock().map_err(vm_err("KVM_GET_CLOCK"))?;
    Ok(VmWideState {
        irqchip,
        clock: ClockState {
            clock: c.clock,
            flags: c.flags,
            realtime: c.realtime,
        },
        pc,
    })
}

/// Writes the VM-wide state (before any vCPU runs): irqchip, PIT, then the clock.
pub fn restore_vm(vm: &VmFd, irqchip: bool, s: &VmWideState) -> Result<(), StateError> {
    match (&s.irqchip, irqchip) {
        (Some(chip), true) => {
            let mut master = kvm_irqchip {
                chip_id: KVM_IRQCHIP_PIC_MASTER,
                ..Default::default()
            };
            master.chip.pic = (&chip.pic_master).into();
            let mut slave = kvm_irqchip {
                chip_id: KVM_IRQCHIP_PIC_SLAVE,
                ..Default::default()
            };
            slave.chip.pic = (&chip.pic_slave).into();
            let io = &chip.ioapic;
            let mut ioapic = kvm_ioapic_state {
                base_address: io.base_address,
                ioregsel: io.ioregsel,
                id: io.id,
                irr: io.irr,
                ..Default::default()
            };
            if io.redirtbl.len() != ioapic.redirtbl.len() {
                return Err(StateError::Mismatch(format!(
                    "IOAPIC with {} redirection entries, expected {}",
                    io.redirtbl.len(),
                    ioapic.redirtbl.len()
                )));
            }
            for (d, &bits) in ioapic.redirtbl.iter_mut().zip(&io.redirtbl) {
                d.bits = bits;
            }
            let mut ioapic_chip = kvm_irqchip {
                chip_id: KVM_IRQCHIP_IOAPIC,
                ..Default::default()
            };
            ioapic_chip.chip.ioapic = ioapic;
            for c in [&master, &slave, &ioapic_chip] {
                vm.set_irqchip(c).map_err(vm_err("KVM_SET_IRQCHIP"))?;
            }
            let pit = kvm_pit_state2 {
                channels: chip.pit.channels.map(|c| kvm_pit_channel_state::from(&c)),
                flags: chip.pit.flags,
                ..Default::default()
            };
            vm.set_pit2(&pit).map_err(vm_err("KVM_SET_PIT2"))?;
        }
        (None, false) => {}
        (saved, _) => {
            return Err(StateError::Mismatch(format!(
                "the state {} the in-kernel irqchip and this VM {}",
                if saved.is_some() { "has" } else { "has no" },
                if irqchip { "has" } else { "has not" },
            )))
        }
    }
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(vm_err("KVM_SET_CLOCK"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_round_trip_and_drop_padding() {
        let k = kvm_regs {
            rax: 1,
            r15: 2,
            rip: 0x1000,
            rflags: 0x202,
            ..Default::default()
        };
        let r = Regs::from(&k);
        assert_eq!(kvm_regs::from(&r), k);
        let mut s = kvm_sregs::default();
        s.cs.selector = 0x10;
        s.cs.l = 1;
        s.gdt.limit = 47;
        s.gdt.padding = [7; 3]; // padding is not state: it is not kept
        s.efer = 0x500;
        s.interrupt_bitmap[3] = 1 << 63;
        let back = kvm_sregs::from(&Sregs::from(&s));
        assert_eq!(back.gdt.padding, [0; 3]);
        s.gdt.padding = [0; 3];
        assert_eq!(back, s);
        let mut e = kvm_vcpu_events::default();
        e.nmi.masked = 1;
        e.triple_fault.pending = 1;
        e.flags = kvm_bindings::KVM_VCPUEVENT_VALID_SHADOW;
        e.exception_payload = u64::MAX;
        assert_eq!(kvm_vcpu_events::from(&VcpuEvents::from(&e)), e);
    }

    #[test]
    fn state_serializes_with_explicit_widths() {
        let v = VcpuState {
            mp_state: 0,
            regs: Regs {
                rip: u64::MAX,
                ..Default::default()
            },
            sregs: Sregs::default(),
            fpu: FpuState::Xsave(vec![0x1f80; 4]),
            xcrs: Some(vec![Xcr { index: 0, value: 7 }]),
            debug_regs: None,
            lapic: Some(vec![0; 1024]),
            msrs: vec![Msr {
                index: 0x10,
                data: 1 << 40,
            }],
            msrs_skipped: vec![0x6e0],
            events: Some(VcpuEvents::default()),
        };
        let s = KvmState {
            version: KVM_STATE_VERSION,
            vcpus: vec![v],
            vm: VmWideState {
                irqchip: None,
                clock: ClockState::default(),
                pc: PcState {
                    cmos: CmosState {
                        index: 0x0b,
                        nvram: vec![0; 128],
                    },
                },
            },
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"rip\":18446744073709551615"), "{json}");
        let back: KvmState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
