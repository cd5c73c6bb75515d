//! Instruction decoding: raw RV64GC encodings, and those of the optional extensions the
//! machine's [`Isa`] enables, to [`Op`], once per instruction address. An encoding of an
//! extension that is not enabled decodes as [`Kind::Illegal`], as on hardware without it.
//!
//! Compressed instructions expand to the same [`Kind`]s as their 32-bit forms, so the executor
//! has one implementation of each operation; `len` says how far the pc advances.

use crate::isa::{Ext, Isa};

/// What an instruction does. Operand meaning per kind is noted where it is not the obvious
/// rd/rs1/rs2/imm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Slot not decoded yet (decode caches start out full of these).
    Undecoded,
    /// Not a valid instruction; `imm` holds the raw bits for xtval.
    Illegal,
    Lui,
    Auipc,
    Jal,
    Jalr,
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    Sb,
    Sh,
    Sw,
    Sd,
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    Fence,
    FenceI,
    Ecall,
    Ebreak,
    Mret,
    Sret,
    Wfi,
    SfenceVma,
    /// CSR ops: `imm` = CSR number; the *i forms use rs1 as the 5-bit immediate.
    Csrrw,
    Csrrs,
    Csrrc,
    Csrrwi,
    Csrrsi,
    Csrrci,
    /// LR/SC and AMOs: `rs3` = funct5 for AMOs.
    LrW,
    LrD,
    ScW,
    ScD,
    AmoW,
    AmoD,
    Flw,
    Fld,
    Fsw,
    Fsd,
    /// Floating point: `rs3` = third source for FMA forms; `imm` = rounding mode field.
    FmaddS,
    FmsubS,
    FnmsubS,
    FnmaddS,
    FmaddD,
    FmsubD,
    FnmsubD,
    FnmaddD,
    FaddS,
    FsubS,
    FmulS,
    FdivS,
    FsqrtS,
    FaddD,
    FsubD,
    FmulD,
    FdivD,
    FsqrtD,
    FsgnjS,
    FsgnjnS,
    FsgnjxS,
    FsgnjD,
    FsgnjnD,
    FsgnjxD,
    FminS,
    FmaxS,
    FminD,
    FmaxD,
    FcvtSD,
    FcvtDS,
    FeqS,
    FltS,
    FleS,
    FeqD,
    FltD,
    FleD,
    FclassS,
    FclassD,
    FmvXW,
    FmvWX,
    FmvXD,
    FmvDX,
    /// Float-to-int conversions: `rs2` selects w/wu/l/lu as 0..3.
    FcvtIntS,
    FcvtIntD,
    /// Int-to-float conversions: `rs2` selects w/wu/l/lu as 0..3.
    FcvtSInt,
    FcvtDInt,
    // Zba
    AddUw,
    Sh1add,
    Sh2add,
    Sh3add,
    Sh1addUw,
    Sh2addUw,
    Sh3addUw,
    SlliUw,
    // Zbb
    Andn,
    Orn,
    Xnor,
    Clz,
    Clzw,
    Ctz,
    Ctzw,
    Cpop,
    Cpopw,
    Max,
    Maxu,
    Min,
    Minu,
    SextB,
    SextH,
    ZextH,
    Rol,
    Rolw,
    Ror,
    Rori,
    Roriw,
    Rorw,
    OrcB,
    Rev8,
    // Zbc
    Clmul,
    Clmulh,
    Clmulr,
    // Zbs
    Bclr,
    Bclri,
    Bext,
    Bexti,
    Binv,
    Binvi,
    Bset,
    Bseti,
    // Zicond
    CzeroEqz,
    CzeroNez,
    /// Zihintpause's PAUSE (a FENCE hint): ends the hart's slice so other harts run.
    Pause,
    /// Zicbom/Zicboz: `imm` = funct12 (0 inval, 1 clean, 2 flush, 4 zero), base in rs1.
    Cbo,
    /// Svinval: SINVAL.VMA (rs1/rs2 as SFENCE.VMA), and SFENCE.W.INVAL / SFENCE.INVAL.IR.
    SinvalVma,
    SfenceInval,
    // Zfa: FLI's rs1 is the table index; FROUND's rs2 is 4 (fround) or 5 (froundnx).
    FliS,
    FliD,
    FminmS,
    FmaxmS,
    FminmD,
    FmaxmD,
    FroundS,
    FroundD,
    FcvtmodWD,
    FleqS,
    FltqS,
    FleqD,
    FltqD,
}

