//! Hand-checked edge cases. Every expected value here was derived by hand from IEEE-754 and
//! the RISC-V spec (the derivation is in the comment where it is not obvious), never by
//! running the code under test.

use super::consts::*;
use crate::*;
use Rm::*;

const ALL: [Rm; 5] = [Rne, Rtz, Rdn, Rup, Rmm];

type Bin32 = fn(u32, u32, Rm) -> (u32, Flags);
type Bin64 = fn(u64, u64, Rm) -> (u64, Flags);

fn check_bin32(name: &str, f: Bin32, cases: &[(u32, u32, Rm, u32, Flags)]) {
    for &(a, b, rm, want, wf) in cases {
        let got = f(a, b, rm);
        assert_eq!(
            got,
            (want, wf),
            "{name}({a:#010x}, {b:#010x}, {rm:?}): got ({:#010x}, {:#x}) want ({want:#010x}, {wf:#x})",
            got.0,
            got.1
        );
    }
}

fn check_bin64(name: &str, f: Bin64, cases: &[(u64, u64, Rm, u64, Flags)]) {
    for &(a, b, rm, want, wf) in cases {
        let got = f(a, b, rm);
        assert_eq!(
            got,
            (want, wf),
            "{name}({a:#018x}, {b:#018x}, {rm:?}): got ({:#018x}, {:#x}) want ({want:#018x}, {wf:#x})",
            got.0,
            got.1
        );
    }
}

#[test]
fn rm_decode_and_boxing() {
    assert_eq!(Rm::from_bits(0), Some(Rne));
    assert_eq!(Rm::from_bits(1), Some(Rtz));
    assert_eq!(Rm::from_bits(2), Some(Rdn));
    assert_eq!(Rm::from_bits(3), Some(Rup));
    assert_eq!(Rm::from_bits(4), Some(Rmm));
    for b in [5, 6, 7, 8, u32::MAX] {
        assert_eq!(Rm::from_bits(b), None);
    }
    assert_eq!(box_f32(S_ONE), 0xffff_ffff_3f80_0000);
    assert_eq!(box_f32(S_NZ), 0xffff_ffff_8000_0000);
    assert_eq!(unbox_f32(0xffff_ffff_3f80_0000), S_ONE);
    assert_eq!(unbox_f32(0xffff_ffff_7f80_0001), S_SNAN); // boxed sNaN stays itself
    assert_eq!(unbox_f32(0x0000_0000_3f80_0000), S_CNAN);
    assert_eq!(unbox_f32(0xffff_fffe_3f80_0000), S_CNAN);
    assert_eq!(unbox_f32(0x7fff_ffff_3f80_0000), S_CNAN);
    assert_eq!(unbox_f32(D_ONE), S_CNAN);
}

#[test]
fn add_sub_f32() {
    check_bin32(
        "f32_add",
        f32_add,
        &[
            (S_ONE, S_TWO, Rne, S_THREE, 0),
            // 1 + 2^-24 lies exactly halfway between 1 and 1+2^-23.
            (S_ONE, S_2M24, Rne, S_ONE, NX),
            (S_ONE, S_2M24, Rtz, S_ONE, NX),
            (S_ONE, S_2M24, Rdn, S_ONE, NX),
            (S_ONE, S_2M24, Rup, 0x3f80_0001, NX),
            (S_ONE, S_2M24, Rmm, 0x3f80_0001, NX),
            (S_NEG_ONE, S_2M24 | S_NZ, Rdn, 0xbf80_0001, NX),
            (S_NEG_ONE, S_2M24 | S_NZ, Rup, S_NEG_ONE, NX),
            (S_NEG_ONE, S_2M24 | S_NZ, Rmm, 0xbf80_0001, NX),
            (S_NEG_ONE, S_2M24 | S_NZ, Rtz, S_NEG_ONE, NX),
            // Exact cancellation: +0 except in RDN.
            (S_ONE, S_NEG_ONE, Rne, S_PZ, 0),
            (S_ONE, S_NEG_ONE, Rtz, S_PZ, 0),
            (S_ONE, S_NEG_ONE, Rup, S_PZ, 0),
            (S_ONE, S_NEG_ONE, Rmm, S_PZ, 0),
            (S_ONE, S_NEG_ONE, Rdn, S_NZ, 0),
            (S_NZ, S_NZ, Rne, S_NZ, 0),
            (S_PZ, S_NZ, Rne, S_PZ, 0),
            (S_PZ, S_NZ, Rdn, S_NZ, 0),
            (S_INF, S_ONE, Rne, S_INF, 0),
            (S_INF, S_NINF, Rne, S_CNAN, NV),
            (S_NINF, S_INF, Rdn, S_CNAN, NV),
            (S_CNAN, S_ONE, Rne, S_CNAN, 0),
            (S_QNAN_PAYLOAD, S_ONE, Rne, S_CNAN, 0),
            (S_ONE, S_NQNAN, Rne, S_CNAN, 0),
            (S_SNAN, S_ONE, Rne, S_CNAN, NV),
            (S_ONE, S_NSNAN, Rne, S_CNAN, NV),
            (S_SNAN, S_CNAN, Rne, S_CNAN, NV),
            // Overflow: max + max = 2^129 - 2^105.
            (S_MAX, S_MAX, Rne, S_INF, OF | NX),
            (S_MAX, S_MAX, Rtz, S_MAX, OF | NX),
            (S_MAX, S_MAX, Rdn, S_MAX, OF | NX),
            (S_MAX, S_MAX, Rup, S_INF, OF | NX),
            (S_MAX, S_MAX, Rmm, S_INF, OF | NX),
            (S_NMAX, S_NMAX, Rne, S_NINF, OF | NX),
            (S_NMAX, S_NMAX, Rdn, S_NINF, OF | NX),
            (S_NMAX, S_NMAX, Rup, S_NMAX, OF | NX),
            (S_NMAX, S_NMAX, Rtz, S_NMAX, OF | NX),
            // Subnormal sums are exact: tiny but exact raises nothing.
            (S_MINS, S_MINS, Rne, 0x0000_0002, 0),
            (S_MAXS, S_MINS, Rne, S_MINN, 0),
            (S_MINN, S_MINS | S_NZ, Rne, S_MAXS, 0),
            // -1.5*2^104 + max: tie rounding up to max - 2^104; TwoSum's s - a overflows.
            (0xf3c0_0000, S_MAX, Rne, 0x7f7f_fffe, NX),
            (S_MAX, 0xf3c0_0000, Rne, 0x7f7f_fffe, NX),
        ],
    );
    check_bin32(
        "f32_sub",
        f32_sub,
        &[
            (S_THREE, S_ONE, Rne, S_TWO, 0),
            (S_ONE, S_ONE, Rne, S_PZ, 0),
            (S_ONE, S_ONE, Rdn, S_NZ, 0),
            (S_NZ, S_PZ, Rne, S_NZ, 0),
            (S_INF, S_INF, Rne, S_CNAN, NV),
            (S_INF, S_NINF, Rne, S_INF, 0),
            // 1 - 2^-25 is halfway between 1-2^-24 (odd significand) and 1 (even).
            (S_ONE, S_2M25, Rne, S_ONE, NX),
            (S_ONE, S_2M25, Rtz, 0x3f7f_ffff, NX),
            (S_ONE, S_2M25, Rdn, 0x3f7f_ffff, NX),
            (S_ONE, S_2M25, Rup, S_ONE, NX),
            (S_ONE, S_2M25, Rmm, S_ONE, NX),
            (S_NMAX, S_MAX, Rtz, S_NMAX, OF | NX),
            (S_NMAX, S_MAX, Rne, S_NINF, OF | NX),
            (S_SNAN, S_SNAN, Rne, S_CNAN, NV),
        ],
    );
}

