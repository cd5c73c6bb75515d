//! What the VMM's seccomp filters (crates/jail) cost at start-up:
//! - building every thread kind's programs (done once, before the machine is built);
//! - installing one thread's (done as each guest-facing thread starts);
//! - a whole `vireo run` of a tiny kvm kernel that prints a line and exits, `--seccomp kill`
//!   against `--seccomp off`, and `--jail` (crates/jail/src/jail.rs) with the filters against
//!   the filters alone, alternated, medians of the wall time;
//!
//! and the size of each kind's allowlist. Target (issue 14): ≤ 5 ms added to a VMM's start by
//! the filters and the jail.
//!
//! Usage: seccomp [RUNS] (default 20).

use std::process::{Command, Stdio};
use std::time::Instant;

use vireo_bench::{die, vireo_binary};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| die(&format!("bad run count '{a}'")))
        })
        .unwrap_or(20);
    let sizes = vireo_jail::seccomp::list_sizes().unwrap_or_else(|e| die(&e));
    println!(
        "seccomp bench: allowlists (system calls): {}",
        sizes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let lengths = vireo_jail::seccomp::program_lengths().unwrap_or_else(|e| die(&e.to_string()));
    println!(
        "programs (BPF instructions, one per kind): {}",
        lengths
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut build = Vec::new();
    let mut programs = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        programs = vireo_jail::seccomp::compile(vireo_jail::Mode::Kill)
            .unwrap_or_else(|e| die(&e.to_string()));
        build.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mut install = Vec::new();
    for _ in 0..runs {
        let t = std::thread::spawn(|| {
            let t0 = Instant::now();
            vireo_jail::seccomp::confine_this_thread_as_device()
                .map(|()| t0.elapsed().as_secs_f64() * 1e3)
        });
        match t.join() {
            Ok(Ok(ms)) => install.push(ms),
            Ok(Err(e)) => die(&e.to_string()),
            Err(_) => die("the confined thread panicked"),
        }
    }
    println!(
        "building all {programs} programs: {:.3} ms (median of {runs}); building and installing one thread's: {:.3} ms",
        median(build),
        median(install)
    );
    if let Err(e) = vireo_kvm::KvmVm::probe() {
        println!("whole runs: not measured: {e}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vireo-bench-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(&e.to_string()));
    let kernel = dir.join("greet.elf");
    let elf = vireo_kvm::testkernel::greeting_elf(0).unwrap_or_else(|e| die(&e.to_string()));
    std::fs::write(&kernel, elf).unwrap_or_else(|e| die(&e.to_string()));
    let mut jails = 0;
    let mut time = |mode: &str, jail: bool| -> f64 {
        let mut cmd = Command::new(vireo_binary());
        cmd.args(["run", "--seccomp", mode]);
        if jail {
            jails += 1;
            cmd.arg("--jail").arg(dir.join(format!("jail{jails}")));
        }
        let t0 = Instant::now();
        let st = cmd
            .arg("--kernel")
            .arg(&kernel)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| die(&format!("cannot run vireo: {e}")));
        if !st.success() {
            die(&format!(
                "vireo run --seccomp {mode} (jail: {jail}) failed: {st}"
            ));
        }
        t0.elapsed().as_secs_f64() * 1e3
    };
    let (mut on, mut off, mut jailed) = (Vec::new(), Vec::new(), Vec::new());
    time("kill", true);
    for _ in 0..runs {
        on.push(time("kill", false));
        off.push(time("off", false));
        jailed.push(time("kill", true));
    }
    let (a, b, c) = (median(on), median(off), median(jailed));
    println!(
        "whole `vireo run` of a tiny kvm kernel (median of {runs}, alternated): {a:.1} ms with filters, {b:.1} ms without: {:+.1} ms",
        a - b
    );
    println!(
        "the same in a jail (namespaces, pivot_root, user nobody as root, no capabilities): {c:.1} ms: {:+.1} ms over the filters alone, {:+.1} ms over neither",
        c - a,
        c - b
    );
    let _ = std::fs::remove_dir_all(&dir);
}
