//! IEEE-754 binary32/binary64 arithmetic with exact RISC-V F/D semantics.
//!
//! Everything takes and returns raw bit patterns (`u32` for single, `u64` for double) plus an
//! explicit rounding mode, and returns the accrued exception flags in the `fflags` layout, so
//! every function is pure: the caller ORs the flags into `fcsr` itself. The caller also
//! resolves the dynamic rounding mode (rm = 7), does NaN-boxing of singles in 64-bit
//! registers ([`box_f32`] / [`unbox_f32`] are provided) and implements sign injection.
//!
//! Results follow the RISC-V unprivileged spec: NaN results are always the canonical NaN,
//! tininess is detected after rounding, fmin/fmax follow the 2.2+ (IEEE 754-2019
//! minimumNumber/maximumNumber) rules, and float->integer conversions saturate per the
//! spec's table. Rounding is done by Berkeley SoftFloat 3 (RISC-V specialization); in RNE the
//! common operations first try a host-FPU fast path that is only taken when its result and
//! flags are provably identical to SoftFloat's (see `fast.rs`).

mod fast;
mod sf;
#[cfg(test)]
mod tests;

/// A static RISC-V rounding mode. Discriminants are the `rm` field encodings, which are also
/// SoftFloat's `softfloat_round_*` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rm {
    /// Round to nearest, ties to even.
    Rne = 0,
    /// Round towards zero.
    Rtz = 1,
    /// Round down (towards -inf).
    Rdn = 2,
    /// Round up (towards +inf).
    Rup = 3,
    /// Round to nearest, ties to max magnitude.
    Rmm = 4,
}

impl Rm {
    /// Decodes an `rm` field / `frm` value. 5 and 6 are reserved and 7 (DYN) must be resolved
    /// by the caller from `frm`, so all of them (and anything wider) give `None`.
    pub fn from_bits(b: u32) -> Option<Rm> {
        match b {
            0 => Some(Rm::Rne),
            1 => Some(Rm::Rtz),
            2 => Some(Rm::Rdn),
            3 => Some(Rm::Rup),
            4 => Some(Rm::Rmm),
            _ => None,
        }
    }

    #[inline(always)]
    fn softfloat_mode(self) -> u8 {
        // The RISC-V encoding and SoftFloat's enumeration coincide; spelled out against the
        // bindings so a mismatch would be a compile-visible edit rather than a silent bug.
        match self {
            Rm::Rne => softfloat_sys::softfloat_round_near_even,
            Rm::Rtz => softfloat_sys::softfloat_round_minMag,
            Rm::Rdn => softfloat_sys::softfloat_round_min,
            Rm::Rup => softfloat_sys::softfloat_round_max,
            Rm::Rmm => softfloat_sys::softfloat_round_near_maxMag,
        }
    }
}

/// Accrued exception flags in the `fflags` layout.
pub type Flags = u32;
/// Inexact.
pub const NX: Flags = 1;
/// Underflow.
pub const UF: Flags = 2;
/// Overflow.
pub const OF: Flags = 4;
/// Divide by zero.
pub const DZ: Flags = 8;
/// Invalid operation.
pub const NV: Flags = 16;

/// The canonical single-precision NaN.
pub const F32_CANONICAL_NAN: u32 = 0x7fc0_0000;
/// The canonical double-precision NaN.
pub const F64_CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

/// NaN-boxes a single for storage in a 64-bit FP register.
#[inline]
pub fn box_f32(v: u32) -> u64 {
    0xffff_ffff_0000_0000 | u64::from(v)
}

/// Reads a single from a 64-bit FP register: anything not properly NaN-boxed reads as the
/// canonical NaN, as the spec requires.
#[inline]
pub fn unbox_f32(r: u64) -> u32 {
    if r >> 32 == 0xffff_ffff {
        r as u32
    } else {
        F32_CANONICAL_NAN
    }
}

