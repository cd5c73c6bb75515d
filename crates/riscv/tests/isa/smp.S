/* Two harts (run with cpus = 2). Both start here in M-mode with a0 = mhartid. Checks: a0 and
 * mhartid agree, AMO increments from both harts are never lost, a message passed with a plain
 * store plus an AMO flag is seen whole, and hart 0 wakes hart 1 from WFI with a CLINT
 * software interrupt (msip of hart 1 at CLINT_MSIP + 4). Hart 1 reports failures too. */
#include "common.h"

#define N 100000
#define MIE_MSIE_BIT 8

TEST_BEGIN
    csrr s0, mhartid
    CHECKR 1, a0, s0                /* the board passes the hart id in a0 */
    slli t0, s0, 12                 /* 4 KiB of stack each */
    sub sp, sp, t0
    la s1, shared
    addi s3, s1, 4                  /* &done */
    addi s4, s1, 8                  /* &flag */
    bnez s0, hart1

hart0:
    /* concurrent AMO increments */
    li t0, N
1:  li t1, 1
    amoadd.w zero, t1, (s1)        /* shared.counter */
    addi t0, t0, -1
    bnez t0, 1b
    li t1, 1
    amoadd.w zero, t1, (s3)        /* shared.done */
    li t2, 2
1:  lw t1, 4(s1)
    bne t1, t2, 1b
    lw a0, 0(s1)
    CHECK 2, a0, 2 * N

    /* message passing: data, then the flag with release ordering */
    li t0, 0x1234567890abcdef
    sd t0, 16(s1)                   /* shared.data */
    li t1, 1
    amoswap.w.rl zero, t1, (s4)    /* shared.flag */
    li t2, 2                        /* hart 1 answers with flag = 2 */
1:  lw t1, 8(s1)
    bne t1, t2, 1b

    /* wake hart 1 from WFI with a software interrupt */
1:  lw t1, 12(s1)                   /* shared.sleeping: hart 1 is about to wait */
    beqz t1, 1b
    li t0, CLINT_MSIP + 4
    li t1, 1
    sw t1, 0(t0)
    li t2, 3
1:  lw t1, 8(s1)                    /* hart 1 sets flag = 3 once awake */
    bne t1, t2, 1b
    li t0, CLINT_MSIP + 4
    lw t1, 0(t0)                    /* hart 1 cleared its msip */
    CHECK 3, t1, 0
    PASS

hart1:
    CHECK 101, s0, 1
    li t0, N
1:  li t1, 1
    amoadd.w zero, t1, (s1)
    addi t0, t0, -1
    bnez t0, 1b
    li t1, 1
    amoadd.w zero, t1, (s3)

1:  lw t1, 8(s1)                    /* wait for the flag ... */
    beqz t1, 1b
    fence r, rw
    ld a0, 16(s1)                   /* ... then the data must be there */
    CHECK 102, a0, 0x1234567890abcdef
    li t1, 2
    amoswap.w zero, t1, (s4)

    li t0, MIE_MSIE_BIT
    csrw mie, t0                    /* wake on MSIP; mstatus.MIE stays 0: no trap */
    li t1, 1
    sw t1, 12(s1)
1:  wfi
    csrr t0, mip
    andi t0, t0, MIE_MSIE_BIT
    beqz t0, 1b
    li t0, CLINT_MSIP + 4
    sw zero, 0(t0)
    li t1, 3
    csrw mie, zero
    amoswap.w zero, t1, (s4)
1:  wfi                             /* done: idle until hart 0 powers off */
    j 1b

TEST_END

    .data
    .balign 16
shared:
    .word 0                         /*  0: counter */
    .word 0                         /*  4: done */
    .word 0                         /*  8: flag */
    .word 0                         /* 12: sleeping */
    .dword 0                        /* 16: data */
