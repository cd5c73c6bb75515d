//! The passt child process behind `NetBackendConfig::User`.
//!
//! vireo runs
//!
//! ```text
//! passt --foreground --quiet --one-off --mtu 1500 --socket <tmp>/vireo-passt-<pid>-<n>.sock \
//!       [-t HOSTPORT:GUESTPORT]...
//! ```
//!
//! and connects to the socket. `--one-off` makes passt exit when vireo's end of the socket
//! closes, so a vireo that dies without running destructors does not leave passt behind;
//! `--mtu 1500` keeps the MTU that passt's DHCP hands out within what a receive buffer of a
//! driver without mergeable buffers holds (1526 bytes, virtio 1.2 §5.1.6.3.1), since this
//! device offers no offloads. The passt version Debian ships binds forwarded ports lazily and
//! silently skips a busy one, so vireo checks each host port itself before starting it.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{HostFwd, NetError};

/// How long passt may take to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of passt's stderr is kept for error messages.
const STDERR_TAIL: usize = 2048;

/// A running passt, killed and reaped on drop.
pub(crate) struct Passt {
    child: Child,
    socket: PathBuf,
}

impl Passt {
    /// Starts passt with `hostfwd` and returns it with a connected stream to it.
    pub(crate) fn start(hostfwd: &[HostFwd]) -> Result<(Passt, UnixStream), NetError> {
        let exe = find_passt(std::env::var_os("PATH").as_deref())?;
        check_host_ports(hostfwd)?;
        let socket = socket_path();
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&exe);
        cmd.args(command_args(&socket, hostfwd))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| NetError::PasstSpawn {
            path: exe.clone(),
            source,
        })?;
        let tail = drain_stderr(&mut child);
        let mut passt = Passt { child, socket };
        let stream = passt.connect(&tail)?;
        Ok((passt, stream))
    }

    fn connect(&mut self, tail: &Arc<Mutex<Vec<u8>>>) -> Result<UnixStream, NetError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the drain thread catch the last words.
                std::thread::sleep(Duration::from_millis(50));
                return Err(NetError::PasstExited {
                    status,
                    socket: self.socket.clone(),
                    stderr: stderr_text(tail),
                });
            }
            match UnixStream::connect(&self.socket) {
                Ok(s) => return Ok(s),
                Err(source) if Instant::now() >= deadline => {
                    return Err(NetError::PasstTimeout {
                        socket: self.socket.clone(),
                        secs: START_TIMEOUT.as_secs(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The socket passt listens on.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// passt's process id (tests check it is reaped).
    #[cfg(test)]
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// passt's arguments, in order (the bench starts QEMU's passt with the same ones).
pub fn command_args(socket: &Path, hostfwd: &[HostFwd]) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--foreground",
        "--quiet",
        "--one-off",
        "--mtu",
        "1500",
        "--socket",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(socket.as_os_str().to_owned());
    for f in hostfwd {
        args.push("-t".into());
        args.push(format!("{}:{}", f.host_port, f.guest_port).into());
    }
    args
}

/// Looks `passt` up in `path` (the PATH variable).
pub(crate) fn find_passt(path: Option<&OsStr>) -> Result<PathBuf, NetError> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.ok_or(NetError::PasstMissing)?;
    std::env::split_paths(path)
        .map(|dir| dir.join("passt"))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or(NetError::PasstMissing)
}

/// Refuses forwards whose host port is taken (or listed twice): passt would skip them quietly.
pub(crate) fn check_host_ports(hostfwd: &[HostFwd]) -> Result<(), NetError> {
    for (i, f) in hostfwd.iter().enumerate() {
        if let Some(first) = hostfwd[..i].iter().find(|g| g.host_port == f.host_port) {
            return Err(NetError::HostPortTwice {
                port: f.host_port,
                first: *first,
                second: *f,
            });
        }
        // Bind and release at once, IPv4 then IPv6 (passt binds both). An IPv6-less host
        // refuses the second with something other than "in use", which is fine.
        let v4 = TcpListener::bind((Ipv4Addr::UNSPECIFIED, f.host_port)).map(drop);
        let v6 = TcpListener::bind((Ipv6Addr::UNSPECIFIED, f.host_port)).map(drop);
        for r in [v4, v6] {
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(NetError::HostPortInUse {
                        fwd: *f,
                        port: f.host_port,
                    })
                }
                Err(source) if source.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(NetError::HostPortDenied {
                        fwd: *f,
                        port: f.host_port,
                        source,
                    })
                }
                Err(_) => {}
            }
        }
    }
    Ok(())
}

fn socket_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // passt drops to user "nobody" when started as root and then creates the socket, so the
    // directory must be world-writable: the system temporary directory is.
    std::env::temp_dir().join(format!(
        "vireo-passt-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Reads passt's stderr until it closes, keeping the last [`STDERR_TAIL`] bytes, so passt never
/// blocks on a full pipe and a start-up failure can be explained.
fn drain_stderr(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let tail = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut err) = child.stderr.take() {
        let tail = tail.clone();
        std::thread::Builder::new()
            .name("passt-stderr".into())
            .spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.extend_from_slice(&buf[..n]);
                    let excess = t.len().saturating_sub(STDERR_TAIL);
                    t.drain(..excess);
                }
            })
            .ok();
    }
    tail
}

fn stderr_text(tail: &Mutex<Vec<u8>>) -> String {
    let t = tail.lock().unwrap_or_else(|p| p.into_inner());
    // passt tries syslog first; where there is none it says so on every line. Skip that noise.
    let text: Vec<String> = String::from_utf8_lossy(&t)
        .lines()
        .filter(|l| !l.starts_with("Failed to send") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if text.is_empty() {
        "(nothing on stderr)".into()
    } else {
        text.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let fwd = [
            HostFwd {
                host_port: 8080,
                guest_port: 80,
            },
            HostFwd {
                host_port: 2222,
                guest_port: 22,
            },
        ];
        let args = command_args(Path::new("/tmp/x.sock"), &fwd);
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--foreground",
                "--quiet",
                "--one-off",
                "--mtu",
                "1500",
                "--socket",
                "/tmp/x.sock",
                "-t",
                "8080:80",
                "-t",
                "2222:22"
            ]
        );
    }

    #[test]
    fn missing_passt_says_how_to_install_it() {
        let empty = std::env::temp_dir().join(format!("vireo-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let e = find_passt(Some(empty.as_os_str())).unwrap_err();
        assert!(e.to_string().contains("apt-get install passt"), "{e}");
        assert!(find_passt(None).is_err());
        let _ = std::fs::remove_dir(&empty);
    }

    #[test]
    fn busy_host_port_is_reported_by_number() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let fwd = HostFwd {
            host_port: port,
            guest_port: 80,
        };
        let e = check_host_ports(&[fwd]).unwrap_err();
        assert!(matches!(e, NetError::HostPortInUse { .. }), "{e}");
        assert!(e.to_string().contains(&format!("port {port}")), "{e}");
        drop(l);
        check_host_ports(&[fwd]).unwrap();
        let e = check_host_ports(&[fwd, fwd]).unwrap_err();
        assert!(e.to_string().contains(&port.to_string()), "{e}");
    }

    #[test]
    fn stderr_noise_is_filtered() {
        let t = Mutex::new(b"Failed to send 5 bytes to syslog\nbad option\n\n".to_vec());
        assert_eq!(stderr_text(&t), "bad option");
    }
}
