//! Host-FPU fast paths. Each returns `Some` only when the result bits AND the flags are
//! provably identical to what SoftFloat (RISC-V specialization) produces, else `None` and the
//! caller falls back to SoftFloat.
//!
//! Ground rules the proofs below rely on:
//! * Rust runs with the default x86-64/AArch64 FP environment: round-to-nearest-even, no
//!   flush-to-zero / denormals-are-zero (changing that is UB in Rust). Host `+ - * /` and
//!   `sqrt` are therefore correctly rounded IEEE-754 RNE operations on all non-NaN inputs,
//!   subnormals included, and int<->float `as` casts round to nearest-even (float->int `as`
//!   truncates and saturates).
//! * Rust never contracts `a * b + c` into an fma nor reassociates, so error-free
//!   transformations are evaluated exactly as written.
//! * So for non-NaN inputs the host *value* always matches SoftFloat in RNE; all the work is
//!   in deciding the flags. Every guard excludes NaN (comparisons with NaN are false), so
//!   NaN propagation (x86 keeps payloads, RISC-V canonicalises) never reaches the host.
//! * Flags in RNE: OF iff the rounded result is infinite from finite operands; UF iff the
//!   result is tiny after rounding and inexact; NX iff inexact. The guards require a finite
//!   result whose magnitude is strictly above the smallest normal (or an op that cannot be
//!   tiny-and-inexact), leaving NX as the only possible flag; each op decides NX exactly.

use crate::{Flags, NX};

#[inline(always)]
fn nx(inexact: bool) -> Flags {
    if inexact {
        NX
    } else {
        0
    }
}

/// Integer significand of a finite f64 (implicit bit included for normals), so that the
/// value is `sig * 2^k` for some integer k.
#[inline(always)]
fn sig64(bits: u64) -> u128 {
    let frac = bits & ((1 << 52) - 1);
    if bits & (0x7ff << 52) != 0 {
        u128::from(frac | (1 << 52))
    } else {
        u128::from(frac)
    }
}

/// `x` with its trailing zero bits removed (its "odd part"); 0 stays 0.
#[inline(always)]
fn odd(x: u128) -> u128 {
    x >> (x.trailing_zeros() & 127)
}

/// TwoSum (Knuth/Moller): with RNE and no overflow anywhere, `err` is exactly
/// `x + y - s`, so the sum is inexact iff `err != 0`. Any intermediate overflow turns `err`
/// into ±inf or NaN (an infinity cannot cancel back to a finite value except through
/// inf - inf = NaN), so a finite `err` proves no overflow happened. A sum of two finite
/// doubles whose magnitude is below the smallest normal is always exact (both are
/// multiples of 2^-1074), so add/sub can never raise UF; a finite `s` rules out OF and NV.
#[inline(always)]
fn two_sum64(x: f64, y: f64) -> Option<(u64, Flags)> {
    let s = x + y;
    let bb = s - x;
    let err = (x - (s - bb)) + (y - bb);
    if s.is_finite() && err.is_finite() {
        Some((s.to_bits(), nx(err != 0.0)))
    } else {
        None
    }
}

#[inline(always)]
fn two_sum32(x: f32, y: f32) -> Option<(u32, Flags)> {
    let s = x + y;
    let bb = s - x;
    let err = (x - (s - bb)) + (y - bb);
    if s.is_finite() && err.is_finite() {
        Some((s.to_bits(), nx(err != 0.0)))
    } else {
        None
    }
}

#[inline(always)]
pub(crate) fn f64_add(a: u64, b: u64) -> Option<(u64, Flags)> {
    two_sum64(f64::from_bits(a), f64::from_bits(b))
}

#[inline(always)]
pub(crate) fn f64_sub(a: u64, b: u64) -> Option<(u64, Flags)> {
    // x - y is exactly x + (-y): negation is exact and IEEE defines subtraction that way.
    two_sum64(f64::from_bits(a), -f64::from_bits(b))
}

#[inline(always)]
pub(crate) fn f32_add(a: u32, b: u32) -> Option<(u32, Flags)> {
    two_sum32(f32::from_bits(a), f32::from_bits(b))
}

#[inline(always)]
pub(crate) fn f32_sub(a: u32, b: u32) -> Option<(u32, Flags)> {
    two_sum32(f32::from_bits(a), -f32::from_bits(b))
}

