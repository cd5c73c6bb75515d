/* Synchronous traps and privilege changes: ecall from M/S/U (causes 11/9/8), ebreak and
 * c.ebreak (3), illegal instructions (2) with mtval = the instruction, access faults on
 * unassigned physical addresses for load/store/fetch (5/7/1), mret restoring MIE/MPIE/MPP and
 * dropping to S and U, privileged instructions and CSRs trapping in lower modes (including
 * mstatus.TW/TSR/TVM and the counter-enable CSRs), and medeleg sending traps from S and U to an
 * S-mode handler with scause/sepc/stval/sstatus.SPP, then sret back to U. */
#include "common.h"

#define MSTATUS_TVM (1 << 20)
#define MSTATUS_TW  (1 << 21)
#define MSTATUS_TSR (1 << 22)

/* mret into privilege `mode` (0 U, 1 S) at `label`. */
.macro ENTER mode, label
    li t0, MSTATUS_MPP
    csrc mstatus, t0
    li t0, (\mode << 11)
    csrs mstatus, t0
    la t0, \label
    csrw mepc, t0
    mret
.endm

/* From S or U: back to M-mode at `label` (an ecall with a7 = 0x4d, see m_handler). */
.macro BACK_TO_M label
    li a7, 0x4d
    la s9, \label
    ecall
.endm

TEST_BEGIN
    li a7, 0
    la t0, m_handler
    csrw mtvec, t0
    csrw mcounteren, zero
    csrw scounteren, zero

    /* ---- ecall / ebreak in M ---- */
    EXPECT_TRAP 1f
ecall_m:
    ecall
1:  CHECK 1, s2, 11
    la t0, ecall_m
    CHECKR 2, s3, t0
    CHECK 3, s4, 0
    srli t0, s5, 11                 /* mstatus.MPP = M */
    andi t0, t0, 3
    CHECK 4, t0, 3
    EXPECT_TRAP 1f
ebreak_m:
    ebreak
1:  CHECK 5, s2, 3
    la t0, ebreak_m
    CHECKR 6, s3, t0
    beqz s4, 2f                     /* mtval: 0 or the breakpoint's address */
    CHECKR 7, s4, t0
2:  EXPECT_TRAP 1f
    .option push
    .option rvc
cebreak_m:
    c.ebreak
    .balign 4
    .option pop
1:  CHECK 8, s2, 3
    la t0, cebreak_m
    CHECKR 9, s3, t0

    /* ---- illegal instructions ---- */
    EXPECT_TRAP 1f
ill_zero:
    .word 0x00000000                /* the all-zero parcel is defined illegal */
1:  CHECK 10, s2, 2
    la t0, ill_zero
    CHECKR 11, s3, t0
    CHECK 12, s4, 0                 /* the (16-bit) instruction is 0 */
    EXPECT_TRAP 1f
ill_op:
    .word 0xfe000033                /* OP with funct7 = 0x7f: reserved */
1:  CHECK 13, s2, 2
    CHECK 14, s4, 0xfe000033
    la t0, ill_op
    CHECKR 15, s3, t0
    EXPECT_TRAP 1f
    .word 0xffffffff
1:  CHECK 16, s2, 2
    EXPECT_TRAP 1f
ill_c:
    .half 0x0000                    /* a 16-bit illegal instruction ... */
    .half 0xffff                    /* ... followed by other bits: not part of it */
1:  CHECK 77, s2, 2
    CHECK 78, s4, 0
    EXPECT_TRAP 1f
    .half 0x4002                    /* c.lwsp x0, 0(sp): reserved */
    .half 0x0001                    /* (c.nop: keeps the next instruction aligned) */
1:  CHECK 79, s2, 2
    CHECK 80, s4, 0x4002

    /* ---- access faults: nothing lives at physical 0 or 0x20000000 ---- */
    EXPECT_TRAP 1f
    ld a0, 0(zero)
1:  CHECK 17, s2, 5
    CHECK 18, s4, 0
    li a1, 0x20000008
    EXPECT_TRAP 1f
    lw a0, -8(a1)
1:  CHECK 19, s2, 5
    CHECK 20, s4, 0x20000000
    EXPECT_TRAP 1f
    sw a0, 4(a1)
1:  CHECK 21, s2, 7
    CHECK 22, s4, 0x2000000c
    li a1, 0x20000000
    EXPECT_TRAP 1f
    jalr ra, 0(a1)                  /* fetch fault: mepc = mtval = the target */
