//! Rough timing of the fast paths against plain SoftFloat. Ignored by default (timing on a
//! shared machine is noise for CI); run with
//! `cargo test -p vireo-rvfp --release bench -- --ignored --nocapture`.

use crate::*;
use std::hint::black_box;
use std::time::Instant;

fn time(name: &str, n: u64, mut f: impl FnMut(u64) -> u64) {
    let start = Instant::now();
    let mut acc = 0u64;
    for i in 0..n {
        acc = acc.wrapping_add(f(i));
    }
    black_box(acc);
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{name:<28} {ns:6.2} ns/op");
}

#[test]
#[ignore = "a timing comparison, not a check: run with --ignored --nocapture"]
fn bench_fast_vs_softfloat() {
    const N: u64 = 20_000_000;
    // Normal operands around 1 with varying low bits: the common case.
    let x = |i: u64| 0x3ff0_0000_0000_0000 | (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 12);
    let y = |i: u64| 0x4000_0000_0000_0000 | (i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) >> 12);
    time("f64_add fast (api, RNE)", N, |i| {
        f64_add(black_box(x(i)), y(i), Rm::Rne).0
    });
    time("f64_add softfloat", N, |i| {
        sf::f64_add(black_box(x(i)), y(i), Rm::Rne).0
    });
    time("f64_mul fast (api, RNE)", N, |i| {
        f64_mul(black_box(x(i)), y(i), Rm::Rne).0
    });
    time("f64_mul softfloat", N, |i| {
        sf::f64_mul(black_box(x(i)), y(i), Rm::Rne).0
    });
    time("f64_div fast (api, RNE)", N, |i| {
        f64_div(black_box(x(i)), y(i), Rm::Rne).0
    });
    time("f64_div softfloat", N, |i| {
        sf::f64_div(black_box(x(i)), y(i), Rm::Rne).0
    });
    time("f64_sqrt fast (api, RNE)", N, |i| {
        f64_sqrt(black_box(x(i)), Rm::Rne).0
    });
    time("f64_sqrt softfloat", N, |i| {
        sf::f64_sqrt(black_box(x(i)), Rm::Rne).0
    });
    time("f64_fma softfloat (api)", N, |i| {
        f64_fma(black_box(x(i)), y(i), x(i + 1), Rm::Rne).0
    });
    time("f64_add RTZ (softfloat)", N, |i| {
        f64_add(black_box(x(i)), y(i), Rm::Rtz).0
    });
    let s = |i: u64| 0x3f80_0000 | ((i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 41) as u32);
    time("f32_add fast (api, RNE)", N, |i| {
        u64::from(f32_add(black_box(s(i)), s(i + 7), Rm::Rne).0)
    });
    time("f32_add softfloat", N, |i| {
        u64::from(sf::f32_add(black_box(s(i)), s(i + 7), Rm::Rne).0)
    });
    time("f32_mul fast (api, RNE)", N, |i| {
        u64::from(f32_mul(black_box(s(i)), s(i + 7), Rm::Rne).0)
    });
    time("f32_mul softfloat", N, |i| {
        u64::from(sf::f32_mul(black_box(s(i)), s(i + 7), Rm::Rne).0)
    });
}