#[test]
fn add_sub_f64() {
    check_bin64(
        "f64_add",
        f64_add,
        &[
            (D_ONE, D_TWO, Rne, D_THREE, 0),
            (D_ONE, D_2M53, Rne, D_ONE, NX),
            (D_ONE, D_2M53, Rup, 0x3ff0_0000_0000_0001, NX),
            (D_ONE, D_2M53, Rmm, 0x3ff0_0000_0000_0001, NX),
            (D_ONE, D_2M53, Rtz, D_ONE, NX),
            (D_ONE, D_NEG_ONE, Rne, D_PZ, 0),
            (D_ONE, D_NEG_ONE, Rdn, D_NZ, 0),
            (D_NZ, D_NZ, Rne, D_NZ, 0),
            (D_INF, D_NINF, Rne, D_CNAN, NV),
            (D_SNAN, D_ONE, Rne, D_CNAN, NV),
            (D_QNAN_PAYLOAD, D_ONE, Rne, D_CNAN, 0),
            (D_MAX, D_MAX, Rne, D_INF, OF | NX),
            (D_MAX, D_MAX, Rtz, D_MAX, OF | NX),
            (D_MAX, D_MAX, Rdn, D_MAX, OF | NX),
            (D_MAX, D_MAX, Rup, D_INF, OF | NX),
            (D_NMAX, D_NMAX, Rup, D_NMAX, OF | NX),
            (D_NMAX, D_NMAX, Rdn, D_NINF, OF | NX),
            (D_MINS, D_MINS, Rne, 2, 0),
            (D_MAXS, D_MINS, Rne, D_MINN, 0),
            // max + half an ulp of max (2^970) ties to even: the even neighbour is 2^1024,
            // which overflows.
            (D_MAX, 0x7c90_0000_0000_0000, Rne, D_INF, OF | NX),
            // max + a quarter ulp (2^969) rounds back to max: inexact, no overflow.
            (D_MAX, 0x7c80_0000_0000_0000, Rne, D_MAX, NX),
            // -1.5*2^971 + max = (2^54 - 5)*2^970: a tie that rounds up to max - 2^971. Inside
            // TwoSum, s - a = max + 2^970 then overflows (tie to the even 2^1024).
            (0xfca8_0000_0000_0000, D_MAX, Rne, 0x7fef_ffff_ffff_fffe, NX),
            (D_MAX, 0xfca8_0000_0000_0000, Rne, 0x7fef_ffff_ffff_fffe, NX),
        ],
    );
    check_bin64(
        "f64_sub",
        f64_sub,
        &[
            (D_THREE, D_ONE, Rne, D_TWO, 0),
            (D_ONE, D_ONE, Rne, D_PZ, 0),
            (D_ONE, D_ONE, Rdn, D_NZ, 0),
            (D_INF, D_INF, Rne, D_CNAN, NV),
            (D_CNAN, D_SNAN, Rne, D_CNAN, NV),
            (D_NMAX, D_MAX, Rtz, D_NMAX, OF | NX),
        ],
    );
}

#[test]
fn mul_f32() {
    check_bin32(
        "f32_mul",
        f32_mul,
        &[
            (S_TWO, S_THREE, Rne, S_SIX, 0),
            (S_NZ, S_ONE, Rne, S_NZ, 0),
            (S_NEG_ONE, S_PZ, Rne, S_NZ, 0),
            (S_NZ, S_NZ, Rne, S_PZ, 0),
            (S_PZ, S_INF, Rne, S_CNAN, NV),
            (S_NINF, S_NZ, Rne, S_CNAN, NV),
            (S_INF, S_NEG_ONE, Rne, S_NINF, 0),
            (S_CNAN, S_PZ, Rne, S_CNAN, 0),
            (S_SNAN, S_ONE, Rne, S_CNAN, NV),
            // Overflow in every mode.
            (S_MAX, S_TWO, Rne, S_INF, OF | NX),
            (S_MAX, S_TWO, Rtz, S_MAX, OF | NX),
            (S_MAX, S_TWO, Rdn, S_MAX, OF | NX),
            (S_MAX, S_TWO, Rup, S_INF, OF | NX),
            (S_MAX, S_TWO, Rmm, S_INF, OF | NX),
            (S_NMAX, S_TWO, Rne, S_NINF, OF | NX),
            (S_NMAX, S_TWO, Rtz, S_NMAX, OF | NX),
            (S_NMAX, S_TWO, Rdn, S_NINF, OF | NX),
            (S_NMAX, S_TWO, Rup, S_NMAX, OF | NX),
            (S_NMAX, S_TWO, Rmm, S_NINF, OF | NX),
            // Exact subnormal result: no UF.
            (S_MINN, S_HALF, Rne, 0x0040_0000, 0),
            // 2^-149 * 0.5 = 2^-150: tie between 0 (even) and 2^-149.
            (S_MINS, S_HALF, Rne, S_PZ, UF | NX),
            (S_MINS, S_HALF, Rtz, S_PZ, UF | NX),
            (S_MINS, S_HALF, Rdn, S_PZ, UF | NX),
            (S_MINS, S_HALF, Rup, S_MINS, UF | NX),
            (S_MINS, S_HALF, Rmm, S_MINS, UF | NX),
            (S_MINS | S_NZ, S_HALF, Rdn, S_MINS | S_NZ, UF | NX),
            (S_MINS | S_NZ, S_HALF, Rne, S_NZ, UF | NX),
            // (1-2^-23) * (1+2^-23)*2^-126 = (1-2^-46)*2^-126. Rounded to 24 bits with an
            // unbounded exponent it is 2^-126, so after-rounding tininess says NOT tiny:
            // RNE/RUP/RMM give the smallest normal with NX only (before-rounding detection
            // would add UF). RTZ/RDN round to 2^-126 - 2^-150, tiny, so UF|NX and the
            // largest subnormal.
            (0x3f7f_fffe, 0x0080_0001, Rne, S_MINN, NX),
            (0x3f7f_fffe, 0x0080_0001, Rup, S_MINN, NX),
            (0x3f7f_fffe, 0x0080_0001, Rmm, S_MINN, NX),
            (0x3f7f_fffe, 0x0080_0001, Rtz, S_MAXS, UF | NX),
            (0x3f7f_fffe, 0x0080_0001, Rdn, S_MAXS, UF | NX),
            // (1-2^-24) * 2^-126 = 2^-126 - 2^-150: representable with unbounded exponent,
            // so tiny after rounding; on the subnormal grid it ties to the even 2^-126.
            (0x3f7f_ffff, S_MINN, Rne, S_MINN, UF | NX),
            (0x3f7f_ffff, S_MINN, Rtz, S_MAXS, UF | NX),
        ],
    );
}

