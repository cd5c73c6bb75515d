//! A test double of the `vireo` binary for the daemon's tests.
//!
//! - `fake-vireo daemon [daemon flags] [--socket PATH]` runs the real daemon (as `vireo daemon`).
//! - `fake-vireo vmm --name NAME --dir DIR` is a fake VMM: it keeps the VMM process protocol
//!   (lock, pid, control and console sockets, states, pause/resume, shutdown, kill, stats,
//!   watch, exit.json) without booting anything. Words in the spec's `cmdline` steer it:
//!   `fake.fail_start` (exit.json reason "error" before the sockets exist), `fake.no_ready`
//!   (never reports guest_ready), `fake.ignore_shutdown` (the guest ignores power-off, so a
//!   shutdown ends as "killed" at its timeout), `fake.poweroff_after=MS`, `fake.panic_after=MS`
//!   (a bug in the VMM while the guest runs), `fake.snapshot_fail` (a `snapshot` fails after
//!   writing part of it, and removes that, as the real VMM does). A disk whose file is not
//!   there fails the start, as the real VMM's open would.
//! - `snapshot {"dir", "parent"}` writes a fake snapshot directory: spec.json (its own), a
//!   state.vst and memory.bin that are not the real formats, and a copy `disk-ID.FMT` of each
//!   writable disk (`diskN`, `root` for `root_disk`), made through `DIR.partial` as the VMM does.
//! - `--restore SNAP [--paused] [--force]` needs SNAP/state.vst (else a start failure, as the
//!   real VMM's load), writes what it was given to DIR/restored.json, and starts paused with
//!   `--paused`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use vireo_state::dir::{disk_copy_name, MEMORY_FILE, SPEC_FILE, STATE_FILE};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Daemon {
        #[command(flatten)]
        args: vireo_daemon::DaemonArgs,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    Vmm {
        #[arg(long)]
        name: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        restore: Option<PathBuf>,
        #[arg(long)]
        paused: bool,
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Daemon { args, socket } => {
            let r = vireo_daemon::DaemonConfig::from_args(&args, socket)
                .map_err(|e| e.to_string())
                .and_then(|c| vireo_daemon::run_blocking(c).map_err(|e| e.to_string()));
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vireo: {e}");
                    ExitCode::from(125)
                }
            }
        }
        Cmd::Vmm {
            name,
            dir,
            restore,
            paused,
            force,
        } => vmm(name, dir, restore, paused, force),
    }
}

struct Vm {
    name: String,
    dir: PathBuf,
    state: &'static str,
    guest_ready: bool,
    started_at: f64,
    ignore_shutdown: bool,
    watchers: Vec<UnixStream>,
    consoles: Vec<UnixStream>,
    writer: bool,
    console_bytes: u64,
    spec: vireo_spec::VmSpec,
    snapshot_fail: bool,
}

static VM: OnceLock<Mutex<Vm>> = OnceLock::new();

fn vm() -> std::sync::MutexGuard<'static, Vm> {
    VM.get()
        .expect("fake VMM state is set before threads start")
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn notify(v: &mut Vm, line: Value) {
    let mut l = line.to_string();
    l.push('\n');
    v.watchers.retain_mut(|w| w.write_all(l.as_bytes()).is_ok());
}

fn set_state(state: &'static str) {
    let mut v = vm();
    v.state = state;
    notify(&mut v, json!({"event": "state", "state": state}));
}

/// Console output: appended to console.log and sent to attached clients.
fn console_out(bytes: &[u8]) {
    let mut v = vm();
    v.console_bytes += bytes.len() as u64;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(v.dir.join("console.log"))
    {
        let _ = f.write_all(bytes);
    }
    v.consoles.retain_mut(|c| c.write_all(bytes).is_ok());
}

fn write_exit_file(dir: &Path, reason: &str, status: i32, message: &str) {
    let tmp = dir.join("exit.json.tmp");
    let body = json!({"reason": reason, "status": status, "message": message}).to_string();
    if std::fs::write(&tmp, body).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("exit.json"));
    }
}

fn exit(reason: &str, status: i32, message: &str, code: i32) -> ! {
    let dir = vm().dir.clone();
    write_exit_file(&dir, reason, status, message);
    let _ = std::fs::remove_file(dir.join("control.sock"));
    let _ = std::fs::remove_file(dir.join("console.sock"));
    std::process::exit(code)
}

