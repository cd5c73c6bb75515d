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

fn post(c: &Client, path: &str, body: Value) -> Result<Value, ClientError> {
    c.call("POST", path, Some(&body))
}

fn names_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

/// Pools and volumes through the API: the default pool, a pool of one's own, volumes made,
/// copied in by hand, cloned (a copy and an overlay), listed and removed; what cannot be is
/// refused with its own status and a message naming the thing.
#[test]
fn pools_and_volumes() {
    let mut env = Env::new("pools");
    env.start(&[]);
    let c = env.client();
    let pools = c.call("GET", "/pools", None).unwrap();
    assert_eq!(names_of(&pools), ["default"], "{pools}");
    let default = PathBuf::from(pools[0]["path"].as_str().unwrap());
    assert!(
        default.starts_with(env.state_dir()) && default.is_dir(),
        "{pools}"
    );
    let p = &pools[0];
    assert!(p["capacity_bytes"].as_u64().unwrap() > 0, "{p}");
    assert!(
        p["available_bytes"].as_u64() <= p["capacity_bytes"].as_u64(),
        "{p}"
    );
    assert_eq!(p["volumes"], 0);

    // Made here: qcow2 (the default) and raw.
    let v = post(
        &c,
        "/pools/default/volumes",
        json!({"name": "base.qcow2", "size_bytes": 64 << 20}),
    )
    .unwrap();
    assert_eq!(
        (&v["format"], &v["virtual_size_bytes"], &v["pool"]),
        (&json!("qcow2"), &json!(64 << 20), &json!("default")),
        "{v}"
    );
    let raw = post(
        &c,
        "/pools/default/volumes",
        json!({"name": "data.img", "size_bytes": 1 << 20, "format": "raw"}),
    )
    .unwrap();
    assert_eq!(raw["format"], "raw", "{raw}");
    let data_path = default.join("data.img");
    assert_eq!(std::fs::metadata(&data_path).unwrap().len(), 1 << 20);
    // An overlay volume takes its base's size.
    let top = post(
        &c,
        "/pools/default/volumes",
        json!({"name": "top", "backing": "base.qcow2"}),
    )
    .unwrap();
    assert_eq!(top["virtual_size_bytes"], 64 << 20, "{top}");
    assert_eq!(
        top["backing_file"].as_str().map(PathBuf::from),
        Some(default.join("base.qcow2")),
        "{top}"
    );
    // A file copied in by hand is a volume; hidden files and directories are not.
    std::fs::write(default.join("hand.img"), vec![1u8; 4096]).unwrap();
    std::fs::write(default.join(".hidden"), b"x").unwrap();
    std::fs::create_dir(default.join("sub")).unwrap();
    let list = c.call("GET", "/pools/default/volumes", None).unwrap();
    assert_eq!(
        names_of(&list),
        ["base.qcow2", "data.img", "hand.img", "top"],
        "{list}"
    );
    assert_eq!(list[2]["format"], "raw");
    assert_eq!(list[0]["backs"], json!(["default/top"]), "{list}");
    assert_eq!(c.call("GET", "/pools/default", None).unwrap()["volumes"], 4);

    // Clones: a full copy, holes kept, and an overlay.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data_path)
        .unwrap()
        .write_all(b"payload at the start")
        .unwrap();
    let copy = post(
        &c,
        "/pools/default/volumes/data.img/clone",
        json!({"name": "copy.img"}),
    )
    .unwrap();
    assert_eq!(
        (&copy["format"], &copy["name"]),
        (&json!("raw"), &json!("copy.img"))
    );
    assert!(std::fs::read(default.join("copy.img")).unwrap() == std::fs::read(&data_path).unwrap());
    let ov = post(
        &c,
        "/pools/default/volumes/data.img/clone",
        json!({"name": "ov.qcow2", "overlay": true}),
    )
    .unwrap();
    assert_eq!(ov["format"], "qcow2", "{ov}");
    assert_eq!(
        ov["backing_file"].as_str().map(PathBuf::from),
        Some(data_path.clone())
    );
    assert_eq!(ov["virtual_size_bytes"], 1 << 20);

    // Refusals: each status its own, each message naming the thing.
    let bad = |r, status: u16, needle: &str| {
        let (s, _, m) = api_err(r);
        assert_eq!(s, status, "{m}");
        assert!(m.contains(needle), "{needle:?} not in {m:?}");
    };
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "base.qcow2", "size_bytes": 1 << 20}),
        ),
        409,
        "already has a volume (or file) named 'base.qcow2'",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "../escape", "size_bytes": 1}),
        ),
        400,
        "invalid volume name '../escape'",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "..", "size_bytes": 1}),
        ),
        400,
        "invalid volume name '..'",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "a,overlay", "size_bytes": 1}),
        ),
        400,
        "','",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "z", "size_bytes": 0}),
        ),
        400,
        "size_bytes: 0 is out of range",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "z", "size_bytes": 1u64 << 50}),
        ),
        400,
        "out of range",
    );
    bad(
        post(&c, "/pools/default/volumes", json!({"name": "z"})),
        400,
        "a size is needed",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "z", "format": "raw", "backing": "base.qcow2"}),
        ),
        400,
        "a raw volume cannot have a backing file",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "z", "backing": "nosuch"}),
        ),
        404,
        "no volume 'nosuch' in pool 'default'",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "z", "backing": "/nonexistent/b.img"}),
        ),
        404,
        "/nonexistent/b.img",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes",
            json!({"name": "z", "backing": "rel/b.img"}),
        ),
        400,
        "expected a volume name, vol:POOL/NAME or an absolute path",
    );
    bad(
        post(
            &c,
            "/pools/nopool/volumes",
            json!({"name": "z", "size_bytes": 1}),
        ),
        404,
        "no pool named 'nopool'",
    );
    bad(
        c.call("GET", "/pools/default/volumes/nosuch", None),
        404,
        "'nosuch'",
    );
    bad(
        c.call("GET", "/pools/default/volumes/..%2Fvireo.db", None),
        400,
        "'/'",
    );
    bad(
        c.call("DELETE", "/pools/default/volumes/..", None),
        400,
        "'..'",
    );
    bad(
        c.call("GET", "/pools/a%2Fb", None),
        400,
        "invalid pool name 'a/b'",
    );
    bad(
        c.call("GET", "/pools/nopool/volumes", None),
        404,
        "no pool named 'nopool'",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes/nosuch/clone",
            json!({"name": "n"}),
        ),
        404,
        "no volume 'nosuch'",
    );
    bad(
        post(
            &c,
            "/pools/default/volumes/data.img/clone",
            json!({"name": "copy.img"}),
        ),
        409,
        "'copy.img'",
    );
    // As long a name as a file may have.
    let long = "l".repeat(255);
    let v = post(
        &c,
        "/pools/default/volumes/data.img/clone",
        json!({"name": long}),
    )
    .unwrap();
    assert_eq!(v["name"].as_str(), Some(long.as_str()));
    c.call("DELETE", &format!("/pools/default/volumes/{long}"), None)
        .unwrap();
    let (s, code, _) = api_err(post(
        &c,
        "/pools/default/volumes",
        json!({"name": "z", "size_bytes": 1, "colour": "red"}),
    ));
    assert_eq!((s, code.as_str()), (422, "invalid_body"));
    let (s, _, _) = api_err(post(
        &c,
        "/pools/default/volumes",
        json!({"name": "z", "size_bytes": 1, "format": "vmdk"}),
    ));
    assert_eq!(s, 422);
    // A base an overlay volume stands on stays until the overlay goes.
    bad(
        c.call("DELETE", "/pools/default/volumes/base.qcow2", None),
        409,
        "is the backing file of volume 'default/top'",
    );
    c.call("DELETE", "/pools/default/volumes/top", None)
        .unwrap();
    c.call("DELETE", "/pools/default/volumes/base.qcow2", None)
        .unwrap();
    assert!(!default.join("base.qcow2").exists());
    // Hand-copied files go the same way; what is not a volume is left alone.
    c.call("DELETE", "/pools/default/volumes/hand.img", None)
        .unwrap();
    assert!(default.join(".hidden").exists() && default.join("sub").is_dir());

    // A pool of one's own, on a new directory (made) and on an empty one (kept).
    let new_dir = env.dir.join("fast");
    let p = post(&c, "/pools", json!({"name": "fast", "path": new_dir})).unwrap();
    assert_eq!(
        (p["name"].as_str(), p["volumes"].as_u64()),
        (Some("fast"), Some(0)),
        "{p}"
    );
    assert!(new_dir.is_dir());
    let empty = env.dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    post(&c, "/pools", json!({"name": "e", "path": empty})).unwrap();
    assert_eq!(
        names_of(&c.call("GET", "/pools", None).unwrap()),
        ["default", "e", "fast"]
    );
    post(
        &c,
        "/pools/fast/volumes",
        json!({"name": "v1", "size_bytes": 1 << 20, "format": "raw"}),
    )
    .unwrap();
    // Another pool's volume as a backing image.
    post(
        &c,
        "/pools/default/volumes",
        json!({"name": "on-fast", "backing": "vol:fast/v1"}),
    )
    .unwrap();
    bad(
        c.call("DELETE", "/pools/fast?force=true", None),
        409,
        "pool 'fast' holds the backing file of volume 'default/on-fast'",
    );
    c.call("DELETE", "/pools/default/volumes/on-fast", None)
        .unwrap();
    bad(
        c.call("DELETE", "/pools/fast", None),
        409,
        "pool 'fast' holds 1 volume ('v1')",
    );
    bad(
        post(
            &c,
            "/pools",
            json!({"name": "fast", "path": env.dir.join("x")}),
        ),
        409,
        "a pool named 'fast' already exists",
    );
    bad(
        post(
            &c,
            "/pools",
            json!({"name": "default", "path": env.dir.join("x")}),
        ),
        409,
        "'default' already exists",
    );
    bad(
        post(&c, "/pools", json!({"name": "again", "path": new_dir})),
        409,
        "is not empty",
    );
    bad(
        post(
            &c,
            "/pools",
            json!({"name": "b/d", "path": env.dir.join("x")}),
        ),
        400,
        "invalid pool name 'b/d'",
    );
    bad(
        post(&c, "/pools", json!({"name": "r", "path": "relative/dir"})),
        400,
        "expected an absolute path",
    );
    bad(
        post(
            &c,
            "/pools",
            json!({"name": "r", "path": env.dir.join("no/such/parent")}),
        ),
        400,
        "its parent",
    );
    bad(
        post(
            &c,
            "/pools",
            json!({"name": "r", "path": env.dir.join("vmlinux")}),
        ),
        400,
        "is not a directory",
    );
    bad(
        post(
            &c,
            "/pools",
            json!({"name": "r", "path": env.state_dir().join("mine")}),
        ),
        400,
        "overlaps the daemon's state directory",
    );
    bad(
        c.call("DELETE", "/pools/default", None),
        409,
        "the default pool cannot be removed",
    );
    bad(
        c.call("DELETE", "/pools/nopool", None),
        404,
        "no pool named 'nopool'",
    );

    // Pools are kept across a daemon restart.
    env.kill9();
    env.start(&[]);
    let c = env.client();
    assert_eq!(
        names_of(&c.call("GET", "/pools", None).unwrap()),
        ["default", "e", "fast"]
    );
    assert_eq!(
        names_of(&c.call("GET", "/pools/fast/volumes", None).unwrap()),
        ["v1"]
    );
    // Forced, a pool with volumes is forgotten and its files stay.
    c.call("DELETE", "/pools/fast?force=true", None).unwrap();
    assert!(new_dir.join("v1").exists());
    bad(
        c.call("GET", "/pools/fast", None),
        404,
        "no pool named 'fast'",
    );
    // An empty pool goes with its directory if the daemon made it, not otherwise.
    c.call("DELETE", "/pools/e", None).unwrap();
    assert!(empty.is_dir());
    let made = env.dir.join("made");
    post(&c, "/pools", json!({"name": "m", "path": made})).unwrap();
    c.call("DELETE", "/pools/m", None).unwrap();
    assert!(!made.exists());

    // A daemon with --pool-root makes pools there only.
    env.kill9();
    let root = env.dir.join("root");
    std::fs::create_dir(&root).unwrap();
    env.start(&["--pool-root", root.to_str().unwrap()]);
    let c = env.client();
    bad(
        post(
            &c,
            "/pools",
            json!({"name": "out", "path": env.dir.join("out")}),
        ),
        400,
        "where this daemon makes pools (--pool-root)",
    );
    assert!(!env.dir.join("out").exists());
    post(&c, "/pools", json!({"name": "in", "path": root.join("in")})).unwrap();
    assert!(root.join("in").is_dir());
}

