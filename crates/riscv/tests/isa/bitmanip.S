/* Zba, Zbb, Zbc, Zbs and Zicond: every instruction on operands chosen to hit sign bits, word
 * boundaries, zero and all-ones. Expected values were worked out with an independent model
 * (arbitrary-precision integers) and the results cross-checked against QEMU on random inputs
 * (bench/isa-crosscheck). gas 2.40 knows no Zicond, so czero.* are spelled with .insn. */
#include "common.h"

TEST_BEGIN
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    add.uw a0, a1, a2
    CHECK 1, a0, 0x178555555
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    add.uw a0, a1, a2
    CHECK 2, a0, 0x80000002f0f01229
    li a1, 0x87654321
    li a2, 0x0
    add.uw a0, a1, a2
    CHECK 3, a0, 0x87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    add.uw a0, a1, a2
    CHECK 4, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    sh1add a0, a1, a2
    CHECK 5, a0, 0x469456789
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    sh1add a0, a1, a2
    CHECK 6, a0, 0x80000001f0f0121e
    li a1, 0x87654321
    li a2, 0x0
    sh1add a0, a1, a2
    CHECK 7, a0, 0x10eca8642
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    sh1add a0, a1, a2
    CHECK 8, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    sh2add a0, a1, a2
    CHECK 9, a0, 0x84b258bf1
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    sh2add a0, a1, a2
    CHECK 10, a0, 0x80000001f0f01208
    li a1, 0x87654321
    li a2, 0x0
    sh2add a0, a1, a2
    CHECK 11, a0, 0x21d950c84
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    sh2add a0, a1, a2
    CHECK 12, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    sh3add a0, a1, a2
    CHECK 13, a0, 0x100ee5d4c1
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    sh3add a0, a1, a2
    CHECK 14, a0, 0x80000001f0f011dc
    li a1, 0x87654321
    li a2, 0x0
    sh3add a0, a1, a2
    CHECK 15, a0, 0x43b2a1908
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    sh3add a0, a1, a2
    CHECK 16, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    sh1add.uw a0, a1, a2
    CHECK 17, a0, 0x269456789
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    sh1add.uw a0, a1, a2
    CHECK 18, a0, 0x80000003f0f0121e
    li a1, 0x87654321
    li a2, 0x0
    sh1add.uw a0, a1, a2
    CHECK 19, a0, 0x10eca8642
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    sh1add.uw a0, a1, a2
    CHECK 20, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    sh2add.uw a0, a1, a2
    CHECK 21, a0, 0x44b258bf1
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    sh2add.uw a0, a1, a2
    CHECK 22, a0, 0x80000005f0f01208
    li a1, 0x87654321
    li a2, 0x0
    sh2add.uw a0, a1, a2
    CHECK 23, a0, 0x21d950c84
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    sh2add.uw a0, a1, a2
    CHECK 24, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    sh3add.uw a0, a1, a2
    CHECK 25, a0, 0x80ee5d4c1
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    sh3add.uw a0, a1, a2
    CHECK 26, a0, 0x80000009f0f011dc
    li a1, 0x87654321
    li a2, 0x0
    sh3add.uw a0, a1, a2
    CHECK 27, a0, 0x43b2a1908
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    sh3add.uw a0, a1, a2
    CHECK 28, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    andn a0, a1, a2
    CHECK 29, a0, 0x8000000170901014
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    andn a0, a1, a2
    CHECK 30, a0, 0x7ffffffe0f0fedc1
    li a1, 0x87654321
    li a2, 0x0
    andn a0, a1, a2
    CHECK 31, a0, 0x87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    andn a0, a1, a2
    CHECK 32, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    orn a0, a1, a2
    CHECK 33, a0, 0xfffffffff8fabefe
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    orn a0, a1, a2
    CHECK 34, a0, 0xffffffffffffffff
    li a1, 0x87654321
    li a2, 0x0
    orn a0, a1, a2
    CHECK 35, a0, 0xffffffffffffffff
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    orn a0, a1, a2
    CHECK 36, a0, 0xa
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    xnor a0, a1, a2
    CHECK 37, a0, 0x7ffffffe886aaeea
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    xnor a0, a1, a2
    CHECK 38, a0, 0x80000001f0f0123e
    li a1, 0x87654321
    li a2, 0x0
    xnor a0, a1, a2
    CHECK 39, a0, 0xffffffff789abcde
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    xnor a0, a1, a2
    CHECK 40, a0, 0xa
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    max a0, a1, a2
    CHECK 41, a0, 0x87654321
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    max a0, a1, a2
    CHECK 42, a0, 0xfffffffffffffff5
    li a1, 0x87654321
    li a2, 0x0
    max a0, a1, a2
    CHECK 43, a0, 0x87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    max a0, a1, a2
    CHECK 44, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    maxu a0, a1, a2
    CHECK 45, a0, 0x80000001f0f01234
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    maxu a0, a1, a2
    CHECK 46, a0, 0xfffffffffffffff5
    li a1, 0x87654321
    li a2, 0x0
    maxu a0, a1, a2
    CHECK 47, a0, 0x87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    maxu a0, a1, a2
    CHECK 48, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    min a0, a1, a2
    CHECK 49, a0, 0x80000001f0f01234
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    min a0, a1, a2
    CHECK 50, a0, 0x80000001f0f01234
    li a1, 0x87654321
    li a2, 0x0
    min a0, a1, a2
    CHECK 51, a0, 0x0
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    min a0, a1, a2
    CHECK 52, a0, 0xfffffffffffffff5
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    minu a0, a1, a2
    CHECK 53, a0, 0x87654321
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    minu a0, a1, a2
    CHECK 54, a0, 0x80000001f0f01234
    li a1, 0x87654321
    li a2, 0x0
    minu a0, a1, a2
    CHECK 55, a0, 0x0
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    minu a0, a1, a2
    CHECK 56, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    rol a0, a1, a2
    CHECK 57, a0, 0xe1e0246900000003
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    rol a0, a1, a2
    CHECK 58, a0, 0xff5fffffffffffff
    li a1, 0x87654321
    li a2, 0x0
    rol a0, a1, a2
    CHECK 59, a0, 0x87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    rol a0, a1, a2
    CHECK 60, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    ror a0, a1, a2
    CHECK 61, a0, 0xf878091a40000000
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    ror a0, a1, a2
    CHECK 62, a0, 0xffffffffffff5fff
    li a1, 0x87654321
    li a2, 0x0
    ror a0, a1, a2
    CHECK 63, a0, 0x87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    ror a0, a1, a2
    CHECK 64, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    rolw a0, a1, a2
    CHECK 65, a0, 0xffffffffe1e02469
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    rolw a0, a1, a2
    CHECK 66, a0, 0xffffffffff5fffff
    li a1, 0x87654321
    li a2, 0x0
    rolw a0, a1, a2
    CHECK 67, a0, 0xffffffff87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    rolw a0, a1, a2
    CHECK 68, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    rorw a0, a1, a2
    CHECK 69, a0, 0x7878091a
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    rorw a0, a1, a2
    CHECK 70, a0, 0xffffffffffff5fff
    li a1, 0x87654321
    li a2, 0x0
    rorw a0, a1, a2
    CHECK 71, a0, 0xffffffff87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    rorw a0, a1, a2
    CHECK 72, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    clmul a0, a1, a2
    CHECK 73, a0, 0x7deeb640e72d08b4
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    clmul a0, a1, a2
    CHECK 74, a0, 0x8000000cc9cf4424
    li a1, 0x87654321
    li a2, 0x0
    clmul a0, a1, a2
    CHECK 75, a0, 0x0
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    clmul a0, a1, a2
    CHECK 76, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    clmulh a0, a1, a2
    CHECK 77, a0, 0x43b2a190
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    clmulh a0, a1, a2
    CHECK 78, a0, 0x7fffffff50500e16
    li a1, 0x87654321
    li a2, 0x0
    clmulh a0, a1, a2
    CHECK 79, a0, 0x0
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    clmulh a0, a1, a2
    CHECK 80, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    clmulr a0, a1, a2
    CHECK 81, a0, 0x87654320
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    clmulr a0, a1, a2
    CHECK 82, a0, 0xfffffffea0a01c2d
    li a1, 0x87654321
    li a2, 0x0
    clmulr a0, a1, a2
    CHECK 83, a0, 0x0
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    clmulr a0, a1, a2
    CHECK 84, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    bclr a0, a1, a2
    CHECK 85, a0, 0x80000001f0f01234
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    bclr a0, a1, a2
    CHECK 86, a0, 0xffeffffffffffff5
    li a1, 0x87654321
    li a2, 0x0
    bclr a0, a1, a2
    CHECK 87, a0, 0x87654320
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    bclr a0, a1, a2
    CHECK 88, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    bext a0, a1, a2
    CHECK 89, a0, 0x0
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    bext a0, a1, a2
    CHECK 90, a0, 0x1
    li a1, 0x87654321
    li a2, 0x0
    bext a0, a1, a2
    CHECK 91, a0, 0x1
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    bext a0, a1, a2
    CHECK 92, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    binv a0, a1, a2
    CHECK 93, a0, 0x80000003f0f01234
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    binv a0, a1, a2
    CHECK 94, a0, 0xffeffffffffffff5
    li a1, 0x87654321
    li a2, 0x0
    binv a0, a1, a2
    CHECK 95, a0, 0x87654320
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    binv a0, a1, a2
    CHECK 96, a0, 0x20000000000000
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    bset a0, a1, a2
    CHECK 97, a0, 0x80000003f0f01234
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    bset a0, a1, a2
    CHECK 98, a0, 0xfffffffffffffff5
    li a1, 0x87654321
    li a2, 0x0
    bset a0, a1, a2
    CHECK 99, a0, 0x87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    bset a0, a1, a2
    CHECK 100, a0, 0x20000000000000
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    .insn r 0x33, 5, 7, a0, a1, a2  /* czero.eqz */
    CHECK 101, a0, 0x80000001f0f01234
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    .insn r 0x33, 5, 7, a0, a1, a2  /* czero.eqz */
    CHECK 102, a0, 0xfffffffffffffff5
    li a1, 0x87654321
    li a2, 0x0
    .insn r 0x33, 5, 7, a0, a1, a2  /* czero.eqz */
    CHECK 103, a0, 0x0
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    .insn r 0x33, 5, 7, a0, a1, a2  /* czero.eqz */
    CHECK 104, a0, 0x0
    li a1, 0x80000001f0f01234
    li a2, 0x87654321
    .insn r 0x33, 7, 7, a0, a1, a2  /* czero.nez */
    CHECK 105, a0, 0x0
    li a1, 0xfffffffffffffff5
    li a2, 0x80000001f0f01234
    .insn r 0x33, 7, 7, a0, a1, a2  /* czero.nez */
    CHECK 106, a0, 0x0
    li a1, 0x87654321
    li a2, 0x0
    .insn r 0x33, 7, 7, a0, a1, a2  /* czero.nez */
    CHECK 107, a0, 0x87654321
    li a1, 0x0
    li a2, 0xfffffffffffffff5
    .insn r 0x33, 7, 7, a0, a1, a2  /* czero.nez */
    CHECK 108, a0, 0x0
    li a1, 0x80000001f0f01234
    clz a0, a1
    CHECK 109, a0, 0x0
    li a1, 0x87654321
    clz a0, a1
    CHECK 110, a0, 0x20
    li a1, 0xfffffffffffffff5
    clz a0, a1
    CHECK 111, a0, 0x0
    li a1, 0x0
    clz a0, a1
    CHECK 112, a0, 0x40
    li a1, 0xff000000008080
    clz a0, a1
    CHECK 113, a0, 0x8
    li a1, 0x80000001f0f01234
    clzw a0, a1
    CHECK 114, a0, 0x0
    li a1, 0x87654321
    clzw a0, a1
    CHECK 115, a0, 0x0
    li a1, 0xfffffffffffffff5
    clzw a0, a1
    CHECK 116, a0, 0x0
    li a1, 0x0
    clzw a0, a1
    CHECK 117, a0, 0x20
    li a1, 0xff000000008080
    clzw a0, a1
    CHECK 118, a0, 0x10
    li a1, 0x80000001f0f01234
    ctz a0, a1
    CHECK 119, a0, 0x2
    li a1, 0x87654321
    ctz a0, a1
    CHECK 120, a0, 0x0
    li a1, 0xfffffffffffffff5
    ctz a0, a1
    CHECK 121, a0, 0x0
    li a1, 0x0
    ctz a0, a1
    CHECK 122, a0, 0x40
    li a1, 0xff000000008080
    ctz a0, a1
    CHECK 123, a0, 0x7
    li a1, 0x80000001f0f01234
    ctzw a0, a1
    CHECK 124, a0, 0x2
    li a1, 0x87654321
    ctzw a0, a1
    CHECK 125, a0, 0x0
    li a1, 0xfffffffffffffff5
    ctzw a0, a1
    CHECK 126, a0, 0x0
    li a1, 0x0
    ctzw a0, a1
    CHECK 127, a0, 0x20
    li a1, 0xff000000008080
    ctzw a0, a1
    CHECK 128, a0, 0x7
    li a1, 0x80000001f0f01234
    cpop a0, a1
    CHECK 129, a0, 0xf
    li a1, 0x87654321
    cpop a0, a1
    CHECK 130, a0, 0xd
    li a1, 0xfffffffffffffff5
    cpop a0, a1
    CHECK 131, a0, 0x3e
    li a1, 0x0
    cpop a0, a1
    CHECK 132, a0, 0x0
    li a1, 0xff000000008080
    cpop a0, a1
    CHECK 133, a0, 0xa
    li a1, 0x80000001f0f01234
    cpopw a0, a1
    CHECK 134, a0, 0xd
    li a1, 0x87654321
    cpopw a0, a1
    CHECK 135, a0, 0xd
    li a1, 0xfffffffffffffff5
    cpopw a0, a1
    CHECK 136, a0, 0x1e
    li a1, 0x0
    cpopw a0, a1
    CHECK 137, a0, 0x0
    li a1, 0xff000000008080
    cpopw a0, a1
    CHECK 138, a0, 0x2
    li a1, 0x80000001f0f01234
    sext.b a0, a1
    CHECK 139, a0, 0x34
    li a1, 0x87654321
    sext.b a0, a1
    CHECK 140, a0, 0x21
    li a1, 0xfffffffffffffff5
    sext.b a0, a1
    CHECK 141, a0, 0xfffffffffffffff5
    li a1, 0x0
    sext.b a0, a1
    CHECK 142, a0, 0x0
    li a1, 0xff000000008080
    sext.b a0, a1
    CHECK 143, a0, 0xffffffffffffff80
    li a1, 0x80000001f0f01234
    sext.h a0, a1
    CHECK 144, a0, 0x1234
    li a1, 0x87654321
    sext.h a0, a1
    CHECK 145, a0, 0x4321
    li a1, 0xfffffffffffffff5
    sext.h a0, a1
    CHECK 146, a0, 0xfffffffffffffff5
    li a1, 0x0
    sext.h a0, a1
    CHECK 147, a0, 0x0
    li a1, 0xff000000008080
    sext.h a0, a1
    CHECK 148, a0, 0xffffffffffff8080
    li a1, 0x80000001f0f01234
    zext.h a0, a1
    CHECK 149, a0, 0x1234
    li a1, 0x87654321
    zext.h a0, a1
    CHECK 150, a0, 0x4321
    li a1, 0xfffffffffffffff5
    zext.h a0, a1
    CHECK 151, a0, 0xfff5
    li a1, 0x0
    zext.h a0, a1
    CHECK 152, a0, 0x0
    li a1, 0xff000000008080
    zext.h a0, a1
    CHECK 153, a0, 0x8080
    li a1, 0x80000001f0f01234
    orc.b a0, a1
    CHECK 154, a0, 0xff0000ffffffffff
    li a1, 0x87654321
    orc.b a0, a1
    CHECK 155, a0, 0xffffffff
    li a1, 0xfffffffffffffff5
    orc.b a0, a1
    CHECK 156, a0, 0xffffffffffffffff
    li a1, 0x0
    orc.b a0, a1
    CHECK 157, a0, 0x0
    li a1, 0xff000000008080
    orc.b a0, a1
    CHECK 158, a0, 0xff00000000ffff
    li a1, 0x80000001f0f01234
    rev8 a0, a1
    CHECK 159, a0, 0x3412f0f001000080
    li a1, 0x87654321
    rev8 a0, a1
    CHECK 160, a0, 0x2143658700000000
    li a1, 0xfffffffffffffff5
    rev8 a0, a1
    CHECK 161, a0, 0xf5ffffffffffffff
    li a1, 0x0
    rev8 a0, a1
    CHECK 162, a0, 0x0
    li a1, 0xff000000008080
    rev8 a0, a1
    CHECK 163, a0, 0x808000000000ff00
    li a1, 0x80000001f0f01234
    slli.uw a0, a1, 5
    CHECK 164, a0, 0x1e1e024680
    li a1, 0xfffffffffffffff5
    slli.uw a0, a1, 5
    CHECK 165, a0, 0x1ffffffea0
    li a1, 0x80000001f0f01234
    rori a0, a1, 13
    CHECK 166, a0, 0x91a40000000f8780
    li a1, 0xfffffffffffffff5
    rori a0, a1, 13
    CHECK 167, a0, 0xffafffffffffffff
    li a1, 0x80000001f0f01234
    roriw a0, a1, 7
    CHECK 168, a0, 0x69e1e024
    li a1, 0xfffffffffffffff5
    roriw a0, a1, 7
    CHECK 169, a0, 0xffffffffebffffff
    li a1, 0x80000001f0f01234
    bclri a0, a1, 63
    CHECK 170, a0, 0x1f0f01234
    li a1, 0xfffffffffffffff5
    bclri a0, a1, 63
    CHECK 171, a0, 0x7ffffffffffffff5
    li a1, 0x80000001f0f01234
    bexti a0, a1, 36
    CHECK 172, a0, 0x0
    li a1, 0xfffffffffffffff5
    bexti a0, a1, 36
    CHECK 173, a0, 0x1
    li a1, 0x80000001f0f01234
    binvi a0, a1, 1
    CHECK 174, a0, 0x80000001f0f01236
    li a1, 0xfffffffffffffff5
    binvi a0, a1, 1
    CHECK 175, a0, 0xfffffffffffffff7
    li a1, 0x80000001f0f01234
    bseti a0, a1, 40
    CHECK 176, a0, 0x80000101f0f01234
    li a1, 0xfffffffffffffff5
    bseti a0, a1, 40
    CHECK 177, a0, 0xfffffffffffffff5
    /* rd = x0 discards the result, as for any instruction */
    li a1, -1
    clz zero, a1
    CHECK 178, zero, 0
    PASS
TEST_END