fn vmm(
    name: String,
    dir: PathBuf,
    restore: Option<PathBuf>,
    paused: bool,
    force: bool,
) -> ExitCode {
    let lock = match std::fs::File::create(dir.join("lock")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fake vmm: {}: {e}", dir.display());
            return ExitCode::from(125);
        }
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("fake vmm: {} is locked by another VMM", dir.display());
        return ExitCode::from(125);
    }
    let _ = std::fs::write(dir.join("pid"), format!("{}\n", std::process::id()));
    let spec: vireo_spec::VmSpec = match std::fs::read(dir.join("spec.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            write_exit_file(&dir, "error", 125, &format!("cannot read spec.json: {e}"));
            return ExitCode::from(125);
        }
    };
    let cmdline = spec.cmdline.clone().unwrap_or_default();
    let has = |w: &str| cmdline.split_whitespace().any(|x| x == w);
    let _ = VM.set(Mutex::new(Vm {
        name,
        dir: dir.clone(),
        state: "starting",
        guest_ready: false,
        started_at: now(),
        ignore_shutdown: has("fake.ignore_shutdown"),
        watchers: Vec::new(),
        consoles: Vec::new(),
        writer: false,
        console_bytes: 0,
        spec: spec.clone(),
        snapshot_fail: has("fake.snapshot_fail"),
    }));
    std::thread::sleep(Duration::from_millis(30));
    if has("fake.fail_start") {
        let kernel = spec
            .kernel
            .map(|k| k.display().to_string())
            .unwrap_or_default();
        exit(
            "error",
            125,
            &format!("cannot open kernel {kernel}: not a kernel (fake VMM)"),
            125,
        );
    }
    if let Some(snap) = &restore {
        if !snap.join(STATE_FILE).is_file() {
            exit(
                "error",
                125,
                &format!("{}: no snapshot there (fake VMM)", snap.display()),
                125,
            );
        }
        let _ = std::fs::write(
            dir.join("restored.json"),
            json!({"restore": snap, "paused": paused, "force": force}).to_string(),
        );
    }
    // As the real VMM opens its disks: the daemon must have resolved volumes to files.
    for d in spec.disk.iter().chain(&spec.root_disk) {
        let path = d.split(',').next().unwrap_or("");
        if !Path::new(path).is_file() {
            exit(
                "error",
                125,
                &format!("--disk '{d}': cannot open {path}: no such file (fake VMM)"),
                125,
            );
        }
    }
    for (sock, handler) in [
        ("control.sock", control as fn(UnixStream)),
        ("console.sock", console as fn(UnixStream)),
    ] {
        let path = dir.join(sock);
        let l = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => exit(
                "error",
                125,
                &format!("cannot bind {}: {e}", path.display()),
                125,
            ),
        };
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || handler(s));
            }
        });
    }
    // "Boot".
    std::thread::sleep(Duration::from_millis(50));
    console_out(b"fake-vmm: booting\n");
    set_state(if paused { "paused" } else { "running" });
    if !has("fake.no_ready") {
        std::thread::sleep(Duration::from_millis(30));
        console_out(b"fake-vmm: ready\n");
        let mut v = vm();
        v.guest_ready = true;
        notify(&mut v, json!({"event": "guest_ready"}));
    }
    if let Some(ms) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fake.poweroff_after="))
        .and_then(|m| m.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
        exit("poweroff", 0, "", 0);
    }
    if let Some(ms) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fake.panic_after="))
        .and_then(|m| m.parse().ok())
    {
        // As the real VMM's panic hook: the message in exit.json, status 101.
        std::thread::sleep(Duration::from_millis(ms));
        exit(
            "panic",
            101,
            "internal error (a bug in vireo): fake panic",
            101,
        );
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The fake `snapshot` op.
fn snapshot(req: &Value) -> Value {
    let err = |code: &str, m: String| json!({"ok": false, "error": code, "message": m});
    let (state, spec, fail) = {
        let v = vm();
        (v.state, v.spec.clone(), v.snapshot_fail)
    };
    if state != "running" && state != "paused" {
        return conflict(format!(
            "cannot snapshot a VM that is {state} (expected running or paused)"
        ));
    }
    let Some(dir) = req["dir"]
        .as_str()
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    else {
        return err("bad_request", "snapshot needs \"dir\"".into());
    };
    if dir.exists() {
        return conflict(format!("{} exists", dir.display()));
    }
    if let Some(p) = req["parent"].as_str() {
        if !Path::new(p).join(STATE_FILE).is_file() {
            return err("internal", format!("the parent snapshot {p}: no state.vst"));
        }
    }
    let partial = vireo_state::dir::partial(&dir);
    let write = || -> std::io::Result<u64> {
        std::fs::create_dir_all(&partial)?;
        std::fs::write(partial.join(STATE_FILE), b"fake state")?;
        std::fs::write(partial.join(MEMORY_FILE), b"fake memory")?;
        std::fs::write(
            partial.join(SPEC_FILE),
            serde_json::to_vec_pretty(&spec).unwrap_or_default(),
        )?;
        if fail {
            return Err(std::io::Error::other("fake.snapshot_fail"));
        }
        let mut bytes = 0;
        let disks = spec
            .disk
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("disk{i}"), d))
            .chain(spec.root_disk.iter().map(|d| ("root".to_string(), d)));
        for (id, d) in disks {
            let mut parts = d.split(',');
            let path = parts.next().unwrap_or("");
            let opts: Vec<&str> = parts.collect();
            if opts.iter().any(|o| *o == "readonly" || *o == "ro") {
                continue;
            }
            let format = match opts.iter().find_map(|o| o.strip_prefix("format=")) {
                Some(f) => f.to_string(),
                None => {
                    let head = std::fs::read(path)?;
                    if head.starts_with(b"QFI\xfb") {
                        "qcow2"
                    } else {
                        "raw"
                    }
                    .to_string()
                }
            };
            bytes += std::fs::copy(path, partial.join(disk_copy_name(&id, &format)))?;
        }
        Ok(bytes)
    };
    match write().and_then(|b| std::fs::rename(&partial, &dir).map(|()| b)) {
        Ok(disk_bytes) => json!({"ok": true, "snapshot": {
            "id": format!("fake-{}-{}", std::process::id(), now()),
            "dir": dir,
            "kind": if req["parent"].is_string() { "diff" } else { "full" },
            "memory_pages": 1, "memory_bytes": 4096, "disk_bytes": disk_bytes,
            "paused_ms": 1.5, "total_ms": 2.5
        }}),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            err("internal", format!("snapshot failed: {e}"))
        }
    }
}

