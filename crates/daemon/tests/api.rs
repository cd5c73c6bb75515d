//! The daemon's API against a real daemon process (`fake-vireo daemon`) on a temporary state
//! directory and socket, whose VMMs are `fake-vireo vmm` (src/bin/fake-vireo.rs), which keeps
//! the VMM process protocol without booting a guest.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vireo_daemon::client::{Autostart, Client, ClientError};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vireo");

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A state directory with a daemon on it.
struct Env {
    dir: PathBuf,
    socket: PathBuf,
    cgroup_parent: String,
    daemon: Option<Child>,
}

impl Env {
    fn new(tag: &str) -> Env {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("vireo-api-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinux"), b"not really a kernel").unwrap();
        Env {
            socket: dir.join("s/vireo.sock"),
            cgroup_parent: format!("vireo-test-{}-{n}", std::process::id()),
            dir,
            daemon: None,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn daemon_cmd(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(FAKE);
        c.arg("daemon")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(extra)
            .env("VIREO_VMM_PROGRAM", FAKE)
            .env("VIREO_LOG", "warn");
        c
    }

    /// Starts the daemon and waits for its socket.
    fn start(&mut self, extra: &[&str]) {
        let child = self
            .daemon_cmd(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        wait_until("the daemon's socket", 15, || {
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                let mut err = String::new();
                let _ = self
                    .daemon
                    .as_mut()
                    .unwrap()
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err);
                panic!("the daemon exited with {st}: {err}");
            }
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
    }

    /// kill -9 of the daemon.
    fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.socket).unwrap()
    }

    fn spec(&self, cmdline: &str) -> Value {
        json!({"kernel": self.dir.join("vmlinux"), "cmdline": cmdline, "memory": "64M"})
    }

    fn create(&self, c: &Client, name: &str, cmdline: &str) -> Value {
        c.call(
            "POST",
            "/vms",
            Some(&json!({"name": name, "spec": self.spec(cmdline)})),
        )
        .unwrap()
    }

