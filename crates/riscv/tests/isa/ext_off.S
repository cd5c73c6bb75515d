/* Run with the rv64gc CPU model (nothing optional): every encoding of an optional extension
 * is an illegal instruction, with its bits in mtval, and the CSRs of Sstc and Zkr do not
 * exist. */
#include "common.h"

/* The instruction after this macro must trap with an illegal instruction whose mtval is
 * `bits`; checks n and n+1. */
.macro ILLEGAL n, bits
    la t0, m_trap_to_m
    csrw mtvec, t0
    EXPECT_TRAP 1f
.endm
.macro ILLEGALED n, bits
1:  CHECK \n, s2, 2
    CHECK (\n + 1), s4, \bits
.endm

TEST_BEGIN
    li t0, MSTATUS_FS
    csrs mstatus, t0
    ILLEGAL 1
    .insn r 0x33, 2, 0x10, a0, a1, a2        /* sh1add */
    ILLEGALED 1, 0x20c5a533
    ILLEGAL 3
    .insn i 0x13, 1, a0, a1, 0x600           /* clz */
    ILLEGALED 3, 0x60059513
    ILLEGAL 5
    .insn r 0x33, 1, 0x05, a0, a1, a2        /* clmul */
    ILLEGALED 5, 0x0ac59533
    ILLEGAL 7
    .insn r 0x33, 1, 0x14, a0, a1, a2        /* bset */
    ILLEGALED 7, 0x28c59533
    ILLEGAL 9
    .insn r 0x33, 5, 0x07, a0, a1, a2        /* czero.eqz */
    ILLEGALED 9, 0x0ec5d533
    ILLEGAL 11
    .insn i 0x0f, 2, zero, a0, 4             /* cbo.zero (a0) */
    ILLEGALED 11, 0x0045200f
    ILLEGAL 13
    .insn r 0x53, 0, 0x78, fa0, x16, x1      /* fli.s fa0, 1.0 (rs1 = index 16, rs2 = 1) */
    ILLEGALED 13, 0xf0180553
    ILLEGAL 15
    .insn r 0x73, 0, 0x0b, x0, a0, a1        /* sinval.vma a0, a1 */
    ILLEGALED 15, 0x16b50073
    ILLEGAL 17
    csrr a0, 0x14d                           /* stimecmp */
    ILLEGALED 17, 0x14d02573
    ILLEGAL 19
    csrrw a0, 0x015, zero                    /* seed */
    ILLEGALED 19, 0x01501573
    /* PAUSE is a FENCE hint, and the prefetches ORI hints: legal everywhere. */
    .insn i 0x0f, 0, x0, x0, 0x010           /* pause */
    ori zero, a0, 0                          /* prefetch.i 0(a0) */
    /* and the envcfg fields of absent extensions read as zero */
    li t0, -1
    csrw menvcfg, t0
    csrr a0, menvcfg
    CHECK 21, a0, 1                          /* FIOM only */
    PASS
TEST_END
