/* C extension: a program written with explicit compressed instructions (the harness checks with
 * objdump that they were assembled to 16-bit forms) computing known values: stack-pointer forms
 * (c.addi16sp, c.addi4spn, c.lwsp/c.swsp, c.ldsp/c.sdsp, c.fldsp/c.fsdsp), register-based loads
 * and stores, c.li/c.lui/c.addi/c.addiw, shifts and c.andi, the CA arithmetic group including
 * c.subw/c.addw, and control flow (c.j, c.beqz/c.bnez, c.jr, c.jalr). */
#include "common.h"

TEST_BEGIN
    li t0, MSTATUS_FS
    csrs mstatus, t0
    mv s5, sp                       /* remember sp (s5 is only used by trap handlers) */

    .option push
    .option rvc

    /* ---- stack-pointer forms ---- */
    c.addi16sp sp, -64              /* sp -= 64 */
    sub t0, s5, sp
    CHECK 1, t0, 64
    c.li a0, 21
    c.slli a0, 1                    /* 42 */
    c.sdsp a0, 8(sp)
    c.li a1, -3
    c.swsp a1, 16(sp)               /* 0xfffffffd */
    c.ldsp a2, 8(sp)
    CHECK 2, a2, 42
    c.lwsp a3, 16(sp)               /* lw sign-extends */
    CHECK 3, a3, 0xfffffffffffffffd
    c.addi4spn a4, sp, 8            /* a4 = sp + 8 */
    c.ld a5, 0(a4)
    CHECK 4, a5, 42
    addi t0, sp, 8
    CHECKR 5, a4, t0
    c.addi4spn s1, sp, 16
    c.lw a5, 0(s1)
    CHECK 6, a5, 0xfffffffffffffffd
    c.addi16sp sp, 496              /* largest positive step */
    c.addi16sp sp, -496
    c.addi16sp sp, 64
    CHECKR 7, sp, s5

    /* ---- register-based loads and stores (x8..x15) ---- */
    la s0, cdata
    c.li a0, 7
    c.sw a0, 4(s0)
    c.lw a1, 4(s0)
    CHECK 8, a1, 7
    c.li a0, -1
    c.sd a0, 8(s0)
    c.ld a1, 8(s0)
    CHECK 9, a1, 0xffffffffffffffff
    sw zero, 12(s0)
    ld a1, 8(s0)
    CHECK 10, a1, 0x00000000ffffffff

    /* ---- constants ---- */
    c.li a0, -32                    /* most negative c.li */
    CHECK 11, a0, 0xffffffffffffffe0
    c.li a0, 31
    CHECK 12, a0, 31
    c.lui a0, 1
    CHECK 13, a0, 0x1000
    c.lui a0, 0x1f                  /* 0x1f000 */
    CHECK 14, a0, 0x1f000
    c.lui a0, 0xfffff               /* imm sign-extends from bit 17: -4096 */
    CHECK 15, a0, 0xfffffffffffff000
    c.lui a0, 0xfffe0               /* most negative: -2^17 */
    CHECK 16, a0, 0xfffffffffffe0000
    c.li a0, 5
    c.addi a0, -6
    CHECK 17, a0, 0xffffffffffffffff
    c.addi a0, 31
    CHECK 18, a0, 30
    li a0, 0x7fffffff
    c.addiw a0, 1                   /* 32-bit wrap, sign-extended */
    CHECK 19, a0, 0xffffffff80000000
    li a0, 0x1ffffffff
    c.addiw a0, 0                   /* sext.w */
    CHECK 20, a0, 0xffffffffffffffff
    c.nop

    /* ---- shifts and c.andi ---- */
    c.li a0, -1
    c.srli a0, 60                   /* logical */
    CHECK 21, a0, 0xf
    c.li a0, -16
    c.srai a0, 2                    /* arithmetic: -4 */
    CHECK 22, a0, 0xfffffffffffffffc
    c.li a0, 1
    c.slli a0, 63
    CHECK 23, a0, 0x8000000000000000
    c.srai a0, 63
    CHECK 24, a0, 0xffffffffffffffff
    c.li a0, 1
    c.slli a0, 32
    c.srli a0, 31
    CHECK 25, a0, 2
    c.li a0, -1
    c.andi a0, -32                  /* imm sign-extended */
    CHECK 26, a0, 0xffffffffffffffe0
    c.andi a0, 0x1f                 /* ...e0 & 0x1f = 0 */
    CHECK 27, a0, 0
    c.li a0, 0x1d
    c.andi a0, 0xe                  /* 0b11101 & 0b01110 = 0b01100 */
    CHECK 28, a0, 0xc

    /* ---- CA group ---- */
    li a0, 0x80000000
    c.li a1, 1
    c.subw a0, a1                   /* 0x7fffffff */
    CHECK 29, a0, 0x7fffffff
    c.addw a0, a1                   /* 0x80000000 sign-extended */
    CHECK 30, a0, 0xffffffff80000000
    li a0, 0x100000000
    c.li a1, 1
    c.subw a0, a1                   /* low half 0 - 1 = -1 */
    CHECK 31, a0, 0xffffffffffffffff
    c.li a0, 12
    c.li a1, 10
    c.sub a0, a1
    CHECK 32, a0, 2
    c.li a0, 12                     /* 0b1100 */
    c.xor a0, a1                    /* ^ 0b1010 = 0b0110 */
    CHECK 33, a0, 6
    c.li a0, 12
    c.or a0, a1
    CHECK 34, a0, 14
    c.li a0, 12
    c.and a0, a1
    CHECK 35, a0, 8
    c.mv a2, a1
    CHECK 36, a2, 10
    c.add a2, a1
    CHECK 37, a2, 20

    /* ---- control flow ---- */
    c.li a0, 0
    c.j 1f
    c.li a0, 1                      /* skipped */