#[test]
fn mul_f64() {
    check_bin64(
        "f64_mul",
        f64_mul,
        &[
            (D_TWO, D_THREE, Rne, D_SIX, 0),
            (D_NZ, D_ONE, Rne, D_NZ, 0),
            (D_PZ, D_NINF, Rne, D_CNAN, NV),
            (D_SNAN, D_PZ, Rne, D_CNAN, NV),
            (D_MAX, D_TWO, Rne, D_INF, OF | NX),
            (D_MAX, D_TWO, Rtz, D_MAX, OF | NX),
            (D_MAX, D_TWO, Rdn, D_MAX, OF | NX),
            (D_MAX, D_TWO, Rup, D_INF, OF | NX),
            (D_NMAX, D_TWO, Rdn, D_NINF, OF | NX),
            (D_NMAX, D_TWO, Rup, D_NMAX, OF | NX),
            (D_MINN, D_HALF, Rne, 0x0008_0000_0000_0000, 0),
            (D_MINS, D_HALF, Rne, D_PZ, UF | NX),
            (D_MINS, D_HALF, Rup, D_MINS, UF | NX),
            // (1-2^-52) * (1+2^-52)*2^-1022 = (1-2^-104)*2^-1022: not tiny after rounding in
            // RNE (NX only), tiny in RTZ.
            (
                0x3fef_ffff_ffff_fffe,
                0x0010_0000_0000_0001,
                Rne,
                D_MINN,
                NX,
            ),
            (
                0x3fef_ffff_ffff_fffe,
                0x0010_0000_0000_0001,
                Rtz,
                D_MAXS,
                UF | NX,
            ),
            (0x3fef_ffff_ffff_ffff, D_MINN, Rne, D_MINN, UF | NX),
            // (1+2^-52)^2 = 1 + 2^-51 + 2^-104: inexact, RNE drops the 2^-104.
            (
                0x3ff0_0000_0000_0001,
                0x3ff0_0000_0000_0001,
                Rne,
                0x3ff0_0000_0000_0002,
                NX,
            ),
            (
                0x3ff0_0000_0000_0001,
                0x3ff0_0000_0000_0001,
                Rup,
                0x3ff0_0000_0000_0003,
                NX,
            ),
        ],
    );
}

#[test]
fn div_both() {
    check_bin32(
        "f32_div",
        f32_div,
        &[
            (S_SIX, S_THREE, Rne, S_TWO, 0),
            (S_ONE, S_PZ, Rne, S_INF, DZ),
            (S_NEG_ONE, S_PZ, Rne, S_NINF, DZ),
            (S_ONE, S_NZ, Rne, S_NINF, DZ),
            (S_PZ, S_PZ, Rne, S_CNAN, NV),
            (S_INF, S_INF, Rne, S_CNAN, NV),
            (S_INF, S_PZ, Rne, S_INF, 0),
            (S_PZ, S_INF, Rne, S_PZ, 0),
            (S_ONE, S_NINF, Rne, S_NZ, 0),
            (S_SNAN, S_ONE, Rne, S_CNAN, NV),
            (S_CNAN, S_PZ, Rne, S_CNAN, 0),
            // 1/3 = 0x3eaaaaaa + 0.1010..ulp (2/3 ulp): RNE rounds up.
            (S_ONE, S_THREE, Rne, 0x3eaa_aaab, NX),
            (S_ONE, S_THREE, Rtz, 0x3eaa_aaaa, NX),
            (S_ONE, S_THREE, Rdn, 0x3eaa_aaaa, NX),
            (S_ONE, S_THREE, Rup, 0x3eaa_aaab, NX),
            (S_NEG_ONE, S_THREE, Rdn, 0xbeaa_aaab, NX),
            (S_MAX, S_HALF, Rne, S_INF, OF | NX),
            (S_MAX, S_HALF, Rtz, S_MAX, OF | NX),
            (S_MINS, S_TWO, Rne, S_PZ, UF | NX),
            (S_MINS, S_TWO, Rup, S_MINS, UF | NX),
            // (2 - 2^-23)*2^-126 / 2 = 2^-126 - 2^-150: exactly representable with an
            // unbounded exponent, so tiny; on the subnormal grid it ties to the even 2^-126.
            // The host returns the smallest normal here, so a fast path must not trust a
            // result equal to it.
            (0x00ff_ffff, S_TWO, Rne, S_MINN, UF | NX),
            (0x00ff_ffff, S_TWO, Rtz, S_MAXS, UF | NX),
        ],
    );
    check_bin64(
        "f64_div",
        f64_div,
        &[
            (D_SIX, D_THREE, Rne, D_TWO, 0),
            (D_ONE, D_PZ, Rne, D_INF, DZ),
            (D_ONE, D_NZ, Rne, D_NINF, DZ),
            (D_PZ, D_PZ, Rne, D_CNAN, NV),
            (D_INF, D_NINF, Rne, D_CNAN, NV),
            (D_INF, D_PZ, Rne, D_INF, 0),
            // 1/3 = 0x3fd5555555555555 + 0.0101..ulp (1/3 ulp): RNE rounds down.
            (D_ONE, D_THREE, Rne, 0x3fd5_5555_5555_5555, NX),
            (D_ONE, D_THREE, Rup, 0x3fd5_5555_5555_5556, NX),
            (D_ONE, D_THREE, Rmm, 0x3fd5_5555_5555_5555, NX),
            (D_MAX, D_HALF, Rdn, D_MAX, OF | NX),
            (D_MAX, D_HALF, Rup, D_INF, OF | NX),
            // 2^-1022 - 2^-1075: tiny, ties to the even smallest normal (see f32 case).
            (0x001f_ffff_ffff_ffff, D_TWO, Rne, D_MINN, UF | NX),
            (0x001f_ffff_ffff_ffff, D_TWO, Rmm, D_MINN, UF | NX),
            (0x001f_ffff_ffff_ffff, D_TWO, Rdn, D_MAXS, UF | NX),
            // (2 - 2^-51)*2^-1022 / 2 = 2^-1022 - 2^-1074: an exact subnormal, no flags.
            (0x001f_ffff_ffff_fffe, D_TWO, Rne, D_MAXS, 0),
        ],
    );
}