/// Bit-level facts about a format, shared by the operations that need no rounding
/// (min/max, comparisons, classify) and are done directly in Rust.
trait Bits: Copy + Eq {
    const SIGN: Self;
    const EXP: Self;
    const QUIET: Self;
    const CANON: Self;
    fn and(self, m: Self) -> Self;
    fn is_zero(self) -> bool;
    /// The value, exactly (f32 widens losslessly), for ordering non-NaN operands.
    fn value(self) -> f64;

    fn is_nan(self) -> bool {
        self.and(Self::EXP) == Self::EXP && !self.and(Self::frac_mask()).is_zero()
    }
    fn is_snan(self) -> bool {
        self.is_nan() && self.and(Self::QUIET).is_zero()
    }
    fn frac_mask() -> Self;
}

impl Bits for u32 {
    const SIGN: u32 = 0x8000_0000;
    const EXP: u32 = 0x7f80_0000;
    const QUIET: u32 = 0x0040_0000;
    const CANON: u32 = F32_CANONICAL_NAN;
    #[inline(always)]
    fn and(self, m: u32) -> u32 {
        self & m
    }
    #[inline(always)]
    fn is_zero(self) -> bool {
        self == 0
    }
    #[inline(always)]
    fn value(self) -> f64 {
        f64::from(f32::from_bits(self))
    }
    #[inline(always)]
    fn frac_mask() -> u32 {
        0x007f_ffff
    }
}

impl Bits for u64 {
    const SIGN: u64 = 0x8000_0000_0000_0000;
    const EXP: u64 = 0x7ff0_0000_0000_0000;
    const QUIET: u64 = 0x0008_0000_0000_0000;
    const CANON: u64 = F64_CANONICAL_NAN;
    #[inline(always)]
    fn and(self, m: u64) -> u64 {
        self & m
    }
    #[inline(always)]
    fn is_zero(self) -> bool {
        self == 0
    }
    #[inline(always)]
    fn value(self) -> f64 {
        f64::from_bits(self)
    }
    #[inline(always)]
    fn frac_mask() -> u64 {
        0x000f_ffff_ffff_ffff
    }
}

#[inline(always)]
fn snan_flag<T: Bits>(a: T, b: T) -> Flags {
    if a.is_snan() || b.is_snan() {
        NV
    } else {
        0
    }
}

/// fmin/fmax: a NaN operand is ignored, two NaNs give the canonical NaN, -0 orders below +0,
/// and any signaling NaN raises NV even though it does not propagate.
#[inline(always)]
fn min_max<T: Bits>(a: T, b: T, want_max: bool) -> (T, Flags) {
    let flags = snan_flag(a, b);
    let r = match (a.is_nan(), b.is_nan()) {
        (true, true) => T::CANON,
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            let (x, y) = (a.value(), b.value());
            if x == y {
                // Equal values differ only for ±0: min prefers the negative one.
                let a_neg = !a.and(T::SIGN).is_zero();
                if a_neg != want_max {
                    a
                } else {
                    b
                }
            } else if (x < y) != want_max {
                a
            } else {
                b
            }
        }
    };
    (r, flags)
}

/// feq: quiet comparison, NV only for signaling NaNs.
#[inline(always)]
fn feq<T: Bits>(a: T, b: T) -> (bool, Flags) {
    if a.is_nan() || b.is_nan() {
        (false, snan_flag(a, b))
    } else {
        (a.value() == b.value(), 0)
    }
}

/// flt/fle: signaling comparisons, NV for any NaN operand.
#[inline(always)]
fn fcmp<T: Bits>(a: T, b: T, or_equal: bool) -> (bool, Flags) {
    if a.is_nan() || b.is_nan() {
        return (false, NV);
    }
    let (x, y) = (a.value(), b.value());
    (if or_equal { x <= y } else { x < y }, 0)
}

/// fclass: exactly one of the ten mask bits.
#[inline(always)]
fn classify<T: Bits>(a: T) -> u64 {
    let neg = !a.and(T::SIGN).is_zero();
    let exp = a.and(T::EXP);
    let frac_zero = a.and(T::frac_mask()).is_zero();
    let bit = if exp == T::EXP {
        if frac_zero {
            if neg {
                0
            } else {
                7
            }
        } else if a.and(T::QUIET).is_zero() {
            8
        } else {
            9
        }
    } else if exp.is_zero() {
        match (neg, frac_zero) {
            (true, true) => 3,
            (true, false) => 2,
            (false, true) => 4,
            (false, false) => 5,
        }
    } else if neg {
        1
    } else {
        6
    };
    1 << bit
}