    fn vmm_pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.state_dir().join("vms").join(name).join("run/pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill9();
        // The VMMs are in their own sessions: end them here.
        if let Ok(vms) = std::fs::read_dir(self.state_dir().join("vms")) {
            for vm in vms.flatten() {
                if let Ok(p) = std::fs::read_to_string(vm.path().join("run/pid")) {
                    if let Ok(pid) = p.trim().parse::<i32>() {
                        if vm.path().join("run/control.sock").exists() {
                            // SAFETY: kill has no memory effects; the VMM still runs (its
                            // socket is there), so the pid is its own.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                }
            }
        }
        for h in ["memory", "cpu"] {
            let p = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(&self.cgroup_parent);
            // A VMM killed just now may still be in its cgroup for a moment: retry a while.
            let deadline = Instant::now() + Duration::from_secs(3);
            while p.exists() && Instant::now() < deadline {
                if let Ok(d) = std::fs::read_dir(&p) {
                    for e in d.flatten().filter(|e| e.path().is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                if std::fs::remove_dir(&p).is_err() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(c: &Client, name: &str) -> String {
    c.call("GET", &format!("/vms/{name}"), None).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn api_err(r: Result<Value, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        r => panic!("expected an API error, got {r:?}"),
    }
}

fn events(c: &Client, name: &str) -> Vec<(String, String)> {
    let v = c.call("GET", &format!("/events?vm={name}"), None).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["detail"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn lifecycle() {
    let mut env = Env::new("life");
    env.start(&[]);
    let c = env.client();
    let v = env.create(&c, "a", "");
    assert_eq!(v["state"], "defined");
    assert_eq!(v["memory_bytes"], 64 << 20);
    let list = c.call("GET", "/vms", None).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "a");

    let v = c
        .call("POST", "/vms/a/start", Some(&json!({"wait_ready": true})))
        .unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["guest_ready"], true, "{v}");
    assert!(v["pid"].as_u64().is_some(), "{v}");
    let limits = v["limits"].as_str().unwrap();
    assert!(
        limits.starts_with("memory ") || limits.starts_with("not enforced: "),
        "{limits}"
    );
    let cgroup = Path::new("/sys/fs/cgroup/memory")
        .join(&env.cgroup_parent)
        .join("a");
    if limits.starts_with("memory ") {
        // Enforced (root, v1 here): the VMM is in its cgroup with guest RAM + overhead.
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
        let pid = v["pid"].to_string();
        assert!(procs.lines().any(|l| l == pid), "{procs}");
        assert!(limits.contains("memory 320 MiB"), "{limits}");
    }

    let v = c.call("POST", "/vms/a/pause", None).unwrap();
    assert_eq!(v["state"], "paused");
    let (status, code, msg) = api_err(c.call("POST", "/vms/a/pause", None));
    assert_eq!((status, code.as_str()), (409, "conflict"));
    assert!(msg.contains("paused"), "{msg}");
    assert_eq!(
        c.call("POST", "/vms/a/resume", None).unwrap()["state"],
        "running"
    );

    let s = c.call("GET", "/vms/a/stats", None).unwrap();
    assert_eq!(s["stats"]["counters"]["traps.ecall_s"], 123, "{s}");
    let m = c.raw("GET", "/metrics", None, "").unwrap();
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("vireo_vm_counter{vm=\"a\",name=\"traps.ecall_s\"} 123"),
        "{text}"
    );
    assert!(
        text.contains("vireo_vm_state{vm=\"a\",state=\"running\"} 1"),
        "{text}"
    );
    let logs = c.raw("GET", "/vms/a/logs", None, "").unwrap();
    assert!(String::from_utf8_lossy(&logs.body).contains("fake-vmm: booting"));
    let host = c.call("GET", "/host", None).unwrap();
    assert_eq!(host["allocated"]["vms"], 1, "{host}");

    let v = c
        .call("POST", "/vms/a/stop", Some(&json!({"timeout_secs": 5})))
        .unwrap();
    assert_eq!(v["state"], "defined", "{v}");
    assert_eq!(v["last_exit"]["reason"], "poweroff", "{v}");
    assert!(
        !cgroup.exists(),
        "{} is left after the stop",
        cgroup.display()
    );
    // The last run's console log stays readable.
    let logs = c.raw("GET", "/vms/a/logs", None, "").unwrap();
    assert!(String::from_utf8_lossy(&logs.body).contains("fake-vmm: ready"));

    c.call("POST", "/vms/a/start", None).unwrap();
    let v = c
        .call("POST", "/vms/a/restart", Some(&json!({"timeout_secs": 5})))
        .unwrap();
    assert_eq!(v["state"], "running", "{v}");
    let v = c.call("POST", "/vms/a/kill", None).unwrap();
    assert_eq!(v["state"], "defined", "{v}");
    assert_eq!(v["last_exit"]["reason"], "killed", "{v}");
    let (status, _, msg) = api_err(c.call("POST", "/vms/a/stop", None));
    assert_eq!(status, 409);
    assert!(msg.contains("it is defined"), "{msg}");

    let kinds: Vec<String> = events(&c, "a").into_iter().map(|e| e.0).collect();
    for k in ["created", "starting", "state", "guest_ready", "exited"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
    c.call("DELETE", "/vms/a", None).unwrap();
    let (status, _, msg) = api_err(c.call("GET", "/vms/a", None));
    assert_eq!(status, 404);
    assert!(msg.contains("'a'"), "{msg}");
    assert!(!env.state_dir().join("vms/a").exists());
}

#[test]
fn bad_requests() {
    let mut env = Env::new("bad");
    env.start(&[]);
    let c = env.client();
    let raw = |method: &str, path: &str, ct: Option<&str>, body: Vec<u8>| {
        let a = c.raw(method, path, ct, body).unwrap();
        let v = a.json();
        assert!(
            v["message"].is_string() && v["error"].is_string(),
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        (
            a.status.as_u16(),
            v["error"].as_str().unwrap().to_string(),
            v["message"].as_str().unwrap().to_string(),
        )
    };
    let j = Some("application/json");

    let (s, _, m) = raw("GET", "/vms/nope", None, vec![]);
    assert_eq!(s, 404);
    assert!(m.contains("'nope'"), "{m}");
    assert_eq!(raw("GET", "/nowhere", None, vec![]).0, 404);
    assert_eq!(raw("PUT", "/vms", None, vec![]).0, 405);
    assert_eq!(raw("GET", "/vms/%FF", None, vec![]).0, 400);
    assert_eq!(raw("GET", "/vms/a%2Fb", None, vec![]).0, 404);

    let (s, code, _) = raw("POST", "/vms", j, b"{\"name\": ".to_vec());
    assert_eq!((s, code.as_str()), (400, "bad_request"));
    let (s, _, m) = raw(
        "POST",
        "/vms",
        j,
        br#"{"name":"a","spec":{},"colour":"red"}"#.to_vec(),
    );
    assert_eq!(s, 422);
    assert!(m.contains("colour"), "{m}");
    let spec_extra = json!({"name": "a", "spec": {"kernel": "/", "cpuz": 2}}).to_string();
    let (s, _, m) = raw("POST", "/vms", j, spec_extra.into_bytes());
    assert_eq!(s, 422);
    assert!(m.contains("cpuz"), "{m}");
    let (s, _, m) = raw(
        "POST",
        "/vms",
        j,
        br#"{"name":"a","spec":{"cpus":"two"}}"#.to_vec(),
    );
    assert_eq!(s, 422, "{m}");
    assert_eq!(
        raw("POST", "/vms", j, br#"{"name":5,"spec":{}}"#.to_vec()).0,
        422
    );
    assert_eq!(raw("POST", "/vms", j, br#"[1,2]"#.to_vec()).0, 422);
    let (s, code, _) = raw("POST", "/vms", None, br#"{"name":"a","spec":{}}"#.to_vec());
    assert_eq!((s, code.as_str()), (415, "unsupported_media_type"));
    // Over 1 MiB: refused from its Content-Length, before the body is sent. (Sending the
    // whole body could race with the server closing the connection after its answer.)
    let mut u = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    write!(
        u,
        "POST /vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"name\":",
        2 << 20
    )
    .unwrap();
    let mut answer = [0u8; 512];
    let n = u.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // Without a length (chunked), the limit applies while reading. The body is written from
    // another thread, which may find the connection closed under it.
    let u = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    let mut w = u.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 64 << 10];
        let _ = write!(
            w,
            "POST /vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        for _ in 0..32 {
            if write!(w, "{:x}\r\n", chunk.len()).is_err()
                || w.write_all(&chunk).is_err()
                || w.write_all(b"\r\n").is_err()
            {
                return;
            }
        }
        let _ = w.write_all(b"0\r\n\r\n");
    });
    let mut answer = String::new();
    let _ = (&u).take(4096).read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    drop(u);
    let _ = writer.join();

    let body =
        |name: &str, spec: Value| json!({"name": name, "spec": spec}).to_string().into_bytes();
    let (s, _, m) = raw("POST", "/vms", j, body("bad/name", env.spec("")));
    assert_eq!(s, 422);
    assert!(m.contains("invalid VM name"), "{m}");
    let (s, code, m) = raw(
        "POST",
        "/vms",
        j,
        body("a", json!({"kernel": "/no/such/vmlinux"})),
    );
    assert_eq!((s, code.as_str()), (422, "invalid_spec"));
    assert!(m.contains("/no/such/vmlinux"), "{m}");
    let (s, _, m) = raw(
        "POST",
        "/vms",
        j,
        body("a", json!({"kernel": "rel/vmlinux"})),
    );
    assert_eq!(s, 422);
    assert!(m.contains("absolute"), "{m}");
    let (s, _, m) = raw(
        "POST",
        "/vms",
        j,
        body("a", json!({"kernel": "/", "cpus": 0})),
    );
    assert_eq!(s, 422);
    assert!(m.contains("cpus"), "{m}");
    let (s, _, m) = raw(
        "POST",
        "/vms",
        j,
        body("a", json!({"image": "no-such-image"})),
    );
    assert_eq!(s, 422);
    assert!(m.contains("no-such-image"), "{m}");

    env.create(&c, "a", "");
    let (s, code, m) = raw("POST", "/vms", j, body("a", env.spec("")));
    assert_eq!((s, code.as_str()), (409, "conflict"));
    assert!(m.contains("'a' already exists"), "{m}");
    assert_eq!(
        raw(
            "POST",
            "/vms/a/start",
            j,
            br#"{"wait_ready":"yes"}"#.to_vec()
        )
        .0,
        422
    );
    assert_eq!(
        raw("POST", "/vms/a/stop", j, br#"{"timeout_secs":-1}"#.to_vec()).0,
        422
    );
    assert_eq!(raw("DELETE", "/vms/a?force=maybe", None, vec![]).0, 400);
    assert_eq!(raw("GET", "/events?since=x", None, vec![]).0, 400);

    c.call("POST", "/vms/a/start", None).unwrap();
    let (s, _, m) = raw("POST", "/vms/a/start", None, vec![]);
    assert_eq!(s, 409);
    assert!(m.contains("it is running"), "{m}");
    let (s, _, m) = raw("DELETE", "/vms/a", None, vec![]);
    assert_eq!(s, 409);
    assert!(m.contains("running") && m.contains("force"), "{m}");
    let (s, _, _) = raw("GET", "/vms/a/console", None, vec![]);
    assert_eq!(s, 400);
    c.call("DELETE", "/vms/a?force=true", None).unwrap();
    assert_eq!(raw("GET", "/vms/a", None, vec![]).0, 404);
}

#[test]
fn start_failure_reaches_the_client() {
    let mut env = Env::new("fail");
    env.start(&[]);
    let c = env.client();
    env.create(&c, "f", "fake.fail_start");
    let (status, code, msg) = api_err(c.call("POST", "/vms/f/start", None));
    assert_eq!((status, code.as_str()), (422, "start_failed"));
    assert!(
        msg.contains("cannot open kernel") && msg.contains("vmlinux"),
        "{msg}"
    );
    let v = c.call("GET", "/vms/f", None).unwrap();
    assert_eq!(v["state"], "defined", "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("cannot open kernel"),
        "{v}"
    );
    assert_eq!(v["last_exit"]["reason"], "error");
    assert!(events(&c, "f")
        .iter()
        .any(|(k, d)| k == "start_failed" && d.contains("cannot open kernel")));
}

#[test]
fn daemon_restart_keeps_vms() {
    let mut env = Env::new("restart");
    env.start(&[]);
    let c = env.client();
    for n in ["a", "b"] {
        env.create(&c, n, "");
        c.call(
            "POST",
            &format!("/vms/{n}/start"),
            Some(&json!({"wait_ready": true})),
        )
        .unwrap();
    }
    let pids = (env.vmm_pid("a"), env.vmm_pid("b"));
    env.kill9();
    // The VMMs live on without the daemon.
    for p in [pids.0, pids.1] {
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(p, 0) };
        assert_eq!(alive, 0, "VMM {p} died with the daemon");
    }
    // The dead daemon's socket file is stale: the new daemon replaces it.
    env.start(&[]);
    let c = env.client();
    for n in ["a", "b"] {
        assert_eq!(state(&c, n), "running", "{n} after the restart");
    }
    let v = c.call("GET", "/vms/a", None).unwrap();
    assert_eq!(v["pid"], pids.0, "{v}");
    assert_eq!(
        c.call("POST", "/vms/a/pause", None).unwrap()["state"],
        "paused"
    );
    assert_eq!(
        c.call("POST", "/vms/a/resume", None).unwrap()["state"],
        "running"
    );
    let v = c
        .call("POST", "/vms/b/stop", Some(&json!({"timeout_secs": 5})))
        .unwrap();
    assert_eq!(v["state"], "defined");
    assert_eq!(v["last_exit"]["reason"], "poweroff");
    assert!(events(&c, "a").iter().any(|(k, _)| k == "reattached"));
    // A VMM that died while no daemon watched: exit.json is read at the next start.
    env.kill9();
    c.call("GET", "/vms", None).unwrap_err();
    let pid = env.vmm_pid("a");
    // SAFETY: the VMM of a is running (checked above); the signal asks it to exit.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("the VMM to die", 10, || {
        !env.state_dir().join("vms/a/run/control.sock").exists() || {
            // SAFETY: signal 0 only checks that the process exists.
            unsafe { libc::kill(pid, 0) != 0 }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    env.start(&[]);
    let c = env.client();
    wait_until("a to be settled", 10, || state(&c, "a") == "crashed");
    let v = c.call("GET", "/vms/a", None).unwrap();
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("died without saying why"),
        "{v}"
    );
}

#[test]
fn vmm_killed_by_a_signal_is_crashed() {
    let mut env = Env::new("crash");
    env.start(&[]);
    let c = env.client();
    env.create(&c, "c", "");
    c.call("POST", "/vms/c/start", None).unwrap();
    let pid = env.vmm_pid("c");
    // SAFETY: the VMM runs (its start answered); SIGKILL is the crash being tested.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("c to be crashed", 10, || state(&c, "c") == "crashed");
    let v = c.call("GET", "/vms/c", None).unwrap();
    assert_eq!(
        v["detail"], "the VMM process died: killed by signal 9",
        "{v}"
    );
    assert!(events(&c, "c")
        .iter()
        .any(|(k, d)| k == "crashed" && d.contains("signal 9")));
    // A crashed VM starts again.
    assert_eq!(
        c.call("POST", "/vms/c/start", None).unwrap()["state"],
        "running"
    );
    c.call("POST", "/vms/c/kill", None).unwrap();
}

#[test]
fn a_vmm_panic_while_running_is_crashed_with_its_message() {
    let mut env = Env::new("panic");
    env.start(&[]);
    let c = env.client();
    env.create(&c, "p", "fake.panic_after=300");
    c.call("POST", "/vms/p/start", None).unwrap();
    wait_until("p to be crashed", 10, || state(&c, "p") == "crashed");
    let v = c.call("GET", "/vms/p", None).unwrap();
    assert!(v["detail"].as_str().unwrap().contains("fake panic"), "{v}");
    assert_eq!(v["last_exit"]["reason"], "panic", "{v}");
    assert!(events(&c, "p")
        .iter()
        .any(|(k, d)| k == "crashed" && d.contains("fake panic")));
}

#[test]
fn shutdown_timeout_ends_killed() {
    let mut env = Env::new("timeout");
    env.start(&[]);
    let c = env.client();
    env.create(&c, "t", "fake.ignore_shutdown");
    c.call("POST", "/vms/t/start", None).unwrap();
    let v = c
        .call("POST", "/vms/t/stop", Some(&json!({"timeout_secs": 1})))
        .unwrap();
    assert_eq!(v["state"], "defined", "{v}");
    assert_eq!(v["last_exit"]["reason"], "killed", "{v}");
}

#[test]
fn one_daemon_per_state_dir_and_socket() {
    let mut env = Env::new("excl");
    // A stale socket file (nobody listens) is replaced.
    std::fs::create_dir_all(env.socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&env.socket).unwrap());
    env.start(&[]);
    let out = Command::new(FAKE)
        .args(["daemon", "--state-dir"])
        .arg(env.state_dir())
        .arg("--socket")
        .arg(env.dir.join("other.sock"))
        .env("VIREO_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another vireo daemon")
            && err.contains(&env.state_dir().display().to_string()),
        "{err}"
    );
    // A live socket is never stolen, even by a daemon with its own state directory.
    let out = Command::new(FAKE)
        .args(["daemon", "--state-dir"])
        .arg(env.dir.join("state2"))
        .arg("--socket")
        .arg(&env.socket)
        .env("VIREO_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening on"), "{err}");
    env.client().call("GET", "/vms", None).unwrap();
}

fn http_tcp(addr: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /vms HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let status = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, r)
}

#[test]
fn tcp_needs_the_token() {
    let mut env = Env::new("tcp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = env.dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let listen = format!("tcp:127.0.0.1:{port}");
    env.start(&["--listen", &listen, "--token-file", token.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{port}");
    wait_until("the TCP listener", 10, || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let (s, body) = http_tcp(&addr, None);
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("\"error\":\"unauthorized\""), "{body}");
    assert_eq!(http_tcp(&addr, Some("wrong")).0, 401);
    let (s, body) = http_tcp(&addr, Some("s3cret"));
    assert_eq!(s, 200, "{body}");
    // --listen without a token file is a usage error.
    let out = env.daemon_cmd(&["--listen", &listen]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));
}

#[test]
fn capacity_is_enforced() {
    let mut env = Env::new("cap");
    env.start(&["--memory-reserve", "1000000G"]);
    let c = env.client();
    env.create(&c, "big", "");
    let (status, code, msg) = api_err(c.call("POST", "/vms/big/start", None));
    assert_eq!((status, code.as_str()), (409, "insufficient_capacity"));
    assert!(
        msg.contains("not enough memory") && msg.contains("MiB"),
        "{msg}"
    );
    assert_eq!(state(&c, "big"), "defined");
}

#[test]
fn console_and_followed_events() {
    let mut env = Env::new("console");
    env.start(&[]);
    let c = env.client();
    env.create(&c, "k", "");
    let socket = env.socket.clone();
    let follower = std::thread::spawn(move || {
        let c = Client::new(&socket).unwrap();
        let mut seen = String::new();
        c.stream("/events?follow=true&vm=k", |chunk| {
            seen.push_str(&String::from_utf8_lossy(chunk));
            !seen.contains("\"guest_ready\"")
        })
        .unwrap();
        seen
    });
    std::thread::sleep(Duration::from_millis(200));
    c.call("POST", "/vms/k/start", Some(&json!({"wait_ready": true})))
        .unwrap();
    let seen = follower.join().unwrap();
    for line in seen.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["vm"], "k");
    }
    assert!(seen.contains("\"starting\""), "{seen}");

    let (mut s, early) = c.console("k", "rw").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = early.to_vec();
    s.write_all(b"hello console\n").unwrap();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("hello console") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "console closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("fake-vmm: booting"));
    drop(s);
    assert_eq!(state(&c, "k"), "running");
}

#[test]
fn client_starts_a_daemon_on_demand() {
    let env = Env::new("auto");
    let c = env.client();
    assert!(!c.ping());
    c.ensure_daemon(Some(Autostart {
        command: env.daemon_cmd(&[]),
        log: Some(env.dir.join("daemon.log")),
    }))
    .unwrap();
    c.call("GET", "/vms", None).unwrap();
    // It runs detached: end it through its lock file's pid.
    let pid: i32 = std::fs::read_to_string(env.state_dir().join("daemon.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: the pid is the daemon's, which answered just now.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until("the daemon to exit", 10, || !c.ping());
}