fn conflict(msg: String) -> Value {
    json!({"ok": false, "error": "conflict", "message": msg})
}

fn control(s: UnixStream) {
    let Ok(mut w) = s.try_clone() else { return };
    let r = BufReader::new(s);
    for line in r.lines() {
        let Ok(line) = line else { return };
        let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let op = req["op"].as_str().unwrap_or("").to_string();
        let answer = match op.as_str() {
            "hello" => {
                let v = vm();
                json!({"ok": true, "protocol": 1, "name": v.name, "pid": std::process::id()})
            }
            "state" => {
                let v = vm();
                json!({"ok": true, "state": v.state, "accel": "emu", "guest_ready": v.guest_ready, "started_at": v.started_at})
            }
            "pause" | "resume" => {
                let (from, to) = if op == "pause" {
                    ("running", "paused")
                } else {
                    ("paused", "running")
                };
                let st = vm().state;
                if st == from {
                    set_state(to);
                    json!({"ok": true, "state": to})
                } else {
                    conflict(format!("cannot {op}: the VM is {st}"))
                }
            }
            "shutdown" => {
                let st = vm().state;
                if st == "running" || st == "paused" {
                    let timeout = req["timeout_secs"].as_u64().unwrap_or(30);
                    let ignore = vm().ignore_shutdown;
                    set_state("stopping");
                    std::thread::spawn(move || {
                        if ignore {
                            std::thread::sleep(Duration::from_secs(timeout));
                            exit(
                                "killed",
                                137,
                                &format!("the guest did not power off within {timeout} s"),
                                1,
                            );
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        exit("poweroff", 0, "", 0);
                    });
                    json!({"ok": true})
                } else {
                    conflict(format!("cannot shut down: the VM is {st}"))
                }
            }
            "kill" => {
                let _ = w.write_all(b"{\"ok\":true}\n");
                exit("killed", 137, "killed by request", 1);
            }
            "stats" => {
                let v = vm();
                json!({"ok": true, "stats": {
                    "accel": "emu", "state": v.state, "vcpus": 1, "guest_ram_bytes": 512u64 << 20,
                    "vmm_rss_bytes": 10u64 << 20, "vcpu_seconds": 0.25,
                    "uptime_seconds": now() - v.started_at, "console_bytes": v.console_bytes,
                    "console_dropped_bytes": 0,
                    "counters": {"instructions": 1000, "traps.ecall_s": 123},
                    "devices": [{"kind": "block", "id": "disk0", "counters": {"read_bytes": 4096}}]
                }})
            }
            "snapshot" => snapshot(&req),
            "watch" => {
                let mut v = vm();
                if let Ok(c) = w.try_clone() {
                    let _ = w.write_all(b"{\"ok\":true}\n");
                    v.watchers.push(c);
                }
                return;
            }
            _ => {
                json!({"ok": false, "error": "bad_request", "message": format!("unknown op {op:?}")})
            }
        };
        let mut l = answer.to_string();
        l.push('\n');
        if w.write_all(l.as_bytes()).is_err() {
            return;
        }
    }
}

fn console(s: UnixStream) {
    let mut r = BufReader::new(s);
    let mut mode = String::new();
    if r.read_line(&mut mode).is_err() {
        return;
    }
    let Ok(mut out) = r.get_ref().try_clone() else {
        return;
    };
    let rw = {
        let mut v = vm();
        let tail = std::fs::read(v.dir.join("console.log")).unwrap_or_default();
        let tail = &tail[tail.len().saturating_sub(64 << 10)..];
        let _ = out.write_all(tail);
        let rw = mode.trim() == "rw" && !v.writer;
        if mode.trim() == "rw" && !rw {
            let _ = out.write_all(
                b"vireo: another client holds the console input; this one is read-only\r\n",
            );
        }
        v.writer |= rw;
        v.consoles.push(out);
        rw
    };
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            // The fake guest echoes its input.
            Ok(n) if rw => console_out(&buf[..n]),
            Ok(_) => {}
        }
    }
    if rw {
        vm().writer = false;
    }
}