/// fminm/fmaxm (Zfa): like fmin/fmax, but any NaN operand gives the canonical NaN.
#[inline(always)]
fn min_max_m<T: Bits>(a: T, b: T, want_max: bool) -> (T, Flags) {
    if a.is_nan() || b.is_nan() {
        (T::CANON, snan_flag(a, b))
    } else {
        min_max(a, b, want_max)
    }
}

/// fleq/fltq (Zfa): quiet comparisons, NV only for signaling NaNs.
#[inline(always)]
fn fcmp_quiet<T: Bits>(a: T, b: T, or_equal: bool) -> (bool, Flags) {
    if a.is_nan() || b.is_nan() {
        return (false, snan_flag(a, b));
    }
    let (x, y) = (a.value(), b.value());
    (if or_equal { x <= y } else { x < y }, 0)
}

/// FLI's table (Zfa), as values; entry 1 is the format's smallest normal, 30 is +inf and 31
/// the canonical NaN, which the callers supply per format.
const FLI: [f64; 32] = [
    -1.0,
    0.0, // minimum normal
    1.0 / 65536.0,
    1.0 / 32768.0,
    1.0 / 256.0,
    1.0 / 128.0,
    0.0625,
    0.125,
    0.25,
    0.3125,
    0.375,
    0.4375,
    0.5,
    0.625,
    0.75,
    0.875,
    1.0,
    1.25,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    4.0,
    8.0,
    16.0,
    128.0,
    256.0,
    32768.0,
    65536.0,
    f64::INFINITY,
    0.0, // canonical NaN
];

/// fli.s rd, `index`
pub fn fli_f32(index: u8) -> u32 {
    match index & 31 {
        1 => 0x0080_0000,
        31 => F32_CANONICAL_NAN,
        i => (FLI[i as usize] as f32).to_bits(),
    }
}

/// fli.d rd, `index`
pub fn fli_f64(index: u8) -> u64 {
    match index & 31 {
        1 => 0x0010_0000_0000_0000,
        31 => F64_CANONICAL_NAN,
        i => FLI[i as usize].to_bits(),
    }
}

/// fminm.s / fmaxm.s
pub fn f32_minmax_m(a: u32, b: u32, want_max: bool) -> (u32, Flags) {
    min_max_m(a, b, want_max)
}

/// fminm.d / fmaxm.d
pub fn f64_minmax_m(a: u64, b: u64, want_max: bool) -> (u64, Flags) {
    min_max_m(a, b, want_max)
}

/// fround.s (`exact` false) / froundnx.s (`exact` true, raising NX when inexact).
pub fn f32_round_int(a: u32, rm: Rm, exact: bool) -> (u32, Flags) {
    let (v, f) = sf::f32_round_int(a, rm, exact);
    (if a.is_nan() { F32_CANONICAL_NAN } else { v }, f)
}

/// fround.d / froundnx.d
pub fn f64_round_int(a: u64, rm: Rm, exact: bool) -> (u64, Flags) {
    let (v, f) = sf::f64_round_int(a, rm, exact);
    (if a.is_nan() { F64_CANONICAL_NAN } else { v }, f)
}

/// fleq.s
pub fn f32_le_quiet(a: u32, b: u32) -> (bool, Flags) {
    fcmp_quiet(a, b, true)
}

/// fltq.s
pub fn f32_lt_quiet(a: u32, b: u32) -> (bool, Flags) {
    fcmp_quiet(a, b, false)
}

/// fleq.d
pub fn f64_le_quiet(a: u64, b: u64) -> (bool, Flags) {
    fcmp_quiet(a, b, true)
}

/// fltq.d
pub fn f64_lt_quiet(a: u64, b: u64) -> (bool, Flags) {
    fcmp_quiet(a, b, false)
}

