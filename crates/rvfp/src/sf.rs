//! Thin, pure wrappers over Berkeley SoftFloat 3 (RISC-V specialization).
//!
//! SoftFloat keeps its rounding mode, tininess mode and exception flags in global state.
//! softfloat-sys compiles that state with `_Thread_local` (its build script defines
//! `THREAD_LOCAL`) and exposes it only through C helper functions, so every wrapper here sets
//! all three before the operation and reads the flags straight after it, on the same thread.
//! That makes each wrapper a pure function of its arguments, independent of whatever another
//! caller on this thread left behind.

use crate::{Flags, Rm};
use softfloat_sys as s;
use softfloat_sys::{float32_t, float64_t};

#[inline(always)]
fn begin(rm: Rm) {
    // SAFETY: these helpers only store a byte into SoftFloat's thread-local state variables;
    // they take no pointers and have no other preconditions.
    unsafe {
        s::softfloat_roundingMode_write_helper(rm.softfloat_mode());
        // The RISCV specialization already initialises this to after-rounding, but it is
        // process-wide C state that any other SoftFloat user on this thread could change, and
        // RISC-V requires after-rounding tininess detection.
        s::softfloat_detectTininess_write_helper(s::softfloat_tininess_afterRounding);
        s::softfloat_exceptionFlags_write_helper(0);
    }
}

#[inline(always)]
fn end() -> Flags {
    // SAFETY: reads a byte of SoftFloat's thread-local state; no preconditions.
    Flags::from(unsafe { s::softfloat_exceptionFlags_read_helper() })
}

#[inline(always)]
fn f32v(v: u32) -> float32_t {
    float32_t { v }
}

#[inline(always)]
fn f64v(v: u64) -> float64_t {
    float64_t { v }
}

type Bin32 = unsafe extern "C" fn(float32_t, float32_t) -> float32_t;
type Bin64 = unsafe extern "C" fn(float64_t, float64_t) -> float64_t;

#[inline(always)]
fn bin32(f: Bin32, a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: SoftFloat arithmetic entry points take their operands by value and touch only
    // the thread-local state initialised by `begin`.
    let v = unsafe { f(f32v(a), f32v(b)) }.v;
    (v, end())
}

#[inline(always)]
fn bin64(f: Bin64, a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: as in `bin32`.
    let v = unsafe { f(f64v(a), f64v(b)) }.v;
    (v, end())
}

pub(crate) fn f32_add(a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    bin32(s::f32_add, a, b, rm)
}
pub(crate) fn f32_sub(a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    bin32(s::f32_sub, a, b, rm)
}
pub(crate) fn f32_mul(a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    bin32(s::f32_mul, a, b, rm)
}
pub(crate) fn f32_div(a: u32, b: u32, rm: Rm) -> (u32, Flags) {
    bin32(s::f32_div, a, b, rm)
}
pub(crate) fn f64_add(a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    bin64(s::f64_add, a, b, rm)
}
pub(crate) fn f64_sub(a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    bin64(s::f64_sub, a, b, rm)
}
pub(crate) fn f64_mul(a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    bin64(s::f64_mul, a, b, rm)
}
pub(crate) fn f64_div(a: u64, b: u64, rm: Rm) -> (u64, Flags) {
    bin64(s::f64_div, a, b, rm)
}

pub(crate) fn f32_sqrt(a: u32, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operand, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_sqrt(f32v(a)) }.v;
    (v, end())
}

pub(crate) fn f64_sqrt(a: u64, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operand, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_sqrt(f64v(a)) }.v;
    (v, end())
}

pub(crate) fn f32_fma(a: u32, b: u32, c: u32, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_mulAdd(f32v(a), f32v(b), f32v(c)) }.v;
    (v, end())
}

pub(crate) fn f64_fma(a: u64, b: u64, c: u64, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_mulAdd(f64v(a), f64v(b), f64v(c)) }.v;
    (v, end())
}

// Comparisons: the crate implements these in Rust (they need no rounding); the SoftFloat
// versions exist as the reference the tests compare against.
#[cfg(test)]
pub(crate) fn f32_eq(a: u32, b: u32) -> (bool, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_eq(f32v(a), f32v(b)) };
    (v, end())
}
#[cfg(test)]
pub(crate) fn f32_lt(a: u32, b: u32) -> (bool, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_lt(f32v(a), f32v(b)) };
    (v, end())
}
#[cfg(test)]
pub(crate) fn f32_le(a: u32, b: u32) -> (bool, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_le(f32v(a), f32v(b)) };
    (v, end())
}
#[cfg(test)]
pub(crate) fn f64_eq(a: u64, b: u64) -> (bool, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_eq(f64v(a), f64v(b)) };
    (v, end())
}
#[cfg(test)]
pub(crate) fn f64_lt(a: u64, b: u64) -> (bool, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_lt(f64v(a), f64v(b)) };
    (v, end())
}
#[cfg(test)]
pub(crate) fn f64_le(a: u64, b: u64) -> (bool, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_le(f64v(a), f64v(b)) };
    (v, end())
}

