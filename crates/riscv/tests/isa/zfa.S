/* Zfa: FLI, FMINM/FMAXM, FROUND/FROUNDNX, FCVTMOD.W.D, FLEQ/FLTQ (S and D forms), and the
 * encodings Zfa leaves illegal. gas 2.40 predates Zfa: the instructions are spelled with .insn
 * (FLI: rs1 = table index, rs2 = 1; FROUND: rs2 = 4, FROUNDNX: rs2 = 5). */
#include "common.h"

#define NV 0x10
#define NX 0x01

TEST_BEGIN
    li t0, MSTATUS_FS
    csrs mstatus, t0
    csrw fflags, zero

    .insn r 0x53, 0, 0x78, fa0, x16, x1      /* fli.s fa0, 1.0 */
    CHECKF 1, fa0, 0xffffffff3f800000
    .insn r 0x53, 0, 0x78, fa0, x2, x1       /* fli.s fa0, 2^-16 */
    CHECKF 2, fa0, 0xffffffff37800000
    .insn r 0x53, 0, 0x78, fa0, x31, x1      /* fli.s fa0, nan */
    CHECKF 3, fa0, 0xffffffff7fc00000
    .insn r 0x53, 0, 0x79, fa0, x0, x1       /* fli.d fa0, -1.0 */
    CHECKF 4, fa0, 0xbff0000000000000
    .insn r 0x53, 0, 0x79, fa0, x1, x1       /* fli.d fa0, min */
    CHECKF 5, fa0, 0x0010000000000000
    .insn r 0x53, 0, 0x79, fa0, x30, x1      /* fli.d fa0, inf */
    CHECKF 6, fa0, 0x7ff0000000000000
    .insn r 0x53, 0, 0x79, fa0, x9, x1       /* fli.d fa0, 0.3125 */
    CHECKF 7, fa0, 0x3fd4000000000000
    CHECK_FLAGS 8, 0

    /* fminm/fmaxm: a NaN operand gives the canonical NaN (fmin would return the other) */
    LIF fa1, 0x3f800000                      /* 1.0 */
    LIF fa2, 0x7fc00001                      /* a quiet NaN */
    .insn r 0x53, 2, 0x14, fa0, fa1, fa2     /* fminm.s */
    CHECKF 9, fa0, 0xffffffff7fc00000
    CHECK_FLAGS 10, 0
    LIF fa2, 0x7f800001                      /* a signaling NaN */
    .insn r 0x53, 3, 0x14, fa0, fa2, fa1     /* fmaxm.s */
    CHECKF 11, fa0, 0xffffffff7fc00000
    CHECK_FLAGS 12, NV
    LID fa1, 0x3ff0000000000000              /* 1.0 */
    LID fa2, 0x4000000000000000              /* 2.0 */
    .insn r 0x53, 3, 0x15, fa0, fa1, fa2     /* fmaxm.d */
    CHECKF 13, fa0, 0x4000000000000000
    LID fa1, 0x8000000000000000              /* -0.0 */
    LID fa2, 0x0000000000000000
    .insn r 0x53, 2, 0x15, fa0, fa2, fa1     /* fminm.d -0 < +0 */
    CHECKF 14, fa0, 0x8000000000000000

    /* fround / froundnx */
    LID fa1, 0x4004000000000000              /* 2.5 */
    .insn r 0x53, 0, 0x21, fa0, fa1, x4      /* fround.d rne */
    CHECKF 15, fa0, 0x4000000000000000
    CHECK_FLAGS 16, 0
    .insn r 0x53, 4, 0x21, fa0, fa1, x5      /* froundnx.d rmm */
    CHECKF 17, fa0, 0x4008000000000000
    CHECK_FLAGS 18, NX
    LIF fa1, 0xbfc00000                      /* -1.5 */
    .insn r 0x53, 3, 0x20, fa0, fa1, x4      /* fround.s rup */
    CHECKF 19, fa0, 0xffffffffbf800000
    CHECK_FLAGS 20, 0
    li t0, 2                                 /* frm = rdn, used by rm = dyn */
    csrw frm, t0
    .insn r 0x53, 7, 0x20, fa0, fa1, x5      /* froundnx.s dyn */
    CHECKF 21, fa0, 0xffffffffc0000000
    CHECK_FLAGS 22, NX
    csrw frm, zero

    /* fcvtmod.w.d: modular, with fcvt.w.d's flags */
    LID fa1, 0x41f0000000500000              /* 2^32 + 5 */
    .insn r 0x53, 1, 0x61, a0, fa1, x8
    CHECK 23, a0, 5
    CHECK_FLAGS 24, NV
    LID fa1, 0xc004000000000000              /* -2.5 */
    .insn r 0x53, 1, 0x61, a0, fa1, x8
    CHECK 25, a0, -2
    CHECK_FLAGS 26, NX
    LID fa1, 0x41e0000000000000              /* 2^31: wraps to INT32_MIN, sign-extended */
    .insn r 0x53, 1, 0x61, a0, fa1, x8
    CHECK 27, a0, 0xffffffff80000000
    CHECK_FLAGS 28, NV
    LID fa1, 0x7ff0000000000000              /* inf */
    .insn r 0x53, 1, 0x61, a0, fa1, x8
    CHECK 29, a0, 0
    CHECK_FLAGS 30, NV

    /* fleq/fltq are quiet: a quiet NaN raises nothing (fle/flt raise NV) */
    LIF fa1, 0x3f800000
    LIF fa2, 0x7fc00000
    .insn r 0x53, 4, 0x50, a0, fa1, fa2      /* fleq.s */
    CHECK 31, a0, 0
    CHECK_FLAGS 32, 0
    fle.s a0, fa1, fa2
    CHECK_FLAGS 33, NV
    LIF fa2, 0x7f800001                      /* signaling: NV */
    .insn r 0x53, 5, 0x50, a0, fa1, fa2      /* fltq.s */
    CHECK_FLAGS 34, NV
    LID fa1, 0x3ff0000000000000
    LID fa2, 0x4000000000000000
    .insn r 0x53, 5, 0x51, a0, fa1, fa2      /* fltq.d 1 < 2 */
    CHECK 35, a0, 1
    .insn r 0x53, 4, 0x51, a0, fa2, fa2      /* fleq.d 2 <= 2 */
    CHECK 36, a0, 1

    /* illegal: fcvtmod with a rounding mode other than rtz, fmvh.x.d (RV32 only), and any
     * Zfa instruction while mstatus.FS is off */
    la t0, m_trap_to_m
    csrw mtvec, t0
    EXPECT_TRAP 1f
    .insn r 0x53, 0, 0x61, a0, fa1, x8       /* fcvtmod.w.d rne */
1:  CHECK 37, s2, 2
    EXPECT_TRAP 1f
    .insn r 0x53, 0, 0x71, a0, fa1, x1       /* fmvh.x.d */
1:  CHECK 38, s2, 2
    li t0, MSTATUS_FS
    csrc mstatus, t0
    EXPECT_TRAP 1f
    .insn r 0x53, 0, 0x79, fa0, x16, x1      /* fli.d */
1:  CHECK 39, s2, 2
    PASS
TEST_END
