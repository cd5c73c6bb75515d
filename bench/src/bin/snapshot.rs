//! Snapshot, restore and clone figures for the emu accelerator, through `vireo vmm` as the
//! daemon drives it: a Debian guest (the `debian-riscv64` image) booted to its shell, then
//! - a full snapshot (how long the guest was paused, the whole call, the memory file's size);
//! - a diff snapshot after a small workload (its size and pause, its pages from the dirty log),
//!   and the same diff found by comparing contents (the pause the log saves);
//! - restores: in the VMM (its log: loading and mapping, building the machine — what stands
//!   between the request and the first guest instruction), to the control socket, and to the
//!   first console output (the restored shell answering a key);
//! - N clones restored at once from one snapshot: time until all run, RSS and PSS per clone
//!   (smaps_rollup: PSS counts a page shared by k clones as 1/k).
//!
//! Then the same for the kvm accelerator with a tiny x86-64 kernel of our own that counts on
//! COM1 (`vireo_kvm::testkernel::counting_elf`: this host's nested KVM runs no full Linux
//! guest), 128 MiB and 1 GiB: snapshot, diff (KVM's dirty log), restore to the first guest
//! instruction and to the first count printed, and 10 clones' PSS. Left out, saying why, where
//! /dev/kvm is not usable.
//!
//! The anchor is Firecracker's published figure (3–8.5 ms to restore a 128 MiB microVM);
//! Firecracker cannot run here, so it is printed as the published figure, not measured.
//!
//! Usage: snapshot [emu|kvm] [clones...] (default: both parts; 10 50 emu clones). Memory sizes: 128 MiB and 1 GiB.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vireo_bench::{die, vireo_binary};

struct Vmm {
    child: Child,
    dir: PathBuf,
}