/// One decoded instruction, 8 bytes so the executor gets it in one register.
///
/// `rd` bit 7 marks a compressed (2-byte) instruction; register numbers are always used masked
/// with 31. FMA forms keep rs3 in `imm` bits 8..13 (the rounding mode in bits 0..3), AMOs keep
/// funct5 in `imm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct Op {
    pub kind: Kind,
    pub rd: u8,
    pub rs1: u8,
    pub rs2: u8,
    pub imm: i32,
}

const COMPRESSED: u8 = 0x80;

impl Op {
    pub const UNDECODED: Op = Op {
        kind: Kind::Undecoded,
        rd: 0,
        rs1: 0,
        rs2: 0,
        imm: 0,
    };

    fn new(kind: Kind, rd: u32, rs1: u32, rs2: u32, imm: i32) -> Op {
        Op {
            kind,
            rd: rd as u8,
            rs1: rs1 as u8,
            rs2: rs2 as u8,
            imm,
        }
    }

    fn illegal(raw: u32, len: u8) -> Op {
        Op {
            kind: Kind::Illegal,
            rd: if len == 2 { COMPRESSED } else { 0 },
            imm: raw as i32,
            ..Op::UNDECODED
        }
    }

    /// Length in bytes: 2 or 4.
    #[inline(always)]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        if self.rd & COMPRESSED != 0 {
            2
        } else {
            4
        }
    }

    /// Destination register number.
    #[inline(always)]
    pub fn rd(&self) -> usize {
        (self.rd & 31) as usize
    }

    /// Third source register of FMA forms.
    #[inline(always)]
    pub fn rs3(&self) -> u8 {
        ((self.imm >> 8) & 31) as u8
    }

    /// funct5 of AMOs.
    #[inline(always)]
    pub fn funct5(&self) -> u8 {
        self.imm as u8
    }
}

/// Length of the instruction whose low 16 bits are `lo`.
#[inline]
pub fn insn_len(lo: u16) -> u8 {
    if lo & 3 == 3 {
        4
    } else {
        2
    }
}

#[inline]
fn bits(v: u32, hi: u32, lo: u32) -> u32 {
    (v >> lo) & ((1 << (hi - lo + 1)) - 1)
}

/// Sign-extends the low `n` bits of `v`.
#[inline]
fn sext(v: u32, n: u32) -> i32 {
    ((v << (32 - n)) as i32) >> (32 - n)
}

