//! CSR numbers and bit layouts (RISC-V privileged spec 1.12).

pub const FFLAGS: u16 = 0x001;
pub const FRM: u16 = 0x002;
pub const FCSR: u16 = 0x003;
/// Zkr's entropy source.
pub const SEED: u16 = 0x015;
pub const CYCLE: u16 = 0xc00;
pub const TIME: u16 = 0xc01;
pub const INSTRET: u16 = 0xc02;
pub const SSTATUS: u16 = 0x100;
pub const SIE: u16 = 0x104;
pub const STVEC: u16 = 0x105;
pub const SCOUNTEREN: u16 = 0x106;
pub const SENVCFG: u16 = 0x10a;
pub const SSCRATCH: u16 = 0x140;
pub const SEPC: u16 = 0x141;
pub const SCAUSE: u16 = 0x142;
pub const STVAL: u16 = 0x143;
pub const SIP: u16 = 0x144;
/// Sstc's supervisor timer comparator.
pub const STIMECMP: u16 = 0x14d;
pub const SATP: u16 = 0x180;
pub const MVENDORID: u16 = 0xf11;
pub const MARCHID: u16 = 0xf12;
pub const MIMPID: u16 = 0xf13;
pub const MHARTID: u16 = 0xf14;
pub const MCONFIGPTR: u16 = 0xf15;
pub const MSTATUS: u16 = 0x300;
pub const MISA: u16 = 0x301;
pub const MEDELEG: u16 = 0x302;
pub const MIDELEG: u16 = 0x303;
pub const MIE: u16 = 0x304;
pub const MTVEC: u16 = 0x305;
pub const MCOUNTEREN: u16 = 0x306;
pub const MENVCFG: u16 = 0x30a;
pub const MCOUNTINHIBIT: u16 = 0x320;
pub const MSCRATCH: u16 = 0x340;
pub const MEPC: u16 = 0x341;
pub const MCAUSE: u16 = 0x342;
pub const MTVAL: u16 = 0x343;
pub const MIP: u16 = 0x344;
pub const MSECCFG: u16 = 0x747;
pub const PMPCFG0: u16 = 0x3a0;
pub const PMPADDR0: u16 = 0x3b0;
pub const TSELECT: u16 = 0x7a0;
pub const TDATA1: u16 = 0x7a1;
pub const TDATA2: u16 = 0x7a2;
pub const TDATA3: u16 = 0x7a3;
pub const TINFO: u16 = 0x7a4;
pub const MCYCLE: u16 = 0xb00;
pub const MINSTRET: u16 = 0xb02;

// mstatus fields.
pub const MS_SIE: u64 = 1 << 1;
pub const MS_MIE: u64 = 1 << 3;
pub const MS_SPIE: u64 = 1 << 5;
pub const MS_MPIE: u64 = 1 << 7;
pub const MS_SPP: u64 = 1 << 8;
pub const MS_MPP_SHIFT: u64 = 11;
pub const MS_MPP: u64 = 3 << MS_MPP_SHIFT;
pub const MS_FS: u64 = 3 << 13;
pub const MS_MPRV: u64 = 1 << 17;
pub const MS_SUM: u64 = 1 << 18;
pub const MS_MXR: u64 = 1 << 19;
pub const MS_TVM: u64 = 1 << 20;
pub const MS_TW: u64 = 1 << 21;
pub const MS_TSR: u64 = 1 << 22;
pub const MS_UXL: u64 = 3 << 32;
pub const MS_SXL: u64 = 3 << 34;
pub const MS_SD: u64 = 1 << 63;
/// XLEN=64 for S and U, fixed.
pub const MS_XL64: u64 = (2 << 32) | (2 << 34);
/// What M-mode may write in mstatus (no big-endian, no vector, no H).
pub const MSTATUS_WMASK: u64 = MS_SIE
    | MS_MIE
    | MS_SPIE
    | MS_MPIE
    | MS_SPP
    | MS_MPP
    | MS_FS
    | MS_MPRV
    | MS_SUM
    | MS_MXR
    | MS_TVM
    | MS_TW
    | MS_TSR;
/// The sstatus view of mstatus.
pub const SSTATUS_MASK: u64 = MS_SIE | MS_SPIE | MS_SPP | MS_FS | MS_SUM | MS_MXR | MS_UXL | MS_SD;
pub const SSTATUS_WMASK: u64 = MS_SIE | MS_SPIE | MS_SPP | MS_FS | MS_SUM | MS_MXR;

// menvcfg / senvcfg fields (senvcfg has the low byte's fields only).
pub const ENVCFG_FIOM: u64 = 1 << 0;
pub const ENVCFG_CBIE: u64 = 3 << 4;
pub const ENVCFG_CBCFE: u64 = 1 << 6;
pub const ENVCFG_CBZE: u64 = 1 << 7;
pub const ENVCFG_ADUE: u64 = 1 << 61;
pub const ENVCFG_PBMTE: u64 = 1 << 62;
pub const ENVCFG_STCE: u64 = 1 << 63;

// mseccfg fields (Zkr's seed access for U and S; no Smepmp).
pub const MSECCFG_USEED: u64 = 1 << 8;
pub const MSECCFG_SSEED: u64 = 1 << 9;

// Interrupt bits (mip/mie).
pub const IRQ_SSI: u64 = 1 << 1;
pub const IRQ_MSI: u64 = 1 << 3;
pub const IRQ_STI: u64 = 1 << 5;
pub const IRQ_MTI: u64 = 1 << 7;
pub const IRQ_SEI: u64 = 1 << 9;
pub const IRQ_MEI: u64 = 1 << 11;
pub const S_IRQS: u64 = IRQ_SSI | IRQ_STI | IRQ_SEI;
pub const ALL_IRQS: u64 = S_IRQS | IRQ_MSI | IRQ_MTI | IRQ_MEI;
/// Bits of mip that software may write (MSIP/MTIP/MEIP come from devices).
pub const MIP_WMASK: u64 = IRQ_SSI | IRQ_STI | IRQ_SEI;

/// misa for RV64IMAFDC with S and U modes.
pub const MISA_VALUE: u64 = (2 << 62)
    | ext(b'A')
    | ext(b'C')
    | ext(b'D')
    | ext(b'F')
    | ext(b'I')
    | ext(b'M')
    | ext(b'S')
    | ext(b'U');

const fn ext(letter: u8) -> u64 {
    1 << (letter - b'A')
}

// Exception causes.
pub const EXC_INSN_MISALIGNED: u64 = 0;
pub const EXC_INSN_ACCESS: u64 = 1;
pub const EXC_ILLEGAL: u64 = 2;
pub const EXC_BREAKPOINT: u64 = 3;
pub const EXC_LOAD_ACCESS: u64 = 5;
pub const EXC_STORE_ACCESS: u64 = 7;
pub const EXC_ECALL_U: u64 = 8;
pub const EXC_ECALL_S: u64 = 9;
pub const EXC_ECALL_M: u64 = 11;
pub const EXC_INSN_PAGE: u64 = 12;
pub const EXC_LOAD_PAGE: u64 = 13;
pub const EXC_STORE_PAGE: u64 = 15;
pub const INTERRUPT: u64 = 1 << 63;

// satp modes.
pub const SATP_BARE: u64 = 0;
pub const SATP_SV39: u64 = 8;
pub const SATP_SV48: u64 = 9;