/// Product in the host FPU; exactness from the integer significands: x*y = P * 2^k with
/// P = sig(x) * sig(y) < 2^106 computed exactly in u128. A value in the normal range is an
/// f64 iff its significand spans at most 53 bits, i.e. iff P's bits from the leading to the
/// trailing one fit in 53. The guard |p| > MIN_POSITIVE (strict: a result that rounded *up*
/// to MIN_POSITIVE may still be tiny after rounding) puts the exact product in the normal
/// range; finite p means no overflow (in RNE overflow always yields inf). Non-finite or zero
/// operands cannot give a finite non-zero product, so NV is impossible too.
#[inline(always)]
pub(crate) fn f64_mul(a: u64, b: u64) -> Option<(u64, Flags)> {
    let p = f64::from_bits(a) * f64::from_bits(b);
    let ap = p.abs();
    if !(ap > f64::MIN_POSITIVE && ap <= f64::MAX) {
        return None;
    }
    let prod = sig64(a) * sig64(b);
    let inexact = if prod >> 104 != 0 {
        // Common case (both operands normal, and more): P in [2^104, 2^106), so its top
        // bit is 104 or 105 and the 53-bit window ends at bit 52 or 53. Exact iff nothing
        // below the window is set; those bits all sit in the low word.
        let shift = 52 + (prod >> 105) as u32;
        (prod as u64) & ((1u64 << shift) - 1) != 0
    } else {
        128 - prod.leading_zeros() - prod.trailing_zeros() > 53
    };
    Some((p.to_bits(), nx(inexact)))
}

/// Quotient in the host FPU. With q finite and |q| > MIN_POSITIVE, a and b are finite and
/// non-zero (b = 0 gives inf/NaN, b = inf gives 0, a = 0 gives 0, a = inf gives inf/NaN),
/// so only NX can arise. The division is exact iff q*b == a. If it holds, the odd parts of
/// the integer significands agree. Conversely, if odd(sig(q)*sig(b)) == odd(sig(a)) then
/// q*b = a * 2^j for an integer j; but q is within a relative 2^-53 of a/b (q normal), so
/// q*b/a is within 2^-52 of 1 and j = 0.
#[inline(always)]
pub(crate) fn f64_div(a: u64, b: u64) -> Option<(u64, Flags)> {
    let q = f64::from_bits(a) / f64::from_bits(b);
    let aq = q.abs();
    if !(aq > f64::MIN_POSITIVE && aq <= f64::MAX) {
        return None;
    }
    let exact = odd(sig64(q.to_bits()) * sig64(b)) == odd(sig64(a));
    Some((q.to_bits(), nx(!exact)))
}

/// Square root of a positive finite value (subnormals included): the result lies in
/// [2^-537, 2^512), never tiny or huge, so only NX can arise. Exact iff s*s == a, decided on
/// odd parts of the integer significands exactly as for division (s is within 2^-53
/// relative of sqrt(a), so s*s/a within ~2^-51 of 1 rules out a power-of-two mismatch).
/// Zero (sqrt(-0) = -0), negatives, inf and NaN go to SoftFloat.
#[inline(always)]
pub(crate) fn f64_sqrt(a: u64) -> Option<(u64, Flags)> {
    let x = f64::from_bits(a);
    if !(x > 0.0 && x <= f64::MAX) {
        return None;
    }
    let s = x.sqrt();
    let ss = sig64(s.to_bits());
    let exact = odd(ss * ss) == odd(sig64(a));
    Some((s.to_bits(), nx(!exact)))
}

const F32_MIN_POS: f64 = f32::MIN_POSITIVE as f64;

/// f32 product computed in f64: two 24-bit significands give at most 48 bits and the
/// exponent range of f32 products fits f64, so `p` is the exact product and `p as f32` is a
/// single correct RNE rounding. Inexact iff that rounding changed the value. Guard: the
/// exact product is at least the smallest f32 normal (so not tiny) and the rounded result
/// is finite (so no overflow); NaN/inf/zero operands fail one of the two.
#[inline(always)]
pub(crate) fn f32_mul(a: u32, b: u32) -> Option<(u32, Flags)> {
    let p = f64::from(f32::from_bits(a)) * f64::from(f32::from_bits(b));
    let r = p as f32;
    if !(p.abs() >= F32_MIN_POS && r.is_finite()) {
        return None;
    }
    Some((r.to_bits(), nx(f64::from(r) != p)))
}