/// fcvtmod.w.d (Zfa): the double truncated to an integer, modulo 2^32, as a signed 32-bit
/// value; infinities and NaNs give 0. The flags are those of fcvt.w.d with RTZ: NV when the
/// integer does not fit in 32 bits signed (or for NaN/inf), else NX when inexact.
pub fn f64_to_i32_mod(a: u64) -> (i32, Flags) {
    let (_, flags) = f64_to_i32(a, Rm::Rtz);
    let exp = ((a >> 52) & 0x7ff) as i64;
    if exp == 0x7ff {
        return (0, flags);
    }
    let mant = if exp == 0 {
        a & 0x000f_ffff_ffff_ffff
    } else {
        (a & 0x000f_ffff_ffff_ffff) | (1 << 52)
    };
    // value = mant * 2^(exp - 1075)
    let shift = exp.max(1) - 1075;
    let low32: u32 = if shift >= 32 {
        0
    } else if shift >= 0 {
        (mant << shift) as u32
    } else if shift > -64 {
        (mant >> (-shift)) as u32
    } else {
        0
    };
    let v = if a >> 63 != 0 {
        low32.wrapping_neg()
    } else {
        low32
    };
    (v as i32, flags)
}

/// Sign-extends a 32-bit result into a 64-bit register value, as fcvt.w[u] and the RV64
/// `*w` instructions write it.
#[inline(always)]
fn sext32(v: u32) -> u64 {
    v as i32 as i64 as u64
}

// ---------------------------------------------------------------------------------------
// binary32
// ---------------------------------------------------------------------------------------

/// fadd.s
#[inline]
pub fn f32_add(a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f32_add(a, b) {
            return r;
        }
    }
    sf::f32_add(a, b, rm)
}

/// fsub.s
#[inline]
pub fn f32_sub(a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f32_sub(a, b) {
            return r;
        }
    }
    sf::f32_sub(a, b, rm)
}

/// fmul.s
#[inline]
pub fn f32_mul(a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f32_mul(a, b) {
            return r;
        }
    }
    sf::f32_mul(a, b, rm)
}

/// fdiv.s
#[inline]
pub fn f32_div(a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f32_div(a, b) {
            return r;
        }
    }
    sf::f32_div(a, b, rm)
}

/// fsqrt.s
#[inline]
pub fn f32_sqrt(a: u32, rm: Rm) -> (u32, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f32_sqrt(a) {
            return r;
        }
    }
    sf::f32_sqrt(a, rm)
}

/// fmadd.s: `a * b + c` with a single rounding. fmsub/fnmsub/fnmadd are this with operand
/// signs flipped by the caller. `inf * 0 + qNaN` raises NV, as RISC-V requires.
#[inline]
pub fn f32_fma(a: u32, b: u32, c: u32, rm: Rm) -> (u32, Flags) {
    sf::f32_fma(a, b, c, rm)
}

/// fmin.s
#[inline]
pub fn f32_min(a: u32, b: u32) -> (u32, Flags) {
    min_max(a, b, false)
}

/// fmax.s
#[inline]
pub fn f32_max(a: u32, b: u32) -> (u32, Flags) {
    min_max(a, b, true)
}

/// feq.s (quiet)
#[inline]
pub fn f32_eq(a: u32, b: u32) -> (bool, Flags) {
    feq(a, b)
}

/// flt.s (signaling)
#[inline]
pub fn f32_lt(a: u32, b: u32) -> (bool, Flags) {
    fcmp(a, b, false)
}

/// fle.s (signaling)
#[inline]
pub fn f32_le(a: u32, b: u32) -> (bool, Flags) {
    fcmp(a, b, true)
}

/// fclass.s
#[inline]
pub fn f32_class(a: u32) -> u64 {
    classify(a)
}

/// fcvt.w.s: the register value (sign-extended 32-bit result).
#[inline]
pub fn f32_to_i32(a: u32, rm: Rm) -> (i64, Flags) {
    if let Some((v, f)) = fast::to_i32(f64::from(f32::from_bits(a)), rm == Rm::Rtz) {
        return (i64::from(v), f);
    }
    let (v, f) = sf::f32_to_i32(a, rm);
    (i64::from(v), f)
}

