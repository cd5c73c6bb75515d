/* Zicbom/Zicboz: CBO.ZERO clears the 64-byte block holding the address; CBO.CLEAN/FLUSH/INVAL
 * change no data (there is no cache) but check permissions like a store; below M, menvcfg
 * (and in U also senvcfg) must enable each: CBZE, CBCFE, CBIE (00 illegal). Faults are store
 * faults with the rs1 address in xtval. Traps go to M, which records them and resumes at s9;
 * an ecall from S sets menvcfg to a0. */
#include "common.h"

#define CBIE_FLUSH (1 << 4)
#define CBCFE      (1 << 6)
#define CBZE       (1 << 7)
#define DENIED     (SCRATCH + 0x1000)

.macro CBO_ZERO reg
    .insn i 0x0f, 2, x0, \reg, 4
.endm

/* The instruction after this must trap with `cause`; check n. */
.macro TRAPS n, cause
    EXPECT_TRAP 1f
.endm
.macro TRAPPED n, cause
1:  CHECK \n, s2, \cause
.endm

TEST_BEGIN
    la t0, m_handler
    csrw mtvec, t0
    /* 192 bytes of 0xaa.. at SCRATCH */
    li t0, SCRATCH
    li t1, 0xaaaaaaaaaaaaaaaa
    li t2, 24
1:  sd t1, 0(t0)
    addi t0, t0, 8
    addi t2, t2, -1
    bnez t2, 1b
    li a0, SCRATCH + 0x48
    CBO_ZERO a0
    li s0, SCRATCH
    ld a1, 0x38(s0)
    CHECK 1, a1, 0xaaaaaaaaaaaaaaaa
    ld a1, 0x40(s0)
    CHECK 2, a1, 0
    ld a1, 0x78(s0)
    CHECK 3, a1, 0
    ld a1, 0x80(s0)
    CHECK 4, a1, 0xaaaaaaaaaaaaaaaa
    /* M needs no enable bits */
    cbo.clean (a0)
    cbo.flush (a0)
    cbo.inval (a0)
    CHECK 5, s2, 0

    /* PMP: entry 0 denies a 4 KiB page to S and U, entry 1 allows the rest */
    li t0, (DENIED >> 2) | 0x1ff
    csrw pmpaddr0, t0
    li t0, -1
    csrw pmpaddr1, t0
    li t0, 0x18 | (0x1f << 8)
    csrw pmpcfg0, t0

    csrw menvcfg, zero
    ENTER_S s_mode

s_mode:
    li a0, SCRATCH + 0x8
    TRAPS 6
    CBO_ZERO a0
    TRAPPED 6, 2
    TRAPS 7
    cbo.clean (a0)
    TRAPPED 7, 2
    TRAPS 8
    cbo.flush (a0)
    TRAPPED 8, 2
    TRAPS 9
    cbo.inval (a0)
    TRAPPED 9, 2
    CHECK 10, s4, 0x0005200f        /* mtval: the instruction */
    /* reserved CBIE value 10: the field keeps its value (00), inval stays illegal */
    li a0, (2 << 4)
    ecall
    li a0, SCRATCH + 0x8
    TRAPS 11
    cbo.inval (a0)
    TRAPPED 11, 2

    li a0, CBIE_FLUSH | CBCFE | CBZE
    ecall
    li a0, SCRATCH + 0x8
    li s2, 0
    CBO_ZERO a0
    cbo.clean (a0)
    cbo.flush (a0)
    cbo.inval (a0)
    CHECK 12, s2, 0
    li s0, SCRATCH
    ld a1, 0(s0)
    CHECK 13, a1, 0
    /* PMP-denied block: store access faults, mtval = rs1 */
    li a0, DENIED + 0x10
    TRAPS 14
    cbo.clean (a0)
    TRAPPED 14, 7
    CHECK 15, s4, DENIED + 0x10
    li a0, DENIED + 0x3f
    TRAPS 16
    CBO_ZERO a0
    TRAPPED 16, 7
    CHECK 17, s4, DENIED + 0x3f

    /* U: senvcfg enables ZERO only */
    li t0, CBZE
    csrw senvcfg, t0
    csrr t1, senvcfg
    CHECK 18, t1, CBZE
    li t0, MSTATUS_SPP
    csrc sstatus, t0
    la t0, u_mode
    csrw sepc, t0
    sret

u_mode:
    li a0, SCRATCH + 0x88
    li s2, 0
    CBO_ZERO a0
    CHECK 19, s2, 0
    li s0, SCRATCH
    ld a1, 0x80(s0)
    CHECK 20, a1, 0
    TRAPS 21
    cbo.flush (a0)
    TRAPPED 21, 2
    TRAPS 22
    cbo.inval (a0)
    TRAPPED 22, 2
    PASS

    ALIGN4
m_handler:
    csrr s2, mcause
    li t6, 9
    bne s2, t6, 2f
    csrw menvcfg, a0
    csrr t6, mepc
    addi t6, t6, 4
    csrw mepc, t6
    mret
2:  csrr s3, mepc
    csrr s4, mtval
    csrw mepc, s9
    mret
TEST_END