#[test]
fn sqrt_both() {
    let s32: &[(u32, Rm, u32, Flags)] = &[
        (0x4080_0000, Rne, S_TWO, 0), // sqrt(4)
        // sqrt(2) = 1.41421356237...; 0x3fb504f3 = 1.41421353816..., next 1.41421365737...
        (S_TWO, Rne, 0x3fb5_04f3, NX),
        (S_TWO, Rtz, 0x3fb5_04f3, NX),
        (S_TWO, Rdn, 0x3fb5_04f3, NX),
        (S_TWO, Rup, 0x3fb5_04f4, NX),
        (S_TWO, Rmm, 0x3fb5_04f3, NX),
        (S_NZ, Rne, S_NZ, 0),
        (S_NZ, Rdn, S_NZ, 0),
        (S_PZ, Rne, S_PZ, 0),
        (S_NEG_ONE, Rne, S_CNAN, NV),
        (S_NINF, Rne, S_CNAN, NV),
        (S_MINS | S_NZ, Rne, S_CNAN, NV),
        (S_INF, Rne, S_INF, 0),
        (S_CNAN, Rne, S_CNAN, 0),
        (S_NQNAN, Rne, S_CNAN, 0),
        (S_SNAN, Rne, S_CNAN, NV),
        (0x0000_0002, Rne, 0x1a80_0000, 0), // sqrt(2^-148) = 2^-74
    ];
    for &(a, rm, want, wf) in s32 {
        assert_eq!(f32_sqrt(a, rm), (want, wf), "f32_sqrt({a:#x}, {rm:?})");
    }
    let s64: &[(u64, Rm, u64, Flags)] = &[
        (0x4010_0000_0000_0000, Rne, D_TWO, 0),
        // sqrt(2) = 1.41421356237309504880...; 0x3ff6a09e667f3bcd = 1.41421356237309514547
        // is above it and nearest.
        (D_TWO, Rne, 0x3ff6_a09e_667f_3bcd, NX),
        (D_TWO, Rup, 0x3ff6_a09e_667f_3bcd, NX),
        (D_TWO, Rtz, 0x3ff6_a09e_667f_3bcc, NX),
        (D_TWO, Rdn, 0x3ff6_a09e_667f_3bcc, NX),
        (D_NZ, Rne, D_NZ, 0),
        (D_NEG_ONE, Rne, D_CNAN, NV),
        (D_INF, Rne, D_INF, 0),
        (D_SNAN, Rne, D_CNAN, NV),
        (D_QNAN_PAYLOAD, Rne, D_CNAN, 0),
        (D_MINS, Rne, 0x1e60_0000_0000_0000, 0), // sqrt(2^-1074) = 2^-537
    ];
    for &(a, rm, want, wf) in s64 {
        assert_eq!(f64_sqrt(a, rm), (want, wf), "f64_sqrt({a:#x}, {rm:?})");
    }
}

#[test]
fn fma_both() {
    let c32: &[(u32, u32, u32, Rm, u32, Flags)] = &[
        (S_TWO, S_THREE, S_ONE, Rne, 0x40e0_0000, 0), // 7
        // RISC-V: inf*0 is invalid even when c is a quiet NaN.
        (S_INF, S_PZ, S_CNAN, Rne, S_CNAN, NV),
        (S_PZ, S_NINF, S_QNAN_PAYLOAD, Rne, S_CNAN, NV),
        (S_INF, S_PZ, S_ONE, Rne, S_CNAN, NV),
        (S_ONE, S_ONE, S_SNAN, Rne, S_CNAN, NV),
        (S_ONE, S_CNAN, S_ONE, Rne, S_CNAN, 0),
        (S_INF, S_ONE, S_NINF, Rne, S_CNAN, NV),
        (S_INF, S_ONE, S_INF, Rne, S_INF, 0),
        // -1*1 + 1: exact zero, +0 except RDN.
        (S_NEG_ONE, S_ONE, S_ONE, Rne, S_PZ, 0),
        (S_NEG_ONE, S_ONE, S_ONE, Rdn, S_NZ, 0),
        (S_NZ, S_ONE, S_NZ, Rne, S_NZ, 0),
        (S_MAX, S_TWO, S_PZ, Rtz, S_MAX, OF | NX),
        (S_MAX, S_TWO, S_PZ, Rne, S_INF, OF | NX),
        // (1+2^-12)^2 - 1 = 2^-11 + 2^-24 exactly; a separate multiply would round
        // 1 + 2^-11 + 2^-24 to 1 + 2^-11 and lose the 2^-24.
        (0x3f80_0800, 0x3f80_0800, S_NEG_ONE, Rne, 0x3a00_0400, 0),
    ];
    for &(a, b, c, rm, want, wf) in c32 {
        assert_eq!(
            f32_fma(a, b, c, rm),
            (want, wf),
            "f32_fma({a:#x}, {b:#x}, {c:#x}, {rm:?})"
        );
    }
    let c64: &[(u64, u64, u64, Rm, u64, Flags)] = &[
        (D_TWO, D_THREE, D_ONE, Rne, 0x401c_0000_0000_0000, 0), // 7
        (D_INF, D_PZ, D_CNAN, Rne, D_CNAN, NV),
        (D_PZ, D_INF, D_SNAN, Rne, D_CNAN, NV),
        (D_ONE, D_ONE, D_SNAN, Rne, D_CNAN, NV),
        (D_CNAN, D_ONE, D_ONE, Rne, D_CNAN, 0),
        (D_NEG_ONE, D_ONE, D_ONE, Rdn, D_NZ, 0),
        (D_NEG_ONE, D_ONE, D_ONE, Rne, D_PZ, 0),
        // (1+2^-27)^2 - 1 = 2^-26 + 2^-54 = 2^-26 * (1 + 2^-28), exact.
        (
            0x3ff0_0000_0200_0000,
            0x3ff0_0000_0200_0000,
            D_NEG_ONE,
            Rne,
            0x3e50_0000_0100_0000,
            0,
        ),
        (D_NMAX, D_TWO, D_PZ, Rup, D_NMAX, OF | NX),
        (D_MINS, D_HALF, D_PZ, Rne, D_PZ, UF | NX),
    ];
    for &(a, b, c, rm, want, wf) in c64 {
        assert_eq!(
            f64_fma(a, b, c, rm),
            (want, wf),
            "f64_fma({a:#x}, {b:#x}, {c:#x}, {rm:?})"
        );
    }
}