/// fcvt.wu.s: the register value (the 32-bit result sign-extended, so 2^32-1 reads as
/// 0xffff_ffff_ffff_ffff).
#[inline]
pub fn f32_to_u32(a: u32, rm: Rm) -> (u64, Flags) {
    if let Some((v, f)) = fast::to_u32(f64::from(f32::from_bits(a)), rm == Rm::Rtz) {
        return (sext32(v), f);
    }
    let (v, f) = sf::f32_to_u32(a, rm);
    (sext32(v), f)
}

/// fcvt.l.s
#[inline]
pub fn f32_to_i64(a: u32, rm: Rm) -> (i64, Flags) {
    if let Some(r) = fast::to_i64(f64::from(f32::from_bits(a)), rm == Rm::Rtz) {
        return r;
    }
    sf::f32_to_i64(a, rm)
}

/// fcvt.lu.s
#[inline]
pub fn f32_to_u64(a: u32, rm: Rm) -> (u64, Flags) {
    if let Some(r) = fast::to_u64(f64::from(f32::from_bits(a)), rm == Rm::Rtz) {
        return r;
    }
    sf::f32_to_u64(a, rm)
}

/// fcvt.s.w
#[inline]
pub fn f32_from_i32(v: i32, rm: Rm) -> (u32, Flags) {
    if let Some(r) = fast::int_to_f32(i128::from(v), v as f32, rm == Rm::Rne) {
        return r;
    }
    sf::i32_to_f32(v, rm)
}

/// fcvt.s.wu
#[inline]
pub fn f32_from_u32(v: u32, rm: Rm) -> (u32, Flags) {
    if let Some(r) = fast::int_to_f32(i128::from(v), v as f32, rm == Rm::Rne) {
        return r;
    }
    sf::u32_to_f32(v, rm)
}

/// fcvt.s.l
#[inline]
pub fn f32_from_i64(v: i64, rm: Rm) -> (u32, Flags) {
    if let Some(r) = fast::int_to_f32(i128::from(v), v as f32, rm == Rm::Rne) {
        return r;
    }
    sf::i64_to_f32(v, rm)
}

/// fcvt.s.lu
#[inline]
pub fn f32_from_u64(v: u64, rm: Rm) -> (u32, Flags) {
    if let Some(r) = fast::int_to_f32(i128::from(v), v as f32, rm == Rm::Rne) {
        return r;
    }
    sf::u64_to_f32(v, rm)
}

/// fcvt.d.s: exact for every non-NaN; a NaN becomes the canonical NaN (NV if signaling).
#[inline]
pub fn f32_to_f64(a: u32) -> (u64, Flags) {
    if !Bits::is_nan(a) {
        return (f64::from(f32::from_bits(a)).to_bits(), 0);
    }
    sf::f32_to_f64(a)
}

// ---------------------------------------------------------------------------------------
// binary64
// ---------------------------------------------------------------------------------------

/// fadd.d
#[inline]
pub fn f64_add(a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f64_add(a, b) {
            return r;
        }
    }
    sf::f64_add(a, b, rm)
}

/// fsub.d
#[inline]
pub fn f64_sub(a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f64_sub(a, b) {
            return r;
        }
    }
    sf::f64_sub(a, b, rm)
}

/// fmul.d
#[inline]
pub fn f64_mul(a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f64_mul(a, b) {
            return r;
        }
    }
    sf::f64_mul(a, b, rm)
}

/// fdiv.d
#[inline]
pub fn f64_div(a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f64_div(a, b) {
            return r;
        }
    }
    sf::f64_div(a, b, rm)
}

/// fsqrt.d
#[inline]
pub fn f64_sqrt(a: u64, rm: Rm) -> (u64, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f64_sqrt(a) {
            return r;
        }
    }
    sf::f64_sqrt(a, rm)
}

/// fmadd.d: `a * b + c` with a single rounding (see [`f32_fma`]).
#[inline]
pub fn f64_fma(a: u64, b: u64, c: u64, rm: Rm) -> (u64, Flags) {
    sf::f64_fma(a, b, c, rm)
}

