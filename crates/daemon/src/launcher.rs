//! The daemon's one thread that starts VMM processes.
//!
//! Every other daemon thread runs under the daemon's seccomp filter
//! (`vireo_jail::seccomp::confine_daemon`), which has no `fork` or `execve`: a filter passes
//! to every thread and process its thread creates, and a VMM must start with none but its
//! own. So the daemon starts this thread first, before it confines its main thread (and so
//! every thread after it), and asks it for each VMM.
//!
//! What it will run is fixed when it starts: the daemon's VMM program as `PROGRAM vmm ARGS`,
//! in a session of its own (no terminal signal reaches it, and it outlives the daemon), its
//! stdin empty, its output to the files given. A confined thread that was made to misbehave
//! can so start a VMM with arguments of its choice, and nothing else.
//!
//! Protocol (in-process): a request is the VMM's arguments after `vmm` and its stdout and
//! stderr; the answer is the child's pid and a pidfd for it (pidfd_open), which the daemon's
//! runtime waits on to reap the child (`wait4`) and read how it ended.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};

/// A VMM the launcher started.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
    /// Readable when the process has ended (and is waiting to be reaped).
    pub pidfd: OwnedFd,
}

struct Request {
    args: Vec<OsString>,
    stdout: File,
    stderr: File,
    reply: mpsc::Sender<Result<Launched, String>>,
}

struct Launcher {
    program: PathBuf,
    tx: Mutex<mpsc::Sender<Request>>,
}

static LAUNCHER: OnceLock<Launcher> = OnceLock::new();

/// Whether the calling thread runs under a seccomp filter (PR_GET_SECCOMP answers 2).
fn filtered() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no further arguments and only reports the calling
    // thread's mode.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP) == 2 }
}

/// Starts the launcher for `program`, from an unfiltered thread; again with the same program,
/// nothing.
pub fn start(program: PathBuf) -> Result<(), String> {
    if let Some(l) = LAUNCHER.get() {
        return if l.program == program {
            Ok(())
        } else {
            Err(format!(
                "the VMM launcher runs {}, not {}",
                l.program.display(),
                program.display()
            ))
        };
    }
    if filtered() {
        // Its VMMs would start under this thread's filter (the daemon's), and die of it.
        return Err(
            "the VMM launcher must be started before the daemon's seccomp filter".to_string(),
        );
    }
    let (tx, rx) = mpsc::channel::<Request>();
    let prog = program.clone();
    std::thread::Builder::new()
        .name("vireod-launcher".into())
        .spawn(move || {
            for req in rx {
                let _ = req
                    .reply
                    .send(launch_here(&prog, req.args, req.stdout, req.stderr));
            }
        })
        .map_err(|e| format!("cannot start the VMM launcher thread: {e}"))?;
    let _ = LAUNCHER.set(Launcher {
        program,
        tx: Mutex::new(tx),
    });
    Ok(())
}

/// Starts `PROGRAM vmm ARGS` through the launcher (see the module's doc).
pub fn launch(args: Vec<OsString>, stdout: File, stderr: File) -> Result<Launched, String> {
    let Some(l) = LAUNCHER.get() else {
        return Err("the VMM launcher is not running".into());
    };
    let (reply, answer) = mpsc::channel();
    let sent =
        l.tx.lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Request {
                args,
                stdout,
                stderr,
                reply,
            });
    if sent.is_err() {
        return Err("the VMM launcher is gone".into());
    }
    answer
        .recv()
        .unwrap_or_else(|_| Err("the VMM launcher is gone".into()))
}

fn launch_here(
    program: &PathBuf,
    args: Vec<OsString>,
    stdout: File,
    stderr: File,
) -> Result<Launched, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.arg("vmm")
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: the closure runs in the forked child before exec and only calls setsid, which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run the VMM {}: {e}", program.display()))?;
    let pid = child.id();
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the pid is
    // our unreaped child's, so it names that process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        // Not left running unwatched.
        // SAFETY: kill and waitpid on our own unreaped child.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
        return Err(format!("cannot watch the VMM (pidfd_open): {e}"));
    }
    // SAFETY: `fd` is a descriptor pidfd_open just returned, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The Child is dropped without waiting: the daemon reaps the pid when its pidfd says so.
    drop(child);
    Ok(Launched { pid, pidfd })
}

/// Waits (without blocking the runtime) until the launched process ends, reaps it, and gives
/// its wait status.
pub async fn wait(l: Launched) -> std::io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    // SAFETY: an OwnedFd's descriptor is valid and open, and stays the same one until the
    // AsyncFd that owns it is dropped.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(l.pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    let _ = fd.readable().await?;
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, with a valid pointer to an int for its status.
        let r = unsafe { libc::waitpid(l.pid as libc::pid_t, &mut status, 0) };
        if r == l.pid as libc::pid_t {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A launched process's exit status reaches the waiter, through the pidfd.
    #[test]
    fn launches_and_reaps() {
        // A stand-in VMM that exits with the status it is given after `vmm`.
        let dir = std::env::temp_dir().join(format!("vireo-launcher-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("fake-vmm");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = vmm ] && exit \"$2\"\nexit 99\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        start(script.clone()).unwrap();
        assert!(start(script.clone()).is_ok());
        assert!(start(PathBuf::from("/bin/true"))
            .unwrap_err()
            .contains("not /bin/true"));
        let out = File::create(dir.join("out")).unwrap();
        let l = launch(vec!["7".into()], out.try_clone().unwrap(), out).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let st = rt.block_on(wait(l)).unwrap();
        assert_eq!(st.code(), Some(7));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
