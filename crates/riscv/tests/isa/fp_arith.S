/* F/D arithmetic: results and fflags (NX, UF, OF, DZ, NV) of add/sub/mul/div/sqrt/fma, every
 * rounding mode through the instruction's rm field and through frm (dyn), reserved rounding
 * modes trapping, and conversions: float->int saturation (NaN, +-inf, out of range), fcvt.wu.d
 * of -1.0 and -0.3, int->float rounding, and single<->double.
 *
 * Bit patterns used (IEEE 754):
 *   f32: 1.0 3f800000  2.0 40000000  3.0 40400000  4.0 40800000  -1.0 bf800000  2.5 40200000
 *        +inf 7f800000  -inf ff800000  canonical NaN 7fc00000  sNaN 7f800001  max 7f7fffff
 *        2^-30 30800000  2^-24 33800000  3e9 4f32d05e  smallest subnormal 00000001
 *   f64: 1.0 3ff0000000000000  2.0 4000000000000000  3.0 4008000000000000  -1.0 bff0000000000000
 *        canonical NaN 7ff8000000000000  max 7fefffffffffffff  -0.3 bfd3333333333333
 *        0.1 3fb999999999999a  2^31 41e0000000000000  2^63 43e0000000000000  2^64 43f0000000000000
 * Flags: NV 0x10, DZ 0x08, OF 0x04, UF 0x02, NX 0x01.
 */
#include "common.h"

