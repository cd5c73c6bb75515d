/* M extension: mul/mulh/mulhsu/mulhu including the signed/unsigned mixes at the extremes, the W
 * forms with their sign extension, and division/remainder by zero and overflow (INT_MIN / -1)
 * in 64- and 32-bit forms, which must not trap and give the values the spec fixes. */
#include "common.h"

TEST_BEGIN
    /* ---- mul ---- */
    li a0, 0x7fffffffffffffff
    li a1, 2
    mul a2, a0, a1                  /* low 64 of 2^64 - 2 */
    CHECK 1, a2, 0xfffffffffffffffe
    li a0, -3
    li a1, 7
    mul a2, a0, a1
    CHECK 2, a2, 0xffffffffffffffeb /* -21 */
    li a0, 0x123456789
    li a1, 0x100000000
    mul a2, a0, a1                  /* shifts left 32: upper part lost */
    CHECK 3, a2, 0x2345678900000000

    /* ---- high halves: (-1) * (-1) ---- */
    li a0, -1
    li a1, -1
    mulh a2, a0, a1                 /* signed: 1 -> high 0 */
    CHECK 4, a2, 0
    mulhu a2, a0, a1                /* (2^64-1)^2 = 2^128 - 2^65 + 1 -> high 2^64 - 2 */
    CHECK 5, a2, 0xfffffffffffffffe
    mulhsu a2, a0, a1               /* -1 * (2^64-1) = -2^64 + 1 -> high -1 */
    CHECK 6, a2, 0xffffffffffffffff
    /* ---- INT64_MIN * INT64_MIN ---- */
    li a0, 0x8000000000000000
    mulh a2, a0, a0                 /* (-2^63)^2 = 2^126 -> high 2^62 */
    CHECK 7, a2, 0x4000000000000000
    mulhu a2, a0, a0                /* (2^63)^2 = 2^126 */
    CHECK 8, a2, 0x4000000000000000
    mulhsu a2, a0, a0               /* -2^63 * 2^63 = -2^126 -> high -2^62 */
    CHECK 9, a2, 0xc000000000000000
    mul a2, a0, a0
    CHECK 10, a2, 0
    li a1, -1
    mulh a2, a0, a1                 /* -2^63 * -1 = 2^63: fits in 128 bits, high 0 */
    CHECK 11, a2, 0
    mul a2, a0, a1                  /* low 64 = 2^63 */
    CHECK 12, a2, 0x8000000000000000
    li a0, 2
    li a1, -1
    mulhsu a2, a0, a1               /* 2 * (2^64-1) = 2^65 - 2 -> high 1 */
    CHECK 13, a2, 1
    mulhsu a2, a1, a0               /* -1 * 2 = -2 -> high -1 */
    CHECK 14, a2, 0xffffffffffffffff
    li a0, 0x123456789abcdef0
    li a1, 0x10
    mulhu a2, a0, a1                /* top nibble shifted out: 0x1 */
    CHECK 15, a2, 1

    /* ---- mulw: low 32 bits of the product, sign-extended ---- */
    li a0, 0x80000000
    li a1, 2
    mulw a2, a0, a1
    CHECK 16, a2, 0
    li a0, 0x7fffffff
    mulw a2, a0, a1                 /* 0xfffffffe -> -2 */
    CHECK 17, a2, 0xfffffffffffffffe
    li a0, 0x100000003              /* upper halves of the inputs are ignored */
    li a1, 0xff00000005
    mulw a2, a0, a1
    CHECK 18, a2, 15

    /* ---- 64-bit division: truncation toward zero ---- */
    li a0, -7
    li a1, 2
    div a2, a0, a1
    CHECK 19, a2, 0xfffffffffffffffd /* -3 */
    rem a2, a0, a1                  /* sign follows the dividend */
    CHECK 20, a2, 0xffffffffffffffff /* -1 */
    li a0, 7
    li a1, -2
    div a2, a0, a1
    CHECK 21, a2, 0xfffffffffffffffd /* -3 */
    rem a2, a0, a1
    CHECK 22, a2, 1
    li a0, -7
    li a1, 2
    divu a2, a0, a1                 /* (2^64 - 7) / 2 */
    CHECK 23, a2, 0x7ffffffffffffffc
    remu a2, a0, a1
    CHECK 24, a2, 1
    /* by zero */
    li a0, 5
    div a2, a0, zero
    CHECK 25, a2, 0xffffffffffffffff
    divu a2, a0, zero
    CHECK 26, a2, 0xffffffffffffffff
    rem a2, a0, zero                /* the dividend */
    CHECK 27, a2, 5
    remu a2, a0, zero
    CHECK 28, a2, 5
    li a0, -5
    rem a2, a0, zero
    CHECK 29, a2, 0xfffffffffffffffb
    div a2, a0, zero
    CHECK 30, a2, 0xffffffffffffffff
    /* overflow */
    li a0, 0x8000000000000000
    li a1, -1
    div a2, a0, a1
    CHECK 31, a2, 0x8000000000000000
    rem a2, a0, a1
    CHECK 32, a2, 0
    divu a2, a0, a1                 /* 2^63 / (2^64-1) = 0 */
    CHECK 33, a2, 0
    remu a2, a0, a1
    CHECK 34, a2, 0x8000000000000000

    /* ---- 32-bit division: low halves in, sign-extended results out ---- */
    li a0, -7
    li a1, 2
    divw a2, a0, a1
    CHECK 35, a2, 0xfffffffffffffffd
    remw a2, a0, a1
    CHECK 36, a2, 0xffffffffffffffff
    li a0, 0x80000000               /* INT32_MIN in the low half */
    li a1, -1
    divw a2, a0, a1                 /* overflow: INT32_MIN */
    CHECK 37, a2, 0xffffffff80000000
    remw a2, a0, a1
    CHECK 38, a2, 0
    li a1, 0xffffffff00000000       /* low half 0: division by zero */
    divw a2, a0, a1
    CHECK 39, a2, 0xffffffffffffffff
    li a0, 0x100000005              /* low half 5 */
    remw a2, a0, zero
    CHECK 40, a2, 5
    li a0, 0xfffffffb               /* low half -5 */
    remw a2, a0, zero
    CHECK 41, a2, 0xfffffffffffffffb
    li a0, 0xffffffff
    divuw a2, a0, zero              /* 2^32 - 1, sign-extended */
    CHECK 42, a2, 0xffffffffffffffff
    li a0, 0x80000000
    li a1, 1
    divuw a2, a0, a1                /* 0x80000000, sign-extended */
    CHECK 43, a2, 0xffffffff80000000
    li a0, 0x80000003
    remuw a2, a0, zero              /* the dividend's low half, sign-extended */
    CHECK 44, a2, 0xffffffff80000003
    li a0, 0xfffffffe
    li a1, 2
    divuw a2, a0, a1                /* unsigned: 0x7fffffff */
    CHECK 45, a2, 0x7fffffff
    divw a2, a0, a1                 /* signed: -2 / 2 = -1 */
    CHECK 46, a2, 0xffffffffffffffff
    li a0, 7
    li a1, 0x100000003              /* low half 3 */
    remuw a2, a0, a1
    CHECK 47, a2, 1
    divuw a2, a0, a1
    CHECK 48, a2, 2
    li a0, 0x80000000
    li a1, -1                       /* 0xffffffff unsigned */
    divuw a2, a0, a1
    CHECK 49, a2, 0
    remuw a2, a0, a1
    CHECK 50, a2, 0xffffffff80000000

    /* results to x0 are discarded */
    div zero, a0, zero
    CHECK 51, zero, 0

    PASS
TEST_END