#[test]
fn min_max_both() {
    let c32: &[(u32, u32, u32, u32, Flags)] = &[
        // (a, b, min, max, flags)
        (S_ONE, S_TWO, S_ONE, S_TWO, 0),
        (S_TWO, S_ONE, S_ONE, S_TWO, 0),
        (S_NEG_ONE, S_ONE, S_NEG_ONE, S_ONE, 0),
        (S_NZ, S_PZ, S_NZ, S_PZ, 0),
        (S_PZ, S_NZ, S_NZ, S_PZ, 0),
        (S_NZ, S_NZ, S_NZ, S_NZ, 0),
        (S_NINF, S_INF, S_NINF, S_INF, 0),
        (S_CNAN, S_ONE, S_ONE, S_ONE, 0),
        (S_ONE, S_QNAN_PAYLOAD, S_ONE, S_ONE, 0),
        (S_NQNAN, S_NINF, S_NINF, S_NINF, 0),
        (S_SNAN, S_ONE, S_ONE, S_ONE, NV),
        (S_ONE, S_NSNAN, S_ONE, S_ONE, NV),
        (S_CNAN, S_CNAN, S_CNAN, S_CNAN, 0),
        (S_QNAN_PAYLOAD, S_NQNAN, S_CNAN, S_CNAN, 0),
        (S_SNAN, S_CNAN, S_CNAN, S_CNAN, NV),
        (S_MINS, S_MINS | S_NZ, S_MINS | S_NZ, S_MINS, 0),
    ];
    for &(a, b, mn, mx, fl) in c32 {
        assert_eq!(f32_min(a, b), (mn, fl), "f32_min({a:#x}, {b:#x})");
        assert_eq!(f32_max(a, b), (mx, fl), "f32_max({a:#x}, {b:#x})");
    }
    let c64: &[(u64, u64, u64, u64, Flags)] = &[
        (D_ONE, D_TWO, D_ONE, D_TWO, 0),
        (D_NZ, D_PZ, D_NZ, D_PZ, 0),
        (D_PZ, D_NZ, D_NZ, D_PZ, 0),
        (D_CNAN, D_NEG_ONE, D_NEG_ONE, D_NEG_ONE, 0),
        (D_SNAN, D_TWO, D_TWO, D_TWO, NV),
        (D_CNAN, D_QNAN_PAYLOAD, D_CNAN, D_CNAN, 0),
        (D_SNAN, D_SNAN, D_CNAN, D_CNAN, NV),
        (D_NMAX, D_MAX, D_NMAX, D_MAX, 0),
    ];
    for &(a, b, mn, mx, fl) in c64 {
        assert_eq!(f64_min(a, b), (mn, fl), "f64_min({a:#x}, {b:#x})");
        assert_eq!(f64_max(a, b), (mx, fl), "f64_max({a:#x}, {b:#x})");
    }
}

#[test]
fn compare_both() {
    // (a, b, eq, lt, le, eq_flags, ordered_flags)
    let c32: &[(u32, u32, bool, bool, bool, Flags, Flags)] = &[
        (S_ONE, S_ONE, true, false, true, 0, 0),
        (S_ONE, S_TWO, false, true, true, 0, 0),
        (S_TWO, S_ONE, false, false, false, 0, 0),
        (S_NZ, S_PZ, true, false, true, 0, 0),
        (S_PZ, S_NZ, true, false, true, 0, 0),
        (S_NINF, S_INF, false, true, true, 0, 0),
        (S_INF, S_INF, true, false, true, 0, 0),
        (S_MINS | S_NZ, S_MINS, false, true, true, 0, 0),
        (S_CNAN, S_ONE, false, false, false, 0, NV),
        (S_ONE, S_NQNAN, false, false, false, 0, NV),
        (S_CNAN, S_CNAN, false, false, false, 0, NV),
        (S_SNAN, S_ONE, false, false, false, NV, NV),
        (S_ONE, S_NSNAN, false, false, false, NV, NV),
    ];
    for &(a, b, eq, lt, le, ef, of) in c32 {
        assert_eq!(f32_eq(a, b), (eq, ef), "f32_eq({a:#x}, {b:#x})");
        assert_eq!(f32_lt(a, b), (lt, of), "f32_lt({a:#x}, {b:#x})");
        assert_eq!(f32_le(a, b), (le, of), "f32_le({a:#x}, {b:#x})");
    }
    let c64: &[(u64, u64, bool, bool, bool, Flags, Flags)] = &[
        (D_ONE, D_ONE, true, false, true, 0, 0),
        (D_NEG_ONE, D_ONE, false, true, true, 0, 0),
        (D_NZ, D_PZ, true, false, true, 0, 0),
        (D_MAX, D_INF, false, true, true, 0, 0),
        (D_CNAN, D_ONE, false, false, false, 0, NV),
        (D_QNAN_PAYLOAD, D_QNAN_PAYLOAD, false, false, false, 0, NV),
        (D_SNAN, D_ONE, false, false, false, NV, NV),
    ];
    for &(a, b, eq, lt, le, ef, of) in c64 {
        assert_eq!(f64_eq(a, b), (eq, ef), "f64_eq({a:#x}, {b:#x})");
        assert_eq!(f64_lt(a, b), (lt, of), "f64_lt({a:#x}, {b:#x})");
        assert_eq!(f64_le(a, b), (le, of), "f64_le({a:#x}, {b:#x})");
    }
}

