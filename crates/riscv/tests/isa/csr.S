/* Zicsr and machine CSRs: mhartid, misa, mscratch with every csrr* form, read-only CSRs (reads
 * with rs1 = x0 / uimm = 0 do not write and must not trap; any write must trap), an
 * unimplemented CSR trapping with mtval = the instruction, fcsr/frm/fflags aliasing, mstatus.FS
 * (off makes FP instructions and FP CSRs trap; FP work marks it dirty and sets SD), WARL fields
 * (MPP, medeleg[11], mepc[0], misa), sstatus as a view of mstatus, and time advancing. */
#include "common.h"

/* The next instruction must not trap. */
.macro NO_TRAP
    li s2, -1
    la s9, trapped_unexpectedly
.endm

TEST_BEGIN
    la t0, m_trap_record
    csrw mtvec, t0
    j main

trapped_unexpectedly:               /* s2 = mcause, s3 = mepc */
    mv s10, s2
    li t6, -1
    li s11, 999
    j test_fail

main:
    /* ---- identification ---- */
    csrr a0, mhartid
    CHECK 1, a0, 0
    csrr a0, misa
    srli a1, a0, 62                 /* MXL = 2: XLEN 64 */
    CHECK 2, a1, 2
    li t0, 0x14112d                 /* A(0) C(2) D(3) F(5) I(8) M(12) S(18) U(20) */
    and a1, a0, t0
    CHECK 3, a1, 0x14112d
    NO_TRAP
    csrw misa, zero                 /* WARL: may be ignored, must not trap or drop I */
    csrr a1, misa
    andi a1, a1, 0x100
    CHECK 4, a1, 0x100

    /* ---- mscratch and every csrr* form ---- */
    li a0, 0x123456789abcdef0
    csrw mscratch, a0
    csrr a1, mscratch
    CHECK 5, a1, 0x123456789abcdef0
    li a0, 0xff
    csrrw a1, mscratch, a0          /* swap: old value out */
    CHECK 6, a1, 0x123456789abcdef0
    li a0, 0xf00
    csrrs a1, mscratch, a0          /* set bits */
    CHECK 7, a1, 0xff
    csrr a1, mscratch
    CHECK 8, a1, 0xfff
    li a0, 0x0f0
    csrrc a1, mscratch, a0          /* clear bits */
    CHECK 9, a1, 0xfff
    csrr a1, mscratch
    CHECK 10, a1, 0xf0f
    csrrwi a1, mscratch, 0x15
    CHECK 11, a1, 0xf0f
    csrrsi a1, mscratch, 0x0a       /* 0x15 | 0x0a = 0x1f */
    CHECK 12, a1, 0x15
    csrrci a1, mscratch, 0x11       /* 0x1f & ~0x11 = 0x0e */
    CHECK 13, a1, 0x1f
    csrr a1, mscratch
    CHECK 14, a1, 0x0e
    csrrs a1, mscratch, zero        /* rs1 = x0: read only */
    CHECK 15, a1, 0x0e
    csrrc a1, mscratch, zero
    csrr a1, mscratch
    CHECK 16, a1, 0x0e
    csrrw a1, mscratch, a1          /* rd = rs1: old value out, rs1 read first */
    CHECK 17, a1, 0x0e

    /* ---- a read-only CSR: reads that do not write are fine ---- */
    NO_TRAP
    csrrs x5, mvendorid, x0
    csrrc x5, mvendorid, x0
    csrrsi x5, mvendorid, 0
    csrrci x5, mvendorid, 0
    csrr a0, marchid
    csrr a0, mimpid
    csrr a0, mhartid
    CHECK 18, s2, -1
    /* ... but any write traps, whatever the value written */
    li t0, 0
    EXPECT_TRAP 1f
w_vendor:
    csrw mvendorid, t0              /* 0xf1129073 */
1:  CHECK 19, s2, 2
    CHECK 20, s4, 0xf1129073
    la t1, w_vendor
    CHECKR 21, s3, t1
    EXPECT_TRAP 1f
    csrs mvendorid, t0              /* rs1 != x0 is a write even when t0 = 0 */
1:  CHECK 22, s2, 2
    CHECK 23, s4, 0xf112a073
    EXPECT_TRAP 1f
    csrrwi x0, mhartid, 0           /* csrrw always writes */
1:  CHECK 24, s2, 2
    EXPECT_TRAP 1f
    csrw cycle, a0                  /* user counters are read-only too */
1:  CHECK 25, s2, 2
    CHECK 26, s4, 0xc0051073

    /* ---- an unimplemented CSR (hstatus: no H extension) ---- */
    EXPECT_TRAP 1f
unimpl:
    csrr a0, 0x600
1:  CHECK 27, s2, 2
    CHECK 28, s4, 0x60002573        /* csrrs a0, 0x600, x0 */
    la t1, unimpl
    CHECKR 29, s3, t1
    lwu t2, 0(t1)                   /* mtval is exactly the instruction word */
    CHECKR 30, s4, t2
    EXPECT_TRAP 1f
    csrw 0x600, zero