1:  CHECK 38, a0, 0
    c.li a0, 0
    c.li a1, 5
    c.beqz a0, 1f                   /* taken */
    c.li a1, 6
1:  CHECK 39, a1, 5
    c.li a0, 3
    c.beqz a0, 1f                   /* not taken */
    c.li a1, 7
1:  CHECK 40, a1, 7
    c.bnez a0, 1f                   /* taken */
    c.li a1, 8
1:  CHECK 41, a1, 7
    /* loop: sum 10..1 with c.add / c.addi / c.bnez backward */
    c.li a0, 10
    c.li a1, 0
1:  c.add a1, a0
    c.addi a0, -1
    c.bnez a0, 1b
    CHECK 42, a1, 55
    /* c.jalr / c.jr */
    la a5, cfunc
    c.jalr a5                       /* ra = next instruction */
cjalr_ret:
    CHECK 43, a0, 0x99
    la t0, cjalr_ret
    CHECKR 44, ra, t0               /* link = pc + 2 */
    la a5, 1f
    c.jr a5
    c.li a0, 0                      /* skipped */
1:  CHECK 45, a0, 0x99

    /* ---- compressed FP loads and stores ---- */
    la s0, cdata
    li t0, 0x400921fb54442d18
    sd t0, 16(s0)
    c.fld fa0, 16(s0)
    c.addi16sp sp, -32
    c.fsdsp fa0, 24(sp)
    c.fldsp fa1, 24(sp)
    c.fsd fa1, 0(s0)
    c.addi16sp sp, 32
    ld t0, 0(s0)
    CHECK 46, t0, 0x400921fb54442d18
    CHECKF 47, fa1, 0x400921fb54442d18

    /* ---- a mix of 16- and 32-bit instructions, so 32-bit ones sit at 2 mod 4 ---- */
    .balign 4
    c.li a0, 1
    .option push
    .option norvc
    addi a0, a0, 2                  /* 32-bit, at an address that is 2 mod 4 */
    .option pop
    c.addi a0, 4
    CHECK 48, a0, 7

    .balign 4
    .option pop
    PASS

    .option push
    .option rvc
cfunc:
    li a0, 0x99
    c.jr ra
    .option pop

TEST_END

    .data
    .balign 8
cdata: .dword 0, 0, 0, 0