#[test]
fn classify_both() {
    let c32: &[(u32, u32)] = &[
        (S_NINF, 0),
        (S_NEG_ONE, 1),
        (S_NMAX, 1),
        (S_MAXS | S_NZ, 2),
        (S_MINS | S_NZ, 2),
        (S_NZ, 3),
        (S_PZ, 4),
        (S_MINS, 5),
        (S_MAXS, 5),
        (S_MINN, 6),
        (S_MAX, 6),
        (S_INF, 7),
        (S_SNAN, 8),
        (S_NSNAN, 8),
        (0x7fbf_ffff, 8),
        (S_CNAN, 9),
        (S_NQNAN, 9),
        (0x7fff_ffff, 9),
    ];
    for &(a, bit) in c32 {
        assert_eq!(f32_class(a), 1 << bit, "f32_class({a:#x})");
    }
    let c64: &[(u64, u32)] = &[
        (D_NINF, 0),
        (D_NEG_ONE, 1),
        (D_MAXS | D_NZ, 2),
        (D_NZ, 3),
        (D_PZ, 4),
        (D_MINS, 5),
        (D_MINN, 6),
        (D_INF, 7),
        (D_SNAN, 8),
        (0x7ff7_ffff_ffff_ffff, 8),
        (D_CNAN, 9),
        (0xfff8_0000_0000_0000, 9),
    ];
    for &(a, bit) in c64 {
        assert_eq!(f64_class(a), 1 << bit, "f64_class({a:#x})");
    }
}

fn s(v: f32) -> u32 {
    v.to_bits()
}
fn d(v: f64) -> u64 {
    v.to_bits()
}