/// Decodes a 32-bit instruction for a hart implementing `isa`.
pub fn decode32(w: u32, isa: Isa) -> Op {
    use Kind::*;
    let rd = bits(w, 11, 7);
    let rs1 = bits(w, 19, 15);
    let rs2 = bits(w, 24, 20);
    let f3 = bits(w, 14, 12);
    let f7 = bits(w, 31, 25);
    let i_imm = (w as i32) >> 20;
    let s_imm = (((w as i32) >> 25) << 5) | bits(w, 11, 7) as i32;
    let b_imm = sext(
        (bits(w, 31, 31) << 12)
            | (bits(w, 7, 7) << 11)
            | (bits(w, 30, 25) << 5)
            | (bits(w, 11, 8) << 1),
        13,
    );
    let u_imm = (w & 0xffff_f000) as i32;
    let j_imm = sext(
        (bits(w, 31, 31) << 20)
            | (bits(w, 19, 12) << 12)
            | (bits(w, 20, 20) << 11)
            | (bits(w, 30, 21) << 1),
        21,
    );
    let ill = Op::illegal(w, 4);
    let r = |k| Op::new(k, rd, rs1, rs2, 0);
    let i = |k| Op::new(k, rd, rs1, 0, i_imm);
    let has = |e| isa.has(e);
    let imm12 = bits(w, 31, 20);
    let f6 = bits(w, 31, 26);
    match w & 0x7f {
        0x37 => Op::new(Lui, rd, 0, 0, u_imm),
        0x17 => Op::new(Auipc, rd, 0, 0, u_imm),
        0x6f => Op::new(Jal, rd, 0, 0, j_imm),
        0x67 if f3 == 0 => i(Jalr),
        0x63 => {
            let k = match f3 {
                0 => Beq,
                1 => Bne,
                4 => Blt,
                5 => Bge,
                6 => Bltu,
                7 => Bgeu,
                _ => return ill,
            };
            Op::new(k, 0, rs1, rs2, b_imm)
        }
        0x03 => i(match f3 {
            0 => Lb,
            1 => Lh,
            2 => Lw,
            3 => Ld,
            4 => Lbu,
            5 => Lhu,
            6 => Lwu,
            _ => return ill,
        }),
        0x23 => Op::new(
            match f3 {
                0 => Sb,
                1 => Sh,
                2 => Sw,
                3 => Sd,
                _ => return ill,
            },
            0,
            rs1,
            rs2,
            s_imm,
        ),
        0x13 => {
            let shamt = bits(w, 25, 20) as i32;
            match f3 {
                0 => i(Addi),
                2 => i(Slti),
                3 => i(Sltiu),
                4 => i(Xori),
                6 => i(Ori),
                7 => i(Andi),
                1 if f6 == 0 => Op::new(Slli, rd, rs1, 0, shamt),
                5 if f6 == 0 => Op::new(Srli, rd, rs1, 0, shamt),
                5 if f6 == 0x10 => Op::new(Srai, rd, rs1, 0, shamt),
                1 if has(Ext::Zbb) && matches!(imm12, 0x600..=0x602 | 0x604 | 0x605) => Op::new(
                    [Clz, Ctz, Cpop, Illegal, SextB, SextH][(imm12 - 0x600) as usize],
                    rd,
                    rs1,
                    0,
                    0,
                ),
                5 if has(Ext::Zbb) && f6 == 0x18 => Op::new(Rori, rd, rs1, 0, shamt),
                5 if has(Ext::Zbb) && imm12 == 0x287 => Op::new(OrcB, rd, rs1, 0, 0),
                5 if has(Ext::Zbb) && imm12 == 0x6b8 => Op::new(Rev8, rd, rs1, 0, 0),
                1 if has(Ext::Zbs) && f6 == 0x12 => Op::new(Bclri, rd, rs1, 0, shamt),
                5 if has(Ext::Zbs) && f6 == 0x12 => Op::new(Bexti, rd, rs1, 0, shamt),
                1 if has(Ext::Zbs) && f6 == 0x1a => Op::new(Binvi, rd, rs1, 0, shamt),
                1 if has(Ext::Zbs) && f6 == 0x0a => Op::new(Bseti, rd, rs1, 0, shamt),
                _ => ill,
            }
        }
        0x1b => {
            let shamt = rs2 as i32;
            match (f3, f7) {
                (0, _) => i(Addiw),
                (1, 0) => Op::new(Slliw, rd, rs1, 0, shamt),
                (5, 0) => Op::new(Srliw, rd, rs1, 0, shamt),
                (5, 0x20) => Op::new(Sraiw, rd, rs1, 0, shamt),
                (1, _) if has(Ext::Zba) && f6 == 0x02 => {
                    Op::new(SlliUw, rd, rs1, 0, bits(w, 25, 20) as i32)
                }
                (1, 0x30) if has(Ext::Zbb) && rs2 <= 2 => {
                    Op::new([Clzw, Ctzw, Cpopw][rs2 as usize], rd, rs1, 0, 0)
                }
                (5, 0x30) if has(Ext::Zbb) => Op::new(Roriw, rd, rs1, 0, shamt),
                _ => ill,
            }
        }
        0x33 => r(match (f7, f3) {
            (0, 0) => Add,
            (0x20, 0) => Sub,
            (0, 1) => Sll,
            (0, 2) => Slt,
            (0, 3) => Sltu,
            (0, 4) => Xor,
            (0, 5) => Srl,
            (0x20, 5) => Sra,
            (0, 6) => Or,
            (0, 7) => And,
            (1, 0) => Mul,
            (1, 1) => Mulh,
            (1, 2) => Mulhsu,
            (1, 3) => Mulhu,
            (1, 4) => Div,
            (1, 5) => Divu,
            (1, 6) => Rem,
            (1, 7) => Remu,
            (0x10, 2) if has(Ext::Zba) => Sh1add,
            (0x10, 4) if has(Ext::Zba) => Sh2add,
            (0x10, 6) if has(Ext::Zba) => Sh3add,
            (0x20, 7) if has(Ext::Zbb) => Andn,
            (0x20, 6) if has(Ext::Zbb) => Orn,
            (0x20, 4) if has(Ext::Zbb) => Xnor,
            (0x05, 4) if has(Ext::Zbb) => Min,
            (0x05, 5) if has(Ext::Zbb) => Minu,
            (0x05, 6) if has(Ext::Zbb) => Max,
            (0x05, 7) if has(Ext::Zbb) => Maxu,
            (0x30, 1) if has(Ext::Zbb) => Rol,
            (0x30, 5) if has(Ext::Zbb) => Ror,
            (0x05, 1) if has(Ext::Zbc) => Clmul,
            (0x05, 2) if has(Ext::Zbc) => Clmulr,
            (0x05, 3) if has(Ext::Zbc) => Clmulh,
            (0x24, 1) if has(Ext::Zbs) => Bclr,
            (0x24, 5) if has(Ext::Zbs) => Bext,
            (0x34, 1) if has(Ext::Zbs) => Binv,
            (0x14, 1) if has(Ext::Zbs) => Bset,
            (0x07, 5) if has(Ext::Zicond) => CzeroEqz,
            (0x07, 7) if has(Ext::Zicond) => CzeroNez,
            _ => return ill,
        }),
        0x3b => r(match (f7, f3) {
            (0, 0) => Addw,
            (0x20, 0) => Subw,
            (0, 1) => Sllw,
            (0, 5) => Srlw,
            (0x20, 5) => Sraw,
            (1, 0) => Mulw,
            (1, 4) => Divw,
            (1, 5) => Divuw,
            (1, 6) => Remw,
            (1, 7) => Remuw,
            (0x04, 0) if has(Ext::Zba) => AddUw,
            (0x10, 2) if has(Ext::Zba) => Sh1addUw,
            (0x10, 4) if has(Ext::Zba) => Sh2addUw,
            (0x10, 6) if has(Ext::Zba) => Sh3addUw,
            (0x04, 4) if has(Ext::Zbb) && rs2 == 0 => ZextH,
            (0x30, 1) if has(Ext::Zbb) => Rolw,
            (0x30, 5) if has(Ext::Zbb) => Rorw,
            _ => return ill,
        }),
        0x0f => match f3 {
            // PAUSE is FENCE with pred = W, succ = 0 and no registers.
            0 if w == 0x0100_000f && has(Ext::Zihintpause) => Op::new(Pause, 0, 0, 0, 0),
            0 => Op::new(Fence, 0, 0, 0, 0),
            1 => Op::new(FenceI, 0, 0, 0, 0),
            2 if rd == 0 && matches!(imm12, 0..=2) && has(Ext::Zicbom) => {
                Op::new(Cbo, 0, rs1, 0, imm12 as i32)
            }
            2 if rd == 0 && imm12 == 4 && has(Ext::Zicboz) => Op::new(Cbo, 0, rs1, 0, 4),
            _ => ill,
        },
        0x73 => {
            let csr = bits(w, 31, 20) as i32;
            match f3 {
                0 => match w {
                    0x0000_0073 => Op::new(Ecall, 0, 0, 0, 0),
                    0x0010_0073 => Op::new(Ebreak, 0, 0, 0, 0),
                    0x3020_0073 => Op::new(Mret, 0, 0, 0, 0),
                    0x1020_0073 => Op::new(Sret, 0, 0, 0, 0),
                    0x1050_0073 => Op::new(Wfi, 0, 0, 0, 0),
                    _ if f7 == 0x09 && rd == 0 => Op::new(SfenceVma, 0, rs1, rs2, 0),
                    _ if f7 == 0x0b && rd == 0 && has(Ext::Svinval) => {
                        Op::new(SinvalVma, 0, rs1, rs2, 0)
                    }
                    // SFENCE.W.INVAL and SFENCE.INVAL.IR.
                    0x1800_0073 | 0x1810_0073 if has(Ext::Svinval) => {
                        Op::new(SfenceInval, 0, 0, 0, 0)
                    }
                    _ => ill,
                },
                1 => Op::new(Csrrw, rd, rs1, 0, csr),
                2 => Op::new(Csrrs, rd, rs1, 0, csr),
                3 => Op::new(Csrrc, rd, rs1, 0, csr),
                5 => Op::new(Csrrwi, rd, rs1, 0, csr),
                6 => Op::new(Csrrsi, rd, rs1, 0, csr),
                7 => Op::new(Csrrci, rd, rs1, 0, csr),
                _ => ill,
            }
        }
        0x2f => {
            let f5 = bits(w, 31, 27);
            let (lr, sc, amo) = match f3 {
                2 => (LrW, ScW, AmoW),
                3 => (LrD, ScD, AmoD),
                _ => return ill,
            };
            match f5 {
                0x02 if rs2 == 0 => r(lr),
                0x02 => ill,
                0x03 => r(sc),
                0x00 | 0x01 | 0x04 | 0x08 | 0x0c | 0x10 | 0x14 | 0x18 | 0x1c => Op {
                    imm: f5 as i32,
                    ..r(amo)
                },
                _ => ill,
            }
        }
        0x07 => match f3 {
            2 => i(Flw),
            3 => i(Fld),
            _ => ill,
        },
        0x27 => match f3 {
            2 => Op::new(Fsw, 0, rs1, rs2, s_imm),
            3 => Op::new(Fsd, 0, rs1, rs2, s_imm),
            _ => ill,
        },
        0x43 | 0x47 | 0x4b | 0x4f => {
            let fmt = bits(w, 26, 25);
            let k = match (w & 0x7f, fmt) {
                (0x43, 0) => FmaddS,
                (0x47, 0) => FmsubS,
                (0x4b, 0) => FnmsubS,
                (0x4f, 0) => FnmaddS,
                (0x43, 1) => FmaddD,
                (0x47, 1) => FmsubD,
                (0x4b, 1) => FnmsubD,
                (0x4f, 1) => FnmaddD,
                _ => return ill,
            };
            Op::new(k, rd, rs1, rs2, (f3 | (bits(w, 31, 27) << 8)) as i32)
        }
        0x53 => decode_fp(w, rd, rs1, rs2, f3, f7)
            .or_else(|| {
                if has(Ext::Zfa) {
                    decode_zfa(rd, rs1, rs2, f3, f7)
                } else {
                    None
                }
            })
            .unwrap_or(ill),
        _ => ill,
    }
}

