//! `vireo daemon` and the verbs that manage VMs through it: create, start, ls, inspect, pause,
//! resume, stop, kill, restart, rm, logs, console, events, stats, exec; its storage, `pool`
//! and `volume` (storage.rs); and `snapshot`, `restore`, `clone`. Each verb is one request to
//! the daemon's REST API (crates/daemon/src/api.rs) over its Unix socket (`--socket`,
//! `VIREO_SOCKET`, or the default); when no daemon answers, one is started in the background
//! (`VIREO_NO_AUTOSTART` turns that off). Every failure prints one line naming the thing and
//! exits 125; an API error prints the API's own message.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{json, Value};
use vireo_daemon::client::{Autostart, Client};
use vireo_spec::{MemSize, VmSpec};

use vireo_vmm::server::{
    read_frame, write_frame, FRAME_ERROR as EXEC_ERROR, FRAME_EXIT as EXEC_EXIT,
    FRAME_SIGNAL as EXEC_SIGNAL, FRAME_STDERR as EXEC_STDERR, FRAME_STDIN as EXEC_STDIN,
    FRAME_STDIN_END as EXEC_STDIN_END, FRAME_STDOUT as EXEC_STDOUT,
};

use crate::run::{fail, Failure, VIREO_ERROR};
use crate::RunArgs;

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ManageCmd {
    /// Run the vireo daemon in the foreground (it keeps VM definitions and runs their VMMs;
    /// the other management verbs start one on demand).
    Daemon(vireo_daemon::DaemonArgs),
    /// Define a VM from run's flags (or --config); relative paths are made absolute here, and
    /// a --disk may name a volume (vol:NAME, vol:POOL/NAME); an overlay disk's overlay lasts as
    /// long as the VM.
    Create {
        /// The VM's name: 1-63 of letters, digits, '_', '.', '-', starting with a letter or digit.
        name: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Start a defined VM.
    Start {
        name: String,
        /// Return only once the guest's /init reports that it is up.
        #[arg(long)]
        wait_ready: bool,
    },
    /// List VMs.
    Ls {
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show everything the daemon knows of a VM (JSON).
    Inspect { name: String },
    /// Pause a running VM's vCPUs.
    Pause { name: String },
    /// Resume a paused VM.
    Resume { name: String },
    /// Ask the guest to power off; stop it by force after the timeout.
    Stop {
        name: String,
        /// Seconds the guest has to power off (default 30).
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
    },
    /// Stop a VM at once.
    Kill { name: String },
    /// Stop (gracefully, as stop) and start a VM again.
    Restart {
        name: String,
        /// Seconds the guest has to power off (default 30).
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
    },
    /// Delete a VM's definition and files.
    Rm {
        name: String,
        /// Kill it first if it runs.
        #[arg(long)]
        force: bool,
    },
    /// Print a VM's console output (of the current or last run).
    Logs {
        name: String,
        /// Keep printing new output while the VM runs.
        #[arg(long, short)]
        follow: bool,
    },
    /// Attach the terminal to a running VM's console; Ctrl-] detaches (the VM keeps running).
    Console { name: String },
    /// Print the daemon's event log.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a running VM's counters.
    Stats {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Storage pools: directories of disk images (volumes) the daemon manages.
    #[command(subcommand)]
    Pool(crate::storage::PoolCmd),
    /// Volumes: the disk images in the pools; a VM's --disk names one as vol:POOL/NAME.
    #[command(subcommand)]
    Volume(crate::storage::VolumeCmd),
    /// Snapshots of running or paused VMs: the guest's whole state, memory and writable disks.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Define a VM from a snapshot (its disks overlays on the snapshot's copies) and continue
    /// the guest in it.
    Restore {
        /// The snapshot.
        snap: String,
        /// The new VM's name (default: the snapshot's VM's, when that VM is gone).
        #[arg(long)]
        name: Option<String>,
        /// Leave the guest paused.
        #[arg(long)]
        paused: bool,
        /// Restore even though a disk the snapshot references changed.
        #[arg(long)]
        force: bool,
    },
    /// Make VMs PREFIX-1 .. PREFIX-N restored from a snapshot, or from a new full snapshot of
    /// a running VM, each with new MAC addresses, vsock CID and its own disk overlays (and
    /// none of the origin's hostfwd host ports or console_log file).
    Clone {
        /// A snapshot, or a running or paused VM.
        source: String,
        /// How many (1 to 64).
        #[arg(long, short = 'n')]
        count: u32,
        /// The clones' names' prefix (default: the VM's name).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Run a command in a running interactive VM (vireo's /init): its stdin, stdout and stderr
    /// are this command's, and vireo exits with its status.
    Exec {
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a running or paused VM (paused for the moment it takes).
    Create {
        /// The VM.
        name: String,
        /// The snapshot's name (default: NAME-N).
        snap: Option<String>,
        /// Only what changed since the VM's last snapshot (its parent).
        #[arg(long)]
        diff: bool,
    },
    /// List snapshots.
    Ls {
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a snapshot (refused while a diff or a VM restored from it depends on it).
    Rm { snap: String },
}

/// Runs one verb; the exit status.
pub fn dispatch(cmd: ManageCmd, socket: Option<PathBuf>) -> u8 {
    if let ManageCmd::Exec { name, command } = &cmd {
        return match connect(socket).and_then(|c| exec(&c, name, command)) {
            Ok(status) => status,
            Err(Failure(m)) => {
                eprintln!("vireo: {m}");
                VIREO_ERROR
            }
        };
    }
    match run(cmd, socket) {
        Ok(()) => 0,
        Err(Failure(m)) => {
            eprintln!("vireo: {m}");
            VIREO_ERROR
        }
    }
}

fn run(cmd: ManageCmd, socket: Option<PathBuf>) -> Result<(), Failure> {
    if let ManageCmd::Daemon(args) = &cmd {
        // The daemon listens where its clients look: --socket, else VIREO_SOCKET.
        let socket = socket.or_else(|| std::env::var_os("VIREO_SOCKET").map(PathBuf::from));
        let cfg = vireo_daemon::DaemonConfig::from_args(args, socket).map_err(fail)?;
        return vireo_daemon::run_blocking(cfg).map_err(fail);
    }
    let c = connect(socket)?;
    let call = |method: &str, path: String, body: Option<Value>| {
        c.call(method, &path, body.as_ref()).map_err(fail)
    };
    // A lifecycle verb: POST /vms/NAME/VERB, and the state it left the VM in.
    let change = |name: &str, verb: &str, body: Option<Value>| {
        print_state(&call("POST", format!("/vms/{}/{verb}", seg(name)), body)?);
        Ok(())
    };
    match cmd {
        ManageCmd::Daemon(_) | ManageCmd::Exec { .. } => Ok(()),
        ManageCmd::Create { name, run } => {
            let spec = absolute_paths(crate::run::build_spec(&run)?)?;
            let spec = serde_json::to_value(&spec).map_err(fail)?;
            call(
                "POST",
                "/vms".into(),
                Some(json!({"name": name, "spec": spec})),
            )?;
            println!("{name}");
            Ok(())
        }
        ManageCmd::Start { name, wait_ready } => {
            change(&name, "start", Some(json!({ "wait_ready": wait_ready })))
        }
        ManageCmd::Ls { json } => {
            let v = call("GET", "/vms".into(), None)?;
            if json {
                println!("{}", pretty(&v));
                return Ok(());
            }
            println!(
                "{:<24} {:<9} {:<5} {:>4} {:>7}  {:<7} IP",
                "NAME", "STATE", "ACCEL", "CPUS", "MEMORY", "UPTIME"
            );
            for vm in v.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<9} {:<5} {:>4} {:>7}  {:<7} {}",
                    vm["name"].as_str().unwrap_or(""),
                    vm["state"].as_str().unwrap_or(""),
                    vm["accel"].as_str().unwrap_or(""),
                    // A JSON value's Display ignores the width.
                    vm["cpus"].as_u64().unwrap_or(0),
                    MemSize(vm["memory_bytes"].as_u64().unwrap_or(0)).to_string(),
                    vm["uptime_seconds"]
                        .as_f64()
                        .map(duration)
                        .unwrap_or_else(|| "-".into()),
                    vm["ip"].as_str().unwrap_or("-")
                );
            }
            Ok(())
        }
        ManageCmd::Inspect { name } => {
            println!(
                "{}",
                pretty(&call("GET", format!("/vms/{}", seg(&name)), None)?)
            );
            Ok(())
        }
        ManageCmd::Pause { name } => change(&name, "pause", None),
        ManageCmd::Resume { name } => change(&name, "resume", None),
        ManageCmd::Kill { name } => change(&name, "kill", None),
        ManageCmd::Stop { name, timeout } => change(
            &name,
            "stop",
            Some(json!({ "timeout_secs": timeout.unwrap_or(30) })),
        ),
        ManageCmd::Restart { name, timeout } => change(
            &name,
            "restart",
            Some(json!({ "timeout_secs": timeout.unwrap_or(30) })),
        ),
        ManageCmd::Rm { name, force } => {
            call("DELETE", format!("/vms/{}?force={force}", seg(&name)), None)?;
            println!("{name}");
            Ok(())
        }
        ManageCmd::Logs { name, follow } => {
            let mut out = std::io::stdout().lock();
            c.stream(&format!("/vms/{}/logs?follow={follow}", seg(&name)), |b| {
                out.write_all(b).and_then(|_| out.flush()).is_ok()
            })
            .map_err(fail)
        }
        ManageCmd::Console { name } => console(&c, &name),
        ManageCmd::Pool(cmd) => crate::storage::pool(&c, cmd),
        ManageCmd::Snapshot(cmd) => snapshot(&c, cmd),
        ManageCmd::Restore {
            snap,
            name,
            paused,
            force,
        } => {
            let v = call(
                "POST",
                format!("/snapshots/{}/restore", seg(&snap)),
                Some(json!({"name": name, "paused": paused, "force": force})),
            )?;
            print_state(&v);
            Ok(())
        }
        ManageCmd::Clone {
            source,
            count,
            prefix,
        } => {
            let body = json!({"count": count, "prefix": prefix});
            let is_snapshot = c
                .call("GET", &format!("/snapshots/{}", seg(&source)), None)
                .is_ok();
            let is_vm = c
                .call("GET", &format!("/vms/{}", seg(&source)), None)
                .is_ok();
            let path = match (is_snapshot, is_vm) {
                (true, true) => {
                    return Err(fail(format!(
                        "'{source}' is both a snapshot and a VM: clone from the snapshot with                          `vireo restore`, or give the snapshot another name"
                    )))
                }
                (true, false) => format!("/snapshots/{}/clone", seg(&source)),
                _ => format!("/vms/{}/clone", seg(&source)),
            };
            let v = call("POST", path, Some(body))?;
            for vm in v["vms"].as_array().into_iter().flatten() {
                print_state(vm);
            }
            eprintln!(
                "vireo: {} clone{} of snapshot {} in {:.0} ms",
                v["vms"].as_array().map_or(0, Vec::len),
                if v["vms"].as_array().map_or(0, Vec::len) == 1 {
                    ""
                } else {
                    "s"
                },
                v["snapshot"].as_str().unwrap_or("?"),
                v["total_ms"].as_f64().unwrap_or(0.0)
            );
            Ok(())
        }
        ManageCmd::Volume(cmd) => crate::storage::volume(&c, cmd),
        ManageCmd::Events { follow, json } => {
            let print = |e: &Value| {
                if json {
                    println!("{e}");
                } else {
                    println!(
                        "{}  {:<16} {:<13} {}",
                        time(e["time"].as_f64().unwrap_or(0.0)),
                        e["vm"].as_str().unwrap_or(""),
                        e["kind"].as_str().unwrap_or(""),
                        e["detail"].as_str().unwrap_or("")
                    );
                }
            };
            if !follow {
                let v = call("GET", "/events".into(), None)?;
                v.as_array().into_iter().flatten().for_each(print);
                return Ok(());
            }
            let mut pending = Vec::new();
            c.stream("/events?follow=true", |b| {
                pending.extend_from_slice(b);
                while let Some(i) = pending.iter().position(|&c| c == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    if let Ok(e) = serde_json::from_slice::<Value>(&line) {
                        print(&e);
                    }
                }
                std::io::stdout().flush().is_ok()
            })
            .map_err(fail)
        }
        ManageCmd::Stats { name, json } => {
            let v = call("GET", format!("/vms/{}/stats", seg(&name)), None)?;
            if json {
                println!("{}", pretty(&v["stats"]));
            } else {
                print_stats(&name, &v["stats"]);
            }
            Ok(())
        }
    }
}

fn snapshot(c: &Client, cmd: SnapshotCmd) -> Result<(), Failure> {
    match cmd {
        SnapshotCmd::Create { name, snap, diff } => {
            let v = c
                .call(
                    "POST",
                    &format!("/vms/{}/snapshots", seg(&name)),
                    Some(&json!({"name": snap, "diff": diff})),
                )
                .map_err(fail)?;
            println!("{}", v["name"].as_str().unwrap_or(""));
            eprintln!(
                "vireo: {} snapshot of {name} in {:.0} ms (paused {:.1} ms)",
                v["kind"].as_str().unwrap_or("?"),
                v["total_ms"].as_f64().unwrap_or(0.0),
                v["paused_ms"].as_f64().unwrap_or(0.0)
            );
            Ok(())
        }
        SnapshotCmd::Ls { vm, json } => {
            let path = match &vm {
                Some(v) => format!("/snapshots?vm={}", seg(v)),
                None => "/snapshots".into(),
            };
            let v = c.call("GET", &path, None).map_err(fail)?;
            if json {
                println!("{}", pretty(&v));
                return Ok(());
            }
            println!(
                "{:<24} {:<24} {:<4} {:<24} {:>8}  CREATED",
                "NAME", "VM", "KIND", "PARENT", "SIZE"
            );
            for s in v.as_array().into_iter().flatten() {
                let size =
                    s["memory_bytes"].as_u64().unwrap_or(0) + s["disk_bytes"].as_u64().unwrap_or(0);
                println!(
                    "{:<24} {:<24} {:<4} {:<24} {:>8}  {}",
                    s["name"].as_str().unwrap_or(""),
                    s["vm"].as_str().unwrap_or(""),
                    s["kind"].as_str().unwrap_or(""),
                    s["parent"].as_str().unwrap_or("-"),
                    crate::storage::human(size),
                    time(s["created_at"].as_f64().unwrap_or(0.0))
                );
            }
            Ok(())
        }
        SnapshotCmd::Rm { snap } => {
            c.call("DELETE", &format!("/snapshots/{}", seg(&snap)), None)
                .map_err(fail)?;
            println!("{snap}");
            Ok(())
        }
    }
}

/// The client, with a daemon started for it when none answers.
fn connect(flag: Option<PathBuf>) -> Result<Client, Failure> {
    let explicit = flag.is_some() || std::env::var_os("VIREO_SOCKET").is_some();
    let socket = vireo_daemon::config::client_socket(flag).map_err(fail)?;
    let c = Client::new(&socket).map_err(fail)?;
    let autostart = if std::env::var_os("VIREO_NO_AUTOSTART").is_some() {
        None
    } else {
        let exe = std::env::current_exe()
            .map_err(|e| fail(format!("cannot find vireo's own executable: {e}")))?;
        let mut command = std::process::Command::new(exe);
        command.arg("daemon");
        if explicit {
            command.arg("--socket").arg(&socket);
        }
        let log = vireo_daemon::config::default_state_dir().ok().map(|d| {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d);
            d.join("daemon.log")
        });
        Some(Autostart { command, log })
    };
    c.ensure_daemon(autostart).map_err(fail)?;
    Ok(c)
}

/// A name as a URL path segment. Valid names need no escaping; anything else is escaped so
/// the daemon answers "no VM named ..." for it.
pub(crate) fn seg(name: &str) -> String {
    let mut s = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

pub(crate) fn abs(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// The daemon runs elsewhere: every path in the definition becomes absolute against this
/// command's working directory.
fn absolute_paths(mut spec: VmSpec) -> Result<VmSpec, Failure> {
    let cwd = std::env::current_dir()
        .map_err(|e| fail(format!("cannot read the current directory: {e}")))?;
    for p in spec.file_paths_mut() {
        *p = abs(&cwd, p);
    }
    // A config file's entries are relative to its directory, a flag's to ours.
    let disks: Vec<String> = spec
        .disk_entries()
        .iter()
        .map(|e| {
            let (path, rest) = match e.text.split_once(',') {
                Some((p, r)) => (p, format!(",{r}")),
                None => (e.text, String::new()),
            };
            // A volume is the daemon's to find.
            if path.starts_with("vol:") {
                return e.text.to_string();
            }
            let p = abs(&cwd, &e.resolve(Path::new(path)));
            format!("{}{rest}", p.display())
        })
        .collect();
    spec.disk = disks;
    let vsock = spec.vsock_entry().map(|e| {
        e.text
            .split(',')
            .map(|o| match o.strip_prefix("uds=") {
                Some(p) => format!("uds={}", abs(&cwd, &e.resolve(Path::new(p))).display()),
                None => o.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    spec.vsock = vsock;
    Ok(spec)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn print_state(v: &Value) {
    let detail = v["detail"].as_str().filter(|d| !d.is_empty());
    println!(
        "{}: {}{}",
        v["name"].as_str().unwrap_or(""),
        v["state"].as_str().unwrap_or(""),
        detail.map(|d| format!(" ({d})")).unwrap_or_default()
    );
}

/// "42s", "5m", "3h", "2d".
fn duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM:SS`.
fn time(t: f64) -> String {
    let secs = t.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn print_stats(name: &str, s: &Value) {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    println!(
        "{name}: {} on {}, {} vCPUs, {} guest RAM, VMM RSS {} MiB",
        s["state"].as_str().unwrap_or("?"),
        s["accel"].as_str().unwrap_or("?"),
        n("vcpus"),
        MemSize(n("guest_ram_bytes")),
        n("vmm_rss_bytes") >> 20
    );
    println!(
        "  vCPU time {:.2} s, up {}, console {} bytes ({} dropped)",
        s["vcpu_seconds"].as_f64().unwrap_or(0.0),
        duration(s["uptime_seconds"].as_f64().unwrap_or(0.0)),
        n("console_bytes"),
        n("console_dropped_bytes")
    );
    if let Some(c) = s["counters"].as_object() {
        for (k, v) in c {
            println!("  {k:<32} {v}");
        }
    }
    for d in s["devices"].as_array().into_iter().flatten() {
        let id = d["id"].as_str().unwrap_or("");
        for (k, v) in d["counters"].as_object().into_iter().flatten() {
            println!("  {:<32} {v}", format!("{id}.{k}"));
        }
    }
}

/// Ctrl-]: detaches from the console, as telnet's escape.
const DETACH: u8 = 0x1d;

fn console(c: &Client, name: &str) -> Result<(), Failure> {
    let (sock, early) = c.console(name, "rw").map_err(fail)?;
    let term = crate::console::Terminal::inspect();
    eprintln!("vireo: attached to {name}'s console; Ctrl-] detaches (the VM keeps running)");
    let _raw = if term.stdin_tty && term.foreground {
        crate::console::TermGuard::raw(false)
    } else {
        None
    };
    enum End {
        Detached,
        Closed,
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = sock
        .try_clone()
        .map_err(|e| fail(format!("console of {name}: {e}")))?;
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let _ = out.write_all(&early).and_then(|_| out.flush());
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = out_tx.send(End::Closed);
    });
    let mut writer = sock;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let (send, detach) = match chunk.iter().position(|&b| b == DETACH) {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            if writer.write_all(send).is_err() || detach {
                break;
            }
        }
        let _ = tx.send(End::Detached);
    });
    let end = rx.recv().unwrap_or(End::Closed);
    drop(_raw);
    match end {
        End::Detached => eprintln!("\r\nvireo: detached from {name} (it keeps running)"),
        End::Closed => eprintln!("\r\nvireo: {name}'s console closed (the VM stopped)"),
    }
    Ok(())
}

/// `vireo exec NAME -- CMD`: the command's streams are ours; SIGINT, SIGTERM and SIGHUP go to
/// it; its status is ours.
fn exec(c: &Client, name: &str, command: &[String]) -> Result<u8, Failure> {
    let (sock, early) = c.exec(name, command).map_err(fail)?;
    let mut writer = sock
        .try_clone()
        .map_err(|e| fail(format!("exec in {name}: {e}")))?;
    let mut signals_writer = sock
        .try_clone()
        .map_err(|e| fail(format!("exec in {name}: {e}")))?;
    // Signals to vireo are the command's.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| fail(format!("cannot handle signals: {e}")))?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if write_frame(&mut signals_writer, EXEC_SIGNAL, &[sig as u8]).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 32 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if write_frame(&mut writer, EXEC_STDIN, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = write_frame(&mut writer, EXEC_STDIN_END, &[]);
    });
    let mut reader = std::io::Read::chain(&early[..], sock);
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let Some((kind, data)) = read_frame(&mut reader) else {
            return Err(fail(format!(
                "exec in {name}: the VM's VMM hung up before the command ended"
            )));
        };
        match kind {
            EXEC_STDOUT => {
                if stdout
                    .write_all(&data)
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    // Our stdout is closed: as a pipe's writer would, the command ends.
                    return Ok(crate::stdio::PIPE_STATUS);
                }
            }
            EXEC_STDERR => {
                let _ = stderr.write_all(&data);
            }
            EXEC_EXIT if data.len() == 4 => {
                let status = i32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                return Ok(status.clamp(0, 255) as u8);
            }
            EXEC_ERROR => {
                return Err(fail(format!(
                    "exec in {name}: {}",
                    String::from_utf8_lossy(&data)
                )))
            }
            k => return Err(fail(format!("exec in {name}: unknown frame kind {k}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let spec = VmSpec {
            kernel: Some("k/vmlinux".into()),
            initrd: Some("/abs/initrd".into()),
            disk: vec![
                "a.img,readonly".into(),
                "/b.img".into(),
                "vol:base.qcow2,overlay".into(),
            ],
            vsock: Some("cid=3,uds=v.sock".into()),
            ..Default::default()
        };
        let Ok(s) = absolute_paths(spec) else {
            panic!("the current directory is readable")
        };
        assert_eq!(s.kernel, Some(cwd.join("k/vmlinux")));
        assert_eq!(s.initrd, Some(PathBuf::from("/abs/initrd")));
        assert_eq!(
            s.disk[0],
            format!("{},readonly", cwd.join("a.img").display())
        );
        assert_eq!(s.disk[1], "/b.img");
        assert_eq!(s.disk[2], "vol:base.qcow2,overlay");
        assert_eq!(
            s.vsock.as_deref(),
            Some(format!("cid=3,uds={}", cwd.join("v.sock").display()).as_str())
        );
    }

    /// A config file's disk and vsock paths are its directory's, not the current one's.
    #[test]
    fn config_paths_stay_the_files() {
        let dir = std::env::temp_dir().join(format!("vireo-manage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.toml");
        std::fs::write(
            &file,
            "disk = [\"a.img,serial=x\", \"vol:v\"]\nvsock = \"cid=3,uds=v.sock\"\n",
        )
        .unwrap();
        let spec = VmSpec::from_file(&file).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let Ok(s) = absolute_paths(spec) else {
            panic!("the current directory is readable")
        };
        assert_eq!(
            s.disk,
            [
                format!("{},serial=x", dir.join("a.img").display()),
                "vol:v".into()
            ]
        );
        assert_eq!(
            s.vsock,
            Some(format!("cid=3,uds={}", dir.join("v.sock").display()))
        );
    }

    #[test]
    fn formats() {
        assert_eq!(time(0.0), "1970-01-01 00:00:00");
        assert_eq!(time(1_700_000_000.0), "2023-11-14 22:13:20");
        assert_eq!(duration(59.9), "59s");
        assert_eq!(duration(3600.0), "1h");
        assert_eq!(seg("a-b.c_d"), "a-b.c_d");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
