/* LR/SC across two harts (run with cpus = 2). A store by another hart to the reserved address
 * between a hart's LR and its SC must make the SC fail (otherwise the other hart's update is
 * silently overwritten), and an lr/sc increment loop run on both harts at once must not lose
 * increments. */
#include "common.h"

#define N 100000

TEST_BEGIN
    csrr s0, mhartid
    slli t0, s0, 12
    sub sp, sp, t0
    la s1, shared                   /* 0: x  4: go  8: stored  12: counter  16: done */
    addi s3, s1, 12                 /* &counter */
    addi s4, s1, 16                 /* &done */
    bnez s0, hart1

hart0:
    /* ---- a store from hart 1 between LR and SC ---- */
    li t0, 5
    sw t0, 0(s1)
    lr.w a0, (s1)
    CHECK 1, a0, 5
    li t0, 1
    sw t0, 4(s1)                    /* go: hart 1 now stores 100 to x */
1:  lw t0, 8(s1)                    /* (plain loads while reserved are allowed) */
    beqz t0, 1b
    li t1, 6
    sc.w a1, t1, (s1)               /* x changed since the LR: must fail */
    lw a2, 0(s1)
    CHECK 2, a2, 100                /* hart 1's store survives */
    snez a1, a1
    CHECK 3, a1, 1

    /* ---- lr/sc increments from both harts ---- */
    li t0, N
1:  lr.w t1, (s3)
    addi t1, t1, 1
    sc.w t2, t1, (s3)
    bnez t2, 1b
    addi t0, t0, -1
    bnez t0, 1b
    li t1, 1
    amoadd.w zero, t1, (s4)
    li t2, 2
1:  lw t1, 0(s4)
    bne t1, t2, 1b
    lw a0, 0(s3)
    CHECK 4, a0, 2 * N
    PASS

hart1:
1:  lw t0, 4(s1)
    beqz t0, 1b
    li t0, 100
    sw t0, 0(s1)
    li t0, 1
    sw t0, 8(s1)

    li t0, N
1:  lr.w t1, (s3)
    addi t1, t1, 1
    sc.w t2, t1, (s3)
    bnez t2, 1b
    addi t0, t0, -1
    bnez t0, 1b
    li t1, 1
    amoadd.w zero, t1, (s4)
1:  wfi
    j 1b

TEST_END

    .data
    .balign 16
shared: .word 0, 0, 0, 0, 0, 0
