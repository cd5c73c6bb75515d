/* Loads and stores of every width: sign and zero extension, partial stores merging into a
 * doubleword, negative offsets, misaligned accesses inside a page and across a 4 KiB page
 * boundary (which must simply work), and misaligned FP loads/stores. */
#include "common.h"

TEST_BEGIN
    la s0, d0                       /* d0 = 0xfedcba9876543210: bytes 10 32 54 76 98 ba dc fe */

    /* ---- loads: sign and zero extension ---- */
    lb a0, 0(s0)
    CHECK 1, a0, 0x10
    lb a0, 7(s0)                    /* 0xfe */
    CHECK 2, a0, 0xfffffffffffffffe
    lbu a0, 7(s0)
    CHECK 3, a0, 0xfe
    lb a0, 4(s0)                    /* 0x98 */
    CHECK 4, a0, 0xffffffffffffff98
    lbu a0, 4(s0)
    CHECK 5, a0, 0x98
    lh a0, 0(s0)
    CHECK 6, a0, 0x3210
    lh a0, 6(s0)                    /* 0xfedc */
    CHECK 7, a0, 0xfffffffffffffedc
    lhu a0, 6(s0)
    CHECK 8, a0, 0xfedc
    lh a0, 2(s0)
    CHECK 9, a0, 0x7654
    lw a0, 0(s0)
    CHECK 10, a0, 0x76543210
    lw a0, 4(s0)                    /* 0xfedcba98 */
    CHECK 11, a0, 0xfffffffffedcba98
    lwu a0, 4(s0)
    CHECK 12, a0, 0xfedcba98
    ld a0, 0(s0)
    CHECK 13, a0, 0xfedcba9876543210
    addi a1, s0, 8
    lw a0, -4(a1)                   /* negative offset */
    CHECK 14, a0, 0xfffffffffedcba98
    ld a0, -8(a1)
    CHECK 15, a0, 0xfedcba9876543210
    lbu a0, -1(a1)
    CHECK 16, a0, 0xfe

    /* ---- stores of each width merge into memory ---- */
    la s1, buf
    sd zero, 0(s1)
    sd zero, 8(s1)
    li a0, 0x1ff
    sb a0, 1(s1)                    /* only the low byte, 0xff, at offset 1 */
    ld a1, 0(s1)
    CHECK 17, a1, 0xff00
    li a0, 0x12345
    sh a0, 2(s1)                    /* 0x2345 at offsets 2..3 */
    ld a1, 0(s1)
    CHECK 18, a1, 0x2345ff00
    li a0, 0xdeadbeefcafe
    sw a0, 4(s1)                    /* 0xbeefcafe at offsets 4..7 */
    ld a1, 0(s1)
    CHECK 19, a1, 0xbeefcafe2345ff00
    li a0, -1
    sd a0, 8(s1)
    sb zero, 15(s1)
    ld a1, 8(s1)
    CHECK 20, a1, 0x00ffffffffffffff
    sh zero, 8(s1)
    ld a1, 8(s1)
    CHECK 21, a1, 0x00ffffffffff0000
    addi a2, s1, 16
    sw zero, -4(a2)                 /* negative offset: offsets 12..15 */
    ld a1, 8(s1)
    CHECK 22, a1, 0x00000000ffff0000

    /* ---- misaligned loads inside a page ----
     * d0 bytes: 10 32 54 76 98 ba dc fe, d1 bytes: ef cd ab 89 67 45 23 01 */
    lh a0, 1(s0)                    /* 32 54 */
    CHECK 23, a0, 0x5432
    lw a0, 1(s0)                    /* 32 54 76 98 */
    CHECK 24, a0, 0xffffffff98765432
    lwu a0, 1(s0)
    CHECK 25, a0, 0x98765432
    ld a0, 3(s0)                    /* 76 98 ba dc fe ef cd ab */
    CHECK 26, a0, 0xabcdeffedcba9876
    lhu a0, 7(s0)                   /* fe ef */
    CHECK 27, a0, 0xeffe
    lh a0, 7(s0)
    CHECK 28, a0, 0xffffffffffffeffe
    lw a0, 6(s0)                    /* dc fe ef cd */
    CHECK 29, a0, 0xffffffffcdeffedc

    /* ---- misaligned stores inside a page ---- */
    sd zero, 0(s1)
    sd zero, 8(s1)
    li a0, 0x1122334455667788
    sd a0, 3(s1)                    /* bytes 3..10: 88 77 66 55 44 33 22 11 */
    ld a1, 0(s1)
    CHECK 30, a1, 0x4455667788000000
    ld a1, 8(s1)
    CHECK 31, a1, 0x112233
    li a0, 0xaabbccdd
    sw a0, 13(s1)                   /* bytes 13..16 (16 is in the next doubleword) */
    ld a1, 8(s1)
    CHECK 32, a1, 0xbbccdd0000112233
    lbu a1, 16(s1)
    CHECK 33, a1, 0xaa
    li a0, 0x9988
    sh a0, 1(s1)                    /* bytes 1..2 */
    ld a1, 0(s1)
    CHECK 34, a1, 0x4455667788998800

    /* ---- misaligned accesses across a page boundary (SCRATCH page 0 / page 1) ---- */
    li s2, SCRATCH + 0x1000         /* first byte of the second page */
    sd zero, -8(s2)
    sd zero, 0(s2)
    li a0, 0x0807060504030201
    sd a0, -3(s2)                   /* 01 02 03 | 04 05 06 07 08 */
    ld a1, -3(s2)
    CHECK 35, a1, 0x0807060504030201
    ld a1, 0(s2)                    /* 04 05 06 07 08 00 00 00 */
    CHECK 36, a1, 0x0000000807060504
    ld a1, -8(s2)                   /* 00 00 00 00 00 01 02 03 */
    CHECK 37, a1, 0x0302010000000000
    lw a1, -2(s2)                   /* 02 03 | 04 05 */
    CHECK 38, a1, 0x05040302
    li a0, 0xaabb
    sh a0, -1(s2)                   /* bb | aa */
    lhu a1, -1(s2)
    CHECK 39, a1, 0xaabb
    lh a1, -1(s2)
    CHECK 40, a1, 0xffffffffffffaabb
    lw a1, -2(s2)                   /* 02 bb | aa 05 */
    CHECK 41, a1, 0x05aabb02
    lwu a1, -1(s2)                  /* bb | aa 05 06 */
    CHECK 42, a1, 0x0605aabb
    lw a1, -1(s2)
    CHECK 43, a1, 0x0605aabb
    li a0, 0xf1f2f3f4
    sw a0, -1(s2)                   /* f4 | f3 f2 f1 */
    ld a1, -8(s2)
    CHECK 44, a1, 0xf402010000000000
    lbu a1, 3(s2)                   /* first byte past the store (f4 | f3 f2 f1): still 07 */
    CHECK 45, a1, 0x07

    /* ---- misaligned FP loads and stores, inside a page and across the boundary ---- */
    li t0, MSTATUS_FS
    csrs mstatus, t0
    li a0, 0x400921fb54442d18       /* the bits of pi */
    sd a0, 8(s1)
    fld fa0, 8(s1)
    fsd fa0, -5(s2)                 /* crosses the page boundary */
    ld a1, -5(s2)
    CHECK 46, a1, 0x400921fb54442d18
    fld fa1, -5(s2)
    CHECKF 47, fa1, 0x400921fb54442d18
    li a0, 0x3f800000               /* 1.0f */
    sw a0, -2(s2)
    flw fa2, -2(s2)                 /* crosses; result NaN-boxed */
    CHECKF 48, fa2, 0xffffffff3f800000
    fsw fa2, 1(s1)                  /* misaligned inside a page */
    lwu a1, 1(s1)
    CHECK 49, a1, 0x3f800000

    /* ---- a load into x0 is performed and discarded ---- */
    lw zero, 0(s0)
    CHECK 50, zero, 0

    PASS
TEST_END

    .data
    .balign 8
d0: .dword 0xfedcba9876543210
d1: .dword 0x0123456789abcdef
buf: .skip 32
