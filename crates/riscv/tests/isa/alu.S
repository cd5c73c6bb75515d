/* RV64I integer ALU: register and immediate forms, the 32-bit W forms, shift amounts at and past
 * the edges, sign extension of immediates and of W results, lui/auipc, and x0. */
#include "common.h"

TEST_BEGIN

    /* ---- add / sub / addi ---- */
    li a0, 0x7fffffffffffffff
    addi a1, a0, 1                  /* INT64_MAX + 1 wraps to INT64_MIN */
    CHECK 1, a1, 0x8000000000000000
    addi a1, zero, -1               /* 12-bit immediate is sign-extended */
    CHECK 2, a1, 0xffffffffffffffff
    addi a1, zero, -2048            /* most negative immediate */
    CHECK 3, a1, 0xfffffffffffff800
    addi a1, zero, 2047
    CHECK 4, a1, 0x7ff
    li a0, 5
    li a1, 7
    sub a2, a0, a1                  /* 5 - 7 = -2 */
    CHECK 5, a2, 0xfffffffffffffffe
    li a0, 0x8000000000000000
    li a1, 1
    sub a2, a0, a1                  /* INT64_MIN - 1 wraps to INT64_MAX */
    CHECK 6, a2, 0x7fffffffffffffff
    add a2, a0, a0                  /* 2^63 + 2^63 = 2^64 -> 0 */
    CHECK 7, a2, 0

    /* ---- slt / sltu / slti / sltiu ---- */
    li a0, -1
    li a1, 1
    slt a2, a0, a1                  /* -1 < 1 signed */
    CHECK 8, a2, 1
    sltu a2, a0, a1                 /* 0xffff...ff < 1 unsigned? no */
    CHECK 9, a2, 0
    slti a2, a0, 0                  /* -1 < 0 */
    CHECK 10, a2, 1
    sltiu a2, a1, -1                /* imm sign-extends to 2^64-1; 1 < that */
    CHECK 11, a2, 1
    sltiu a2, a0, -1                /* equal: not less */
    CHECK 12, a2, 0
    sltiu a2, zero, 1               /* seqz of 0 */
    CHECK 13, a2, 1
    slt a2, a1, a1
    CHECK 14, a2, 0
    li a3, 0x8000000000000000
    slt a2, a3, a1                  /* INT64_MIN < 1 */
    CHECK 15, a2, 1
    sltu a2, a3, a1                 /* 2^63 < 1 unsigned? no */
    CHECK 16, a2, 0

    /* ---- and / or / xor and immediates ---- */
    li a0, 0xf0f0f0f0f0f0f0f0
    li a1, 0xff00ff00ff00ff00
    and a2, a0, a1
    CHECK 17, a2, 0xf000f000f000f000
    or a2, a0, a1
    CHECK 18, a2, 0xfff0fff0fff0fff0
    xor a2, a0, a1
    CHECK 19, a2, 0x0ff00ff00ff00ff0
    andi a2, a0, -16                /* mask 0xffff...fff0 keeps all of a0 */
    CHECK 20, a2, 0xf0f0f0f0f0f0f0f0
    andi a2, a0, 0x0ff
    CHECK 21, a2, 0xf0
    ori a2, zero, -1
    CHECK 22, a2, 0xffffffffffffffff
    xori a2, a0, -1                 /* not */
    CHECK 23, a2, 0x0f0f0f0f0f0f0f0f
    ori a2, a0, 0x70f               /* 0x...f0f0 | 0x70f = 0x...f7ff */
    CHECK 24, a2, 0xf0f0f0f0f0f0f7ff

    /* ---- 64-bit shifts ---- */
    li a0, 1
    slli a1, a0, 63
    CHECK 25, a1, 0x8000000000000000
    srai a2, a1, 63                 /* arithmetic: sign fills */
    CHECK 26, a2, 0xffffffffffffffff
    srli a2, a1, 63                 /* logical */
    CHECK 27, a2, 1
    srai a2, a1, 0
    CHECK 28, a2, 0x8000000000000000
    li a3, 67                       /* only the low 6 bits count: 67 & 63 = 3 */
    sll a2, a0, a3
    CHECK 29, a2, 8
    li a3, 127                      /* 127 & 63 = 63 */
    sll a2, a0, a3
    CHECK 30, a2, 0x8000000000000000
    srl a2, a1, a3
    CHECK 31, a2, 1
    sra a2, a1, a3
    CHECK 32, a2, 0xffffffffffffffff
    li a3, 64                       /* 64 & 63 = 0: no shift */
    sra a2, a1, a3
    CHECK 33, a2, 0x8000000000000000
    srl a2, a1, a3
    CHECK 34, a2, 0x8000000000000000
    li a0, 0x8123456789abcdef
    srli a2, a0, 4
    CHECK 35, a2, 0x08123456789abcde
    srai a2, a0, 4
    CHECK 36, a2, 0xf8123456789abcde
    slli a2, a0, 4
    CHECK 37, a2, 0x123456789abcdef0
    slli a2, a0, 32
    CHECK 38, a2, 0x89abcdef00000000

    /* ---- W forms: operate on the low 32 bits, sign-extend the 32-bit result ---- */
    li a0, 0x7fffffff
    addiw a1, a0, 1                 /* 0x80000000 -> sign-extended */
    CHECK 39, a1, 0xffffffff80000000
    li a0, 0xffffffff00000005
    addiw a1, a0, 0                 /* sext.w drops the upper half */
    CHECK 40, a1, 5
    li a0, 0x00000000ffffffff
    addiw a1, a0, 0
    CHECK 41, a1, 0xffffffffffffffff
    li a0, 0x80000000
    addw a1, a0, a0                 /* 0x80000000 + 0x80000000 = 0x1_00000000 -> low 32 = 0 */
    CHECK 42, a1, 0
    li a0, 0
    li a1, 1
    subw a2, a0, a1
    CHECK 43, a2, 0xffffffffffffffff
    li a0, 0x80000000
    subw a2, a0, a1                 /* 0x80000000 - 1 = 0x7fffffff, positive */
    CHECK 44, a2, 0x7fffffff
    li a0, 0x123456789
    li a1, 0x100000001
    addw a2, a0, a1                 /* low 32: 0x23456789 + 1 */
    CHECK 45, a2, 0x2345678a
    li a0, 1
    li a1, 31
    sllw a2, a0, a1
    CHECK 46, a2, 0xffffffff80000000
    li a1, 32                       /* 32 & 31 = 0 */
    sllw a2, a0, a1
    CHECK 47, a2, 1
    li a1, 63                       /* 63 & 31 = 31 */
    sllw a2, a0, a1
    CHECK 48, a2, 0xffffffff80000000
    slliw a2, a0, 31
    CHECK 49, a2, 0xffffffff80000000
    li a0, 0xffffffff80000000
    li a1, 31
    srlw a2, a0, a1                 /* 0x80000000 >> 31 logical = 1 */
    CHECK 50, a2, 1
    li a1, 0
    srlw a2, a0, a1                 /* shift 0 still sign-extends bit 31 */
    CHECK 51, a2, 0xffffffff80000000
    li a0, 0x180000000
    srliw a2, a0, 1                 /* low 32 = 0x80000000, >> 1 = 0x40000000 */
    CHECK 52, a2, 0x40000000
    li a0, 0x80000000               /* positive as 64 bits, negative as 32 */
    sraiw a2, a0, 4
    CHECK 53, a2, 0xfffffffff8000000
    sraiw a2, a0, 31
    CHECK 54, a2, 0xffffffffffffffff
    li a0, 0xfffffff07ffffff0       /* upper half ignored: 0x7ffffff0 >> 4 */
    sraiw a2, a0, 4
    CHECK 55, a2, 0x07ffffff
    li a0, 0x80000000
    li a1, 36                       /* 36 & 31 = 4 */
    sraw a2, a0, a1
    CHECK 56, a2, 0xfffffffff8000000
    li a0, 0x12345678ffffffff
    srliw a2, a0, 0                 /* low 32 = 0xffffffff sign-extends */
    CHECK 57, a2, 0xffffffffffffffff
    srliw a2, a0, 4
    CHECK 58, a2, 0x0fffffff

    /* ---- lui / auipc ---- */
    lui a0, 0x80000                 /* bit 31 set: sign-extended on RV64 */
    CHECK 59, a0, 0xffffffff80000000
    lui a0, 0x7ffff
    CHECK 60, a0, 0x7ffff000
    lui a0, 0xfffff
    CHECK 61, a0, 0xfffffffffffff000
here:
    auipc a0, 0
    la a1, here
    CHECKR 62, a0, a1
here2:
    auipc a0, 0x1                   /* pc + 0x1000 */
    la a1, here2
    li a2, 0x1000
    add a1, a1, a2
    CHECKR 63, a0, a1
here3:
    auipc a0, 0xfffff               /* pc - 0x1000 */
    la a1, here3
    li a2, 0x1000
    sub a1, a1, a2
    CHECKR 64, a0, a1

    /* ---- x0 is hardwired to zero ---- */
    addi x0, x0, 5
    CHECK 65, x0, 0
    li a0, 0x123
    add x0, a0, a0
    mv a1, x0
    CHECK 66, a1, 0
    lui x0, 0x12345
    CHECK 67, x0, 0

    PASS
TEST_END
