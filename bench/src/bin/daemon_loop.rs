//! The daemon under churn: N small VMs created, started (until their /init is up), stopped
//! gracefully and removed, K at a time, through the `vireo` client verbs. Reports the time per
//! VM and the daemon's file descriptors and RSS after a warm-up batch and at the end, and
//! fails if anything is left behind: VMM processes, sockets, run directories or cgroups.
//!
//! Usage: daemon_loop [VMS] [AT_ONCE]   (defaults 50 and 3; bench/run.sh loop builds it)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn vireo_bin() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("vireo")
}

struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    parent: String,
}

/// A client verb against the daemon at `socket`; its stdout, or why it failed.
fn client(socket: &Path, args: &[&str]) -> Result<String, String> {
    {
        let out = Command::new(vireo_bin())
            .env("VIREO_SOCKET", socket)
            .env("VIREO_NO_AUTOSTART", "1")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "vireo {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Processes whose command line names one of this run's VMs.
fn leftover_vmms(prefix: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(" vmm --name ") && cmd.contains(prefix) {
            v.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    v
}

fn find_files(dir: &Path, what: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            find_files(&p, what, out);
        } else if what(&p) {
            out.push(p);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let at_once: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let tag = format!("loop{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("vireo-bench-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let socket = dir.join("api.sock");
    let parent = format!("vireo-bench-{tag}");
    let log = std::fs::File::create(dir.join("daemon.out")).expect("log");
    let child = Command::new(vireo_bin())
        .arg("daemon")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(&socket)
        .args(["--cgroup-parent", &parent])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("vireo daemon");
    let d = Daemon {
        child,
        dir: dir.clone(),
        socket,
        parent,
    };
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = d.child.id();
    let mut warm = None;
    let mut fd_trace = Vec::new();
    let mut times = Vec::new();
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        let batch: Vec<String> = (done..(done + at_once).min(total))
            .map(|i| format!("{tag}-{i}"))
            .collect();
        let handles: Vec<_> = batch
            .iter()
            .map(|name| {
                let name = name.clone();
                let socket = d.socket.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let c = |args: &[&str]| client(&socket, args);
                    c(&[
                        "create",
                        &name,
                        "--image",
                        "debian-riscv64",
                        "--memory",
                        "128M",
                    ])?;
                    c(&["start", &name, "--wait-ready"])?;
                    c(&["stop", &name, "--timeout", "60"])?;
                    c(&["rm", &name])?;
                    Ok::<_, String>(t.elapsed())
                })
            })
            .collect();
        for h in handles {
            match h.join().expect("worker") {
                Ok(t) => times.push(t.as_secs_f64()),
                Err(e) => {
                    eprintln!("daemon_loop: FAIL: {e}");
                    // The daemon and its files go before the exit.
                    drop(d);
                    std::process::exit(1);
                }
            }
        }
        done += batch.len();
        fd_trace.push(fds(pid));
        if warm.is_none() {
            warm = Some((fds(pid), rss_kib(pid)));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    // Connections and reaps of the last batch settle.
    std::thread::sleep(Duration::from_secs(1));
    let (fd_warm, rss_warm) = warm.unwrap_or((0, 0));
    let (fd_end, rss_end) = (fds(pid), rss_kib(pid));
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    println!(
        "daemon_loop: {total} VMs, {at_once} at a time: {wall:.1} s wall; per VM (create, start to /init up, graceful stop, rm): median {median:.2} s, min {:.2} s, max {:.2} s",
        times.first().copied().unwrap_or(0.0),
        times.last().copied().unwrap_or(0.0)
    );
    println!(
        "daemon_loop: daemon fds {fd_warm} after the first batch, {fd_end} at the end (after each batch: {fd_trace:?}); RSS {} KiB -> {} KiB",
        rss_warm, rss_end
    );
    let mut failures = Vec::new();
    let vmms = leftover_vmms(&tag);
    if !vmms.is_empty() {
        failures.push(format!("VMM processes left: {vmms:?}"));
    }
    let mut socks = Vec::new();
    find_files(
        &dir.join("state"),
        &|p| p.extension().is_some_and(|e| e == "sock"),
        &mut socks,
    );
    if !socks.is_empty() {
        failures.push(format!("sockets left: {socks:?}"));
    }
    let vms_dir = dir.join("state").join("vms");
    let left: Vec<_> = std::fs::read_dir(&vms_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    if !left.is_empty() {
        failures.push(format!("VM directories left: {left:?}"));
    }
    for ctl in ["memory", "cpu", "cpu,cpuacct", "unified", ""] {
        let p = Path::new("/sys/fs/cgroup").join(ctl).join(&d.parent);
        if p.exists() {
            failures.push(format!("cgroup left: {}", p.display()));
        }
    }
    // A leak grows with every VM; one in flight per concurrent VM is not one.
    if fd_end > fd_warm + at_once {
        failures.push(format!("the daemon's fds grew: {fd_warm} -> {fd_end}"));
    }
    if failures.is_empty() {
        println!(
            "daemon_loop: nothing left behind (VMM processes, sockets, VM directories, cgroups)"
        );
    } else {
        for f in &failures {
            eprintln!("daemon_loop: FAIL: {f}");
        }
        drop(d);
        std::process::exit(1);
    }
}
