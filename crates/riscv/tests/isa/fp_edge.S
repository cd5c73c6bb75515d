/* F/D corner cases where host floating point differs from RISC-V: NaN results are always the
 * canonical NaN (no payload or sign propagation), fused multiply-add raises invalid for
 * inf * 0 even when the addend is a quiet NaN, tininess is detected after rounding, directed
 * rounding of doubles (fdiv, fsqrt, fadd ties), and float->int conversions whose rounding
 * crosses the range limit (e.g. -0.5 to unsigned: -0 fits, -1 does not).
 * f64: 1/3 = 0x3fd5555555555555 (rounded down by RNE); sqrt 2 = 0x3ff6a09e667f3bcd (rounded up);
 * min normal 0x0010000000000000; 1 - 2^-53 = 0x3fefffffffffffff; -0.5 = 0xbfe0000000000000;
 * 2^-53 = 0x3ca0000000000000; 2^-150 = 0x3690000000000000; 1.5 * 2^-149 = 0x36a8000000000000. */
#include "common.h"

TEST_BEGIN
    li t0, MSTATUS_FS
    csrs mstatus, t0
    csrw fcsr, zero

    /* ---- NaN results are canonical ---- */
    LID f1, 0x7ff8000000000123      /* quiet NaN with a payload */
    LID f2, 0x3ff0000000000000
    fadd.d f3, f1, f2
    CHECKF 1, f3, 0x7ff8000000000000
    LID f1, 0xfff8000000000000      /* negative quiet NaN */
    fmul.d f3, f1, f2
    CHECKF 2, f3, 0x7ff8000000000000
    CHECK_FLAGS 3, 0
    LID f1, 0x7ff0000000000123      /* signalling NaN with a payload */
    fsub.d f3, f2, f1
    CHECKF 4, f3, 0x7ff8000000000000
    CHECK_FLAGS 5, 0x10
    LIF f1, 0x7fc00123
    LIF f2, 0x3f800000
    fdiv.s f3, f1, f2
    CHECKF 6, f3, 0xffffffff7fc00000
    LIF f1, 0xffc00000
    fsqrt.s f3, f1
    CHECKF 7, f3, 0xffffffff7fc00000
    LID f1, 0x7ff8000000000123
    fcvt.s.d f3, f1                 /* narrowing a NaN: canonical, payload dropped */
    CHECKF 8, f3, 0xffffffff7fc00000
    LIF f1, 0x7fc00123
    fcvt.d.s f3, f1
    CHECKF 9, f3, 0x7ff8000000000000
    LIF f1, 0xffc00000
    LIF f2, 0x40000000
    LIF f4, 0x3f800000
    fmadd.s f3, f1, f2, f4
    CHECKF 10, f3, 0xffffffff7fc00000
    CHECK_FLAGS 11, 0

    /* ---- invalid operations ---- */
    LID f1, 0x7ff0000000000000      /* inf */
    fmv.d.x f2, zero
    LID f4, 0x7ff8000000000000      /* quiet NaN addend */
    fmadd.d f3, f1, f2, f4          /* inf * 0 + qNaN: still invalid */
    CHECKF 12, f3, 0x7ff8000000000000
    CHECK_FLAGS 13, 0x10
    fmul.d f3, f2, f1               /* 0 * inf */
    CHECKF 14, f3, 0x7ff8000000000000
    CHECK_FLAGS 15, 0x10
    fneg.d f5, f1
    fadd.d f3, f1, f5               /* inf + -inf */
    CHECKF 16, f3, 0x7ff8000000000000
    CHECK_FLAGS 17, 0x10
    fsub.d f3, f1, f1
    CHECKF 18, f3, 0x7ff8000000000000
    CHECK_FLAGS 19, 0x10
    fdiv.d f3, f1, f1
    CHECKF 20, f3, 0x7ff8000000000000
    CHECK_FLAGS 21, 0x10
    fadd.d f3, f1, f1               /* inf + inf = inf, exact */
    CHECKF 22, f3, 0x7ff0000000000000
    CHECK_FLAGS 23, 0

    /* ---- tininess after rounding ---- */
    LID f1, 0x0010000000000000      /* min normal */
    LID f2, 0x3fefffffffffffff      /* 1 - 2^-53 */
    fmul.d f3, f1, f2               /* 2^-1022 - 2^-1075: a tie in the subnormal range, to even */
    CHECKF 24, f3, 0x0010000000000000
    CHECK_FLAGS 25, 0x03            /* tiny (after rounding to 53 bits) and inexact */
    LID f2, 0x3fe0000000000000      /* 0.5 */
    fmul.d f3, f1, f2               /* 2^-1023: subnormal but exact: no underflow flag */
    CHECKF 26, f3, 0x0008000000000000
    CHECK_FLAGS 27, 0
    LID f1, 0x3690000000000000      /* 2^-150 */
    fcvt.s.d f3, f1                 /* tie between 0 and 2^-149: to even, 0 */
    CHECKF 28, f3, 0xffffffff00000000
    CHECK_FLAGS 29, 0x03
    LID f1, 0x36a8000000000000      /* 1.5 * 2^-149 */
    fcvt.s.d f3, f1                 /* tie between 2^-149 and 2^-148: to even, 2^-148 */
    CHECKF 30, f3, 0xffffffff00000002
    CHECK_FLAGS 31, 0x03
    LIF f1, 0x00000001              /* 2^-149 widens exactly */
    fcvt.d.s f3, f1
    CHECKF 32, f3, 0x36a0000000000000
    CHECK_FLAGS 33, 0

    /* ---- directed rounding of doubles ---- */
    LID f1, 0x3ff0000000000000
    LID f2, 0x4008000000000000
    fdiv.d f3, f1, f2, rup
    CHECKF 34, f3, 0x3fd5555555555556
    fdiv.d f3, f1, f2, rdn
    CHECKF 35, f3, 0x3fd5555555555555
    fneg.d f1, f1
    fdiv.d f3, f1, f2, rdn          /* -1/3 rounded down: magnitude up */
    CHECKF 36, f3, 0xbfd5555555555556
    fdiv.d f3, f1, f2, rtz
    CHECKF 37, f3, 0xbfd5555555555555
    LID f1, 0x4000000000000000
    fsqrt.d f3, f1, rup
    CHECKF 38, f3, 0x3ff6a09e667f3bcd
    fsqrt.d f3, f1, rdn
    CHECKF 39, f3, 0x3ff6a09e667f3bcc
    fsqrt.d f3, f1, rtz
    CHECKF 40, f3, 0x3ff6a09e667f3bcc
    LID f1, 0x3ff0000000000000
    LID f2, 0x3ca0000000000000      /* 2^-53: half an ulp of 1.0 */
    fadd.d f3, f1, f2, rne
    CHECKF 41, f3, 0x3ff0000000000000
    fadd.d f3, f1, f2, rmm
    CHECKF 42, f3, 0x3ff0000000000001
    fadd.d f3, f1, f2, rup
    CHECKF 43, f3, 0x3ff0000000000001
    fadd.d f3, f1, f2, rdn
    CHECKF 44, f3, 0x3ff0000000000000
    LID f4, 0x3ff0000000000000
    fmadd.d f3, f1, f4, f2, rmm     /* 1 * 1 + 2^-53, a tie: away from zero */
    CHECKF 45, f3, 0x3ff0000000000001
    fmadd.d f3, f1, f4, f2, rtz
    CHECKF 46, f3, 0x3ff0000000000000
    CHECK_FLAGS 47, 0x01

    /* ---- float -> int where rounding decides the range ---- */
    LID f1, 0xbfe0000000000000      /* -0.5 */
    fcvt.wu.d a0, f1, rup           /* -0: fits, inexact */
    CHECK 48, a0, 0
    CHECK_FLAGS 49, 0x01
    fcvt.wu.d a0, f1, rne           /* tie to even: -0 */
    CHECK 50, a0, 0
    CHECK_FLAGS 51, 0x01
    fcvt.wu.d a0, f1, rdn           /* -1: out of range */
    CHECK 52, a0, 0
    CHECK_FLAGS 53, 0x10
    fcvt.wu.d a0, f1, rmm           /* tie away: -1 */
    CHECK 54, a0, 0
    CHECK_FLAGS 55, 0x10
    fcvt.lu.d a0, f1, rdn
    CHECK 56, a0, 0
    CHECK_FLAGS 57, 0x10
    fmv.d.x f1, zero
    fneg.d f1, f1                   /* -0.0 converts to 0 with no flags */
    fcvt.wu.d a0, f1
    CHECK 58, a0, 0
    fcvt.lu.d a0, f1
    CHECK 59, a0, 0
    CHECK_FLAGS 60, 0
    LID f1, 0xc1e0000000100000      /* -2147483648.5 */
    fcvt.w.d a0, f1, rtz
    CHECK 61, a0, 0xffffffff80000000
    CHECK_FLAGS 62, 0x01
    fcvt.w.d a0, f1, rdn            /* -2147483649: out of range */
    CHECK 63, a0, 0xffffffff80000000
    CHECK_FLAGS 64, 0x10
    LID f1, 0x41dfffffffe00000      /* 2147483647.5 */
    fcvt.w.d a0, f1, rup
    CHECK 65, a0, 0x7fffffff
    CHECK_FLAGS 66, 0x10
    fcvt.w.d a0, f1, rdn
    CHECK 67, a0, 0x7fffffff
    CHECK_FLAGS 68, 0x01
    LID f1, 0x41effffffff00000      /* 4294967295.5 */
    fcvt.wu.d a0, f1, rtz           /* 0xffffffff, sign-extended */
    CHECK 69, a0, 0xffffffffffffffff
    CHECK_FLAGS 70, 0x01
    fcvt.wu.d a0, f1, rne           /* tie to even: 2^32, out of range */
    CHECK 71, a0, 0xffffffffffffffff
    CHECK_FLAGS 72, 0x10
    LID f1, 0x43ef399b1438a100      /* 1.8e19 < 2^64 */
    fcvt.lu.d a0, f1
    CHECK 73, a0, 0xf9ccd8a1c5080000
    CHECK_FLAGS 74, 0
    fcvt.l.d a0, f1                 /* > 2^63 - 1 */
    CHECK 75, a0, 0x7fffffffffffffff
    CHECK_FLAGS 76, 0x10
    LIF f1, 0xdf000000              /* -2^63 as a float: fits exactly */
    fcvt.l.s a0, f1
    CHECK 77, a0, 0x8000000000000000
    CHECK_FLAGS 78, 0
    LIF f1, 0x5f000000              /* 2^63: does not */
    fcvt.l.s a0, f1
    CHECK 79, a0, 0x7fffffffffffffff
    CHECK_FLAGS 80, 0x10

    /* ---- int -> float rounding ---- */
    li a0, 0x7fffffffffffffff
    fcvt.s.l f3, a0                 /* rounds to 2^63 */
    CHECKF 81, f3, 0xffffffff5f000000
    li a0, -1
    fcvt.s.lu f3, a0                /* 2^64 - 1 -> 2^64 */
    CHECKF 82, f3, 0xffffffff5f800000
    fcvt.s.lu f3, a0, rtz           /* -> the float below 2^64 */
    CHECKF 83, f3, 0xffffffff5f7fffff
    li a0, 0x7fffffff
    fcvt.s.w f3, a0                 /* 2^31 - 1 -> 2^31 */
    CHECKF 84, f3, 0xffffffff4f000000
    fcvt.s.w f3, a0, rdn            /* -> 2^31 - 128 */
    CHECKF 85, f3, 0xffffffff4effffff
    CHECK_FLAGS 86, 0x01
    li a0, 0x80000000               /* INT32_MIN in the low half: exact */
    fcvt.d.w f3, a0
    CHECKF 87, f3, 0xc1e0000000000000
    CHECK_FLAGS 88, 0

    /* ---- fmin/fmax of equal zeros and two NaNs ---- */
    LID f1, 0x8000000000000000
    fmax.d f3, f1, f1
    CHECKF 89, f3, 0x8000000000000000
    LID f1, 0x7ff8000000000000
    LID f2, 0x7ff0000000000001
    fmin.d f3, f1, f2
    CHECKF 90, f3, 0x7ff8000000000000
    CHECK_FLAGS 91, 0x10

    PASS
TEST_END