#[test]
fn to_int_saturation_table() {
    const I32MAX: i64 = 0x7fff_ffff;
    const I32MIN: i64 = -0x8000_0000;
    const U32MAX_SEXT: u64 = 0xffff_ffff_ffff_ffff;
    for rm in ALL {
        // NaN (either sign, quiet or signaling) -> largest positive value, NV.
        for n in [S_CNAN, S_NQNAN, S_SNAN, S_NSNAN] {
            assert_eq!(f32_to_i32(n, rm), (I32MAX, NV));
            assert_eq!(f32_to_u32(n, rm), (U32MAX_SEXT, NV));
            assert_eq!(f32_to_i64(n, rm), (i64::MAX, NV));
            assert_eq!(f32_to_u64(n, rm), (u64::MAX, NV));
        }
        for n in [D_CNAN, D_SNAN, 0xfff8_0000_0000_0000] {
            assert_eq!(f64_to_i32(n, rm), (I32MAX, NV));
            assert_eq!(f64_to_u32(n, rm), (U32MAX_SEXT, NV));
            assert_eq!(f64_to_i64(n, rm), (i64::MAX, NV));
            assert_eq!(f64_to_u64(n, rm), (u64::MAX, NV));
        }
        assert_eq!(f32_to_i32(S_INF, rm), (I32MAX, NV));
        assert_eq!(f32_to_i32(S_NINF, rm), (I32MIN, NV));
        assert_eq!(f32_to_u32(S_INF, rm), (U32MAX_SEXT, NV));
        assert_eq!(f32_to_u32(S_NINF, rm), (0, NV));
        assert_eq!(f32_to_i64(S_INF, rm), (i64::MAX, NV));
        assert_eq!(f32_to_i64(S_NINF, rm), (i64::MIN, NV));
        assert_eq!(f32_to_u64(S_INF, rm), (u64::MAX, NV));
        assert_eq!(f32_to_u64(S_NINF, rm), (0, NV));
        assert_eq!(f64_to_i32(D_INF, rm), (I32MAX, NV));
        assert_eq!(f64_to_i32(D_NINF, rm), (I32MIN, NV));
        assert_eq!(f64_to_u32(D_NINF, rm), (0, NV));
        assert_eq!(f64_to_u64(D_INF, rm), (u64::MAX, NV));
        // Boundaries of the representable ranges.
        assert_eq!(f32_to_i32(0x4f00_0000, rm), (I32MAX, NV)); // 2^31
        assert_eq!(f32_to_i32(0xcf00_0000, rm), (I32MIN, 0)); // -2^31
        assert_eq!(f64_to_i32(d(2147483647.0), rm), (I32MAX, 0));
        assert_eq!(f64_to_i32(d(2147483648.0), rm), (I32MAX, NV));
        assert_eq!(f64_to_i32(d(-2147483649.0), rm), (I32MIN, NV));
        assert_eq!(f64_to_u32(d(4294967295.0), rm), (U32MAX_SEXT, 0));
        assert_eq!(f64_to_u32(d(4294967296.0), rm), (U32MAX_SEXT, NV));
        assert_eq!(f64_to_u32(d(3e9), rm), (0xffff_ffff_b2d0_5e00, 0)); // sign-extended
        assert_eq!(f64_to_u32(d(-1.0), rm), (0, NV));
        assert_eq!(f32_to_u32(s(-1.0), rm), (0, NV));
        assert_eq!(f64_to_u64(d(-1.0), rm), (0, NV));
        assert_eq!(f64_to_i64(0x43e0_0000_0000_0000, rm), (i64::MAX, NV)); // 2^63
        assert_eq!(f64_to_i64(0xc3e0_0000_0000_0000, rm), (i64::MIN, 0)); // -2^63
        assert_eq!(f64_to_i64(0xc3e0_0000_0000_0001, rm), (i64::MIN, NV));
        assert_eq!(f32_to_i64(0xdf00_0000, rm), (i64::MIN, 0));
        assert_eq!(f32_to_i64(0x5f00_0000, rm), (i64::MAX, NV));
        assert_eq!(f64_to_u64(0x43f0_0000_0000_0000, rm), (u64::MAX, NV)); // 2^64
        assert_eq!(
            f64_to_u64(0x43ef_ffff_ffff_ffff, rm),
            (0xffff_ffff_ffff_f800, 0)
        );
        assert_eq!(f32_to_u64(0x5f80_0000, rm), (u64::MAX, NV)); // 2^64
        assert_eq!(f32_to_u64(0x5f7f_ffff, rm), (0xffff_ff00_0000_0000, 0));
        // Zeros, exact integers.
        assert_eq!(f32_to_i32(S_NZ, rm), (0, 0));
        assert_eq!(f32_to_u32(S_NZ, rm), (0, 0));
        assert_eq!(f64_to_u64(D_NZ, rm), (0, 0));
        assert_eq!(f64_to_i32(d(-1.0), rm), (-1, 0));
        assert_eq!(f32_to_i64(s(-3.0), rm), (-3, 0));
    }
    // Rounding-mode dependent results.
    let i32s: &[(f64, Rm, i64, Flags)] = &[
        (-1.1, Rtz, -1, NX),
        (-0.9, Rtz, 0, NX),
        (0.9, Rne, 1, NX),
        (2.5, Rne, 2, NX),
        (3.5, Rne, 4, NX),
        (2.5, Rmm, 3, NX),
        (-2.5, Rmm, -3, NX),
        (2.5, Rup, 3, NX),
        (2.5, Rdn, 2, NX),
        (-2.5, Rdn, -3, NX),
        (-2.5, Rup, -2, NX),
        (-2.5, Rtz, -2, NX),
        (2147483647.5, Rtz, I32MAX, NX),
        (2147483647.5, Rdn, I32MAX, NX),
        (2147483647.5, Rne, I32MAX, NV), // rounds to 2^31: out of range
        (2147483647.5, Rup, I32MAX, NV),
        (-2147483648.5, Rtz, I32MIN, NX),
        (-2147483648.5, Rup, I32MIN, NX),
        (-2147483648.5, Rdn, I32MIN, NV),
        (-2147483648.5, Rmm, I32MIN, NV),
        (-2147483648.5, Rne, I32MIN, NX), // ties to even -2^31
    ];
    for &(v, rm, want, wf) in i32s {
        assert_eq!(f64_to_i32(d(v), rm), (want, wf), "f64_to_i32({v}, {rm:?})");
        // All of these but the huge ones are exact in f32 too.
        if v.abs() < 16.0 {
            assert_eq!(
                f32_to_i32(s(v as f32), rm),
                (want, wf),
                "f32_to_i32({v}, {rm:?})"
            );
        }
    }
    let u32s: &[(f64, Rm, u64, Flags)] = &[
        (-0.3, Rtz, 0, NX), // rounds to zero: just inexact
        (-0.3, Rne, 0, NX),
        (-0.3, Rup, 0, NX),
        (-0.3, Rdn, 0, NV), // rounds to -1: invalid
        (-0.5, Rne, 0, NX), // ties to even 0
        (-0.5, Rmm, 0, NV), // ties away to -1
        (-0.6, Rne, 0, NV),
        (-1.0, Rtz, 0, NV),
        (0.5, Rmm, 1, NX),
        (4294967295.5, Rtz, U32MAX_SEXT, NX),
        (4294967295.5, Rne, U32MAX_SEXT, NV),
        (2147483648.0, Rne, 0xffff_ffff_8000_0000, 0),
    ];
    for &(v, rm, want, wf) in u32s {
        assert_eq!(f64_to_u32(d(v), rm), (want, wf), "f64_to_u32({v}, {rm:?})");
        if v.abs() < 16.0 {
            assert_eq!(
                f32_to_u32(s(v as f32), rm),
                (want, wf),
                "f32_to_u32({v}, {rm:?})"
            );
        }
    }
    let i64s: &[(f64, Rm, i64, Flags)] = &[
        (1.5, Rne, 2, NX),
        (0.5, Rne, 0, NX),
        (-0.5, Rmm, -1, NX),
        (-0.5, Rtz, 0, NX),
        (-1e-300, Rdn, -1, NX),
        (1e-300, Rup, 1, NX),
        (4503599627370495.5, Rne, 4503599627370496, NX), // 2^52 - 0.5 ties to even
        (4503599627370495.5, Rtz, 4503599627370495, NX),
    ];
    for &(v, rm, want, wf) in i64s {
        assert_eq!(f64_to_i64(d(v), rm), (want, wf), "f64_to_i64({v}, {rm:?})");
    }
    let u64s: &[(f64, Rm, u64, Flags)] = &[
        (-0.3, Rtz, 0, NX),
        (-0.3, Rdn, 0, NV),
        (-1.0, Rne, 0, NV),
        (1.5, Rtz, 1, NX),
        (1.5, Rmm, 2, NX),
        (1.5, Rdn, 1, NX),
    ];
    for &(v, rm, want, wf) in u64s {
        assert_eq!(f64_to_u64(d(v), rm), (want, wf), "f64_to_u64({v}, {rm:?})");
        assert_eq!(
            f32_to_u64(s(v as f32), rm),
            (want, wf),
            "f32_to_u64({v}, {rm:?})"
        );
    }
}