1:  CHECK 23, s2, 1
    CHECK 24, s3, 0x20000000
    CHECK 25, s4, 0x20000000

    /* ---- mret: MIE <- MPIE, MPIE <- 1, MPP <- U ---- */
    li t0, MSTATUS_MIE
    csrc mstatus, t0                /* mie is 0: enabling MIE cannot take an interrupt */
    li t0, MSTATUS_MPP | MSTATUS_MPIE
    csrs mstatus, t0                /* MPP = M, MPIE = 1 */
    la t0, 1f
    csrw mepc, t0
    mret
1:  csrr a0, mstatus
    andi a1, a0, MSTATUS_MIE
    CHECK 26, a1, MSTATUS_MIE
    andi a1, a0, MSTATUS_MPIE
    CHECK 27, a1, MSTATUS_MPIE
    srli a1, a0, 11
    andi a1, a1, 3
    CHECK 28, a1, 0
    li t0, MSTATUS_MIE
    csrc mstatus, t0

    /* ---- S-mode ---- */
    ENTER 1, s_mode
s_mode:
    EXPECT_TRAP 1f
ecall_s:
    ecall
1:  CHECK 29, s2, 9                 /* ecall from S */
    la t0, ecall_s
    CHECKR 30, s3, t0
    srli t0, s5, 11                 /* mstatus.MPP = S */
    andi t0, t0, 3
    CHECK 31, t0, 1
    EXPECT_TRAP 1f
s_mstatus:
    csrr a0, mstatus                /* M-level CSR from S: illegal */
1:  CHECK 32, s2, 2
    la t0, s_mstatus
    lwu t0, 0(t0)
    CHECKR 33, s4, t0
    EXPECT_TRAP 1f
    csrr a0, mscratch
1:  CHECK 34, s2, 2
    li s2, -1
    csrr a0, sstatus                /* S-level CSRs are fine */
    csrw sscratch, a0
    CHECK 35, s2, -1
    EXPECT_TRAP 1f
    mret                            /* mret from S: illegal */
1:  CHECK 36, s2, 2
    EXPECT_TRAP 1f
    rdtime a0                       /* mcounteren.TM = 0: illegal */
1:  CHECK 37, s2, 2
    BACK_TO_M 1f
1:  li a7, 0
    /* back in M: let S read time, and trap WFI, SRET and satp accesses from S */
    li t0, 2
    csrw mcounteren, t0
    li t0, MSTATUS_TW | MSTATUS_TSR | MSTATUS_TVM
    csrs mstatus, t0
    ENTER 1, s_mode2
s_mode2:
    li s2, -1
    rdtime a0                       /* allowed now */
    CHECK 38, s2, -1
    EXPECT_TRAP 1f
    wfi                             /* TW = 1: illegal in S */
1:  CHECK 39, s2, 2
    EXPECT_TRAP 1f
    sret                            /* TSR = 1 */
1:  CHECK 40, s2, 2
    EXPECT_TRAP 1f
    csrr a0, satp                   /* TVM = 1 */
1:  CHECK 41, s2, 2
    EXPECT_TRAP 1f
    sfence.vma                      /* TVM = 1 */
1:  CHECK 42, s2, 2
    BACK_TO_M 1f
1:  li a7, 0
    li t0, MSTATUS_TW | MSTATUS_TSR | MSTATUS_TVM
    csrc mstatus, t0

    /* ---- U-mode ---- */
    ENTER 0, u_mode
u_mode:
    EXPECT_TRAP 1f
ecall_u:
    ecall
1:  CHECK 43, s2, 8                 /* ecall from U */
    la t0, ecall_u
    CHECKR 44, s3, t0
    srli t0, s5, 11                 /* MPP = U */
    andi t0, t0, 3
    CHECK 45, t0, 0
    EXPECT_TRAP 1f
    csrr a0, sstatus                /* S-level CSR from U */
1:  CHECK 46, s2, 2
    EXPECT_TRAP 1f
    sret
1:  CHECK 47, s2, 2
    EXPECT_TRAP 1f
    wfi
1:  CHECK 48, s2, 2
    EXPECT_TRAP 1f
    sfence.vma
1:  CHECK 49, s2, 2
    EXPECT_TRAP 1f
    rdtime a0                       /* mcounteren.TM = 1 but scounteren.TM = 0 */
