/* Self-modifying code: instructions that already ran are overwritten (by sw, sh, sb, sd and an
 * AMO), fence.i is executed, and the next execution must see the new instruction — in a called
 * function, in straight-line code just ahead on the page being executed, in a loop rewriting
 * its own body every iteration, with a 32-bit instruction replaced by two 16-bit ones, and in
 * code built byte by byte in a data page.
 * Encodings: addi a0, zero, k = (k << 20) | 0x513; ret = 0x00008067; c.li a0, 5 = 0x4515;
 * c.nop = 0x0001. */
#include "common.h"

TEST_BEGIN
    call patch_fn
    CHECK 1, a0, 1
    la t0, patch_fn
    li t1, 0x00200513               /* addi a0, zero, 2 */
    sw t1, 0(t0)
    fence.i
    call patch_fn
    CHECK 2, a0, 2

    /* straight-line code just ahead */
    la t0, 1f
    li t1, 0x00300513               /* addi a0, zero, 3 */
    sw t1, 0(t0)
    fence.i
1:  addi a0, zero, 7
    CHECK 3, a0, 3

    /* a loop rewriting its own body: iteration i executes addi a0, zero, i */
    li s0, 0
    li s1, 1
loop:
    la t0, loop_site
    slli t1, s1, 20
    ori t1, t1, 0x513
    sw t1, 0(t0)
    fence.i
loop_site:
    addi a0, zero, 0
    add s0, s0, a0
    addi s1, s1, 1
    li t2, 11
    bne s1, t2, loop
    CHECK 4, s0, 55                 /* 1 + 2 + ... + 10 */

    /* 32-bit instruction replaced by two 16-bit ones */
    la t0, patch_fn
    li t1, 0x00014515               /* c.li a0, 5; c.nop */
    sw t1, 0(t0)
    fence.i
    call patch_fn
    CHECK 5, a0, 5

    /* patched by an AMO */
    la t0, patch_fn
    li t1, 0x00900513               /* addi a0, zero, 9 */
    amoswap.w t2, t1, (t0)
    CHECK 6, t2, 0x00014515         /* the AMO read the previous patch */
    fence.i
    call patch_fn
    CHECK 7, a0, 9

    /* patched one halfword at a time: only the immediate's half changes */
    la t0, patch_fn
    li t1, 0x0230                   /* upper half of 0x02300513 = addi a0, zero, 0x23 */
    sh t1, 2(t0)
    fence.i
    call patch_fn
    CHECK 8, a0, 0x23

    /* code assembled byte by byte in a data page, then replaced with one sd */
    li s2, SCRATCH + 0x2000
    la t0, routine_a
    li t1, 8
1:  lbu t2, 0(t0)
    sb t2, 0(s2)
    addi t0, t0, 1
    addi s2, s2, 1
    addi t1, t1, -1
    bnez t1, 1b
    fence.i
    li s2, SCRATCH + 0x2000
    jalr ra, 0(s2)
    CHECK 9, a0, 0x55
    li t0, 0x0000806706600513       /* addi a0, zero, 0x66; ret */
    sd t0, 0(s2)
    fence.i
    jalr ra, 0(s2)
    CHECK 10, a0, 0x66
    li t0, 0x0000806707700513       /* again, same page, without any other code in between */
    sd t0, 0(s2)
    fence.i
    jalr ra, 0(s2)
    CHECK 11, a0, 0x77

    PASS

patch_fn:
    addi a0, zero, 1
    ret

    .section .rodata
    .balign 8
routine_a:
    .word 0x05500513                /* addi a0, zero, 0x55 */
    .word 0x00008067                /* ret */
    .text

TEST_END