fn decode_fp(w: u32, rd: u32, rs1: u32, rs2: u32, f3: u32, f7: u32) -> Option<Op> {
    use Kind::*;
    let rm = |k| Some(Op::new(k, rd, rs1, rs2, f3 as i32));
    let k = match f7 {
        0x00 => return rm(FaddS),
        0x04 => return rm(FsubS),
        0x08 => return rm(FmulS),
        0x0c => return rm(FdivS),
        0x01 => return rm(FaddD),
        0x05 => return rm(FsubD),
        0x09 => return rm(FmulD),
        0x0d => return rm(FdivD),
        0x2c if rs2 == 0 => return rm(FsqrtS),
        0x2d if rs2 == 0 => return rm(FsqrtD),
        0x10 => [FsgnjS, FsgnjnS, FsgnjxS].get(f3 as usize).copied()?,
        0x11 => [FsgnjD, FsgnjnD, FsgnjxD].get(f3 as usize).copied()?,
        0x14 => [FminS, FmaxS].get(f3 as usize).copied()?,
        0x15 => [FminD, FmaxD].get(f3 as usize).copied()?,
        0x20 if rs2 == 1 => return rm(FcvtSD),
        0x21 if rs2 == 0 => return rm(FcvtDS),
        0x50 => [FleS, FltS, FeqS].get(f3 as usize).copied()?,
        0x51 => [FleD, FltD, FeqD].get(f3 as usize).copied()?,
        0x60 if rs2 < 4 => return rm(FcvtIntS),
        0x61 if rs2 < 4 => return rm(FcvtIntD),
        0x68 if rs2 < 4 => return rm(FcvtSInt),
        0x69 if rs2 < 4 => return rm(FcvtDInt),
        0x70 if rs2 == 0 && f3 == 0 => FmvXW,
        0x70 if rs2 == 0 && f3 == 1 => FclassS,
        0x71 if rs2 == 0 && f3 == 0 => FmvXD,
        0x71 if rs2 == 0 && f3 == 1 => FclassD,
        0x78 if rs2 == 0 && f3 == 0 => FmvWX,
        0x79 if rs2 == 0 && f3 == 0 => FmvDX,
        _ => return None,
    };
    let _ = w;
    Some(Op::new(k, rd, rs1, rs2, f3 as i32))
}

