//! Helpers shared by the end-to-end test files (each file uses a subset).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "debian-riscv64";
/// vireo's own errors (usage included) exit with this, as `docker run`'s do.
pub const VIREO_ERROR: i32 = 125;
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub fn vireo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vireo"))
}

pub fn require_image() {
    require_pulled(IMAGE);
}

/// Fails the test, saying how to fix it, unless the image `name` is pulled.
pub fn require_pulled(name: &str) {
    let out = vireo().args(["image", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    // The whole first column: one image's name may begin another's.
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(name)),
        "the {name} image is not pulled: run `vireo image pull {name}` (scripts/setup.sh does)"
    );
}

pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs vireo with a deadline; a hang is a failure, not a stuck test.
pub fn run(args: &[&str]) -> Run {
    run_in(None, args)
}

/// [`run`] in the directory `cwd` (the test's own when `None`).
pub fn run_in(cwd: Option<&std::path::Path>, args: &[&str]) -> Run {
    let mut cmd = vireo();
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.args(args);
    let r = run_raw(cmd, None);
    Run {
        status: r.status,
        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
    }
}

/// What a process printed, as bytes.
pub struct RawRun {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` to its end within [`BOOT_TIMEOUT`], with `input` on its stdin (none: /dev/null).
pub fn run_raw(mut cmd: Command, input: Option<Vec<u8>>) -> RawRun {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let feeder = input.map(|data| {
        let mut stdin = child.stdin.take().unwrap();
        // A command that stops reading early closes the pipe: that is its business.
        std::thread::spawn(move || drop(stdin.write_all(&data)))
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait(&mut child, BOOT_TIMEOUT, &what);
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    RawRun {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits for `child` to exit within `limit`; a hang kills it and fails the test.
pub fn wait(child: &mut std::process::Child, limit: Duration, what: &str) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic bytes that no compressor or pattern check mistakes for structure.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.max(1);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn openpty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors into the given integers; the rest may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty failed");
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) }
}

/// Starts `vireo ARGS` with a new pseudo-terminal as its standard streams, `size` (rows,
/// columns) set first when given; the terminal's master side as a [`Term`].
pub fn vireo_on_pty(args: &[&str], size: Option<(u16, u16)>) -> (std::process::Child, Term) {
    let (master, slave) = openpty();
    if let Some((rows, cols)) = size {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on a descriptor we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let stdio = || Stdio::from(slave.try_clone().unwrap());
    let child = vireo()
        .args(args)
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio())
        .spawn()
        .unwrap();
    drop(slave);
    (child, Term::new(master))
}

pub struct Term {
    pub master: std::fs::File,
    pub seen: String,
    /// Where the last [`Term::expect`] match ended in `seen`.
    matched: usize,
}

impl Term {
    pub fn new(master: std::fs::File) -> Self {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Term {
            master,
            seen: String::new(),
            matched: 0,
        }
    }

    pub fn pump(&mut self, wait: Duration) {
        let mut buf = [0u8; 4096];
        match self.master.read(&mut buf) {
            Ok(n) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => std::thread::sleep(wait),
        }
    }

    /// Waits for `what` after the end of the last match (output that came before the call
    /// but after that match counts: a prompt can arrive in the same read as the line
    /// before it), and moves past it.
    pub fn expect(&mut self, what: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(at) = self.seen[self.matched..].find(what) {
                self.matched += at + what.len();
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "did not see {what:?} within {timeout:?}; terminal so far:\n{}",
                self.seen
            );
            self.pump(Duration::from_millis(20));
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }
}

/// A vireo left running in the background (the first of two VMs), killed and reaped when
/// dropped: the test never waits for it, so it cannot hang the test, and a failing test's
/// unwinding stops it too.
pub struct Background {
    child: std::process::Child,
}

impl Background {
    pub fn start(args: &[&str]) -> Background {
        let child = vireo()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Background { child }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no destructor, no cleanup of vireo's own.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until some process holds a lock on the file `path` (as /proc/locks lists it).
pub fn wait_for_lock(path: &std::path::Path, timeout: Duration) -> bool {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    let (dev, ino) = (m.dev(), m.ino());
    // /proc/locks names the file MAJOR:MINOR:INODE, the numbers in hex, hex, decimal.
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let needle = format!("{major:02x}:{minor:02x}:{ino} ");
    let start = Instant::now();
    while start.elapsed() < timeout {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        if locks.lines().any(|l| l.contains(&needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `vireo vmm` process on a run directory that holds its `spec.json`, output in
/// `DIR/vmm.log`; killed when dropped.
pub struct Vmm {
    pub child: std::process::Child,
    pub dir: std::path::PathBuf,
}

impl Vmm {
    /// Starts `vireo vmm --name t --dir DIR EXTRA...`. Its diff snapshots check their dirty
    /// log against a comparison of contents (`VIREO_SNAPSHOT_VERIFY_DIRTY`).
    pub fn spawn(dir: &std::path::Path, extra: &[&str]) -> Vmm {
        let log = std::fs::File::create(dir.join("vmm.log")).unwrap();
        let child = vireo()
            .env("VIREO_SNAPSHOT_VERIFY_DIRTY", "1")
            .args(["vmm", "--name", "t", "--dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Vmm {
            child,
            dir: dir.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vmm.log")).unwrap_or_default()
    }

    /// Waits until the control socket answers; fails with the log if the VMM exits first.
    pub fn wait_socket(&mut self, limit: Duration) {
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.dir.join("control.sock")).is_err() {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("the VMM exited ({s}) before serving: {}", self.log());
            }
            assert!(t0.elapsed() < limit, "no control.sock within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit code, waiting at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < limit,
                "the VMM in {} did not exit within {limit:?}: {}",
                self.dir.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A host tool from e2fsprogs, found on PATH or in the sbin directories.
pub fn tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is missing: apt-get install e2fsprogs (scripts/setup.sh does)")
        })
}

/// A sparse file of `size` bytes holding an ext4 file system, filled from `from` if given.
pub fn mkfs_ext4(img: &std::path::Path, size: u64, from: Option<&std::path::Path>) {
    std::fs::File::create(img).unwrap().set_len(size).unwrap();
    let mut c = Command::new(tool("mkfs.ext4"));
    // Initialise everything now, so no lazy init writes behind the tests' backs.
    c.args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]);
    if let Some(d) = from {
        c.arg("-d").arg(d);
    }
    let out = c.arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds tests/guest/vsock_tool.c for the guest.
pub fn compile_vsock_tool(out: &std::path::Path) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/vsock_tool.c");
    let r = Command::new("riscv64-linux-gnu-gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(out)
        .arg(&src)
        .output();
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "riscv64-linux-gnu-gcc is missing: apt-get install gcc-riscv64-linux-gnu (scripts/setup.sh does)"
        ),
        Err(e) => panic!("riscv64-linux-gnu-gcc: {e}"),
        Ok(o) => assert!(
            o.status.success(),
            "compiling {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// A fresh directory under the temporary directory, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        TempDir(fresh_dir(tag))
    }
}

/// A new directory under the temporary directory, unique to this process and moment.
pub fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vireo-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
