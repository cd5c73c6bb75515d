/* F/D non-arithmetic operations: fmin/fmax with quiet and signalling NaNs and signed zeros,
 * feq/flt/fle flags with NaNs, fclass of every class, NaN-boxing (flw and fmv.w.x box; an f32
 * operation reading an improperly boxed register sees the canonical NaN), fmv.x.w sign
 * extension, and sign injection.
 * Bit patterns as in fp_arith.S; f32 -0 80000000, qNaN 7fc00000, sNaN 7f800001. */
#include "common.h"

TEST_BEGIN
    li t0, MSTATUS_FS
    csrs mstatus, t0
    csrw fcsr, zero

    /* ---- fmin / fmax ---- */
    LIF f1, 0x3f800000              /* 1.0 */
    LIF f2, 0x7fc00000              /* qNaN */
    LIF f3, 0x7f800001              /* sNaN */
    LIF f4, 0x80000000              /* -0 */
    fmv.w.x f5, zero                /* +0 */
    fmin.s f6, f1, f2               /* one NaN: the other operand, no flags for a quiet NaN */
    CHECKF 1, f6, 0xffffffff3f800000
    fmax.s f6, f2, f1
    CHECKF 2, f6, 0xffffffff3f800000
    CHECK_FLAGS 3, 0
    fmin.s f6, f1, f3               /* signalling NaN: the other operand, invalid */
    CHECKF 4, f6, 0xffffffff3f800000
    CHECK_FLAGS 5, 0x10
    fmin.s f6, f2, f2               /* both NaN: canonical NaN */
    CHECKF 6, f6, 0xffffffff7fc00000
    fmax.s f6, f3, f2
    CHECKF 7, f6, 0xffffffff7fc00000
    CHECK_FLAGS 8, 0x10
    fmin.s f6, f5, f4               /* -0 < +0 for fmin/fmax */
    CHECKF 9, f6, 0xffffffff80000000
    fmin.s f6, f4, f5
    CHECKF 10, f6, 0xffffffff80000000
    fmax.s f6, f4, f5
    CHECKF 11, f6, 0xffffffff00000000
    fmax.s f6, f5, f4
    CHECKF 12, f6, 0xffffffff00000000
    CHECK_FLAGS 13, 0
    LID f1, 0x0000000000000000
    LID f2, 0x8000000000000000
    fmin.d f6, f1, f2
    CHECKF 14, f6, 0x8000000000000000
    fmax.d f6, f2, f1
    CHECKF 15, f6, 0
    LID f1, 0x7ff8000000000000
    LID f2, 0xbff0000000000000      /* -1.0 */
    fmax.d f6, f1, f2
    CHECKF 16, f6, 0xbff0000000000000
    LID f1, 0x7ff0000000000001      /* sNaN */
    fmin.d f6, f1, f1
    CHECKF 17, f6, 0x7ff8000000000000
    CHECK_FLAGS 18, 0x10
    LID f1, 0x4000000000000000      /* 2.0 */
    fmin.d f6, f1, f2
    CHECKF 19, f6, 0xbff0000000000000
    fmax.d f6, f1, f2
    CHECKF 20, f6, 0x4000000000000000

    /* ---- comparisons ---- */
    LIF f1, 0x3f800000
    LIF f2, 0x7fc00000
    LIF f3, 0x7f800001
    feq.s a0, f2, f1                /* quiet compare with a quiet NaN: false, no flags */
    CHECK 21, a0, 0
    CHECK_FLAGS 22, 0
    flt.s a0, f2, f1                /* signalling compares: false, invalid */
    CHECK 23, a0, 0
    CHECK_FLAGS 24, 0x10
    fle.s a0, f1, f2
    CHECK 25, a0, 0
    CHECK_FLAGS 26, 0x10
    feq.s a0, f3, f1                /* feq with a signalling NaN: invalid */
    CHECK 27, a0, 0
    CHECK_FLAGS 28, 0x10
    feq.s a0, f2, f2                /* NaN != NaN */
    CHECK 29, a0, 0
    feq.s a0, f4, f5                /* -0 == +0 */
    CHECK 30, a0, 1
    flt.s a0, f4, f5
    CHECK 31, a0, 0
    fle.s a0, f4, f5
    CHECK 32, a0, 1
    feq.s a0, f1, f1
    CHECK 33, a0, 1
    CHECK_FLAGS 34, 0
    LID f1, 0x3ff0000000000000
    LID f2, 0x4000000000000000
    flt.d a0, f1, f2
    CHECK 35, a0, 1
    flt.d a0, f2, f1
    CHECK 36, a0, 0
    fle.d a0, f1, f1
    CHECK 37, a0, 1
    LID f3, 0x7ff8000000000000
    fle.d a0, f3, f1
    CHECK 38, a0, 0
    CHECK_FLAGS 39, 0x10
    feq.d a0, f3, f1
    CHECK 40, a0, 0
    CHECK_FLAGS 41, 0

    /* ---- fclass: one bit per class ---- */
    LIF f1, 0xff800000              /* -inf */
    fclass.s a0, f1
    CHECK 42, a0, 0x001
    LIF f1, 0xbf800000              /* negative normal */
    fclass.s a0, f1
    CHECK 43, a0, 0x002
    LIF f1, 0x80000001              /* negative subnormal */
    fclass.s a0, f1
    CHECK 44, a0, 0x004
    LIF f1, 0x80000000              /* -0 */
    fclass.s a0, f1
    CHECK 45, a0, 0x008
    fmv.w.x f1, zero                /* +0 */
    fclass.s a0, f1
    CHECK 46, a0, 0x010
    LIF f1, 0x007fffff              /* positive subnormal */
    fclass.s a0, f1
    CHECK 47, a0, 0x020
    LIF f1, 0x3f800000              /* positive normal */
    fclass.s a0, f1
    CHECK 48, a0, 0x040
    LIF f1, 0x7f800000              /* +inf */
    fclass.s a0, f1
    CHECK 49, a0, 0x080
    LIF f1, 0x7f800001              /* signalling NaN */
    fclass.s a0, f1
    CHECK 50, a0, 0x100
    LIF f1, 0x7fc00000              /* quiet NaN */
    fclass.s a0, f1
    CHECK 51, a0, 0x200
    LIF f1, 0xffc00001              /* negative quiet NaN is still just a quiet NaN */
    fclass.s a0, f1
    CHECK 52, a0, 0x200
    LID f1, 0xfff0000000000000      /* -inf */
    fclass.d a0, f1
    CHECK 53, a0, 0x001
    LID f1, 0x000fffffffffffff      /* positive subnormal */
    fclass.d a0, f1
    CHECK 54, a0, 0x020
    LID f1, 0x7ff4000000000000      /* signalling NaN */
    fclass.d a0, f1
    CHECK 55, a0, 0x100
    LID f1, 0x7ff8000000000000
    fclass.d a0, f1
    CHECK 56, a0, 0x200
    LID f1, 0x8000000000000000
    fclass.d a0, f1
    CHECK 57, a0, 0x008
    CHECK_FLAGS 58, 0               /* fclass never sets flags */

    /* ---- NaN-boxing ---- */
    la s0, fdata
    flw f1, 0(s0)                   /* 1.0f: upper half of the register all ones */
    CHECKF 59, f1, 0xffffffff3f800000
    li t0, 0x40000000
    fmv.w.x f1, t0
    CHECKF 60, f1, 0xffffffff40000000
    li t0, 0x000000003f800000       /* 1.0f without the box */
    fmv.d.x f1, t0
    fadd.s f2, f1, f1               /* reads the canonical NaN: result canonical NaN, no NV */
    CHECKF 61, f2, 0xffffffff7fc00000
    CHECK_FLAGS 62, 0
    fsgnj.s f2, f1, f1              /* sign injection of an unboxed input: canonical NaN */
    CHECKF 63, f2, 0xffffffff7fc00000
    fcvt.d.s f2, f1                 /* widening it: the double canonical NaN */
    CHECKF 64, f2, 0x7ff8000000000000
    fclass.s a0, f1                 /* classifies as a quiet NaN */
    CHECK 65, a0, 0x200
    feq.s a0, f1, f1
    CHECK 66, a0, 0
    li t0, 0xfffffffe3f800000       /* almost boxed: still not boxed */
    fmv.d.x f1, t0
    fmin.s f2, f1, f1
    CHECKF 67, f2, 0xffffffff7fc00000
    LIF f3, 0x40000000
    fmin.s f2, f1, f3               /* NaN and 2.0: 2.0 */
    CHECKF 68, f2, 0xffffffff40000000
    li t0, 0x000000003f800000
    fmv.d.x f1, t0
    fmv.x.w a0, f1                  /* fmv.x.w moves the low bits as they are */
    CHECK 69, a0, 0x3f800000
    fsw f1, 8(s0)                   /* fsw stores the low bits as they are */
    lwu a0, 8(s0)
    CHECK 70, a0, 0x3f800000
    fld f1, 0(s0)                   /* fld loads all 64 bits */
    CHECKF 71, f1, 0xc00000003f800000
    CHECK_FLAGS 72, 0

    /* ---- fmv.x.w sign-extends bit 31 ---- */
    li t0, 0x80000000
    fmv.w.x f1, t0
    fmv.x.w a0, f1
    CHECK 73, a0, 0xffffffff80000000
    li t0, 0x7f800000
    fmv.w.x f1, t0
    fmv.x.w a0, f1
    CHECK 74, a0, 0x7f800000
    li t0, 0x12345678bf800000       /* fmv.w.x takes the low 32 bits */
    fmv.w.x f1, t0
    fmv.x.w a0, f1
    CHECK 75, a0, 0xffffffffbf800000
    CHECKF 76, f1, 0xffffffffbf800000
    li t0, 0x8000000000000001
    fmv.d.x f1, t0
    fmv.x.d a0, f1
    CHECK 77, a0, 0x8000000000000001

    /* ---- sign injection ---- */
    LIF f1, 0x3f800000              /* 1.0 */
    LIF f2, 0xc0000000              /* -2.0 */
    fsgnj.s f3, f1, f2
    CHECKF 78, f3, 0xffffffffbf800000
    fsgnjn.s f3, f1, f2
    CHECKF 79, f3, 0xffffffff3f800000
    fsgnjx.s f3, f2, f2             /* - xor - = + */
    CHECKF 80, f3, 0xffffffff40000000
    fabs.s f3, f2
    CHECKF 81, f3, 0xffffffff40000000
    LIF f4, 0x7f800001              /* sNaN: sign injection is not arithmetic, no flags */
    fneg.s f3, f4
    CHECKF 82, f3, 0xffffffffff800001
    CHECK_FLAGS 83, 0
    LID f1, 0x3ff0000000000000
    LID f2, 0x8000000000000000
    fsgnj.d f3, f1, f2
    CHECKF 84, f3, 0xbff0000000000000
    fsgnjx.d f3, f3, f2
    CHECKF 85, f3, 0x3ff0000000000000
    fneg.d f3, f1
    CHECKF 86, f3, 0xbff0000000000000

    PASS
TEST_END

    .data
    .balign 8
fdata: .word 0x3f800000, 0xc0000000, 0, 0