/// f32 quotient via f64: rounding a/b first to 53 bits and then to 24 gives the correctly
/// rounded 24-bit result, because 53 >= 2*24 + 2 (double rounding is innocuous for add,
/// sub, mul, div and sqrt at that precision ratio; the f64 intermediate is never
/// subnormal/huge for f32 operands). Guard: r finite (no OF) and |r| strictly above the f32 smallest normal
/// (not tiny after rounding, see f64_mul). Exact iff r*b == a, and r*b (<= 48 significant
/// bits, moderate exponent) is computed exactly in f64.
#[inline(always)]
pub(crate) fn f32_div(a: u32, b: u32) -> Option<(u32, Flags)> {
    let x = f64::from(f32::from_bits(a));
    let y = f64::from(f32::from_bits(b));
    let r = (x / y) as f32;
    if !(r.abs() > f32::MIN_POSITIVE && r.is_finite()) {
        return None;
    }
    Some((r.to_bits(), nx(f64::from(r) * y != x)))
}

/// f32 square root via f64 (double rounding innocuous, see f32_div). Positive finite inputs
/// only; the result is a normal f32. Exact iff s*s == a, with s*s exact in f64.
#[inline(always)]
pub(crate) fn f32_sqrt(a: u32) -> Option<(u32, Flags)> {
    let xf = f32::from_bits(a);
    if !(xf > 0.0 && xf <= f32::MAX) {
        return None;
    }
    let x = f64::from(xf);
    let s = x.sqrt() as f32;
    let s64 = f64::from(s);
    Some((s.to_bits(), nx(s64 * s64 != x)))
}

/// f64 -> f32 in RNE: `as f32` is a correct RNE rounding; guard as for f32_div; exact iff
/// widening back gives the same value.
#[inline(always)]
pub(crate) fn f64_to_f32(a: u64) -> Option<(u32, Flags)> {
    let x = f64::from_bits(a);
    let r = x as f32;
    if !(r.abs() > f32::MIN_POSITIVE && r.is_finite()) {
        return None;
    }
    Some((r.to_bits(), nx(f64::from(r) != x)))
}

/// Float (given as an exact f64) -> integer, for any rounding mode when the value is an
/// in-range integer, and for RTZ (what `as` does) when it is merely in range. `lo`/`hi` are
/// exclusive bounds of the values whose truncation fits the target type. NaN fails the
/// range test. Exactness: if x is an integer, trunc(x) == x and converting it back to f64
/// reproduces x exactly (it came from an f64); if not, |x| < 2^52 and trunc(x) converts back
/// exactly to a different value.
macro_rules! to_int {
    ($name:ident, $t:ty, $lo:expr, $hi:expr) => {
        #[inline(always)]
        pub(crate) fn $name(x: f64, rtz: bool) -> Option<($t, Flags)> {
            if !(x > $lo && x < $hi) {
                return None;
            }
            let t = x as $t;
            let exact = t as f64 == x;
            if exact {
                Some((t, 0))
            } else if rtz {
                Some((t, NX))
            } else {
                None
            }
        }
    };
}
// Bounds are exclusive and chosen so that every double strictly inside truncates to a
// value of the type: (-2^31-1, 2^31), (-1, 2^32), (-2^63-2048, 2^63) -- -2^63-2048 is the
// double just below -2^63 -- and (-1, 2^64).
to_int!(to_i32, i32, -2_147_483_649.0, 2_147_483_648.0);
to_int!(to_u32, u32, -1.0, 4_294_967_296.0);
to_int!(
    to_i64,
    i64,
    -9_223_372_036_854_777_856.0,
    9_223_372_036_854_775_808.0
);
to_int!(to_u64, u64, -1.0, 18_446_744_073_709_551_616.0);

/// Integer -> float via the host's correctly rounded RNE cast. If the result converts back to
/// the same integer (checked in i128, which holds every candidate value exactly: results are
/// at most 2^64), the conversion is exact in every rounding mode; otherwise only RNE can use
/// the host result, with NX. Integer inputs never overflow, underflow or raise NV here.
#[inline(always)]
pub(crate) fn int_to_f64(v: i128, host: f64, rne: bool) -> Option<(u64, Flags)> {
    if host as i128 == v {
        Some((host.to_bits(), 0))
    } else if rne {
        Some((host.to_bits(), NX))
    } else {
        None
    }
}

#[inline(always)]
pub(crate) fn int_to_f32(v: i128, host: f32, rne: bool) -> Option<(u32, Flags)> {
    if host as i128 == v {
        Some((host.to_bits(), 0))
    } else if rne {
        Some((host.to_bits(), NX))
    } else {
        None
    }
}