1:  CHECK 50, s2, 2
    li s2, -1
    ld a0, 0(sp)                    /* U can use memory (PMP entry 0 allows it, satp bare) */
    CHECK 51, s2, -1
    BACK_TO_M 1f
1:  li a7, 0
    li t0, 2                        /* let U read time too */
    csrw scounteren, t0
    ENTER 0, u_mode2
u_mode2:
    li s2, -1
    rdtime a0
    CHECK 52, s2, -1
    EXPECT_TRAP 1f
    csrr a0, sscratch
1:  CHECK 53, s2, 2
    BACK_TO_M 1f
1:  li a7, 0

    /* ---- delegation ---- */
    li t0, (1 << 2) | (1 << 3) | (1 << 8)
    csrw medeleg, t0
    la t0, s_trap_record
    csrw stvec, t0
    EXPECT_TRAP 1f
    .word 0xfe000033                /* in M, medeleg does not apply */
1:  CHECK 54, s2, 2
    csrr a0, scause
    CHECK 55, a0, 0                 /* nothing went to S */
    ENTER 1, s_deleg
s_deleg:
    li t0, MSTATUS_SIE              /* SIE = 1 (sie is 0: no interrupt can fire) */
    csrs sstatus, t0
    EXPECT_TRAP 1f
s_ill:
    .word 0xfe000033                /* delegated: lands in s_trap_record, stays in S */
1:  CHECK 56, s2, 2
    CHECK 57, s4, 0xfe000033
    la t0, s_ill
    CHECKR 58, s3, t0
    andi t0, s5, MSTATUS_SPP        /* came from S */
    CHECK 59, t0, MSTATUS_SPP
    andi t0, s5, MSTATUS_SPIE       /* SPIE = the SIE at the trap */
    CHECK 60, t0, MSTATUS_SPIE
    andi t0, s5, MSTATUS_SIE        /* SIE cleared in the handler */
    CHECK 61, t0, 0
    csrr a0, sstatus                /* after sret: SIE <- SPIE = 1 */
    andi t0, a0, MSTATUS_SIE
    CHECK 62, t0, MSTATUS_SIE
    EXPECT_TRAP 1f
s_brk:
    ebreak
1:  CHECK 63, s2, 3
    la t0, s_brk
    CHECKR 64, s3, t0
    /* sret to U */
    li t0, MSTATUS_SPP
    csrc sstatus, t0
    la t0, u_deleg
    csrw sepc, t0
    sret
u_deleg:
    EXPECT_TRAP 1f
ecall_u2:
    ecall                           /* delegated: scause 8 in S, sret back to U */
1:  CHECK 65, s2, 8
    la t0, ecall_u2
    CHECKR 66, s3, t0
    CHECK 67, s4, 0
    andi t0, s5, MSTATUS_SPP        /* came from U */
    CHECK 68, t0, 0
    EXPECT_TRAP 1f
    .word 0xfe000033
1:  CHECK 69, s2, 2
    CHECK 70, s4, 0xfe000033
    EXPECT_TRAP 1f
    csrr a0, sstatus                /* traps: so the sret really went back to U */
1:  CHECK 71, s2, 2
    andi t0, s5, MSTATUS_SPP
    CHECK 72, t0, 0
    /* a cause that is not delegated goes to M: the load access fault (with a7 = 0x4d the
     * handler resumes in M) */
    li a7, 0x4d
    EXPECT_TRAP 1f
u_fault:
    lw a0, 0(zero)
1:  CHECK 73, s2, 5                 /* in M now */
    la t0, u_fault
    CHECKR 74, s3, t0
    srli t0, s5, 11
    andi t0, t0, 3
    CHECK 75, t0, 0                 /* MPP = U */
    csrr a0, scause                 /* S state untouched by the M trap: still 2 from check 71 */
    CHECK 76, a0, 2
    csrr a0, mstatus                /* and we are in M: this did not trap */
    csrw medeleg, zero

    PASS

/* Records mcause/mepc/mtval/mstatus in s2..s5 and resumes at s9: in the privilege the trap
 * came from, or in M when a7 = 0x4d. */
    ALIGN4
m_handler:
    csrr s2, mcause
    csrr s3, mepc
    csrr s4, mtval
    csrr s5, mstatus
    csrw mepc, s9
    li t6, 0x4d
    bne a7, t6, 1f
    li t6, MSTATUS_MPP
    csrs mstatus, t6
1:  mret

TEST_END
