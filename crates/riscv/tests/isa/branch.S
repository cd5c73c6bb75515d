/* Conditional branches (taken and not taken, signed and unsigned, forward and backward), jal and
 * jalr: link values, jalr clearing bit 0 of the target, rd == rs1, negative offsets, and a 4-byte
 * instruction that straddles a 4 KiB page boundary. */
#include "common.h"

/* Branch `op a0, a1` with a0 = x, a1 = y must be taken. */
.macro TAKEN n, op, x, y
    li a0, \x
    li a1, \y
    li s11, \n
    \op a0, a1, 1f
    j branch_fail
1:
.endm

/* ... must fall through. */
.macro NOT_TAKEN n, op, x, y
    li a0, \x
    li a1, \y
    li s11, \n
    \op a0, a1, 1f
    j 2f
1:  j branch_fail
2:
.endm

TEST_BEGIN
    j main

branch_fail:                        /* s11 = check number */
    li s10, 0
    li t6, 1
    j test_fail

main:
    TAKEN     1, beq, 5, 5
    NOT_TAKEN 2, beq, 5, 6
    TAKEN     3, bne, 5, 6
    NOT_TAKEN 4, bne, -1, -1
    TAKEN     5, blt, -1, 0         /* signed: -1 < 0 */
    NOT_TAKEN 6, blt, 0, -1
    NOT_TAKEN 7, blt, 3, 3
    TAKEN     8, blt, 0x8000000000000000, 0x7fffffffffffffff
    TAKEN     9, bge, 3, 3
    TAKEN     10, bge, 0, -1
    NOT_TAKEN 11, bge, -1, 0
    TAKEN     12, bltu, 0, -1       /* unsigned: 0 < 2^64-1 */
    NOT_TAKEN 13, bltu, -1, 0
    NOT_TAKEN 14, bltu, 7, 7
    NOT_TAKEN 15, bltu, 0x8000000000000000, 0x7fffffffffffffff
    TAKEN     16, bgeu, -1, 0
    TAKEN     17, bgeu, 7, 7
    NOT_TAKEN 18, bgeu, 0, -1
    TAKEN     19, bgeu, 0x8000000000000000, 0x7fffffffffffffff
    /* branches compare all 64 bits */
    NOT_TAKEN 20, beq, 0x100000005, 5
    TAKEN     21, bne, 0x100000005, 5

    /* backward branch: sum 10 + 9 + ... + 1 = 55 */
    li a0, 10
    li a1, 0
1:  add a1, a1, a0
    addi a0, a0, -1
    bnez a0, 1b
    CHECK 22, a1, 55

    /* ---- jal ---- */
    jal ra, func_ret7               /* returns a0 = 7 */
jal_ret:
    CHECK 23, a0, 7
    la t0, jal_ret
    CHECKR 24, ra, t0               /* ra = address after the jal */
    jal a2, 1f                      /* any rd links */
jal_a2:
    j branch_fail_25
1:  la t0, jal_a2
    CHECKR 25, a2, t0
    li a3, 0
    jal zero, 1f                    /* j: no link */
    li a3, 1
1:  CHECK 26, a3, 0

    /* ---- jalr ---- */
    la a0, jalr_target
    addi a0, a0, 1                  /* odd address: jalr clears bit 0 */
    li a1, 0
    jalr ra, 0(a0)
jalr_ret1:
    CHECK 27, a1, 0x11              /* target ran */
    la t0, jalr_ret1
    CHECKR 28, ra, t0

    la a0, jalr_target
    addi a0, a0, -8
    li a1, 0
    jalr ra, 8(a0)                  /* positive offset */
    CHECK 29, a1, 0x11

    la a0, jalr_target
    addi a0, a0, 4
    li a1, 0
    jalr ra, -3(a0)                 /* target + 1: bit 0 cleared -> target */
    CHECK 30, a1, 0x11

    /* rd == rs1: the target uses the old value, rd gets the link */
    la a0, rd_eq_rs1
    jalr a0, 0(a0)
rd_eq_rs1_ret:
    j branch_fail_31
rd_eq_rs1:
    la t0, rd_eq_rs1_ret
    CHECKR 31, a0, t0

    la a1, rd_eq_rs1_b
    addi a1, a1, -16
    jalr a1, 16(a1)
rd_eq_rs1_b_ret:
    j branch_fail_32
rd_eq_rs1_b:
    la t0, rd_eq_rs1_b_ret
    CHECKR 32, a1, t0

    /* jalr with rd = x0 and rs1 = ra: a plain return */
    call func_ret7
    CHECK 33, a0, 7

    /* ---- a 4-byte instruction straddling a page boundary (bytes 4094..4097 of a page),
     * entered by falling through from the previous instruction and by a direct jump ---- */
    li a0, 0
    call straddle_a                 /* 1 + 2 + 4 */
    CHECK 34, a0, 7
    li a0, 0
    call straddle_b                 /* 2 + 4 */
    CHECK 35, a0, 6
    li a0, 0
    call straddle_a
    CHECK 36, a0, 7                 /* again, now that both pages were seen */

    PASS

func_ret7:
    li a0, 7
    ret

jalr_target:
    li a1, 0x11
    jalr zero, 0(ra)

branch_fail_25:
    li s11, 25
    j branch_fail
branch_fail_31:
    li s11, 31
    j branch_fail
branch_fail_32:
    li s11, 32
    j branch_fail

    .balign 4096
    .skip 4090
straddle_a:
    addi a0, a0, 1                  /* bytes 4090..4093 */
straddle_b:
    addi a0, a0, 2                  /* bytes 4094..4097: crosses into the next page */
    addi a0, a0, 4
    ret

TEST_END
