//! End to end: VMMs in their jails (crates/jail/src/jail.rs, crates/vmm/src/jailing.rs). A
//! jailed guest boots and uses its disk, user-mode network and vsock, while the jailed process
//! — looked at from outside, through /proc — sees none of the host's files, runs as an
//! unprivileged user with no capability and no new privileges, in namespaces of its own, with
//! its emulator thread under seccomp. Without root the jail is a user namespace. Bad requests
//! are refused before anything starts, and leave nothing behind.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The uid/gid the tests jail as when they run as root (`nobody` on Debian).
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch directory others may enter (the jail's user reaches files in it).
fn scratch(tag: &str) -> TempDir {
    let d = TempDir::new(&format!("jail-{tag}"));
    set_mode(&d, 0o755);
    d
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives `p` to the jail's user (as root; without root it is the caller's already).
fn give(p: &Path) {
    if is_root() {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

/// The fields of /proc/PID/status (or a task's).
fn status(path: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The child of `keeper` (the jailed VMM), once it runs its emulator thread; `None` if the
/// keeper exits first.
fn jailed_child(keeper: &mut std::process::Child, limit: Duration) -> Option<u32> {
    let t0 = Instant::now();
    let keeper_pid = keeper.id();
    loop {
        if keeper.try_wait().unwrap().is_some() {
            return None;
        }
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let st = status(&e.path().join("status"));
            if st.get("PPid").map(String::as_str) == Some(&keeper_pid.to_string())
                && emu_thread(pid).is_some()
            {
                return Some(pid);
            }
        }
        assert!(t0.elapsed() < limit, "no jailed VMM under {keeper_pid}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of `pid`'s `vireo-emu` thread.
fn emu_thread(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .map(|t| t.path())
        .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "vireo-emu"))
        .map(|t| t.join("status"))
}

/// What /proc says of the jailed process `pid`, checked while it runs.
fn check_confined(pid: u32, expect_uid: u32) {
    let root: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for host in ["etc", "usr", "bin", "proc", "sys", "home", "var"] {
        assert!(
            !root.contains(host),
            "the host's /{host} is visible in the jail: {root:?}"
        );
    }
    assert!(root.contains("tmp"), "{root:?}");
    let st = status(Path::new(&format!("/proc/{pid}/status")));
    let uid = st["Uid"].split_whitespace().next().unwrap().to_string();
    assert_ne!(uid, "0", "runs as root: {st:?}");
    assert_eq!(uid, expect_uid.to_string(), "{st:?}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "{cap} holds capabilities");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    let emu = status(&emu_thread(pid).expect("an emulator thread"));
    assert_eq!(
        emu["Seccomp"], "2",
        "the emulator thread runs under its filter"
    );
    for ns in ["mnt", "net", "pid", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the jailed VMM shares the {ns} namespace");
    }
}

/// A host HTTP server answering every GET with `body`, for as long as the test runs.
fn http_server(body: String) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A host echo server on the vsock path `PATH_PORT`, open to the jail's user.
fn vsock_echo(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    set_mode(path, 0o666);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = vec![0u8; 65536];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
}

/// Runs `vireo ARGS` (optionally as `nobody` through setpriv) and, while it runs, checks the
/// jailed process; returns (exit code, stdout, stderr).
fn run_jailed(cmd: Command, expect_uid: u32) -> (i32, String, String) {
    let mut cmd = cmd;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let mut err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // Under setpriv the keeper is vireo itself (setpriv execs it).
    let jailed = jailed_child(&mut child, BOOT_TIMEOUT);
    if let Some(pid) = jailed {
        check_confined(pid, expect_uid);
    }
    let code = wait(&mut child, BOOT_TIMEOUT, "the jailed VM");
    let (out, err) = (reader.join().unwrap(), err_reader.join().unwrap());
    assert!(
        jailed.is_some(),
        "vireo exited ({code}) before its jailed VMM ran:\n{out}\n{err}"
    );
    (code, out, err)
}

#[test]
fn a_jailed_guest_uses_its_disk_network_and_vsock_and_its_vmm_sees_nothing_of_the_host() {
    require_image();
    let dir = scratch("full");
    let tools = dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    compile_vsock_tool(&tools.join("vsock_tool"));
    let tool_img = dir.join("tools.img");
    mkfs_ext4(&tool_img, 16 << 20, Some(&tools));
    set_mode(&tool_img, 0o644);
    let data = dir.join("data.raw");
    std::fs::File::create(&data)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    give(&data);
    let vs = dir.join("vs");
    std::fs::create_dir_all(&vs).unwrap();
    give(&vs);
    let uds = vs.join("v.sock");
    vsock_echo(&PathBuf::from(format!("{}_5000", uds.display())));
    let token = format!("jailed-{}", std::process::id());
    let port = http_server(format!("{token}-over-http\n"));
    let root = dir.join("root");

    let mut cmd = vireo();
    cmd.arg("run").args(["--image", IMAGE, "--jail"]).arg(&root);
    if is_root() {
        cmd.args(["--jail-user", "nobody"]);
    }
    cmd.args([
        "--disk",
        &format!("{},readonly", tool_img.display()),
        "--disk",
        &format!("{},format=raw", data.display()),
        "--net",
        "user",
        "--vsock",
        &format!("cid=3,uds={}", uds.display()),
        "--",
        "sh",
        "-c",
        &format!(
            "mount -o ro /dev/vda /mnt || exit 10
             echo {token}-on-disk | dd of=/dev/vdb conv=fsync 2>/dev/null; echo disk=$?
             gw=$(ip route | awk '/^default/ {{print $3}}')
             wget -q -O - http://$gw:{port}/; echo http=$?
             echo {token}-over-vsock > /tmp/v
             /mnt/vsock_tool connect 5000 < /tmp/v; echo vsock=$?
             sleep 2"
        ),
    ]);
    let (code, out, err) = run_jailed(cmd, if is_root() { NOBODY } else { uid() });
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("disk=0\n"), "{out}");
    assert!(
        out.contains(&format!("{token}-over-http\nhttp=0\n")),
        "{out}\n{err}"
    );
    assert!(
        out.contains(&format!("{token}-over-vsock\n")),
        "{out}\n{err}"
    );
    assert!(out.contains("vsock=0\n"), "{out}\n{err}");
    let written = std::fs::read(&data).unwrap();
    assert!(
        written.starts_with(format!("{token}-on-disk\n").as_bytes()),
        "the guest's write is not on the host's disk"
    );
    assert!(!root.exists(), "the jail's directory is left behind");
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// A copy of the pulled image that `nobody` can read, as VIREO_CACHE_DIR.
fn image_copy(dir: &Path) -> PathBuf {
    let cache = dir.join("cache");
    let src = image_dir();
    let dst = cache.join("vireo/images").join(IMAGE);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    for d in [
        cache.clone(),
        cache.join("vireo"),
        cache.join("vireo/images"),
        dst.clone(),
    ] {
        set_mode(&d, 0o755);
    }
    cache
}

/// Where the pulled image is (the cache vireo itself uses).
fn image_dir() -> PathBuf {
    let base = std::env::var_os("VIREO_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    base.join("vireo/images").join(IMAGE)
}

#[test]
fn without_root_the_jail_is_a_user_namespace() {
    require_image();
    let dir = scratch("userns");
    let cache = image_copy(&dir);
    let parent = dir.join("jails");
    std::fs::create_dir_all(&parent).unwrap();
    give(&parent);
    let root = parent.join("vm");
    let mut cmd = if is_root() {
        // As a user without any privilege: setpriv execs vireo, which is then the keeper.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_vireo"));
        c
    } else {
        vireo()
    };
    cmd.env("VIREO_CACHE_DIR", &cache)
        .current_dir(&*dir)
        .arg("run")
        .args(["--image", IMAGE, "--jail"])
        .arg(&root)
        .args(["--", "sh", "-c", "echo in-a-user-namespace; sleep 2"]);
    let (code, out, err) = run_jailed(cmd, if is_root() { NOBODY } else { uid() });
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("in-a-user-namespace\n"), "{out}");
    assert!(!root.exists(), "the jail's directory is left behind");
}

/// `vireo run --image IMAGE --jail ROOT EXTRA... -- true`, which must be refused.
fn refused_jail(root: &Path, extra: &[&str]) -> String {
    let mut args = vec!["run", "--image", IMAGE, "--jail", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "true"]);
    refused(&args)
}

fn refused(args: &[&str]) -> String {
    let r = run(args);
    assert_eq!(r.status, VIREO_ERROR, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    r.stderr
}

#[test]
fn bad_jail_requests_are_refused_before_the_vm_starts_and_leave_nothing() {
    require_image();
    let dir = scratch("bad");
    // A directory with something in it is not a jail's to fill (or empty).
    let full = dir.join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("precious"), b"mine").unwrap();
    let e = refused_jail(&full, &[]);
    assert!(
        e.contains("exists and is not empty") && e.contains(full.to_str().unwrap()),
        "{e}"
    );
    assert_eq!(std::fs::read(full.join("precious")).unwrap(), b"mine");

    let root = dir.join("root");
    if is_root() {
        // A user the host does not have.
        let e = refused_jail(&root, &["--jail-user", "4000000123"]);
        assert!(
            e.contains("4000000123") && e.contains("no such user"),
            "{e}"
        );
        let e = refused_jail(&root, &["--jail-user", "root"]);
        assert!(e.contains("must not be root"), "{e}");
        // A disk the jail's user may not write.
        let disk = dir.join("root-only.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        set_mode(&disk, 0o644);
        let e = refused_jail(
            &root,
            &["--disk", &format!("{},format=raw", disk.display())],
        );
        assert!(
            e.contains(disk.to_str().unwrap())
                && e.contains("not readable and writable by the jail's user"),
            "{e}"
        );
        assert!(!root.exists(), "a refused jail left {}", root.display());
    }
    // A vsock socket in / cannot have its directory shown.
    let e = refused_jail(&root, &["--vsock", "cid=3,uds=/v.sock"]);
    assert!(
        e.contains("uds=/v.sock") && e.contains("directory of its own"),
        "{e}"
    );
    // The jail inside what it shows.
    let inner = dir.join("vs");
    std::fs::create_dir_all(&inner).unwrap();
    let e = refused_jail(
        &inner.join("root"),
        &[
            "--vsock",
            &format!("cid=3,uds={}", inner.join("v.sock").display()),
        ],
    );
    assert!(e.contains("one holds the other"), "{e}");
    assert!(!root.exists() && !inner.join("root").exists());
}

#[test]
fn a_vmm_whose_cgroup_or_jail_user_cannot_be_had_does_not_start_and_leaves_nothing() {
    require_image();
    let dir = scratch("cgroup");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("spec.json"),
        serde_json::json!({"image": IMAGE, "memory": "256M"}).to_string(),
    )
    .unwrap();
    let root = dir.join("root");
    // `vireo vmm FLAGS...` must exit with the error code, saying why in exit.json, with no
    // jail made.
    let refused = |flags: &[&str]| -> String {
        let _ = std::fs::remove_file(run.join("exit.json"));
        let mut args = vec!["--jail", root.to_str().unwrap()];
        args.extend_from_slice(flags);
        let mut vmm = Vmm::spawn(&run, &args);
        assert_eq!(
            vmm.wait(Duration::from_secs(60)),
            VIREO_ERROR,
            "{}",
            vmm.log()
        );
        assert!(
            !root.exists(),
            "the jail was made for a VMM that did not start"
        );
        std::fs::read_to_string(run.join("exit.json")).unwrap()
    };
    // A parent that is a file of the hierarchy: nothing can be made under it.
    let exit = refused(&["--cgroup-parent", "cgroup.procs"]);
    assert!(exit.contains("cannot put the VMM in its cgroup"), "{exit}");
    // A jail user the host does not have: refused the same way, before anything starts.
    let exit = refused(&["--jail-user", "4000000123"]);
    assert!(
        exit.contains("4000000123") && exit.contains("no such user"),
        "{exit}"
    );
}