TEST_BEGIN
    li t0, MSTATUS_FS
    csrs mstatus, t0
    csrw fcsr, zero

    /* ---- add / sub ---- */
    LIF f1, 0x3f800000              /* 1.0 */
    LIF f2, 0x40000000              /* 2.0 */
    fadd.s f3, f1, f2
    CHECKF 1, f3, 0xffffffff40400000 /* 3.0, NaN-boxed */
    CHECK_FLAGS 2, 0
    LIF f4, 0x30800000              /* 2^-30: far below half an ulp of 1.0 */
    fadd.s f3, f1, f4
    CHECKF 3, f3, 0xffffffff3f800000
    CHECK_FLAGS 4, 0x01             /* inexact */
    LID f1, 0x3ff0000000000000
    fsub.d f3, f1, f1, rne          /* x - x = +0 ... */
    CHECKF 5, f3, 0
    fsub.d f3, f1, f1, rdn          /* ... except rounding down: -0 */
    CHECKF 6, f3, 0x8000000000000000
    CHECK_FLAGS 7, 0

    /* ---- div ---- */
    LIF f1, 0x3f800000
    fmv.w.x f0, zero
    fdiv.s f3, f1, f0               /* 1/0 = +inf, divide by zero */
    CHECKF 8, f3, 0xffffffff7f800000
    CHECK_FLAGS 9, 0x08
    fneg.s f5, f1
    fdiv.s f3, f5, f0               /* -1/0 = -inf */
    CHECKF 10, f3, 0xffffffffff800000
    CHECK_FLAGS 11, 0x08
    fdiv.s f3, f0, f0               /* 0/0: invalid, canonical NaN */
    CHECKF 12, f3, 0xffffffff7fc00000
    CHECK_FLAGS 13, 0x10
    LID f1, 0x3ff0000000000000
    LID f2, 0x4008000000000000
    fdiv.d f3, f1, f2               /* 1/3 */
    CHECKF 14, f3, 0x3fd5555555555555
    CHECK_FLAGS 15, 0x01

    /* ---- sqrt ---- */
    LIF f1, 0x40800000
    fsqrt.s f3, f1                  /* sqrt 4 = 2, exact */
    CHECKF 16, f3, 0xffffffff40000000
    CHECK_FLAGS 17, 0
    LIF f1, 0xbf800000
    fsqrt.s f3, f1                  /* sqrt -1: invalid */
    CHECKF 18, f3, 0xffffffff7fc00000
    CHECK_FLAGS 19, 0x10
    LID f1, 0x4000000000000000
    fsqrt.d f3, f1                  /* sqrt 2 */
    CHECKF 20, f3, 0x3ff6a09e667f3bcd
    CHECK_FLAGS 21, 0x01
    LIF f1, 0x80000000
    fsqrt.s f3, f1                  /* sqrt -0 = -0, no flags */
    CHECKF 22, f3, 0xffffffff80000000
    CHECK_FLAGS 23, 0

    /* ---- mul: overflow and underflow ---- */
    LIF f1, 0x7f7fffff
    LIF f2, 0x40000000
    fmul.s f3, f1, f2               /* max * 2 overflows to +inf */
    CHECKF 24, f3, 0xffffffff7f800000
    CHECK_FLAGS 25, 0x05            /* OF | NX */
    fmul.s f3, f1, f2, rtz          /* ... or to max when rounding toward zero */
    CHECKF 26, f3, 0xffffffff7f7fffff
    CHECK_FLAGS 27, 0x05
    LID f1, 0x7fefffffffffffff
    LID f2, 0x4000000000000000
    fmul.d f3, f1, f2
    CHECKF 28, f3, 0x7ff0000000000000
    CHECK_FLAGS 29, 0x05
    fmul.d f3, f1, f2, rdn
    CHECKF 30, f3, 0x7fefffffffffffff
    CHECK_FLAGS 31, 0x05
    LIF f1, 0x00000001              /* smallest subnormal */
    LIF f2, 0x3f000000              /* 0.5 */
    fmul.s f3, f1, f2               /* 2^-150: a tie between 0 and 2^-149, even is 0 */
    CHECKF 32, f3, 0xffffffff00000000
    CHECK_FLAGS 33, 0x03            /* UF | NX */

    /* ---- fused multiply-add ---- */
    LIF f1, 0x40000000              /* 2 */
    LIF f2, 0x40400000              /* 3 */
    LIF f4, 0x3f800000              /* 1 */
    fmadd.s f3, f1, f2, f4          /*  2*3 + 1 =  7 */
    CHECKF 34, f3, 0xffffffff40e00000
    fmsub.s f3, f1, f2, f4          /*  2*3 - 1 =  5 */
    CHECKF 35, f3, 0xffffffff40a00000
    fnmsub.s f3, f1, f2, f4         /* -2*3 + 1 = -5 */
    CHECKF 36, f3, 0xffffffffc0a00000
    fnmadd.s f3, f1, f2, f4         /* -2*3 - 1 = -7 */
    CHECKF 37, f3, 0xffffffffc0e00000
    CHECK_FLAGS 38, 0
    /* (1 + 2^-30)(1 - 2^-30) - 1 = -2^-60 exactly when fused (unfused the product rounds to 1) */
    LID f1, 0x3ff0000000400000
    LID f2, 0x3fefffffff800000
    LID f4, 0xbff0000000000000
    fmadd.d f3, f1, f2, f4
    CHECKF 39, f3, 0xbc30000000000000
    CHECK_FLAGS 40, 0
    LIF f1, 0x7f800000              /* inf * 0 + 1: invalid */
    fmv.w.x f2, zero
    LIF f4, 0x3f800000
    fmadd.s f3, f1, f2, f4
    CHECKF 41, f3, 0xffffffff7fc00000
    CHECK_FLAGS 42, 0x10

    /* ---- every rounding mode in the rm field: fcvt.w.s of 2.5 and -2.5 ---- */
    LIF f1, 0x40200000              /* 2.5 */
    LIF f2, 0xc0200000              /* -2.5 */
    fcvt.w.s a0, f1, rne            /* ties to even: 2 */
    CHECK 43, a0, 2
    fcvt.w.s a0, f2, rne
    CHECK 44, a0, -2
    fcvt.w.s a0, f1, rtz
    CHECK 45, a0, 2
    fcvt.w.s a0, f2, rtz
    CHECK 46, a0, -2
    fcvt.w.s a0, f1, rdn
    CHECK 47, a0, 2
    fcvt.w.s a0, f2, rdn
    CHECK 48, a0, -3
    fcvt.w.s a0, f1, rup
    CHECK 49, a0, 3
    fcvt.w.s a0, f2, rup
    CHECK 50, a0, -2
    fcvt.w.s a0, f1, rmm            /* ties away from zero */
    CHECK 51, a0, 3
    fcvt.w.s a0, f2, rmm
    CHECK 52, a0, -3
    CHECK_FLAGS 53, 0x01
    /* ---- and in arithmetic: +-1/3 (0x3eaaaaaa|b), and 1 + 2^-24 (an exact tie) ---- */
    LIF f1, 0x3f800000
    LIF f2, 0x40400000
    fneg.s f5, f1
    fdiv.s f3, f1, f2, rne
    CHECKF 54, f3, 0xffffffff3eaaaaab
    fdiv.s f3, f1, f2, rtz
    CHECKF 55, f3, 0xffffffff3eaaaaaa
    fdiv.s f3, f1, f2, rdn
    CHECKF 56, f3, 0xffffffff3eaaaaaa
    fdiv.s f3, f1, f2, rup
    CHECKF 57, f3, 0xffffffff3eaaaaab
    fdiv.s f3, f1, f2, rmm
    CHECKF 58, f3, 0xffffffff3eaaaaab
    fdiv.s f3, f5, f2, rtz
    CHECKF 59, f3, 0xffffffffbeaaaaaa
    fdiv.s f3, f5, f2, rdn
    CHECKF 60, f3, 0xffffffffbeaaaaab
    fdiv.s f3, f5, f2, rup
    CHECKF 61, f3, 0xffffffffbeaaaaaa
    LIF f4, 0x33800000              /* 2^-24 = half an ulp of 1.0 */
    fadd.s f3, f1, f4, rne          /* tie: to even, 1.0 */
    CHECKF 62, f3, 0xffffffff3f800000
    fadd.s f3, f1, f4, rmm          /* tie: away from zero, 1 + 2^-23 */
    CHECKF 63, f3, 0xffffffff3f800001
    CHECK_FLAGS 64, 0x01

    /* ---- the same through frm with rm = dyn ---- */
    LIF f1, 0x40200000
    LIF f2, 0xc0200000
    fsrmi 0                         /* rne */
    fcvt.w.s a0, f1, dyn
    CHECK 65, a0, 2
    fcvt.w.s a0, f2, dyn
    CHECK 66, a0, -2
    fsrmi 1                         /* rtz */
    fcvt.w.s a0, f1, dyn
    CHECK 67, a0, 2
    fcvt.w.s a0, f2, dyn
    CHECK 68, a0, -2
    fsrmi 2                         /* rdn */
    fcvt.w.s a0, f1, dyn
    CHECK 69, a0, 2
    fcvt.w.s a0, f2, dyn
    CHECK 70, a0, -3
    fsrmi 3                         /* rup */
    fcvt.w.s a0, f1, dyn
    CHECK 71, a0, 3
    fcvt.w.s a0, f2, dyn
    CHECK 72, a0, -2
    fsrmi 4                         /* rmm */
    fcvt.w.s a0, f1, dyn
    CHECK 73, a0, 3
    fcvt.w.s a0, f2, dyn
    CHECK 74, a0, -3
    LIF f1, 0x3f800000
    LIF f2, 0x40400000
    fsrmi 1
    fdiv.s f3, f1, f2, dyn
    CHECKF 75, f3, 0xffffffff3eaaaaaa
    fsrmi 3
    fdiv.s f3, f1, f2, dyn
    CHECKF 76, f3, 0xffffffff3eaaaaab
    fsrmi 2
    LID f1, 0x3ff0000000000000
    fsub.d f3, f1, f1, dyn          /* rdn: -0 */
    CHECKF 77, f3, 0x8000000000000000
    fsrmi 0
    CHECK_FLAGS 78, 0x01

    /* ---- reserved rounding modes trap as illegal instructions ---- */
    la t0, m_trap_record
    csrw mtvec, t0
    EXPECT_TRAP 1f
