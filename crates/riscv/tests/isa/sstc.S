/* Sstc: stimecmp drives mip.STIP when menvcfg.STCE is set (and STIP is then read-only); S may
 * access stimecmp only with menvcfg.STCE and mcounteren.TM both set, U never; the supervisor
 * timer interrupt arrives in S through stimecmp alone, with no M-mode help. */
#include "common.h"

#define STIP (1 << 5)
#define STCE (1 << 63)

TEST_BEGIN
    /* ---- STCE = 0: STIP is software's ---- */
    csrw menvcfg, zero
    csrw stimecmp, zero
    li t0, STIP
    csrs mip, t0
    csrr a0, mip
    andi a0, a0, STIP
    CHECK 1, a0, STIP
    csrc mip, t0
    csrr a0, mip
    andi a0, a0, STIP
    CHECK 2, a0, 0                  /* stimecmp = 0 < time, but STCE is off */

    /* ---- STCE = 1: STIP follows time >= stimecmp ---- */
    li t0, STCE
    csrs menvcfg, t0
    csrr a0, menvcfg
    srli a0, a0, 63
    CHECK 3, a0, 1
    csrr a0, mip
    andi a0, a0, STIP
    CHECK 4, a0, STIP
    li t0, STIP
    csrc mip, t0                    /* read-only now */
    csrr a0, mip
    andi a0, a0, STIP
    CHECK 5, a0, STIP
    li t0, -1
    csrw stimecmp, t0
    csrr a1, stimecmp
    CHECK 6, a1, -1
    csrr a0, mip
    andi a0, a0, STIP
    CHECK 7, a0, 0
    li t0, STIP
    csrs mip, t0
    csrr a0, mip
    andi a0, a0, STIP
    CHECK 8, a0, 0

    /* ---- S-mode access rules ---- */
    la t0, m_service
    csrw mtvec, t0
    csrw mcounteren, zero
    csrw menvcfg, zero
    li t0, STIP
    csrw mideleg, t0
    ENTER_S s_mode
s_mode:
    EXPECT_TRAP 1f
    csrr a0, stimecmp               /* TM = 0: illegal */
1:  CHECK 9, s2, 2
    li a7, 1
    ecall                           /* M: TM = 1, STCE = 0 */
    EXPECT_TRAP 1f
    csrr a0, stimecmp
1:  CHECK 10, s2, 2
    li a7, 2
    ecall                           /* M: TM = 1, STCE = 1 */
    li s2, 0
    li t0, 0x1234
    csrw stimecmp, t0
    csrr a0, stimecmp
    CHECK 11, a0, 0x1234
    CHECK 12, s2, 0

    /* ---- the supervisor timer interrupt, from S alone ---- */
    la t0, s_timer
    csrw stvec, t0
    li t0, STIP
    csrs sie, t0
    li t0, -1
    csrw stimecmp, t0
    li s6, 0
    csrs sstatus, MSTATUS_SIE
    rdtime t0
    addi t0, t0, 1000               /* 100 us at 10 MHz */
    csrw stimecmp, t0
    li t1, 20000000
1:  bnez s6, 2f
    wfi
    rdtime t2
    sub t2, t2, t0
    blt t2, t1, 1b
2:  csrc sstatus, MSTATUS_SIE
    CHECK 13, s6, 1
    li t0, (1 << 63) | 5
    CHECKR 14, s2, t0

    /* ---- U never accesses stimecmp ---- */
    li t0, MSTATUS_SPP
    csrc sstatus, t0
    la t0, u_mode
    csrw sepc, t0
    sret
u_mode:
    EXPECT_TRAP 1f
    csrr a0, stimecmp
1:  CHECK 15, s2, 2
    PASS

    ALIGN4
s_timer:
    csrr s2, scause
    addi s6, s6, 1
    li t6, -1
    csrw stimecmp, t6               /* acknowledges: STIP falls */
    sret

/* M-mode ecall service for S: a7 = 1: mcounteren.TM = 1, menvcfg.STCE = 0; a7 = 2: both on.
 * Any other trap: record and resume at s9. */
    ALIGN4
m_service:
    csrr s2, mcause
    li t6, 9
    bne s2, t6, 3f
    li t6, 2
    csrw mcounteren, t6
    csrw menvcfg, zero
    li t6, 2
    bne a7, t6, 2f
    li t6, STCE
    csrw menvcfg, t6
2:  csrr t6, mepc
    addi t6, t6, 4
    csrw mepc, t6
    mret
3:  csrr s4, mtval
    csrw mepc, s9
    mret
TEST_END
