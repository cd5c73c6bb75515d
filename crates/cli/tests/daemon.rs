//! End to end: `vireo daemon` with real `vireo vmm` processes booting the pulled Debian image,
//! driven through the client verbs (and raw HTTP for /metrics).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A daemon on its own state directory and socket, killed (with its VMs) when dropped.
struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
    tag: String,
}

impl Daemon {
    fn new(tag: &str) -> Daemon {
        Daemon::with_args(tag, &[])
    }

    /// A daemon started with `extra` arguments.
    fn with_args(tag: &str, extra: &[&str]) -> Daemon {
        let tag = format!("{tag}{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("vireo-daemon-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Daemon {
            dir,
            child: None,
            tag,
        };
        d.start(extra);
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn daemon_cmd(&self, extra: &[&str]) -> Command {
        let mut c = vireo();
        c.arg("daemon")
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .args(["--cgroup-parent", &format!("vireo-test-{}", self.tag)])
            .args(extra)
            .env("VIREO_NO_AUTOSTART", "1");
        c
    }

    /// Starts the daemon (again) and waits for its socket to answer.
    fn start(&mut self, extra: &[&str]) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.out"))
            .unwrap();
        let child = self
            .daemon_cmd(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        while UnixStream::connect(self.socket()).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the daemon did not listen: {}",
                std::fs::read_to_string(self.dir.join("daemon.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` the daemon (its VMMs are in their own sessions and live on).
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn name(&self, n: &str) -> String {
        format!("{n}-{}", self.tag)
    }

    /// A client verb against this daemon.
    fn v(&self, args: &[&str]) -> Run {
        let mut cmd = vireo();
        cmd.env("VIREO_SOCKET", self.socket())
            .env("VIREO_NO_AUTOSTART", "1")
            .args(args);
        let r = run_raw(cmd, None);
        Run {
            status: r.status,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        }
    }

    /// A verb that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.v(args);
        assert_eq!(r.status, 0, "vireo {args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    fn inspect(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["inspect", name])).unwrap()
    }

    fn state(&self, name: &str) -> String {
        self.inspect(name)["state"].as_str().unwrap().to_string()
    }

    fn wait_state(&self, name: &str, want: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let s = self.state(name);
            if s == want {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "{name} is {s}, not {want}: {}",
                self.inspect(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET `path` over the API socket; (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: vireo\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status: u16 = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        // Chunked bodies: good enough to search; the metrics parser skips chunk-size lines.
        (status, body.to_string())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Whatever the test left running goes, with the daemon.
        if let Ok(out) = Command::new(env!("CARGO_BIN_EXE_vireo"))
            .env("VIREO_SOCKET", self.socket())
            .env("VIREO_NO_AUTOSTART", "1")
            .args(["ls", "--json"])
            .output()
        {
            if let Ok(Value::Array(vms)) = serde_json::from_slice::<Value>(&out.stdout) {
                for vm in vms {
                    if let Some(pid) = vm["pid"].as_i64() {
                        // SAFETY: kill(2) on a pid the daemon reported; no memory involved.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                }
            }
        }
        self.kill9();
        // A test that failed midway leaves its VMs' cgroups: they go too (empty once the
        // killed VMMs are reaped).
        std::thread::sleep(Duration::from_millis(200));
        for ctl in ["memory", "cpu"] {
            let parent = std::path::Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join(format!("vireo-test-{}", self.tag));
            for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `vireo console NAME` with piped stdin and stdout.
fn console_client(d: &Daemon, name: &str) -> Child {
    vireo()
        .env("VIREO_SOCKET", d.socket())
        .env("VIREO_NO_AUTOSTART", "1")
        .args(["console", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Sends `input` to a VM's console (`vireo console`, piped stdin), returns what it printed.
fn console(d: &Daemon, name: &str, input: &str, wait: Duration) -> String {
    let mut child = console_client(d, name);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    std::thread::sleep(wait);
    // End of input detaches.
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "console: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` in the guest's shell and returns its output (one line): waits for it on the
/// console, up to a minute. The marker is built in the guest, so the terminal's echo of the
/// typed line never matches it.
fn guest_line(d: &Daemon, name: &str, cmd: &str) -> String {
    // Unique per call: a new console client first gets the recent output again.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let marker = format!("M{}x{n}", std::process::id());
    let mut child = console_client(d, name);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    writeln!(stdin, "m={marker}; echo \"$m-$({cmd})-END\"").unwrap();
    let t0 = Instant::now();
    let mut got = String::new();
    let needle = format!("{marker}-");
    let answer = loop {
        if let Some(start) = got.find(&needle) {
            if let Some(end) = got[start..].find("-END") {
                break got[start + needle.len()..start + end].to_string();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no answer to {cmd:?}: {got:?}"
        );
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push_str(&String::from_utf8_lossy(&b));
        }
    };
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "vireo console: {status}");
    answer
}

/// Every sample of a Prometheus text exposition, checked line by line.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // A chunk-size line of a chunked body (hex digits only).
        if line.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        v.push((series.to_string(), value));
    }
    v
}

fn sample(m: &[(String, f64)], vm: &str, counter: &str) -> f64 {
    m.iter()
        .find(|(s, _)| {
            s.starts_with("vireo_vm_counter{")
                && s.contains(&format!("vm=\"{vm}\""))
                && s.contains(&format!("name=\"{counter}\""))
        })
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {counter} for {vm}"))
}

#[test]
fn three_vms_console_pause_stop_kill_metrics() {
    require_image();
    let d = Daemon::new("three");
    let names: Vec<String> = ["a", "b", "c"].iter().map(|n| d.name(n)).collect();
    for n in &names {
        d.ok(&["create", n, "--image", IMAGE, "--memory", "256M"]);
    }
    for n in &names {
        d.ok(&["start", n, "--wait-ready"]);
    }
    let ls: Value = serde_json::from_str(&d.ok(&["ls", "--json"])).unwrap();
    for n in &names {
        let vm = ls
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n.as_str())
            .unwrap_or_else(|| panic!("{n} not listed: {ls}"));
        assert_eq!(vm["state"], "running", "{vm}");
    }
    let (a, b, c) = (&names[0], &names[1], &names[2]);

    // A command through the console.
    assert_eq!(guest_line(&d, a, "echo $((6*7))"), "42");

    // /metrics is Prometheus text, and a working guest's trap counters grow.
    let (status, text) = d.get("/metrics");
    assert_eq!(status, 200);
    let m1 = parse_metrics(&text);
    let before = sample(&m1, a, "traps.ecall_u");
    assert_eq!(
        guest_line(
            &d,
            a,
            "i=0; while [ $i -lt 300 ]; do i=$((i+1)); cat /proc/uptime >/dev/null; done; echo $i"
        ),
        "300"
    );
    let m2 = parse_metrics(&d.get("/metrics").1);
    assert!(
        sample(&m2, a, "traps.ecall_u") > before,
        "ecall counter did not grow"
    );

    // Paused: the guest clock and console stop; resumed: they go on.
    let t_before: f64 = guest_line(&d, b, "cut -d' ' -f1 /proc/uptime")
        .parse()
        .unwrap();
    let wall = Instant::now();
    d.ok(&["pause", b]);
    assert_eq!(d.state(b), "paused");
    // What the guest wrote just before the pause is still being copied out (every 5 ms).
    std::thread::sleep(Duration::from_millis(200));
    let paused_log = d.ok(&["logs", b]).len();
    let out = console(&d, b, "echo during-pause\n", Duration::from_secs(3));
    assert!(!out.contains("during-pause\r\nduring-pause"), "{out}");
    assert_eq!(
        d.ok(&["logs", b]).len(),
        paused_log,
        "console output while paused"
    );
    let r = d.v(&["pause", b]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("paused"), "{}", r.stderr);
    d.ok(&["resume", b]);
    let t_after: f64 = guest_line(&d, b, "cut -d' ' -f1 /proc/uptime")
        .parse()
        .unwrap();
    let wall = wall.elapsed().as_secs_f64();
    assert!(
        t_after - t_before < wall - 2.0,
        "the guest clock ran while paused: {t_before} -> {t_after} over {wall:.1} s of wall time"
    );
    // The line typed while paused reached the shell once it ran again.
    assert!(d.ok(&["logs", b]).contains("during-pause"));

    // Graceful stop: the guest powers off itself.
    d.ok(&["stop", a, "--timeout", "60"]);
    d.wait_state(a, "defined", Duration::from_secs(60));
    let ia = d.inspect(a);
    assert_eq!(ia["last_exit"]["reason"], "poweroff", "{ia}");
    // Forced.
    d.ok(&["kill", c]);
    d.wait_state(c, "defined", Duration::from_secs(20));
    assert_eq!(d.inspect(c)["last_exit"]["reason"], "killed");

    // rm refuses a running VM without --force.
    let r = d.v(&["rm", b]);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stderr);
    assert!(r.stderr.contains("running"), "{}", r.stderr);
    d.ok(&["rm", "--force", b]);
    d.ok(&["rm", a]);
    let r = d.v(&["inspect", a]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains(a.as_str()), "{}", r.stderr);
    let events = d.ok(&["events", "--json"]);
    assert!(
        events.contains("guest_ready") && events.contains("paused"),
        "{events}"
    );
}

#[test]
fn vms_outlive_a_killed_daemon_and_a_killed_vmm_is_crashed() {
    require_image();
    let mut d = Daemon::new("restart");
    let (x, y) = (d.name("x"), d.name("y"));
    for n in [&x, &y] {
        d.ok(&["create", n, "--image", IMAGE, "--memory", "256M"]);
        d.ok(&["start", n, "--wait-ready"]);
    }
    let pid_x = d.inspect(&x)["pid"].as_i64().unwrap();
    d.kill9();
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid_x as i32, 0) } == 0;
    assert!(alive, "the VMM died with the daemon");
    d.start(&[]);
    assert_eq!(d.state(&x), "running");
    assert_eq!(d.state(&y), "running");
    // Still controllable.
    d.ok(&["pause", &x]);
    d.ok(&["resume", &x]);
    assert_eq!(guest_line(&d, &x, "echo $((20+3))"), "23");
    // A VMM killed behind the daemon's back is crashed, with an event.
    let pid_y = d.inspect(&y)["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the VMM's pid; no memory involved.
    unsafe { libc::kill(pid_y as i32, libc::SIGKILL) };
    d.wait_state(&y, "crashed", Duration::from_secs(20));
    let ev = d.ok(&["events", "--json"]);
    assert!(
        ev.lines()
            .any(|l| l.contains(y.as_str()) && l.contains("crash")),
        "{ev}"
    );
    let enforced = !d.inspect(&x)["limits"]
        .as_str()
        .unwrap_or("not enforced")
        .starts_with("not enforced");
    d.ok(&["kill", &x]);
    d.wait_state(&x, "defined", Duration::from_secs(20));
    // Reattached or crashed, no VM leaves its cgroup behind (nor the daemon's parent group).
    if enforced {
        let parent = format!("vireo-test-{}", d.tag);
        for ctl in ["memory", "cpu"] {
            let p = std::path::Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join(&parent);
            let t0 = Instant::now();
            while p.exists() && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(!p.exists(), "{} is left behind", p.display());
        }
    }
}

#[test]
fn refusals_name_the_thing() {
    let d = Daemon::new("bad");
    let n = d.name("r");
    let r = d.v(&["create", "bad/name", "--image", IMAGE]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("bad/name"), "{}", r.stderr);
    let r = d.v(&["create", &n, "--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("/nonexistent/vmlinuz"), "{}", r.stderr);
    let r = d.v(&["start", "nosuchvm"]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("nosuchvm"), "{}", r.stderr);
    // A definition that passes create but that the VMM cannot run: the VMM's own message
    // reaches the client, and the VM is defined again.
    let disk_dir = d.dir.join("not-a-disk");
    std::fs::create_dir_all(&disk_dir).unwrap();
    let f = d.name("f");
    d.ok(&[
        "create",
        &f,
        "--image",
        IMAGE,
        "--disk",
        disk_dir.to_str().unwrap(),
    ]);
    let r = d.v(&["start", &f]);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stdout);
    assert!(
        r.stderr.contains("not-a-disk"),
        "the VMM's message names the disk: {}",
        r.stderr
    );
    assert_eq!(d.state(&f), "defined");
    // More vCPUs than the host may give (4 per host CPU by default).
    let cpus = std::thread::available_parallelism().unwrap().get() * 4 + 1;
    let cpus = cpus.min(32).to_string();
    d.ok(&["create", &n, "--image", IMAGE, "--cpus", &cpus]);
    let r = d.v(&["start", &n]);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stdout);
    assert!(
        r.stderr.contains("vCPU") || r.stderr.contains("cpu"),
        "{}",
        r.stderr
    );
    assert_eq!(d.state(&n), "defined");
    // A second daemon on the same state directory refuses.
    let out = vireo()
        .arg("daemon")
        .arg("--state-dir")
        .arg(d.dir.join("state"))
        .arg("--socket")
        .arg(d.dir.join("other.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(VIREO_ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another vireo daemon"), "{err}");
}

/// `vireo exec` with stdin from `input`: (status, stdout, stderr).
fn exec(d: &Daemon, name: &str, cmd: &[&str], input: Option<Vec<u8>>) -> RawRun {
    let mut c = vireo();
    c.env("VIREO_SOCKET", d.socket())
        .env("VIREO_NO_AUTOSTART", "1")
        .args(["exec", name, "--"])
        .args(cmd);
    run_raw(c, input)
}

#[test]
fn exec_runs_commands_with_their_streams_and_status() {
    require_image();
    let d = Daemon::new("exec");
    let n = d.name("e");
    d.ok(&[
        "create", &n, "--image", IMAGE, "--memory", "256M", "--net", "user",
    ]);
    d.ok(&["start", &n, "--wait-ready"]);
    // The guest's address, as its /init reports it, is listed.
    let ip = d.inspect(&n)["ip"].as_str().map(str::to_string);
    let ip = ip.unwrap_or_else(|| panic!("no IP for a VM with a NIC: {}", d.inspect(&n)));
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
    assert!(d.ok(&["ls"]).contains(&ip));
    let r = exec(&d, &n, &["cat"], Some(b"hello exec\n".to_vec()));
    assert_eq!(r.status, 0, "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(r.stdout, b"hello exec\n");
    // Streams apart, the status the command's; arguments pass as they are.
    let r = exec(
        &d,
        &n,
        &[
            "sh",
            "-c",
            "echo \"$1\"; echo err >&2; exit 7",
            "sh",
            "it's a 'quoted' $arg",
        ],
        None,
    );
    assert_eq!(r.status, 7);
    assert_eq!(r.stdout, b"it's a 'quoted' $arg\n");
    assert_eq!(r.stderr, b"err\n");
    // Binary-safe and complete, both ways, one exec after another on the same ports.
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let r = exec(&d, &n, &["cat"], Some(data.clone()));
    assert_eq!(r.status, 0, "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        r.stdout == data,
        "{} bytes back of {}",
        r.stdout.len(),
        data.len()
    );
    let r = exec(&d, &n, &["sh", "-c", "exit 127"], None);
    assert_eq!(r.status, 127);
    // SIGINT to vireo reaches the command.
    let mut child = vireo()
        .env("VIREO_SOCKET", d.socket())
        .env("VIREO_NO_AUTOSTART", "1")
        .args(["exec", &n, "--", "sleep", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on our own child; no memory involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "SIGINT did not end the command"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{status}");
    // The VM is still there and takes the next one.
    let r = exec(&d, &n, &["echo", "after"], None);
    assert_eq!(r.stdout, b"after\n");
    // Refusals name the reason.
    d.ok(&["pause", &n]);
    let r = exec(&d, &n, &["true"], None);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(String::from_utf8_lossy(&r.stderr).contains("paused"));
    d.ok(&["resume", &n]);
    d.ok(&["kill", &n]);
    d.wait_state(&n, "defined", Duration::from_secs(20));
    let r = exec(&d, &n, &["true"], None);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("defined"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// Disks from the daemon's storage, under emu: a volume (`vol:NAME`) and a persistent overlay
/// on a base image. The guest's writes to both are there after a stop and a start; the base
/// is unchanged; a volume the running VM writes cannot be cloned, and one a VM uses cannot be
/// removed; `rm` takes the overlay with the VM.
#[test]
fn volume_disks_and_persistent_overlays_keep_the_guests_writes() {
    require_image();
    let d = Daemon::new("vol");
    let n = d.name("v");
    let base = d.dir.join("base.img");
    std::fs::write(&base, vec![0x42u8; 8 << 20]).unwrap();
    let base_before = std::fs::read(&base).unwrap();
    d.ok(&["volume", "create", "-f", "raw", "data.img", "16M"]);
    let vols: Value = serde_json::from_str(&d.ok(&["volume", "ls", "--json"])).unwrap();
    let data = PathBuf::from(vols[0]["path"].as_str().unwrap());
    let overlay_entry = format!("{},overlay", base.display());
    d.ok(&[
        "create",
        &n,
        "--image",
        IMAGE,
        "--accel",
        "emu",
        "--memory",
        "256M",
        "--disk",
        "vol:data.img",
        "--disk",
        &overlay_entry,
    ]);
    let overlay = d.dir.join(format!("state/vms/{n}/overlay-disk1.qcow2"));
    assert!(overlay.is_file(), "no overlay made at create");
    assert_eq!(
        d.inspect(&n)["disks"][1]["overlay"].as_str(),
        overlay.to_str()
    );
    d.ok(&["start", &n, "--wait-ready"]);
    let r = exec(
        &d,
        &n,
        &[
            "sh",
            "-c",
            "set -e
             printf 'on-the-volume' | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null
             printf 'in-the-overlay' | dd of=/dev/vdb conv=notrunc,fsync 2>/dev/null
             head -c 4 /dev/vdb | od -An -tx1 | tr -d ' \n'; echo
             head -c 14 /dev/vdb; echo",
        ],
        None,
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.status, 0, "{out}{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(out, "696e2d74\nin-the-overlay\n");
    // The running VM holds its volume for writing: no clone of a changing image.
    let r = d.v(&["volume", "clone", "data.img", "snap.img"]);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stdout);
    assert!(
        r.stderr.contains("in use by another process"),
        "{}",
        r.stderr
    );
    let r = d.v(&["volume", "rm", "data.img"]);
    assert_eq!(r.status, VIREO_ERROR, "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!("in use by VM '{n}'")),
        "{}",
        r.stderr
    );

    d.ok(&["stop", &n, "--timeout", "60"]);
    d.wait_state(&n, "defined", Duration::from_secs(60));
    d.ok(&["start", &n, "--wait-ready"]);
    let r = exec(
        &d,
        &n,
        &[
            "sh",
            "-c",
            "head -c 13 /dev/vda; echo; head -c 14 /dev/vdb; echo",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "on-the-volume\nin-the-overlay\n",
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    d.ok(&["stop", &n, "--timeout", "60"]);
    d.wait_state(&n, "defined", Duration::from_secs(60));
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base changed"
    );
    assert!(std::fs::read(&data).unwrap().starts_with(b"on-the-volume"));
    // Stopped, its volume can be cloned; the copy has the guest's bytes.
    d.ok(&["volume", "clone", "data.img", "snap.img"]);
    let snap = data.with_file_name("snap.img");
    assert!(std::fs::read(&snap).unwrap() == std::fs::read(&data).unwrap());
    d.ok(&["rm", &n]);
    assert!(!overlay.exists(), "the overlay outlived its VM");
    d.ok(&["volume", "rm", "data.img"]);
    d.ok(&["volume", "rm", "snap.img"]);
    assert_eq!(d.ok(&["volume", "ls", "--json"]).trim(), "[]");
}

/// Ten clones of one snapshot through the daemon: each runs on its own, with the MAC address
/// and vsock CID the daemon gave it in its guest's hands (the MAC on eth0, the CID in its
/// definition), a new VM generation and random numbers of its own.
/// Creates VM "o" (256 MiB of the Debian image, with `extra` options), starts it until its
/// guest is ready and takes snapshot "s" of it; its name.
fn origin_with_snapshot(d: &Daemon, extra: &[&str]) -> String {
    let n = d.name("o");
    let mut args = vec!["create", &n, "--image", IMAGE, "--memory", "256M"];
    args.extend_from_slice(extra);
    d.ok(&args);
    d.ok(&["start", &n, "--wait-ready"]);
    d.ok(&["snapshot", "create", &n, "s"]);
    n
}

#[test]
fn ten_clones_of_a_snapshot_each_have_their_own_identity() {
    require_image();
    // Eleven single-vCPU guests, idle but for the checks: more than the default four per
    // host CPU here.
    let d = Daemon::with_args("clone", &["--cpu-ratio", "8"]);
    let uds = d.dir.join("o.vsock");
    let vsock = format!("cid=3,uds={}", uds.display());
    let n = origin_with_snapshot(&d, &["--net", "user", "--vsock", &vsock]);
    let prefix = d.name("c");
    let out = d.ok(&["clone", "s", "--count", "10", "--prefix", &prefix]);
    let names: Vec<String> = (1..=10).map(|i| format!("{prefix}-{i}")).collect();
    for c in &names {
        assert!(out.contains(c.as_str()), "{c} not in {out:?}");
        d.wait_state(c, "running", Duration::from_secs(60));
    }
    // The origin runs on beside them.
    assert_eq!(d.state(&n), "running");

    let (mut macs, mut cids, mut uuids) = (Vec::new(), Vec::new(), Vec::new());
    for c in &names {
        let spec = &d.inspect(c)["spec"];
        let mac = spec["net"][0]
            .as_str()
            .and_then(|e| e.split(',').find_map(|p| p.strip_prefix("mac=")))
            .unwrap_or_else(|| panic!("{c} has no MAC in its definition: {spec}"))
            .to_lowercase();
        let cid = spec["vsock"]
            .as_str()
            .and_then(|e| e.split(',').find_map(|p| p.strip_prefix("cid=")))
            .unwrap_or_else(|| panic!("{c} has no CID: {spec}"))
            .to_string();
        // The guest binds its NIC again once told of the new generation: wait for that.
        let script = format!(
            "for i in $(seq 100); do [ \"$(cat /sys/class/net/eth0/address)\" = {mac} ] && break; sleep 0.2; done; \
             cat /sys/class/net/eth0/address; awk '/vmgenid/{{print $2}}' /proc/interrupts; cat /proc/sys/kernel/random/uuid"
        );
        let r = exec(&d, c, &["sh", "-c", &script], None);
        assert_eq!(r.status, 0, "{c}: {}", String::from_utf8_lossy(&r.stderr));
        let text = String::from_utf8_lossy(&r.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{c}: {text:?}");
        assert_eq!(
            lines[0], mac,
            "{c}'s eth0 has not the MAC its definition gives"
        );
        assert_eq!(lines[1], "1", "{c}'s kernel saw no new generation");
        // Its /init got an address on the new network and told its VMM.
        let t0 = Instant::now();
        while d.inspect(c)["ip"].is_null() {
            assert!(t0.elapsed() < Duration::from_secs(30), "{c} reports no IP");
            std::thread::sleep(Duration::from_millis(200));
        }
        macs.push(mac);
        cids.push(cid);
        uuids.push(lines[2].to_string());
    }
    for (what, v) in [("MAC", &macs), ("CID", &cids), ("random UUID", &uuids)] {
        let mut u = v.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), v.len(), "clones share a {what}: {v:?}");
    }
    assert!(
        !cids.contains(&"3".to_string()),
        "a clone has the origin's CID"
    );
}

/// A tap is one host interface one VMM at a time can open: clones and restores that would
/// share one are refused up front, naming the tap and who has it; a single clone once the
/// origin has stopped gets it. In a private network namespace (needs root), as the
/// daemon and its VMMs inherit this thread's.
#[test]
fn clones_of_a_tap_backed_vm_cannot_share_its_tap() {
    require_image();
    // SAFETY: unshare(CLONE_NEWNET) moves only this test's thread (and the processes it
    // spawns) into a new, empty network namespace; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!(
            "cannot create a network namespace for the tap test (needs root): {}",
            std::io::Error::last_os_error()
        );
    }
    let st = Command::new("ip")
        .args(["tuntap", "add", "vtapc", "mode", "tap"])
        .status()
        .expect("the tap test needs `ip` (apt-get install iproute2)");
    assert!(st.success());
    let d = Daemon::new("tapclone");
    let n = origin_with_snapshot(&d, &["--net", "tap=vtapc"]);
    let r = d.v(&["clone", "s", "--count", "2", "--prefix", &d.name("c")]);
    assert_eq!(r.status, VIREO_ERROR, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("tap 'vtapc'") && r.stderr.contains("--count 1"),
        "{}",
        r.stderr
    );
    let r = d.v(&["restore", "s", "--name", &d.name("r")]);
    assert_eq!(r.status, VIREO_ERROR, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("in use by VM") && r.stderr.contains(&n),
        "{}",
        r.stderr
    );
    // Nothing was defined by the refusals.
    let ls = d.ok(&["ls"]);
    assert!(
        !ls.contains(&d.name("c")) && !ls.contains(&d.name("r")),
        "{ls}"
    );
    d.ok(&["stop", &n, "--timeout", "60"]);
    d.wait_state(&n, "defined", Duration::from_secs(60));
    let c = d.name("c");
    d.ok(&["clone", "s", "--count", "1", "--prefix", &c]);
    d.wait_state(&format!("{c}-1"), "running", Duration::from_secs(60));
}

/// The fields of /proc/PID/status.
fn proc_status(pid: i64) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn a_jailed_daemon_runs_each_vmm_in_its_jail() {
    require_image();
    let d = Daemon::with_args("jail", &["--jail"]);
    let n = d.name("j");
    d.ok(&[
        "create", &n, "--image", IMAGE, "--memory", "256M", "--net", "user",
    ]);
    d.ok(&["start", &n, "--wait-ready"]);
    // Its control socket, command channel and network work from inside.
    let r = exec(&d, &n, &["cat", "/proc/version"], None);
    assert_eq!(r.status, 0, "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("Linux version"));
    assert!(d.inspect(&n)["ip"].as_str().is_some(), "{}", d.inspect(&n));
    // The daemon's pid is the jail's keeper; the VMM is its child named vireo (passt, started
    // before the jail, is the other).
    let keeper = d.inspect(&n)["pid"].as_i64().unwrap();
    let vmm: i64 = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i64>().ok())
        .find(|p| {
            let st = proc_status(*p);
            st.get("PPid") == Some(&keeper.to_string())
                && st.get("Name").map(String::as_str) == Some("vireo")
        })
        .unwrap_or_else(|| panic!("no VMM under the keeper {keeper}"));
    let st = proc_status(vmm);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(st["Uid"].starts_with("65534"), "{st:?}");
        assert!(
            d.inspect(&n)["limits"]
                .as_str()
                .unwrap_or("")
                .contains("memory"),
            "{}",
            d.inspect(&n)
        );
    }
    assert!(!st["Uid"].starts_with("0\t") && st["Uid"] != "0", "{st:?}");
    assert_eq!(st["CapEff"], "0000000000000000");
    assert_eq!(st["CapBnd"], "0000000000000000");
    assert_eq!(st["NoNewPrivs"], "1");
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !root.iter().any(|e| e == "etc" || e == "usr" || e == "proc"),
        "the host's root shows in the jail: {root:?}"
    );
    // Its own figures come through the /proc files it opened before the jail.
    let (code, text) = d.get("/metrics");
    assert_eq!(code, 200);
    let rss = parse_metrics(&text)
        .into_iter()
        .find(|(s, _)| s == &format!("vireo_vm_vmm_rss_bytes{{vm=\"{n}\"}}"))
        .map(|(_, v)| v);
    assert!(
        rss.is_some_and(|v| v > 1e6),
        "RSS of a jailed VMM: {rss:?}\n{text}"
    );
    // A full snapshot is written in the jail and moved into the store; a clone of it runs
    // jailed too and goes on from where the origin was. Diffs are refused, saying why.
    let snap = d.name("s");
    d.ok(&["snapshot", "create", &n, &snap]);
    let r = d.v(&["snapshot", "create", &n, &d.name("s2"), "--diff"]);
    assert_ne!(r.status, 0);
    assert!(r.stderr.contains("runs in a jail"), "{}", r.stderr);
    let prefix = d.name("c");
    d.ok(&["clone", &snap, "--count", "1", "--prefix", &prefix]);
    let clone = format!("{prefix}-1");
    d.wait_state(&clone, "running", Duration::from_secs(60));
    let r = exec(&d, &clone, &["cat", "/proc/version"], None);
    assert_eq!(r.status, 0, "{}", String::from_utf8_lossy(&r.stderr));
    d.ok(&["kill", &clone]);
    d.ok(&["stop", &n, "--timeout", "60"]);
    d.wait_state(&n, "defined", Duration::from_secs(60));
    assert_eq!(d.inspect(&n)["last_exit"]["reason"], "poweroff");
    let jail = d.dir.join("state/vms").join(&n).join("jail");
    assert!(!jail.exists(), "{} is left", jail.display());
    // Killed by force, the keeper takes the VMM with it; what it could not remove of the
    // jail, the next start does.
    d.ok(&["start", &n, "--wait-ready"]);
    let keeper = d.inspect(&n)["pid"].as_i64().unwrap();
    let vmm = (0..100)
        .find_map(|_| {
            let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                let p = e.file_name().to_string_lossy().parse::<i64>().ok()?;
                let st = proc_status(p);
                (st.get("PPid") == Some(&keeper.to_string())
                    && st.get("Name").map(String::as_str) == Some("vireo"))
                .then_some(p)
            });
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        })
        .expect("a jailed VMM");
    // SAFETY: kill(2) on the keeper's pid; no memory involved.
    unsafe { libc::kill(keeper as i32, libc::SIGKILL) };
    d.wait_state(&n, "crashed", Duration::from_secs(20));
    assert!(jail.exists(), "a keeper killed by force cannot clean up");
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{vmm}")).exists()
        && proc_status(vmm)
            .get("State")
            .is_some_and(|s| !s.starts_with('Z'))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the jailed VMM outlived its keeper"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.ok(&["start", &n, "--wait-ready"]);
    d.ok(&["kill", &n]);
}