/// VM disks naming volumes, and persistent overlays: resolved at create and start (the VMM
/// gets files), a used volume (directly, through an overlay or a backing chain) cannot be
/// removed, nor its pool; an overlay disk's overlay is made at create in the VM's directory,
/// kept across stop and start, and removed with the VM; the base is never written.
#[test]
fn vm_disks_from_volumes_and_persistent_overlays() {
    let mut env = Env::new("vmdisks");
    env.start(&[]);
    let c = env.client();
    let vm = |name: &str, disks: Value| {
        post(
            &c,
            "/vms",
            json!({"name": name, "spec": {"kernel": env.dir.join("vmlinux"), "memory": "64M", "disk": disks}}),
        )
    };
    let bad = |r, status: u16, needle: &str| {
        let (s, _, m) = api_err(r);
        assert_eq!(s, status, "{m}");
        assert!(m.contains(needle), "{needle:?} not in {m:?}");
    };
    let pool = PathBuf::from(
        c.call("GET", "/pools/default", None).unwrap()["path"]
            .as_str()
            .unwrap(),
    );
    post(
        &c,
        "/pools/default/volumes",
        json!({"name": "data.img", "size_bytes": 1 << 20, "format": "raw"}),
    )
    .unwrap();
    // A volume disk: defined with its reference, run with its file.
    let v = vm("a", json!(["vol:data.img,serial=d1"])).unwrap();
    // The volume's format is pinned at create: a guest's qcow2 header in it stays data.
    assert_eq!(
        v["spec"]["disk"],
        json!(["vol:data.img,serial=d1,format=raw"]),
        "{v}"
    );
    assert_eq!(
        v["disks"][0]["path"].as_str().map(PathBuf::from),
        Some(pool.join("data.img")),
        "{v}"
    );
    c.call("POST", "/vms/a/start", None).unwrap();
    let run_spec: Value = serde_json::from_slice(
        &std::fs::read(env.state_dir().join("vms/a/run/spec.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        run_spec["disk"],
        json!([format!(
            "{},serial=d1,format=raw",
            pool.join("data.img").display()
        )])
    );
    let used = c
        .call("GET", "/pools/default/volumes/data.img", None)
        .unwrap();
    assert_eq!(used["used_by"], json!(["a"]), "{used}");
    bad(
        c.call("DELETE", "/pools/default/volumes/data.img", None),
        409,
        "volume 'data.img' in pool 'default' is in use by VM 'a'",
    );
    // References that do not resolve are refused at create.
    bad(
        vm("b", json!(["vol:nosuch"])),
        422,
        "disk[0]: no volume 'nosuch' in pool 'default'",
    );
    bad(
        vm("b", json!(["vol:nopool/x"])),
        422,
        "no pool named 'nopool'",
    );
    bad(
        vm("b", json!(["vol:../x"])),
        422,
        "expected vol:NAME or vol:POOL/NAME",
    );
    bad(
        vm("b", json!(["relative.img"])),
        422,
        "disk[0]: relative.img is not an absolute path",
    );
    bad(
        vm("b", json!(["/nonexistent.img"])),
        422,
        "disk[0]: /nonexistent.img: no such file",
    );
    assert_eq!(names_of(&c.call("GET", "/vms", None).unwrap()), ["a"]);

    // A persistent overlay on a file outside any pool.
    let base = env.dir.join("base.img");
    std::fs::write(&base, vec![0x42u8; 2 << 20]).unwrap();
    let base_before = std::fs::read(&base).unwrap();
    let v = vm(
        "o",
        json!([format!("{},overlay,serial=o1", base.display())]),
    )
    .unwrap();
    let overlay = env.state_dir().join("vms/o/overlay-disk0.qcow2");
    assert_eq!(
        v["disks"][0]["overlay"].as_str().map(PathBuf::from),
        Some(overlay.clone()),
        "{v}"
    );
    let info = vireo_virtio::block::image::info(&overlay).unwrap();
    assert_eq!(
        (
            info.format.as_str(),
            info.virtual_size,
            info.backing_file.as_deref()
        ),
        ("qcow2", 2 << 20, base.to_str())
    );
    let ino = inode(&overlay);
    c.call("POST", "/vms/o/start", None).unwrap();
    let run_spec: Value = serde_json::from_slice(
        &std::fs::read(env.state_dir().join("vms/o/run/spec.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        run_spec["disk"],
        json!([format!("{},serial=o1,format=qcow2", overlay.display())])
    );
    c.call("POST", "/vms/o/stop", Some(&json!({"timeout_secs": 5})))
        .unwrap();
    c.call("POST", "/vms/o/start", None).unwrap();
    c.call("POST", "/vms/o/kill", None).unwrap();
    // The same file, not one made again.
    assert_eq!(inode(&overlay), ino);
    // Gone by hand: the start says so rather than make a fresh one.
    std::fs::rename(&overlay, env.dir.join("aside")).unwrap();
    bad(c.call("POST", "/vms/o/start", None), 422, "its overlay");
    std::fs::rename(env.dir.join("aside"), &overlay).unwrap();
    c.call("DELETE", "/vms/o", None).unwrap();
    assert!(!env.state_dir().join("vms/o").exists());
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base changed"
    );

    // An overlay on a volume, and one on an overlay volume: the chain is in use.
    post(
        &c,
        "/pools/default/volumes",
        json!({"name": "golden.qcow2", "size_bytes": 8 << 20}),
    )
    .unwrap();
    post(
        &c,
        "/pools/default/volumes/golden.qcow2/clone",
        json!({"name": "layer.qcow2", "overlay": true}),
    )
    .unwrap();
    vm("p", json!(["vol:layer.qcow2,overlay"])).unwrap();
    let overlay = env.state_dir().join("vms/p/overlay-disk0.qcow2");
    let chain = vireo_virtio::block::image::info(&overlay).unwrap();
    assert_eq!(
        chain
            .backing
            .as_ref()
            .and_then(|b| b.backing.as_ref())
            .map(|g| g.path.clone()),
        Some(pool.join("golden.qcow2"))
    );
    let golden = c
        .call("GET", "/pools/default/volumes/golden.qcow2", None)
        .unwrap();
    assert_eq!(golden["used_by"], json!(["p"]), "{golden}");
    bad(
        c.call("DELETE", "/pools/default/volumes/golden.qcow2", None),
        409,
        "in use by VM 'p'",
    );
    bad(
        c.call("DELETE", "/pools/default/volumes/layer.qcow2", None),
        409,
        "in use by VM 'p'",
    );
    // Overlays that cannot be: nothing is left of the VM.
    bad(
        vm(
            "q",
            json!(["vol:golden.qcow2,overlay", "vol:data.img,overlay,readonly"]),
        ),
        422,
        "disk[1]: overlay and readonly together",
    );
    bad(
        vm("q", json!(["vol:golden.qcow2,overlay,format=raw"])),
        422,
        "format=raw, but",
    );
    assert!(!env.state_dir().join("vms/q/overlay-disk0.qcow2").exists());
    bad(c.call("GET", "/vms/q", None), 404, "'q'");

    // A disk can name anything; describing it never opens a FIFO (which would wait for a
    // writer, holding the storage lock).
    let fifo = env.dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    bad(
        vm("q", json!([format!("{},overlay", fifo.display())])),
        422,
        "is not a file or a block device",
    );
    vm("fifo", json!([fifo])).unwrap();
    c.call("GET", "/pools/default/volumes", None).unwrap();
    c.call("DELETE", "/vms/fifo", None).unwrap();

    // A pool whose volume a VM uses stays.
    let fast = env.dir.join("fast");
    post(&c, "/pools", json!({"name": "fast", "path": fast})).unwrap();
    post(
        &c,
        "/pools/fast/volumes",
        json!({"name": "f.img", "size_bytes": 1 << 20, "format": "raw"}),
    )
    .unwrap();
    vm("f", json!(["vol:fast/f.img"])).unwrap();
    bad(
        c.call("DELETE", "/pools/fast?force=true", None),
        409,
        "pool 'fast' is in use by VM 'f'",
    );
    // Once the VMs go, so may their volumes and pools.
    for n in ["a", "p", "f"] {
        c.call("DELETE", &format!("/vms/{n}?force=true"), None)
            .unwrap();
    }
    for v in ["data.img", "layer.qcow2", "golden.qcow2"] {
        c.call("DELETE", &format!("/pools/default/volumes/{v}"), None)
            .unwrap();
    }
    c.call("DELETE", "/pools/fast/volumes/f.img", None).unwrap();
    c.call("DELETE", "/pools/fast", None).unwrap();
    assert!(!fast.exists());
}

// ---- Snapshots, restores, clones (crates/daemon/src/snapshots.rs), on the fake VMM's fake
// snapshots: real directories and disk copies, not the real state format.

fn snap_spec(env: &Env, cmdline: &str) -> Value {
    let disk = env.dir.join("d.img");
    if !disk.exists() {
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        std::fs::write(env.dir.join("r.img"), vec![1u8; 4096]).unwrap();
    }
    json!({
        "kernel": env.dir.join("vmlinux"), "cmdline": cmdline, "memory": "64M",
        "disk": [format!("{},overlay,serial=s0", disk.display()),
                 format!("{},readonly", env.dir.join("r.img").display())],
        "net": ["user", "user"],
        "vsock": format!("cid=3,uds={}", env.dir.join("web.vsock").display()),
    })
}

fn run_spec(env: &Env, vm: &str) -> Value {
    let p = env.state_dir().join("vms").join(vm).join("run/spec.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn snapshots_restore_and_removal() {
    let mut env = Env::new("snap");
    env.start(&[]);
    let c = env.client();
    c.call(
        "POST",
        "/vms",
        Some(&json!({"name": "web", "spec": snap_spec(&env, "")})),
    )
    .unwrap();
    // Only of a running or paused VM; 404 for none; 400 for a bad name.
    let (s, code, m) = api_err(c.call("POST", "/vms/web/snapshots", None));
    assert_eq!((s, code.as_str()), (409, "conflict"), "{m}");
    assert!(m.contains("defined"), "{m}");
    assert_eq!(api_err(c.call("POST", "/vms/nope/snapshots", None)).0, 404);
    c.call("POST", "/vms/web/start", None).unwrap();
    let (s, _, m) = api_err(c.call("POST", "/vms/web/snapshots", Some(&json!({"name": "-x"}))));
    assert_eq!(s, 400, "{m}");
    // A diff needs an earlier snapshot of the VM.
    let (s, _, m) = api_err(c.call("POST", "/vms/web/snapshots", Some(&json!({"diff": true}))));
    assert_eq!(s, 409, "{m}");
    assert!(m.contains("full snapshot first"), "{m}");

    let s1 = c.call("POST", "/vms/web/snapshots", None).unwrap();
    assert_eq!(s1["name"], "web-1");
    assert_eq!(s1["kind"], "full");
    assert_eq!(s1["vm"], "web");
    assert!(s1["paused_ms"].as_f64().is_some());
    let dir = PathBuf::from(s1["dir"].as_str().unwrap());
    assert_eq!(dir, env.state_dir().join("snapshots/web-1"));
    // The writable disk (the VM's overlay) was copied; the read-only one is referenced.
    assert!(dir.join("disk-disk0.qcow2").is_file());
    assert!(!dir.join("disk-disk1.raw").exists());
    let (s, _, m) = api_err(c.call(
        "POST",
        "/vms/web/snapshots",
        Some(&json!({"name": "web-1"})),
    ));
    assert_eq!(s, 409, "{m}");
    let d1 = c
        .call(
            "POST",
            "/vms/web/snapshots",
            Some(&json!({"name": "d1", "diff": true})),
        )
        .unwrap();
    assert_eq!(
        (d1["kind"].as_str(), d1["parent"].as_str()),
        (Some("diff"), Some("web-1"))
    );

    let names = |path: &str| -> Vec<String> {
        c.call("GET", path, None)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("/snapshots"), ["web-1", "d1"]);
    assert_eq!(names("/snapshots?vm=web"), ["web-1", "d1"]);
    assert!(names("/snapshots?vm=other").is_empty());
    assert_eq!(
        c.call("GET", "/snapshots/d1", None).unwrap()["parent"],
        "web-1"
    );
    assert_eq!(api_err(c.call("GET", "/snapshots/nope", None)).0, 404);
    assert_eq!(api_err(c.call("DELETE", "/snapshots/nope", None)).0, 404);
    let (s, _, m) = api_err(c.call("DELETE", "/snapshots/web-1", None));
    assert_eq!(s, 409);
    assert!(m.contains("'d1'"), "{m}");

    // Restore: the snapshot's VM exists, so a name is needed.
    let (s, _, m) = api_err(c.call("POST", "/snapshots/web-1/restore", None));
    assert_eq!(s, 409, "{m}");
    let (s, _, m) = api_err(c.call(
        "POST",
        "/snapshots/web-1/restore",
        Some(&json!({"name": "bad name"})),
    ));
    assert_eq!(s, 400, "{m}");
    assert_eq!(
        api_err(c.call("POST", "/snapshots/nope/restore", None)).0,
        404
    );
    let (s, _, m) = api_err(c.call(
        "POST",
        "/snapshots/web-1/restore",
        Some(&json!({"name": "web"})),
    ));
    assert_eq!(s, 409, "{m}");
    let r = c
        .call(
            "POST",
            "/snapshots/web-1/restore",
            Some(&json!({"name": "web2", "paused": true})),
        )
        .unwrap();
    assert_eq!(r["state"], "paused");
    assert_eq!(r["snapshot"], "web-1");
    let vm2 = env.state_dir().join("vms/web2");
    let given: Value =
        serde_json::from_slice(&std::fs::read(vm2.join("run/restored.json")).unwrap()).unwrap();
    assert_eq!(given["restore"], json!(dir));
    assert_eq!(given["paused"], true);
    // Its definition: an overlay on the copy; the VMM got the VM's overlay in its place.
    let copy = dir.join("disk-disk0.qcow2");
    assert_eq!(
        r["spec"]["disk"][0],
        format!("{},overlay,serial=s0", copy.display())
    );
    let overlay = vm2.join("overlay-disk0.qcow2");
    let info = vireo_virtio::block::image::info(&overlay).unwrap();
    assert_eq!(
        info.backing.as_ref().map(|b| b.path.clone()),
        Some(copy.clone())
    );
    let run = run_spec(&env, "web2");
    assert_eq!(
        run["disk"][0],
        format!("{},serial=s0,format=qcow2", overlay.display())
    );
    assert_eq!(run["disk"][1], snap_spec(&env, "")["disk"][1]);
    // Its own vsock socket, the same identity otherwise.
    assert_eq!(
        run["vsock"],
        format!("cid=3,uds={}", vm2.join("vsock.sock").display())
    );
    assert_eq!(run["net"], json!(["user", "user"]));

    c.call("DELETE", "/snapshots/d1", None).unwrap();
    let (s, _, m) = api_err(c.call("DELETE", "/snapshots/web-1", None));
    assert_eq!(s, 409);
    assert!(m.contains("'web2'"), "{m}");
    // A plain start after a stop boots from the overlays.
    c.call("POST", "/vms/web2/stop", None).unwrap();
    c.call("POST", "/vms/web2/start", None).unwrap();
    assert!(!vm2.join("run/restored.json").exists());
    assert_eq!(run_spec(&env, "web2")["disk"][0], run["disk"][0]);
    assert!(events(&c, "web").iter().any(|e| e.0 == "snapshot_created"));
    assert!(events(&c, "web2")
        .iter()
        .any(|e| e == &("restored".into(), "from snapshot web-1".into())));

    c.call("DELETE", "/vms/web2?force=true", None).unwrap();
    c.call("DELETE", "/snapshots/web-1", None).unwrap();
    assert!(!dir.exists());
    assert!(events(&c, "web")
        .iter()
        .any(|e| e == &("snapshot_deleted".into(), "web-1".into())));
    assert!(names("/snapshots").is_empty());
}

#[test]
fn failed_snapshots_and_restores_leave_nothing() {
    let mut env = Env::new("snapfail");
    env.start(&[]);
    let c = env.client();
    c.call(
        "POST",
        "/vms",
        Some(&json!({"name": "a", "spec": snap_spec(&env, "fake.snapshot_fail")})),
    )
    .unwrap();
    c.call("POST", "/vms/a/start", None).unwrap();
    let (s, code, m) = api_err(c.call("POST", "/vms/a/snapshots", None));
    assert_eq!((s, code.as_str()), (502, "vmm_error"), "{m}");
    let left: Vec<_> = std::fs::read_dir(env.state_dir().join("snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(c
        .call("GET", "/snapshots", None)
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());

    c.call(
        "POST",
        "/vms",
        Some(&json!({"name": "b", "spec": snap_spec(&env, "")})),
    )
    .unwrap();
    c.call("POST", "/vms/b/start", None).unwrap();
    let s = c
        .call("POST", "/vms/b/snapshots", Some(&json!({"name": "s"})))
        .unwrap();
    // A snapshot the VMM cannot load: the restore fails and its VM goes again.
    std::fs::remove_file(PathBuf::from(s["dir"].as_str().unwrap()).join("state.vst")).unwrap();
    let (st, code, m) =
        api_err(c.call("POST", "/snapshots/s/restore", Some(&json!({"name": "b2"}))));
    assert_eq!((st, code.as_str()), (422, "start_failed"), "{m}");
    assert!(m.contains("no snapshot there"), "{m}");
    assert_eq!(api_err(c.call("GET", "/vms/b2", None)).0, 404);
    assert!(!env.state_dir().join("vms/b2").exists());
    assert!(c.call("GET", "/snapshots/s", None).unwrap()["vms"]
        .as_array()
        .unwrap()
        .is_empty());
    c.call("DELETE", "/snapshots/s", None).unwrap();
}

#[test]
fn clones_have_their_own_identity() {
    let mut env = Env::new("clone");
    env.start(&[]);
    let c = env.client();
    c.call(
        "POST",
        "/vms",
        Some(&json!({"name": "web", "spec": snap_spec(&env, "")})),
    )
    .unwrap();
    c.call("POST", "/vms/web/start", None).unwrap();
    c.call("POST", "/vms/web/snapshots", Some(&json!({"name": "base"})))
        .unwrap();
    for (count, status) in [(0, 400), (65, 400)] {
        let (s, _, m) = api_err(c.call(
            "POST",
            "/snapshots/base/clone",
            Some(&json!({"count": count})),
        ));
        assert_eq!(s, status, "{m}");
    }
    assert_eq!(
        api_err(c.call("POST", "/snapshots/base/clone", None)).0,
        400
    );
    assert_eq!(
        api_err(c.call("POST", "/snapshots/nope/clone", Some(&json!({"count": 1})))).0,
        404
    );
    let r = c
        .call(
            "POST",
            "/snapshots/base/clone",
            Some(&json!({"count": 3, "prefix": "c"})),
        )
        .unwrap();
    assert!(r["total_ms"].as_f64().unwrap() > 0.0);
    let vms = r["vms"].as_array().unwrap();
    assert_eq!(
        vms.iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["c-1", "c-2", "c-3"]
    );
    let mut macs = std::collections::HashSet::new();
    let mut cids = std::collections::HashSet::new();
    for v in vms {
        let name = v["name"].as_str().unwrap();
        assert_eq!(v["state"], "running");
        assert_eq!(v["snapshot"], "base");
        let run = run_spec(&env, name);
        for n in run["net"].as_array().unwrap() {
            let mac = n
                .as_str()
                .unwrap()
                .split(',')
                .find_map(|p| p.strip_prefix("mac="))
                .unwrap();
            let first = u8::from_str_radix(&mac[..2], 16).unwrap();
            assert_eq!(first & 3, 2, "{mac}: unicast, locally administered");
            assert!(macs.insert(mac.to_string()), "{mac} twice");
        }
        let vsock = run["vsock"].as_str().unwrap();
        let cid: u64 = vsock
            .split(',')
            .find_map(|p| p.strip_prefix("cid="))
            .unwrap()
            .parse()
            .unwrap();
        // Not the source's 3, and no two alike.
        assert!(cid > 3, "{vsock}");
        assert!(cids.insert(cid));
        assert!(
            vsock.ends_with(&format!("vms/{name}/vsock.sock")),
            "{vsock}"
        );
        assert!(env
            .state_dir()
            .join("vms")
            .join(name)
            .join("overlay-disk0.qcow2")
            .is_file());
        assert!(events(&c, name).iter().any(|e| e.0 == "cloned"));
    }
    // The same names again: 409, and nothing made.
    let (s, _, m) = api_err(c.call(
        "POST",
        "/snapshots/base/clone",
        Some(&json!({"count": 4, "prefix": "c"})),
    ));
    assert_eq!(s, 409, "{m}");
    assert_eq!(api_err(c.call("GET", "/vms/c-4", None)).0, 404);
    let (s, _, m) = api_err(c.call("DELETE", "/snapshots/base", None));
    assert_eq!(s, 409);
    assert!(m.contains("'c-1', 'c-2', 'c-3'"), "{m}");

    // Clones of a VM: a full snapshot of it first.
    let r = c
        .call(
            "POST",
            "/vms/web/clone",
            Some(&json!({"count": 2, "prefix": "w"})),
        )
        .unwrap();
    assert_eq!(r["snapshot"], "web.clone-1");
    assert_eq!(r["vms"].as_array().unwrap().len(), 2);
    let cid = |vm: &str| -> u64 {
        run_spec(&env, vm)["vsock"]
            .as_str()
            .unwrap()
            .split(',')
            .find_map(|p| p.strip_prefix("cid="))
            .unwrap()
            .parse()
            .unwrap()
    };
    let all: std::collections::HashSet<u64> = ["web", "c-1", "c-2", "c-3", "w-1", "w-2"]
        .iter()
        .map(|v| cid(v))
        .collect();
    assert_eq!(all.len(), 6, "every VM its own CID: {all:?}");
}

/// Each thread of process `pid`: its name and its seccomp mode (0 none, 2 filtered).
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        v.push((field("Name:"), field("Seccomp:")));
    }
    v
}

/// Every daemon thread runs under the daemon's filter but its VMM launcher, which stays
/// unfiltered because a filter passes to what its thread starts: the VMM it started carries
/// none of the daemon's.
#[test]
fn the_daemons_threads_are_filtered_and_its_vmms_inherit_nothing() {
    let mut env = Env::new("seccomp");
    env.start(&[]);
    let c = env.client();
    env.create(&c, "a", "");
    let v = c
        .call("POST", "/vms/a/start", Some(&json!({"wait_ready": true})))
        .unwrap();
    assert_eq!(v["state"], "running", "{v}");
    let threads = seccomp_modes(env.daemon.as_ref().unwrap().id());
    let (launcher, rest): (Vec<_>, Vec<_>) =
        threads.iter().partition(|(n, _)| n == "vireod-launcher");
    assert_eq!(launcher.len(), 1, "{threads:?}");
    assert_eq!(launcher[0].1, "0", "{threads:?}");
    // The main thread and the runtime's two workers at least, all filtered.
    assert!(rest.len() >= 3, "{threads:?}");
    assert!(
        rest.iter().all(|(n, m)| n == "vireod" && m == "2"),
        "{threads:?}"
    );
    let vmm = seccomp_modes(env.vmm_pid("a") as u32);
    assert!(vmm.iter().all(|(_, m)| m == "0"), "{vmm:?}");
    // And the exit of a VMM it started is still seen (the reaper waits on a pidfd).
    let v = c
        .call("POST", "/vms/a/stop", Some(&json!({"timeout_secs": 5})))
        .unwrap();
    assert_eq!(v["state"], "defined", "{v}");
    assert_eq!(v["last_exit"]["status"], 0, "{v}");
}

/// A daemon thread that calls outside the list: the daemon dies by SIGSYS (kill, the
/// default), or is told and goes on (log); `--seccomp off` says it filters nothing.
#[test]
fn a_daemon_call_outside_its_list_kills_it_or_is_logged() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new("selftest");
    let run = |mode: &str, selftest: bool| {
        let mut c = env.daemon_cmd(&["--seccomp", mode]);
        if selftest {
            c.env("VIREO_SECCOMP_SELFTEST", "daemon");
        }
        let mut child = c
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let listening = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            if std::os::unix::net::UnixStream::connect(&env.socket).is_ok() {
                break true;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon neither listened nor exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if listening {
            // SAFETY: kill(2) on our own child, which still runs.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let st = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (listening, st, err)
    };
    let (listening, st, err) = run("kill", true);
    assert!(!listening, "{err}");
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st}: {err}");
    let (listening, st, err) = run("log", true);
    assert!(listening && st.success(), "{st}: {err}");
    let nr = libc::SYS_getppid.to_string();
    assert!(
        err.contains(&format!("system call {nr} is outside")),
        "{err}"
    );
    let (listening, st, err) = run("off", false);
    assert!(listening && st.success(), "{st}: {err}");
    assert!(err.contains("--seccomp off"), "{err}");
}
