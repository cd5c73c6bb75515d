//! Zfa's operations against SoftFloat's and against values worked out by hand.

use super::consts::*;
use crate::*;

#[test]
fn fli_tables() {
    assert_eq!(fli_f32(0), S_NEG_ONE);
    assert_eq!(fli_f32(1), S_MINN);
    assert_eq!(fli_f32(2), 0x3780_0000); // 2^-16
    assert_eq!(fli_f32(16), S_ONE);
    assert_eq!(fli_f32(29), 0x4780_0000); // 2^16
    assert_eq!(fli_f32(30), S_INF);
    assert_eq!(fli_f32(31), S_CNAN);
    assert_eq!(fli_f64(1), D_MINN);
    assert_eq!(fli_f64(9), 0x3fd4_0000_0000_0000); // 0.3125
    assert_eq!(fli_f64(31), D_CNAN);
}

#[test]
fn minm_maxm_propagate_nan() {
    assert_eq!(f32_minmax_m(S_ONE, S_CNAN, false), (S_CNAN, 0));
    assert_eq!(f32_minmax_m(S_SNAN, S_ONE, true), (S_CNAN, NV));
    assert_eq!(f32_minmax_m(S_PZ, S_NZ, false), (S_NZ, 0));
    assert_eq!(f64_minmax_m(D_PZ, D_NZ, true), (D_PZ, 0));
    assert_eq!(f64_minmax_m(D_TWO, D_ONE, true), (D_TWO, 0));
}

#[test]
fn round_to_integer() {
    // 2.5 in RNE is 2, in RMM 3; fround raises no NX, froundnx does.
    let d_2_5 = 0x4004_0000_0000_0000;
    assert_eq!(f64_round_int(d_2_5, Rm::Rne, false), (D_TWO, 0));
    assert_eq!(f64_round_int(d_2_5, Rm::Rmm, true), (D_THREE, NX));
    assert_eq!(f32_round_int(S_HALF, Rm::Rup, true), (S_ONE, NX));
    assert_eq!(f32_round_int(S_QNAN_PAYLOAD, Rm::Rne, false), (S_CNAN, 0));
    assert_eq!(f32_round_int(S_SNAN, Rm::Rne, false), (S_CNAN, NV));
    assert_eq!(f64_round_int(D_INF, Rm::Rtz, true), (D_INF, 0));
}

#[test]
fn fcvtmod_wraps() {
    assert_eq!(f64_to_i32_mod(D_THREE), (3, 0));
    assert_eq!(f64_to_i32_mod(0xc004_0000_0000_0000), (-2, NX)); // -2.5
                                                                 // 2^32 + 5 wraps to 5, out of range: NV only.
    let v = (4_294_967_301.0f64).to_bits();
    assert_eq!(f64_to_i32_mod(v), (5, NV));
    // 2^31 wraps to i32::MIN.
    assert_eq!(
        f64_to_i32_mod((2_147_483_648.0f64).to_bits()),
        (i32::MIN, NV)
    );
    assert_eq!(f64_to_i32_mod(D_INF), (0, NV));
    assert_eq!(f64_to_i32_mod(D_CNAN), (0, NV));
    // 2^80: every low bit is zero.
    assert_eq!(f64_to_i32_mod((2f64).powi(80).to_bits()), (0, NV));
    assert_eq!(f64_to_i32_mod(D_MINS), (0, NX));
}

#[test]
fn quiet_comparisons_match_softfloat() {
    let vals32 = [
        S_PZ, S_NZ, S_ONE, S_NEG_ONE, S_INF, S_NINF, S_CNAN, S_SNAN, S_MINS, S_MAX,
    ];
    for &a in &vals32 {
        for &b in &vals32 {
            assert_eq!(
                f32_le_quiet(a, b),
                crate::sf::f32_le_quiet(a, b),
                "{a:#x} {b:#x}"
            );
        }
    }
    let vals64 = [
        D_PZ, D_NZ, D_ONE, D_NEG_ONE, D_INF, D_NINF, D_CNAN, D_SNAN, D_MINS, D_MAX,
    ];
    for &a in &vals64 {
        for &b in &vals64 {
            assert_eq!(
                f64_lt_quiet(a, b),
                crate::sf::f64_lt_quiet(a, b),
                "{a:#x} {b:#x}"
            );
        }
    }
}