/// Zfa's additions to OP-FP (the S and D forms; the H and Q forms need Zfh and Q, and
/// FMVH.X.D / FMVP.D.X exist on RV32 only).
fn decode_zfa(rd: u32, rs1: u32, rs2: u32, f3: u32, f7: u32) -> Option<Op> {
    use Kind::*;
    let k = match (f7, rs2, f3) {
        (0x78, 1, 0) => FliS,
        (0x79, 1, 0) => FliD,
        (0x14, _, 2) => FminmS,
        (0x14, _, 3) => FmaxmS,
        (0x15, _, 2) => FminmD,
        (0x15, _, 3) => FmaxmD,
        (0x20, 4 | 5, _) => FroundS,
        (0x21, 4 | 5, _) => FroundD,
        // Only RTZ is defined for FCVTMOD.W.D.
        (0x61, 8, 1) => FcvtmodWD,
        (0x50, _, 4) => FleqS,
        (0x50, _, 5) => FltqS,
        (0x51, _, 4) => FleqD,
        (0x51, _, 5) => FltqD,
        _ => return None,
    };
    Some(Op::new(k, rd, rs1, rs2, f3 as i32))
}

/// Decodes a 16-bit compressed instruction (RV64C).
pub fn decode16(h: u16) -> Op {
    use Kind::*;
    let w = u32::from(h);
    let ill = Op::illegal(w, 2);
    // Registers x8..x15 in the 3-bit fields.
    let r3 = |hi, lo| bits(w, hi, lo) + 8;
    let rd_full = bits(w, 11, 7);
    let rs2_full = bits(w, 6, 2);
    let f3 = bits(w, 15, 13);
    let mut op = match (w & 3, f3) {
        (0, 0) => {
            // c.addi4spn
            let imm = (bits(w, 12, 11) << 4)
                | (bits(w, 10, 7) << 6)
                | (bits(w, 6, 6) << 2)
                | (bits(w, 5, 5) << 3);
            if imm == 0 {
                return ill;
            }
            Op::new(Addi, r3(4, 2), 2, 0, imm as i32)
        }
        (0, 1) => Op::new(
            Fld,
            r3(4, 2),
            r3(9, 7),
            0,
            ((bits(w, 12, 10) << 3) | (bits(w, 6, 5) << 6)) as i32,
        ),
        (0, 2) => Op::new(
            Lw,
            r3(4, 2),
            r3(9, 7),
            0,
            ((bits(w, 12, 10) << 3) | (bits(w, 6, 6) << 2) | (bits(w, 5, 5) << 6)) as i32,
        ),
        (0, 3) => Op::new(
            Ld,
            r3(4, 2),
            r3(9, 7),
            0,
            ((bits(w, 12, 10) << 3) | (bits(w, 6, 5) << 6)) as i32,
        ),
        (0, 5) => Op::new(
            Fsd,
            0,
            r3(9, 7),
            r3(4, 2),
            ((bits(w, 12, 10) << 3) | (bits(w, 6, 5) << 6)) as i32,
        ),
        (0, 6) => Op::new(
            Sw,
            0,
            r3(9, 7),
            r3(4, 2),
            ((bits(w, 12, 10) << 3) | (bits(w, 6, 6) << 2) | (bits(w, 5, 5) << 6)) as i32,
        ),
        (0, 7) => Op::new(
            Sd,
            0,
            r3(9, 7),
            r3(4, 2),
            ((bits(w, 12, 10) << 3) | (bits(w, 6, 5) << 6)) as i32,
        ),
        (1, 0) => {
            let imm = sext((bits(w, 12, 12) << 5) | bits(w, 6, 2), 6);
            Op::new(Addi, rd_full, rd_full, 0, imm)
        }
        (1, 1) => {
            if rd_full == 0 {
                return ill;
            }
            let imm = sext((bits(w, 12, 12) << 5) | bits(w, 6, 2), 6);
            Op::new(Addiw, rd_full, rd_full, 0, imm)
        }
        (1, 2) => Op::new(
            Addi,
            rd_full,
            0,
            0,
            sext((bits(w, 12, 12) << 5) | bits(w, 6, 2), 6),
        ),
        (1, 3) => {
            if rd_full == 2 {
                // c.addi16sp
                let imm = sext(
                    (bits(w, 12, 12) << 9)
                        | (bits(w, 6, 6) << 4)
                        | (bits(w, 5, 5) << 6)
                        | (bits(w, 4, 3) << 7)
                        | (bits(w, 2, 2) << 5),
                    10,
                );
                if imm == 0 {
                    return ill;
                }
                Op::new(Addi, 2, 2, 0, imm)
            } else {
                let imm = sext((bits(w, 12, 12) << 17) | (bits(w, 6, 2) << 12), 18);
                if imm == 0 {
                    return ill;
                }
                Op::new(Lui, rd_full, 0, 0, imm)
            }
        }
        (1, 4) => {
            let rd = r3(9, 7);
            let shamt = ((bits(w, 12, 12) << 5) | bits(w, 6, 2)) as i32;
            match bits(w, 11, 10) {
                0 => Op::new(Srli, rd, rd, 0, shamt),
                1 => Op::new(Srai, rd, rd, 0, shamt),
                2 => Op::new(
                    Andi,
                    rd,
                    rd,
                    0,
                    sext((bits(w, 12, 12) << 5) | bits(w, 6, 2), 6),
                ),
                _ => {
                    let rs2 = r3(4, 2);
                    let k = match (bits(w, 12, 12), bits(w, 6, 5)) {
                        (0, 0) => Sub,
                        (0, 1) => Xor,
                        (0, 2) => Or,
                        (0, 3) => And,
                        (1, 0) => Subw,
                        (1, 1) => Addw,
                        _ => return ill,
                    };
                    Op::new(k, rd, rd, rs2, 0)
                }
            }
        }
        (1, 5) => {
            let imm = sext(
                (bits(w, 12, 12) << 11)
                    | (bits(w, 11, 11) << 4)
                    | (bits(w, 10, 9) << 8)
                    | (bits(w, 8, 8) << 10)
                    | (bits(w, 7, 7) << 6)
                    | (bits(w, 6, 6) << 7)
                    | (bits(w, 5, 3) << 1)
                    | (bits(w, 2, 2) << 5),
                12,
            );
            Op::new(Jal, 0, 0, 0, imm)
        }
        (1, 6) | (1, 7) => {
            let imm = sext(
                (bits(w, 12, 12) << 8)
                    | (bits(w, 11, 10) << 3)
                    | (bits(w, 6, 5) << 6)
                    | (bits(w, 4, 3) << 1)
                    | (bits(w, 2, 2) << 5),
                9,
            );
            Op::new(if f3 == 6 { Beq } else { Bne }, 0, r3(9, 7), 0, imm)
        }
        (2, 0) => Op::new(
            Slli,
            rd_full,
            rd_full,
            0,
            ((bits(w, 12, 12) << 5) | bits(w, 6, 2)) as i32,
        ),
        (2, 1) => Op::new(
            Fld,
            rd_full,
            2,
            0,
            ((bits(w, 12, 12) << 5) | (bits(w, 6, 5) << 3) | (bits(w, 4, 2) << 6)) as i32,
        ),
        (2, 2) => {
            if rd_full == 0 {
                return ill;
            }
            Op::new(
                Lw,
                rd_full,
                2,
                0,
                ((bits(w, 12, 12) << 5) | (bits(w, 6, 4) << 2) | (bits(w, 3, 2) << 6)) as i32,
            )
        }
        (2, 3) => {
            if rd_full == 0 {
                return ill;
            }
            Op::new(
                Ld,
                rd_full,
                2,
                0,
                ((bits(w, 12, 12) << 5) | (bits(w, 6, 5) << 3) | (bits(w, 4, 2) << 6)) as i32,
            )
        }
        (2, 4) => match (bits(w, 12, 12), rd_full, rs2_full) {
            (0, 0, 0) => return ill,
            (0, rs1, 0) => Op::new(Jalr, 0, rs1, 0, 0),
            (0, rd, rs2) => Op::new(Add, rd, 0, rs2, 0),
            (1, 0, 0) => Op::new(Ebreak, 0, 0, 0, 0),
            (1, rs1, 0) => Op::new(Jalr, 1, rs1, 0, 0),
            (_, rd, rs2) => Op::new(Add, rd, rd, rs2, 0),
        },
        (2, 5) => Op::new(
            Fsd,
            0,
            2,
            rs2_full,
            ((bits(w, 12, 10) << 3) | (bits(w, 9, 7) << 6)) as i32,
        ),
        (2, 6) => Op::new(
            Sw,
            0,
            2,
            rs2_full,
            ((bits(w, 12, 9) << 2) | (bits(w, 8, 7) << 6)) as i32,
        ),
        (2, 7) => Op::new(
            Sd,
            0,
            2,
            rs2_full,
            ((bits(w, 12, 10) << 3) | (bits(w, 9, 7) << 6)) as i32,
        ),
        _ => return ill,
    };
    op.rd |= COMPRESSED;
    op
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kind::*;

    fn decode32(w: u32) -> Op {
        super::decode32(w, Isa::max())
    }

    #[test]
    fn op_is_one_word() {
        assert_eq!(std::mem::size_of::<Op>(), 8);
    }

    #[test]
    fn base_forms() {
        // addi a0, a0, -1
        let op = decode32(0xfff5_0513);
        assert_eq!(
            (op.kind, op.rd(), op.rs1, op.imm, op.len()),
            (Addi, 10, 10, -1, 4)
        );
        // lui a0, 0x12345
        assert_eq!(decode32(0x1234_5537).imm, 0x1234_5000);
        // jal ra, -4  (0xffdff0ef)
        let op = decode32(0xffdf_f0ef);
        assert_eq!((op.kind, op.rd(), op.imm), (Jal, 1, -4));
        // beq a0, a1, +16 (0x00b50863)
        let op = decode32(0x00b5_0863);
        assert_eq!((op.kind, op.rs1, op.rs2, op.imm), (Beq, 10, 11, 16));
        // sd ra, -8(sp) (0xfe113c23)
        let op = decode32(0xfe11_3c23);
        assert_eq!((op.kind, op.rs1, op.rs2, op.imm), (Sd, 2, 1, -8));
        // srai a0, a0, 63 (0x43f55513)
        let op = decode32(0x43f5_5513);
        assert_eq!((op.kind, op.imm), (Srai, 63));
        // csrrw zero, satp, a0 (0x18051073)
        let op = decode32(0x1805_1073);
        assert_eq!((op.kind, op.rs1, op.imm), (Csrrw, 10, 0x180));
        // amoadd.w.aqrl a0, a1, (a2) = 0x06b6252f
        let op = decode32(0x06b6_252f);
        assert_eq!(
            (op.kind, op.funct5(), op.rd(), op.rs1, op.rs2),
            (AmoW, 0, 10, 12, 11)
        );
        // lr.d with rs2 != 0 is reserved
        assert_eq!(decode32(0x1015_35af).kind, Illegal);
        // fmadd.d fa0, fa1, fa2, fa3, rne: 0x6ac58543
        let op = decode32(0x6ac5_8543);
        assert_eq!(
            (op.kind, op.rd(), op.rs1, op.rs2, op.rs3(), op.imm & 7),
            (FmaddD, 10, 11, 12, 13, 0)
        );
        assert_eq!(decode32(0).kind, Illegal);
        assert_eq!(decode32(0xffff_ffff).kind, Illegal);
        assert_eq!(decode32(0x1200_0073).kind, SfenceVma);
        assert_eq!(decode32(0x1050_0073).kind, Wfi);
    }

    #[test]
    fn extensions_decode_only_when_enabled() {
        // sh1add a0, a1, a2; clz a0, a1; czero.eqz a0, a1, a2; cbo.zero (a0); pause;
        // fli.s fa0, 1.0; sinval.vma a0, a1
        let cases = [
            (0x20c5_a533, Sh1add),
            (0x6005_9513, Clz),
            (0x0ec5_d533, CzeroEqz),
            (0x0045_200f, Cbo),
            (0x0100_000f, Pause),
            (0xf018_0553, FliS),
            (0x16b5_0073, SinvalVma),
        ];
        for (w, k) in cases {
            assert_eq!(super::decode32(w, Isa::max()).kind, k, "{w:#x}");
            let off = super::decode32(w, Isa::BASE).kind;
            // PAUSE is a FENCE hint without Zihintpause; the rest are illegal.
            let want = if k == Pause { Fence } else { Illegal };
            assert_eq!(off, want, "{w:#x} with rv64gc");
        }
        // Reserved neighbours stay illegal with everything on: clz's funct12 0x603, cbo with
        // funct12 3, fcvtmod.w.d with rm = rne, packw (Zbkb), fmvh.x.d (RV32 only).
        for w in [
            0x6035_9513u32,
            0x0035_200f,
            0xc285_0553,
            0x08c5_c53b,
            0xe215_0553,
        ] {
            assert_eq!(decode32(w).kind, Illegal, "{w:#x}");
        }
    }

    #[test]
    fn compressed_forms() {
        // c.li a0, -1 = 0x557d
        let op = decode16(0x557d);
        assert_eq!(
            (op.kind, op.rd(), op.rs1, op.imm, op.len()),
            (Addi, 10, 0, -1, 2)
        );
        // c.addi16sp sp, -64 = 0x7139
        let op = decode16(0x7139);
        assert_eq!((op.kind, op.rd(), op.imm), (Addi, 2, -64));
        // c.sdsp ra, 8(sp) = 0xe406
        let op = decode16(0xe406);
        assert_eq!((op.kind, op.rs1, op.rs2, op.imm), (Sd, 2, 1, 8));
        // c.ldsp ra, 8(sp) = 0x60a2
        let op = decode16(0x60a2);
        assert_eq!((op.kind, op.rd(), op.imm), (Ld, 1, 8));
        // c.j -2 = 0xbffd
        let op = decode16(0xbffd);
        assert_eq!((op.kind, op.imm), (Jal, -2));
        // c.beqz a0, +8 = 0xc501
        let op = decode16(0xc501);
        assert_eq!((op.kind, op.rs1, op.rs2, op.imm), (Beq, 10, 0, 8));
        // c.mv a0, a1 = 0x852e ; c.add a0, a1 = 0x952e ; c.jr ra = 0x8082
        assert_eq!(decode16(0x852e).kind, Add);
        assert_eq!(decode16(0x852e).rs1, 0);
        assert_eq!(decode16(0x952e).rs1, 10);
        let op = decode16(0x8082);
        assert_eq!((op.kind, op.rd(), op.rs1), (Jalr, 0, 1));
        // c.lui a0, 0xfffff = 0x757d  -> imm -4096
        assert_eq!(decode16(0x757d).imm, -4096);
        // c.addi4spn s0, sp, 16 = 0x0800
        let op = decode16(0x0800);
        assert_eq!((op.kind, op.rd(), op.rs1, op.imm), (Addi, 8, 2, 16));
        // all-zero halfword is illegal
        assert_eq!(decode16(0).kind, Illegal);
        // c.subw a0, a1 = 0x9d0d ; c.addw = 0x9d2d
        assert_eq!(decode16(0x9d0d).kind, Subw);
        assert_eq!(decode16(0x9d2d).kind, Addw);
        // c.srai a0, 1 = 0x8505
        let op = decode16(0x8505);
        assert_eq!((op.kind, op.rd(), op.imm), (Srai, 10, 1));
        // c.ebreak
        assert_eq!(decode16(0x9002).kind, Ebreak);
    }
}