/// fmin.d
#[inline]
pub fn f64_min(a: u64, b: u64) -> (u64, Flags) {
    min_max(a, b, false)
}

/// fmax.d
#[inline]
pub fn f64_max(a: u64, b: u64) -> (u64, Flags) {
    min_max(a, b, true)
}

/// feq.d (quiet)
#[inline]
pub fn f64_eq(a: u64, b: u64) -> (bool, Flags) {
    feq(a, b)
}

/// flt.d (signaling)
#[inline]
pub fn f64_lt(a: u64, b: u64) -> (bool, Flags) {
    fcmp(a, b, false)
}

/// fle.d (signaling)
#[inline]
pub fn f64_le(a: u64, b: u64) -> (bool, Flags) {
    fcmp(a, b, true)
}

/// fclass.d
#[inline]
pub fn f64_class(a: u64) -> u64 {
    classify(a)
}

/// fcvt.w.d: the register value (sign-extended 32-bit result).
#[inline]
pub fn f64_to_i32(a: u64, rm: Rm) -> (i64, Flags) {
    if let Some((v, f)) = fast::to_i32(f64::from_bits(a), rm == Rm::Rtz) {
        return (i64::from(v), f);
    }
    let (v, f) = sf::f64_to_i32(a, rm);
    (i64::from(v), f)
}

/// fcvt.wu.d: the register value (32-bit result sign-extended).
#[inline]
pub fn f64_to_u32(a: u64, rm: Rm) -> (u64, Flags) {
    if let Some((v, f)) = fast::to_u32(f64::from_bits(a), rm == Rm::Rtz) {
        return (sext32(v), f);
    }
    let (v, f) = sf::f64_to_u32(a, rm);
    (sext32(v), f)
}

/// fcvt.l.d
#[inline]
pub fn f64_to_i64(a: u64, rm: Rm) -> (i64, Flags) {
    if let Some(r) = fast::to_i64(f64::from_bits(a), rm == Rm::Rtz) {
        return r;
    }
    sf::f64_to_i64(a, rm)
}

/// fcvt.lu.d
#[inline]
pub fn f64_to_u64(a: u64, rm: Rm) -> (u64, Flags) {
    if let Some(r) = fast::to_u64(f64::from_bits(a), rm == Rm::Rtz) {
        return r;
    }
    sf::f64_to_u64(a, rm)
}

/// fcvt.d.w (always exact; `rm` is accepted for uniformity and has no effect).
#[inline]
pub fn f64_from_i32(v: i32, rm: Rm) -> (u64, Flags) {
    if let Some(r) = fast::int_to_f64(i128::from(v), f64::from(v), rm == Rm::Rne) {
        return r;
    }
    sf::i32_to_f64(v, rm)
}

/// fcvt.d.wu (always exact).
#[inline]
pub fn f64_from_u32(v: u32, rm: Rm) -> (u64, Flags) {
    if let Some(r) = fast::int_to_f64(i128::from(v), f64::from(v), rm == Rm::Rne) {
        return r;
    }
    sf::u32_to_f64(v, rm)
}

/// fcvt.d.l
#[inline]
pub fn f64_from_i64(v: i64, rm: Rm) -> (u64, Flags) {
    if let Some(r) = fast::int_to_f64(i128::from(v), v as f64, rm == Rm::Rne) {
        return r;
    }
    sf::i64_to_f64(v, rm)
}

/// fcvt.d.lu
#[inline]
pub fn f64_from_u64(v: u64, rm: Rm) -> (u64, Flags) {
    if let Some(r) = fast::int_to_f64(i128::from(v), v as f64, rm == Rm::Rne) {
        return r;
    }
    sf::u64_to_f64(v, rm)
}

/// fcvt.s.d: rounds per `rm`; a NaN becomes the canonical NaN (NV if signaling).
#[inline]
pub fn f64_to_f32(a: u64, rm: Rm) -> (u32, Flags) {
    if rm == Rm::Rne {
        if let Some(r) = fast::f64_to_f32(a) {
            return r;
        }
    }
    sf::f64_to_f32(a, rm)
}