// Float -> integer. `exact = true` makes SoftFloat raise NX for inexact conversions, as
// fcvt requires. The RISCV specialization supplies the saturation values of the spec's table.
pub(crate) fn f32_to_i32(a: u32, rm: Rm) -> (i32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_to_i32(f32v(a), rm.softfloat_mode(), true) };
    // int_fast32_t is wider than 32 bits on this target, but SoftFloat only returns values
    // in i32 range, so the narrowing is lossless.
    (v as i32, end())
}
pub(crate) fn f32_to_u32(a: u32, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_to_ui32(f32v(a), rm.softfloat_mode(), true) };
    (v as u32, end())
}
pub(crate) fn f32_to_i64(a: u32, rm: Rm) -> (i64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_to_i64(f32v(a), rm.softfloat_mode(), true) };
    (v, end())
}
pub(crate) fn f32_to_u64(a: u32, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_to_ui64(f32v(a), rm.softfloat_mode(), true) };
    (v, end())
}
pub(crate) fn f64_to_i32(a: u64, rm: Rm) -> (i32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_to_i32(f64v(a), rm.softfloat_mode(), true) };
    (v as i32, end())
}
pub(crate) fn f64_to_u32(a: u64, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_to_ui32(f64v(a), rm.softfloat_mode(), true) };
    (v as u32, end())
}
pub(crate) fn f64_to_i64(a: u64, rm: Rm) -> (i64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_to_i64(f64v(a), rm.softfloat_mode(), true) };
    (v, end())
}
pub(crate) fn f64_to_u64(a: u64, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_to_ui64(f64v(a), rm.softfloat_mode(), true) };
    (v, end())
}

// Integer -> float.
pub(crate) fn i32_to_f32(v: i32, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::i32_to_f32(v) }.v;
    (r, end())
}
pub(crate) fn u32_to_f32(v: u32, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::ui32_to_f32(v) }.v;
    (r, end())
}
pub(crate) fn i64_to_f32(v: i64, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::i64_to_f32(v) }.v;
    (r, end())
}
pub(crate) fn u64_to_f32(v: u64, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::ui64_to_f32(v) }.v;
    (r, end())
}
pub(crate) fn i32_to_f64(v: i32, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::i32_to_f64(v) }.v;
    (r, end())
}
pub(crate) fn u32_to_f64(v: u32, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::ui32_to_f64(v) }.v;
    (r, end())
}
pub(crate) fn i64_to_f64(v: i64, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::i64_to_f64(v) }.v;
    (r, end())
}
pub(crate) fn u64_to_f64(v: u64, rm: Rm) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::ui64_to_f64(v) }.v;
    (r, end())
}

// Float <-> float.
pub(crate) fn f32_to_f64(a: u32) -> (u64, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::f32_to_f64(f32v(a)) }.v;
    (r, end())
}
pub(crate) fn f64_to_f32(a: u64, rm: Rm) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let r = unsafe { s::f64_to_f32(f64v(a)) }.v;
    (r, end())
}

/// roundToInt in the format; `exact` raises NX for inexact results (froundnx).
pub(crate) fn f32_round_int(a: u32, rm: Rm, exact: bool) -> (u32, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_roundToInt(f32v(a), rm.softfloat_mode(), exact) }.v;
    (v, end())
}
pub(crate) fn f64_round_int(a: u64, rm: Rm, exact: bool) -> (u64, Flags) {
    begin(rm);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_roundToInt(f64v(a), rm.softfloat_mode(), exact) }.v;
    (v, end())
}
#[cfg(test)]
pub(crate) fn f32_le_quiet(a: u32, b: u32) -> (bool, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f32_le_quiet(f32v(a), f32v(b)) };
    (v, end())
}
#[cfg(test)]
pub(crate) fn f64_lt_quiet(a: u64, b: u64) -> (bool, Flags) {
    begin(Rm::Rne);
    // SAFETY: by-value operands, thread-local state only (see `bin32`).
    let v = unsafe { s::f64_lt_quiet(f64v(a), f64v(b)) };
    (v, end())
}
