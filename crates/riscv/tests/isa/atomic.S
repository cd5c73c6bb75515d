/* A extension on one hart: every AMO in .w and .d form with the old value it returns (sign-
 * extended for .w), the value it leaves in memory and its neighbours untouched; LR/SC success,
 * SC without a reservation, SC to a different address (which also drops the reservation), and a
 * misaligned AMO trapping. */
#include "common.h"

/* Word AMO on w0 = 0x80000001 (neighbour w1 = 0xaaaaaaaa) with source src: returns the old
 * value sign-extended and leaves `new` in memory. */
.macro AMOW n, op, src, new
    li t0, 0x80000001
    sw t0, 0(s0)
    li t0, 0xaaaaaaaa
    sw t0, 4(s0)
    li a1, \src
    \op a0, a1, (s0)
    CHECK \n, a0, 0xffffffff80000001
    lwu a2, 0(s0)
    CHECK \n, a2, \new
    lwu a2, 4(s0)
    CHECK \n, a2, 0xaaaaaaaa
.endm

/* Doubleword AMO on d0 = 0x8000000000000001. */
.macro AMOD n, op, src, new
    li t0, 0x8000000000000001
    sd t0, 0(s1)
    li a1, \src
    \op a0, a1, (s1)
    CHECK \n, a0, 0x8000000000000001
    ld a2, 0(s1)
    CHECK \n, a2, \new
.endm

TEST_BEGIN
    la s0, words
    la s1, dwords

    AMOW 1, amoswap.w, 0x12345678, 0x12345678
    AMOW 2, amoadd.w,  0x7fffffff, 0          /* 0x80000001 + 0x7fffffff = 2^32: wraps in 32 bits */
    AMOW 3, amoxor.w,  0xffffffff, 0x7ffffffe
    AMOW 4, amoand.w,  0x0000ffff, 0x00000001
    AMOW 5, amoor.w,   0x00ff0000, 0x80ff0001
    AMOW 6, amomin.w,  1, 0x80000001          /* signed: -2147483647 < 1 */
    AMOW 7, amomin.w,  0x80000000, 0x80000000 /* low 32 bits of the source: INT32_MIN */
    AMOW 8, amomax.w,  1, 1
    AMOW 9, amomax.w,  0xffffffff, 0xffffffff /* -1 > -2147483647 */
    AMOW 10, amominu.w, 1, 1                  /* unsigned: 1 < 0x80000001 */
    AMOW 11, amomaxu.w, 1, 0x80000001
    AMOW 12, amomaxu.w, 0xffffffff, 0xffffffff
    AMOW 13, amominu.w, 0xffffffff80000000, 0x80000000 /* upper half of the source ignored */
    AMOW 14, amoadd.w,  0x100000001, 0x80000002
    AMOW 15, amoswap.w.aqrl, 0, 0

    AMOD 16, amoswap.d, 0x123456789abcdef0, 0x123456789abcdef0
    AMOD 17, amoadd.d,  -1, 0x8000000000000000
    AMOD 18, amoxor.d,  0x8000000000000001, 0
    AMOD 19, amoand.d,  0xff, 1
    AMOD 20, amoor.d,   0x0f00, 0x8000000000000f01
    AMOD 21, amomin.d,  0, 0x8000000000000001 /* signed: negative wins */
    AMOD 22, amomax.d,  0, 0
    AMOD 23, amominu.d, 0, 0
    AMOD 24, amomaxu.d, 0, 0x8000000000000001
    AMOD 25, amomaxu.d, -1, 0xffffffffffffffff
    AMOD 26, amoadd.d.aq, 0x7fffffffffffffff, 0 /* 2^63 + 1 + 2^63 - 1 = 2^64 */

    /* rd = x0: memory still updated */
    li t0, 10
    sd t0, 0(s1)
    li a1, 5
    amoadd.d zero, a1, (s1)
    ld a2, 0(s1)
    CHECK 27, a2, 15
    /* rd = rs2: rd gets the old value, memory the old rs2 */
    li a1, 99
    amoswap.d a1, a1, (s1)
    CHECK 28, a1, 15
    ld a2, 0(s1)
    CHECK 28, a2, 99

    /* ---- LR/SC ---- */
    li t0, 0x80000001
    sw t0, 0(s0)
    lr.w a0, (s0)                   /* sign-extended like lw */
    CHECK 29, a0, 0xffffffff80000001
    li a1, 0x55
    sc.w a2, a1, (s0)               /* reserved: succeeds, rd = 0 */
    CHECK 30, a2, 0
    lwu a3, 0(s0)
    CHECK 31, a3, 0x55
    li a1, 0x66
    sc.w a2, a1, (s0)               /* the reservation was used up: fails, rd != 0 */
    beqz a2, 1f
    li a2, 1
1:  CHECK 32, a2, 1
    lwu a3, 0(s0)
    CHECK 33, a3, 0x55              /* and memory is unchanged */

    li t0, 0x1111
    sd t0, 0(s1)
    li t0, 0x2222
    sd t0, 8(s1)
    lr.d a0, (s1)
    CHECK 34, a0, 0x1111
    li a1, 0x3333
    addi a5, s1, 8
    sc.d a2, a1, (a5)               /* not the reserved address: fails */
    beqz a2, 1f
    li a2, 1
1:  CHECK 35, a2, 1
    ld a3, 8(s1)
    CHECK 36, a3, 0x2222
    sc.d a2, a1, (s1)               /* any SC drops the reservation: this fails too */
    beqz a2, 1f
    li a2, 1
1:  CHECK 37, a2, 1
    ld a3, 0(s1)
    CHECK 38, a3, 0x1111

    /* an lr/sc increment loop */
    sd zero, 0(s1)
    li a4, 100
1:  lr.d a0, (s1)
    addi a0, a0, 3
    sc.d a2, a0, (s1)
    bnez a2, 1b
    addi a4, a4, -1
    bnez a4, 1b
    ld a3, 0(s1)
    CHECK 39, a3, 300

    /* lr.d then sc.d of a new value: full 64 bits written */
    lr.d a0, (s1)
    li a1, 0xfedcba9876543210
    sc.d a2, a1, (s1)
    CHECK 40, a2, 0
    ld a3, 0(s1)
    CHECK 41, a3, 0xfedcba9876543210

    /* ---- a misaligned AMO traps: store/AMO address-misaligned (6) or access fault (7) ---- */
    la t0, m_trap_record
    csrw mtvec, t0
    addi a5, s1, 2
    EXPECT_TRAP 1f
    amoadd.w a0, a1, (a5)
1:  addi t0, s2, -6
    li t1, 1
    bleu t0, t1, 2f                 /* cause 6 or 7 */
    CHECK 42, s2, 6
2:  CHECKR 43, s4, a5               /* mtval = the address */

    PASS
TEST_END

    .data
    .balign 16
words:  .word 0, 0, 0, 0
dwords: .dword 0, 0