#[test]
fn from_int() {
    for rm in ALL {
        assert_eq!(f32_from_i32(-1, rm), (S_NEG_ONE, 0));
        assert_eq!(f32_from_i32(0, rm), (S_PZ, 0)); // +0 even in RDN
        assert_eq!(f32_from_i32(i32::MIN, rm), (0xcf00_0000, 0));
        assert_eq!(f32_from_u32(0, rm), (S_PZ, 0));
        assert_eq!(f64_from_i32(i32::MIN, rm), (0xc1e0_0000_0000_0000, 0));
        assert_eq!(f64_from_u32(u32::MAX, rm), (0x41ef_ffff_ffe0_0000, 0));
        assert_eq!(f64_from_i64(i64::MIN, rm), (0xc3e0_0000_0000_0000, 0));
        assert_eq!(f64_from_i64(0, rm), (D_PZ, 0));
        assert_eq!(f64_from_u64(1 << 63, rm), (0x43e0_0000_0000_0000, 0));
        assert_eq!(f32_from_i64(-(1 << 40), rm), (0xd380_0000, 0));
    }
    let c32: &[(i64, Rm, u32, Flags)] = &[
        // i32::MAX = 2^31 - 1: between 2^31 - 128 and 2^31.
        (i32::MAX as i64, Rne, 0x4f00_0000, NX),
        (i32::MAX as i64, Rtz, 0x4eff_ffff, NX),
        (i32::MAX as i64, Rdn, 0x4eff_ffff, NX),
        (i32::MAX as i64, Rup, 0x4f00_0000, NX),
        // 2^24 + 1: tie between 2^24 (even) and 2^24 + 2.
        (16_777_217, Rne, 0x4b80_0000, NX),
        (16_777_217, Rmm, 0x4b80_0001, NX),
        (16_777_217, Rup, 0x4b80_0001, NX),
        (-16_777_217, Rdn, 0xcb80_0001, NX),
        (-16_777_217, Rup, 0xcb80_0000, NX),
        (16_777_219, Rne, 0x4b80_0002, NX), // tie: 2^24+4 has the even significand
    ];
    for &(v, rm, want, wf) in c32 {
        assert_eq!(
            f32_from_i32(v as i32, rm),
            (want, wf),
            "f32_from_i32({v}, {rm:?})"
        );
        assert_eq!(f32_from_i64(v, rm), (want, wf), "f32_from_i64({v}, {rm:?})");
    }
    assert_eq!(f32_from_u32(u32::MAX, Rne), (0x4f80_0000, NX));
    assert_eq!(f32_from_u32(u32::MAX, Rtz), (0x4f7f_ffff, NX));
    assert_eq!(f32_from_u64(u64::MAX, Rne), (0x5f80_0000, NX));
    assert_eq!(f32_from_u64(u64::MAX, Rdn), (0x5f7f_ffff, NX));
    assert_eq!(f64_from_i64(i64::MAX, Rne), (0x43e0_0000_0000_0000, NX));
    assert_eq!(f64_from_i64(i64::MAX, Rtz), (0x43df_ffff_ffff_ffff, NX));
    assert_eq!(f64_from_i64(i64::MIN + 1, Rtz), (0xc3df_ffff_ffff_ffff, NX));
    assert_eq!(f64_from_i64(i64::MIN + 1, Rdn), (0xc3e0_0000_0000_0000, NX));
    assert_eq!(f64_from_u64(u64::MAX, Rne), (0x43f0_0000_0000_0000, NX));
    assert_eq!(f64_from_u64(u64::MAX, Rtz), (0x43ef_ffff_ffff_ffff, NX));
    assert_eq!(
        f64_from_i64((1 << 53) + 1, Rne),
        (0x4340_0000_0000_0000, NX)
    );
    assert_eq!(
        f64_from_i64((1 << 53) + 1, Rup),
        (0x4340_0000_0000_0001, NX)
    );
    assert_eq!(
        f64_from_i64((1 << 53) + 1, Rmm),
        (0x4340_0000_0000_0001, NX)
    );
    assert_eq!(
        f64_from_i64((1 << 53) + 3, Rne),
        (0x4340_0000_0000_0002, NX)
    );
}

#[test]
fn float_float() {
    assert_eq!(f32_to_f64(S_ONE), (D_ONE, 0));
    assert_eq!(f32_to_f64(S_NZ), (D_NZ, 0));
    assert_eq!(f32_to_f64(S_NINF), (D_NINF, 0));
    assert_eq!(f32_to_f64(S_MINS), (0x36a0_0000_0000_0000, 0)); // 2^-149
    assert_eq!(f32_to_f64(S_MAX), (0x47ef_ffff_e000_0000, 0));
    assert_eq!(f32_to_f64(S_NQNAN), (D_CNAN, 0));
    assert_eq!(f32_to_f64(S_QNAN_PAYLOAD), (D_CNAN, 0));
    assert_eq!(f32_to_f64(S_SNAN), (D_CNAN, NV));
    let c: &[(u64, Rm, u32, Flags)] = &[
        (D_ONE, Rne, S_ONE, 0),
        (D_NZ, Rdn, S_NZ, 0),
        (D_INF, Rtz, S_INF, 0),
        (D_CNAN, Rne, S_CNAN, 0),
        (0xfff8_0000_0000_0001, Rne, S_CNAN, 0),
        (D_SNAN, Rne, S_CNAN, NV),
        (D_MAX, Rne, S_INF, OF | NX),
        (D_MAX, Rtz, S_MAX, OF | NX),
        (D_MAX, Rdn, S_MAX, OF | NX),
        (D_MAX, Rup, S_INF, OF | NX),
        (D_NMAX, Rdn, S_NINF, OF | NX),
        (D_NMAX, Rup, S_NMAX, OF | NX),
        // 1 + 2^-24: tie between 1 and 1 + 2^-23.
        (0x3ff0_0000_1000_0000, Rne, S_ONE, NX),
        (0x3ff0_0000_1000_0000, Rup, 0x3f80_0001, NX),
        (0x3ff0_0000_1000_0000, Rmm, 0x3f80_0001, NX),
        // 2^-150: tie between 0 and the smallest subnormal.
        (0x3690_0000_0000_0000, Rne, S_PZ, UF | NX),
        (0x3690_0000_0000_0000, Rup, S_MINS, UF | NX),
        (0x3690_0000_0000_0000, Rmm, S_MINS, UF | NX),
        (0x36a0_0000_0000_0000, Rne, S_MINS, 0), // 2^-149 exactly
        // (1 - 2^-46) * 2^-126: not tiny after rounding in RNE; tiny in RTZ.
        (0x380f_ffff_ffff_ff80, Rne, S_MINN, NX),
        (0x380f_ffff_ffff_ff80, Rtz, S_MAXS, UF | NX),
        // The largest double below f32 max + half an ulp rounds to f32 max without OF;
        // f32 max + half ulp (2^128 - 2^103) ties to the even 2^128: overflow.
        (0x47ef_ffff_efff_ffff, Rne, S_MAX, NX),
        (0x47ef_ffff_f000_0000, Rne, S_INF, OF | NX),
    ];
    for &(a, rm, want, wf) in c {
        assert_eq!(f64_to_f32(a, rm), (want, wf), "f64_to_f32({a:#x}, {rm:?})");
    }
}

/// The flags and rounding mode are per-call: interleaving calls in different modes (and
/// on different threads) must not leak state between them.
#[test]
fn state_does_not_leak() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let rm = ALL[((i + t) % 5) as usize];
                    let (r, f) = f32_div(S_ONE, S_THREE, rm);
                    let want = if matches!(rm, Rtz | Rdn) {
                        0x3eaa_aaaa
                    } else {
                        0x3eaa_aaab
                    };
                    assert_eq!((r, f), (want, NX));
                    assert_eq!(f32_add(S_ONE, S_ONE, rm), (S_TWO, 0));
                    assert_eq!(f64_sqrt(D_NEG_ONE, rm), (D_CNAN, NV));
                    assert_eq!(f64_mul(0x4000_0000_0000_0000, D_THREE, rm), (D_SIX, 0));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