1:  CHECK 31, s2, 2

    /* ---- fcsr, frm and fflags are views of one register ---- */
    li t0, MSTATUS_FS
    csrs mstatus, t0
    li a0, 0xff
    csrw fcsr, a0
    csrr a1, fflags
    CHECK 32, a1, 0x1f
    csrr a1, frm
    CHECK 33, a1, 7
    csrwi frm, 1
    csrr a1, fcsr                   /* (1 << 5) | 0x1f */
    CHECK 34, a1, 0x3f
    csrwi fflags, 5
    csrr a1, fcsr
    CHECK 35, a1, 0x25
    li a0, 0x1ff                    /* bits above 7 are reserved: read as zero */
    csrw fcsr, a0
    csrr a1, fcsr
    CHECK 36, a1, 0xff
    li a0, 0xe3
    csrw fflags, a0                 /* only the 5 flag bits */
    csrr a1, fcsr
    CHECK 37, a1, 0xe3
    csrrci a1, fflags, 0x1f
    CHECK 38, a1, 0x03
    csrr a1, fcsr
    CHECK 39, a1, 0xe0
    csrw fcsr, zero

    /* ---- mstatus.FS ---- */
    li t0, MSTATUS_FS
    csrc mstatus, t0                /* FS = Off */
    EXPECT_TRAP 1f
fp_off:
    fadd.s f0, f1, f2
1:  CHECK 40, s2, 2
    la t1, fp_off
    lwu t2, 0(t1)
    CHECKR 41, s4, t2
    EXPECT_TRAP 1f
    flw f0, 0(sp)
1:  CHECK 42, s2, 2
    EXPECT_TRAP 1f
    fsd f0, 0(sp)
1:  CHECK 43, s2, 2
    EXPECT_TRAP 1f
    fmv.x.w a0, f0
1:  CHECK 44, s2, 2
    EXPECT_TRAP 1f
    fmv.d.x f0, a0
1:  CHECK 45, s2, 2
    EXPECT_TRAP 1f
    csrr a0, fflags
1:  CHECK 46, s2, 2
    EXPECT_TRAP 1f
    csrr a0, frm
1:  CHECK 47, s2, 2
    EXPECT_TRAP 1f
    csrw fcsr, zero
1:  CHECK 48, s2, 2
    csrr a0, mstatus                /* SD clear when FS is off */
    srli a0, a0, 63
    CHECK 49, a0, 0
    li t0, 1 << 13                  /* FS = Initial */
    csrs mstatus, t0
    NO_TRAP
    fadd.s f0, f1, f2
    csrr a0, mstatus
    srli a1, a0, 13
    andi a1, a1, 3
    CHECK 50, a1, 3                 /* FP work made it Dirty */
    srli a1, a0, 63
    CHECK 51, a1, 1                 /* and SD summarises it */
    li t0, MSTATUS_FS
    csrc mstatus, t0
    li t0, 2 << 13                  /* FS = Clean */
    csrs mstatus, t0
    csrwi fflags, 1                 /* writing an FP CSR dirties too */
    csrr a0, mstatus
    srli a1, a0, 13
    andi a1, a1, 3
    CHECK 52, a1, 3
    csrwi fflags, 0

    /* ---- WARL fields ---- */
    li t0, MSTATUS_MPP
    csrc mstatus, t0
    li t0, 2 << 11                  /* MPP = 2 (no H-mode): must not read back as 2 */
    csrs mstatus, t0
    csrr a0, mstatus
    srli a0, a0, 11
    andi a0, a0, 3
    li t1, 2
    bne a0, t1, 1f
    CHECK 53, a0, 0
1:  li t0, -1
    csrw medeleg, t0
    csrr a0, medeleg                /* ecall from M can never be delegated */
    srli a0, a0, 11
    andi a0, a0, 1
    CHECK 54, a0, 0
    csrw medeleg, zero
    li t0, 0x80001235
    csrw mepc, t0                   /* bit 0 of mepc is always zero */
    csrr a0, mepc
    CHECK 55, a0, 0x80001234
    csrr a0, mstatus                /* UXL and SXL read 2 (64-bit) */
    srli a1, a0, 32
    andi a1, a1, 0xf
    CHECK 56, a1, 0xa

    /* ---- sstatus is a restricted view of mstatus ---- */
    li t0, MSTATUS_SUM
    csrs sstatus, t0
    csrr a0, mstatus
    and a0, a0, t0
    CHECKR 57, a0, t0
    csrc mstatus, t0
    csrr a0, sstatus
    and a0, a0, t0
    CHECK 58, a0, 0
    li t0, MSTATUS_MPIE
    csrs mstatus, t0
    csrr a0, sstatus                /* M-only fields are invisible */
    and a0, a0, t0
    CHECK 59, a0, 0
    csrs sstatus, t0                /* ... and unwritable through sstatus */
    csrc mstatus, t0
    csrs sstatus, t0
    csrr a0, mstatus
    and a0, a0, t0
    CHECK 60, a0, 0

    /* ---- time advances, and agrees with the CLINT's mtime ---- */
    rdtime a0
    li t0, 20000
1:  addi t0, t0, -1
    bnez t0, 1b
    rdtime a1
    sltu a2, a0, a1
    CHECK 61, a2, 1
    li t0, CLINT_MTIME
    ld a2, 0(t0)
    sltu a3, a2, a1                 /* mtime read after time: not smaller */
    CHECK 62, a3, 0

    PASS
TEST_END