impl Vmm {
    fn spawn(dir: &Path, spec: &str, extra: &[&str]) -> Vmm {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap_or_else(|e| die(&e.to_string()));
        std::fs::write(dir.join("spec.json"), spec).unwrap_or_else(|e| die(&e.to_string()));
        let log =
            std::fs::File::create(dir.join("vmm.log")).unwrap_or_else(|e| die(&e.to_string()));
        let child = Command::new(vireo_binary())
            .args(["vmm", "--name", "bench", "--dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| die(&e.to_string())))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| die(&format!("cannot run vireo: {e}")));
        Vmm {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn wait_socket(&mut self, limit: Duration) {
        let t0 = Instant::now();
        while UnixStream::connect(self.dir.join("control.sock")).is_err() {
            if let Ok(Some(s)) = self.child.try_wait() {
                die(&format!("the VMM exited ({s}): {}", self.log()));
            }
            if t0.elapsed() > limit {
                die("the VMM did not serve in time");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vmm.log")).unwrap_or_default()
    }

    fn req(&self, r: &str) -> String {
        let mut s = UnixStream::connect(self.dir.join("control.sock"))
            .unwrap_or_else(|e| die(&format!("control socket: {e}")));
        let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
        let _ = writeln!(s, "{r}");
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line
    }

    fn console(&self) -> UnixStream {
        // Bound just after the control socket.
        let t0 = Instant::now();
        let mut s = loop {
            match UnixStream::connect(self.dir.join("console.sock")) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                    die(&format!("console socket: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        };
        let _ = s.write_all(b"rw\n");
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        s
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `"key":` in a JSON answer.
/// The string value of `key` in `json`.
fn text<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":\"");
    json.find(&pat)
        .and_then(|i| {
            let rest = &json[i + pat.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .unwrap_or_else(|| die(&format!("no {key} in {json}")))
}

fn num(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    json.find(&pat)
        .and_then(|i| {
            let rest = &json[i + pat.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .unwrap_or_else(|| die(&format!("no {key} in {json}")))
}

/// The milliseconds the VMM logged after `what` (" ... in X ms").
fn logged_ms(log: &str, what: &str) -> f64 {
    log.lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.rsplit(" in ").next())
        .and_then(|t| t.trim_end_matches(" ms").trim().parse().ok())
        .unwrap_or_else(|| die(&format!("no '{what}' in the VMM log: {log}")))
}

fn wait_console(c: &mut UnixStream, needle: &str, limit: Duration) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        if t0.elapsed() > limit {
            die(&format!("no {needle:?} on the console"));
        }
        if let Ok(n) = c.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
}

fn smaps(pid: u32) -> (u64, u64) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        t.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // A first word `emu` or `kvm` runs that part only.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let only = match args.first().map(String::as_str) {
        Some(w @ ("emu" | "kvm")) => {
            let w = w.to_string();
            args.remove(0);
            Some(w)
        }
        _ => None,
    };
    let clones: Vec<usize> = {
        let a: Vec<usize> = args
            .iter()
            .map(|a| {
                a.parse()
                    .unwrap_or_else(|_| die(&format!("bad clone count '{a}'")))
            })
            .collect();
        if a.is_empty() {
            vec![10, 50]
        } else {
            a
        }
    };
    let root = std::env::temp_dir().join(format!("vireo-bench-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap_or_else(|e| die(&e.to_string()));
    if only.as_deref() != Some("kvm") {
        emu_part(&root, &clones);
    }
    if only.as_deref() != Some("emu") {
        kvm_part(&root);
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn emu_part(root: &Path, clones: &[usize]) {
    println!("snapshot bench: emu accelerator, debian-riscv64 booted to its shell");
    println!("anchor (published, not run here): Firecracker restores a 128 MiB microVM in 3-8.5 ms; target <= 2 ms to the first guest instruction, PSS per idle clone <= 10 MiB");
    for (mem, do_clones) in [("128M", true), ("1G", false)] {
        let spec = format!("{{\"image\": \"debian-riscv64\", \"memory\": \"{mem}\"}}");
        let mut vm = Vmm::spawn(&root.join(format!("src-{mem}")), &spec, &[]);
        vm.wait_socket(Duration::from_secs(60));
        let t0 = Instant::now();
        while !vm
            .req("{\"op\":\"state\"}")
            .contains("\"guest_ready\":true")
        {
            if t0.elapsed() > Duration::from_secs(300) {
                die("the guest did not come up");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut con = vm.console();
        con.write_all(b"echo up-$((1+1))\n").ok();
        wait_console(&mut con, "up-2", Duration::from_secs(60));
        let snap = root.join(format!("snap-{mem}"));
        let a = vm.req(&format!(
            "{{\"op\":\"snapshot\",\"dir\":\"{}\"}}",
            snap.display()
        ));
        if !a.contains("\"ok\":true") {
            die(&format!("snapshot failed: {a}"));
        }
        println!(
            "{mem}: full snapshot: paused {:.1} ms, {:.1} ms in all, memory file {:.1} MiB on disk",
            num(&a, "paused_ms"),
            num(&a, "total_ms"),
            num(&a, "memory_bytes") / 1048576.0
        );
        // A small workload, then a diff.
        con.write_all(b"for i in 1 2 3 4 5 6 7 8; do echo $i > /tmp/f$i; done; ls /tmp > /dev/null; echo wl-$((2*3))\n").ok();
        wait_console(&mut con, "wl-6", Duration::from_secs(60));
        let diff = root.join(format!("diff-{mem}"));
        let d = vm.req(&format!(
            "{{\"op\":\"snapshot\",\"dir\":\"{}\",\"parent\":\"{}\"}}",
            diff.display(),
            snap.display()
        ));
        if !d.contains("\"ok\":true") {
            die(&format!("diff snapshot failed: {d}"));
        }
        println!(
            "{mem}: diff snapshot after a small workload: {} pages ({:.2} MiB), paused {:.1} ms (pages from the {})",
            num(&d, "memory_pages"),
            num(&d, "memory_pages") * 4096.0 / 1048576.0,
            num(&d, "paused_ms"),
            text(&d, "diff_by")
        );
        // The same diff found by comparing contents (the log now runs from the diff just
        // taken, not from the full snapshot): the pause the log saves.
        let by_contents = root.join(format!("diff-contents-{mem}"));
        let c = vm.req(&format!(
            "{{\"op\":\"snapshot\",\"dir\":\"{}\",\"parent\":\"{}\"}}",
            by_contents.display(),
            snap.display()
        ));
        if !c.contains("\"ok\":true") {
            die(&format!("diff snapshot by contents failed: {c}"));
        }
        println!(
            "{mem}: the same diff by {}: {} pages, paused {:.1} ms",
            text(&c, "diff_by"),
            num(&c, "memory_pages"),
            num(&c, "paused_ms")
        );
        drop(con);
        drop(vm);

        let spec_of =
            std::fs::read_to_string(snap.join("spec.json")).unwrap_or_else(|e| die(&e.to_string()));
        let snap_arg = snap.to_string_lossy().into_owned();
        let (inproc, sock, first_out) =
            restore_medians(root, &format!("r-{mem}"), &spec_of, &snap_arg, |c| {
                c.write_all(b"\n").ok();
                wait_console(c, "#", Duration::from_secs(30));
            });
        println!(
            "{mem}: restore (median of 5): {inproc:.2} ms in the VMM to the first guest instruction (read, check, map, build), {sock:.1} ms from spawning the VMM to its control socket, {first_out:.1} ms to the restored shell's first console output"
        );
        if !do_clones {
            continue;
        }
        for &n in clones {
            let (all, rss, pss) =
                clone_figures(root, &format!("c-{mem}-{n}"), n, &spec_of, &snap_arg);
            println!(
                "{mem}: {n} clones from one snapshot: all serving after {all:.0} ms; per clone (idle 3 s): RSS {rss:.1} MiB, PSS {pss:.1} MiB"
            );
        }
    }
}

/// Restores `snap` into five fresh VMMs; the medians of: the VMM's own time to the first
/// guest instruction (its log: loading and mapping, building the machine), the time from
/// spawning it to its control socket, and to what `first_output` waits for on its console.
fn restore_medians(
    root: &Path,
    tag: &str,
    spec: &str,
    snap: &str,
    first_output: impl Fn(&mut UnixStream),
) -> (f64, f64, f64) {
    let (mut inproc, mut sock, mut first_out) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..5 {
        let t0 = Instant::now();
        let mut r = Vmm::spawn(&root.join(format!("{tag}-{i}")), spec, &["--restore", snap]);
        r.wait_socket(Duration::from_secs(60));
        sock.push(t0.elapsed().as_secs_f64() * 1e3);
        let mut c = r.console();
        first_output(&mut c);
        first_out.push(t0.elapsed().as_secs_f64() * 1e3);
        let log = r.log();
        inproc.push(logged_ms(&log, "loaded and mapped") + logged_ms(&log, "machine restored"));
    }
    (median(inproc), median(sock), median(first_out))
}

/// Starts `n` VMMs restoring `snap` at once: the time until all serve, and after 3 s the
/// mean RSS and PSS per clone in MiB.
fn clone_figures(root: &Path, tag: &str, n: usize, spec: &str, snap: &str) -> (f64, f64, f64) {
    let t0 = Instant::now();
    let mut vms: Vec<Vmm> = (0..n)
        .map(|i| Vmm::spawn(&root.join(format!("{tag}-{i}")), spec, &["--restore", snap]))
        .collect();
    for v in vms.iter_mut() {
        v.wait_socket(Duration::from_secs(120));
    }
    let all = t0.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(Duration::from_secs(3));
    let (mut rss, mut pss) = (0u64, 0u64);
    for v in &vms {
        let (r, p) = smaps(v.child.id());
        rss += r;
        pss += p;
    }
    let per = |kib: u64| kib as f64 / n as f64 / 1024.0;
    (all, per(rss), per(pss))
}

/// Waits for `n` counts of the counting kernel on `c`.
fn wait_counts(c: &mut UnixStream, n: usize, limit: Duration) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while vireo_kvm::testkernel::counts(&String::from_utf8_lossy(&got)).len() < n {
        if t0.elapsed() > limit {
            die("the counting kernel printed nothing");
        }
        if let Ok(k) = c.read(&mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
    }
}

fn kvm_part(root: &Path) {
    if let Err(e) = vireo_kvm::KvmVm::probe() {
        println!("kvm: not measured: {e}");
        return;
    }
    println!("snapshot bench: kvm accelerator, a counting x86-64 micro-kernel (no full Linux guest runs on this host's nested KVM)");
    let kernel = root.join("count.elf");
    // About 3 ms between counts here: the first count after a restore comes soon.
    let elf = vireo_kvm::testkernel::counting_elf(2_000).unwrap_or_else(|e| die(&e.to_string()));
    std::fs::write(&kernel, elf).unwrap_or_else(|e| die(&e.to_string()));
    for mem in ["128M", "1G"] {
        let spec = format!(
            "{{\"accel\": \"kvm\", \"kernel\": \"{}\", \"memory\": \"{mem}\"}}",
            kernel.display()
        );
        let mut vm = Vmm::spawn(&root.join(format!("kvm-src-{mem}")), &spec, &[]);
        vm.wait_socket(Duration::from_secs(60));
        let mut con = vm.console();
        wait_counts(&mut con, 20, Duration::from_secs(30));
        let snap = root.join(format!("kvm-snap-{mem}"));
        let a = vm.req(&format!(
            "{{\"op\":\"snapshot\",\"dir\":\"{}\"}}",
            snap.display()
        ));
        if !a.contains("\"ok\":true") {
            die(&format!("kvm snapshot failed: {a}"));
        }
        println!(
            "kvm {mem}: full snapshot: paused {:.1} ms, {:.1} ms in all, memory file {:.2} MiB on disk",
            num(&a, "paused_ms"),
            num(&a, "total_ms"),
            num(&a, "memory_bytes") / 1048576.0
        );
        wait_counts(&mut con, 20, Duration::from_secs(30));
        let diff = root.join(format!("kvm-diff-{mem}"));
        let d = vm.req(&format!(
            "{{\"op\":\"snapshot\",\"dir\":\"{}\",\"parent\":\"{}\"}}",
            diff.display(),
            snap.display()
        ));
        if !d.contains("\"ok\":true") {
            die(&format!("kvm diff snapshot failed: {d}"));
        }
        println!(
            "kvm {mem}: diff snapshot: {} pages, paused {:.1} ms (pages from the {})",
            num(&d, "memory_pages"),
            num(&d, "paused_ms"),
            text(&d, "diff_by")
        );
        drop(con);
        drop(vm);
        let snap_arg = snap.to_string_lossy().into_owned();
        let (inproc, sock, first_out) =
            restore_medians(root, &format!("kvm-r-{mem}"), &spec, &snap_arg, |c| {
                wait_counts(c, 1, Duration::from_secs(30))
            });
        println!(
            "kvm {mem}: restore (median of 5): {inproc:.2} ms in the VMM to the first guest instruction (read, check, map, build), {sock:.1} ms from spawning the VMM to its control socket, {first_out:.1} ms to the first count printed"
        );
        if mem != "128M" {
            continue;
        }
        let n = 10;
        let (all, rss, pss) = clone_figures(root, "kvm-c", n, &spec, &snap_arg);
        println!(
            "kvm {mem}: {n} clones from one snapshot: all serving after {all:.0} ms; per clone (running 3 s): RSS {rss:.1} MiB, PSS {pss:.1} MiB"
        );
    }
}