rm5:
    .word 0x0020d053                /* fadd.s f0, f1, f2 with rm = 5 */
1:  CHECK 79, s2, 2
    CHECK 80, s4, 0x0020d053        /* mtval = the instruction */
    la t0, rm5
    CHECKR 81, s3, t0
    fsrmi 5                         /* frm = 5 is reserved: dyn instructions trap */
    EXPECT_TRAP 1f
    fadd.s f0, f1, f2, dyn          /* 0x0020f053 */
1:  CHECK 82, s2, 2
    CHECK 83, s4, 0x0020f053
    fsrmi 7
    EXPECT_TRAP 1f
    fcvt.w.d a0, f1, dyn
1:  CHECK 84, s2, 2
    LIF f1, 0x3f800000
    LIF f2, 0xc0000000
    fsgnj.s f3, f1, f2              /* no rounding: unaffected by a bad frm */
    CHECKF 85, f3, 0xffffffffbf800000
    fadd.s f3, f1, f1, rne          /* a static valid rm is fine too */
    CHECKF 86, f3, 0xffffffff40000000
    fsrmi 0
    la t0, unexpected_trap
    csrw mtvec, t0
    csrw fflags, zero

    /* ---- float -> int: saturation and flags ---- */
    LIF f1, 0x7fc00000              /* NaN */
    fcvt.w.s a0, f1, rtz
    CHECK 87, a0, 0x7fffffff
    CHECK_FLAGS 88, 0x10
    LIF f1, 0x7f800000              /* +inf */
    fcvt.w.s a0, f1, rtz
    CHECK 89, a0, 0x7fffffff
    CHECK_FLAGS 90, 0x10
    LIF f1, 0xff800000              /* -inf */
    fcvt.w.s a0, f1, rtz
    CHECK 91, a0, 0xffffffff80000000
    CHECK_FLAGS 92, 0x10
    LIF f1, 0x4f32d05e              /* 3e9: too big for int32 */
    fcvt.w.s a0, f1, rtz
    CHECK 93, a0, 0x7fffffff
    CHECK_FLAGS 94, 0x10
    fcvt.wu.s a0, f1, rtz           /* fits uint32: 0xb2d05e00, sign-extended */
    CHECK 95, a0, 0xffffffffb2d05e00
    CHECK_FLAGS 96, 0
    LIF f1, 0xcf32d05e              /* -3e9 */
    fcvt.w.s a0, f1, rtz
    CHECK 97, a0, 0xffffffff80000000
    CHECK_FLAGS 98, 0x10
    LIF f1, 0x7fc00000
    fcvt.wu.s a0, f1, rtz           /* NaN -> 2^32-1, sign-extended */
    CHECK 99, a0, 0xffffffffffffffff
    CHECK_FLAGS 100, 0x10
    LIF f1, 0xbf800000              /* -1.0 */
    fcvt.wu.s a0, f1, rtz
    CHECK 101, a0, 0
    CHECK_FLAGS 102, 0x10
    LIF f1, 0xbf000000              /* -0.5 truncates to -0: in range, inexact */
    fcvt.wu.s a0, f1, rtz
    CHECK 103, a0, 0
    CHECK_FLAGS 104, 0x01
    LIF f1, 0x7fc00000
    fcvt.l.s a0, f1, rtz
    CHECK 105, a0, 0x7fffffffffffffff
    CHECK_FLAGS 106, 0x10
    LIF f1, 0xff800000
    fcvt.l.s a0, f1, rtz
    CHECK 107, a0, 0x8000000000000000
    CHECK_FLAGS 108, 0x10
    fcvt.lu.s a0, f1, rtz           /* -inf -> 0 */
    CHECK 109, a0, 0
    CHECK_FLAGS 110, 0x10
    LIF f1, 0x7fc00000
    fcvt.lu.s a0, f1, rtz
    CHECK 111, a0, 0xffffffffffffffff
    CHECK_FLAGS 112, 0x10
    LID f1, 0xbff0000000000000      /* -1.0 */
    fcvt.wu.d a0, f1, rtz
    CHECK 113, a0, 0
    CHECK_FLAGS 114, 0x10
    LID f1, 0xbfd3333333333333      /* -0.3 */
    fcvt.wu.d a0, f1, rtz
    CHECK 115, a0, 0
    CHECK_FLAGS 116, 0x01
    LID f1, 0x41e0000000000000      /* 2^31 */
    fcvt.w.d a0, f1, rtz
    CHECK 117, a0, 0x7fffffff
    CHECK_FLAGS 118, 0x10
    fneg.d f1, f1                   /* -2^31 fits exactly */
    fcvt.w.d a0, f1, rtz
    CHECK 119, a0, 0xffffffff80000000
    CHECK_FLAGS 120, 0
    LID f1, 0x41dfffffffe00000      /* 2147483647.5 */
    fcvt.w.d a0, f1, rtz            /* truncates into range */
    CHECK 121, a0, 0x7fffffff
    CHECK_FLAGS 122, 0x01
    fcvt.w.d a0, f1, rne            /* tie rounds to even 2^31: out of range */
    CHECK 123, a0, 0x7fffffff
    CHECK_FLAGS 124, 0x10
    LID f1, 0x43e0000000000000      /* 2^63 */
    fcvt.l.d a0, f1, rtz
    CHECK 125, a0, 0x7fffffffffffffff
    CHECK_FLAGS 126, 0x10
    fneg.d f1, f1
    fcvt.l.d a0, f1, rtz            /* -2^63 fits */
    CHECK 127, a0, 0x8000000000000000
    CHECK_FLAGS 128, 0
    LID f1, 0x43f0000000000000      /* 2^64 */
    fcvt.lu.d a0, f1, rtz
    CHECK 129, a0, 0xffffffffffffffff
    CHECK_FLAGS 130, 0x10
    LID f1, 0x4004000000000000      /* 2.5 */
    fcvt.l.d a0, f1, rmm
    CHECK 131, a0, 3
    CHECK_FLAGS 132, 0x01

    /* ---- int -> float ---- */
    li a0, 16777217                 /* 2^24 + 1: a tie, to even 2^24 */
    fcvt.s.w f3, a0
    CHECKF 133, f3, 0xffffffff4b800000
    CHECK_FLAGS 134, 0x01
    li a0, -1
    fcvt.s.wu f3, a0                /* 2^32 - 1 rounds to 2^32 */
    CHECKF 135, f3, 0xffffffff4f800000
    CHECK_FLAGS 136, 0x01
    li a0, 0xffffffff               /* only the low 32 bits count: -1 */
    fcvt.s.w f3, a0
    CHECKF 137, f3, 0xffffffffbf800000
    CHECK_FLAGS 138, 0
    li a0, 0x20000000000001         /* 2^53 + 1 */
    fcvt.d.l f3, a0
    CHECKF 139, f3, 0x4340000000000000
    CHECK_FLAGS 140, 0x01
    li a0, -1
    fcvt.d.lu f3, a0                /* 2^64 - 1 -> 2^64 */
    CHECKF 141, f3, 0x43f0000000000000
    CHECK_FLAGS 142, 0x01
    li a0, -5
    fcvt.d.w f3, a0
    CHECKF 143, f3, 0xc014000000000000
    fcvt.d.wu f3, zero
    CHECKF 144, f3, 0
    CHECK_FLAGS 145, 0

    /* ---- single <-> double ---- */
    LID f1, 0x3fb999999999999a      /* 0.1 */
    fcvt.s.d f3, f1
    CHECKF 146, f3, 0xffffffff3dcccccd
    CHECK_FLAGS 147, 0x01
    fcvt.d.s f4, f3                 /* exact widening */
    CHECKF 148, f4, 0x3fb99999a0000000
    CHECK_FLAGS 149, 0
    LID f1, 0x7e37e43c8800759c      /* 1e300 */
    fcvt.s.d f3, f1
    CHECKF 150, f3, 0xffffffff7f800000
    CHECK_FLAGS 151, 0x05
    LIF f1, 0x7f800001              /* signalling NaN */
    fcvt.d.s f3, f1
    CHECKF 152, f3, 0x7ff8000000000000
    CHECK_FLAGS 153, 0x10

    /* ---- flags accumulate until cleared ---- */
    LIF f1, 0x3f800000
    fmv.w.x f0, zero
    fdiv.s f3, f1, f0               /* DZ */
    fdiv.s f3, f0, f0               /* NV */
    LIF f2, 0x40400000
    fdiv.s f3, f1, f2               /* NX */
    CHECK_FLAGS 154, 0x19
    CHECK_FLAGS 155, 0              /* CHECK_FLAGS cleared them */

    PASS
TEST_END
