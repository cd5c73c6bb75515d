//! The passt child process behind `NetBackendConfig::User`.
//!
//! vireo runs
//!
//! ```text
//! passt --foreground --quiet --one-off --mtu 1500 --socket <tmp>/vireo-passt-<pid>-<n>.sock \
//!       [-t ADDR/HOSTPORT:GUESTPORT]... [-u ADDR/HOSTPORT:GUESTPORT]...
//! ```
//!
//! and connects to the socket, then unlinks it: passt takes one connection only, so the path
//! has no further use, and a vireo killed without running destructors (SIGKILL) leaves no
//! socket file in the temporary directory. `--one-off` makes passt exit when vireo's end of
//! the socket closes, so such a vireo does not leave passt behind either; `--mtu 1500` keeps
//! the MTU that passt's DHCP hands out within what a receive buffer of a driver without
//! mergeable buffers holds (1526 bytes, virtio 1.2 §5.1.6.3.1), since this device offers no
//! offloads.
//!
//! Every forward is given an address: without one passt listens on every interface, and a
//! forward the user wrote without an address listens on [`DEFAULT_HOST_ADDR`] only. The passt
//! Debian 12 ships (0.0~git20230309) takes one address per host port and protocol (a second
//! `-t ::1/8080:80` beside `-t 127.0.0.1/8080:80` is "Overlapping port specifier"), so the
//! default is the IPv4 loopback alone. `::` means IPv6 only there. Before passt starts, vireo
//! binds each host address and port itself and lets go, so a busy port or an address that is
//! not the host's is reported by name rather than left to passt's log.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::hostfwd::Protocol;
#[cfg(doc)]
use super::hostfwd::DEFAULT_HOST_ADDR;
use super::{HostFwd, NetError};

/// How long passt may take to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of passt's stderr is kept for error messages.
const STDERR_TAIL: usize = 2048;

/// A running passt, killed and reaped on drop by the process that started it.
pub(crate) struct Passt {
    child: Child,
    socket: PathBuf,
    /// The pid of the process that started passt. A copy of this handle in a forked process
    /// (a jailed VMM, whose keeper started passt) does not own the child: it is not its
    /// parent, and in its own PID namespace the pid names no such process. It leaves passt
    /// to its keeper, and to `--one-off` (passt ends when vireo's end of the socket closes).
    owner: u32,
}

impl Passt {
    /// Starts passt with `hostfwd` and returns it with a connected stream to it.
    pub(crate) fn start(hostfwd: &[HostFwd]) -> Result<(Passt, UnixStream), NetError> {
        let exe = find_passt(std::env::var_os("PATH").as_deref())?;
        check_host_ports(hostfwd)?;
        let socket = socket_path();
        let _ = std::fs::remove_file(&socket);
        let spawn_error = |source| NetError::PasstSpawn {
            path: exe.clone(),
            source,
        };
        let err_file = stderr_file().map_err(spawn_error)?;
        let mut cmd = Command::new(&exe);
        cmd.args(command_args(&socket, hostfwd))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err_file.try_clone().map_err(spawn_error)?));
        let child = cmd.spawn().map_err(spawn_error)?;
        let mut passt = Passt {
            child,
            socket,
            owner: std::process::id(),
        };
        let stream = passt.connect(&err_file)?;
        // Connected: the path is no longer needed (passt accepts one client). Removing it now
        // rather than on drop covers the ways out of vireo that run no destructors.
        let _ = std::fs::remove_file(&passt.socket);
        Ok((passt, stream))
    }

    fn connect(&mut self, err_file: &File) -> Result<UnixStream, NetError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(NetError::PasstExited {
                    status,
                    socket: self.socket.clone(),
                    stderr: stderr_text(&tail_of(err_file)),
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

    /// passt's process id (tests check it is reaped, and where it runs).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        if std::process::id() != self.owner {
            return;
        }
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
        args.push(
            match f.protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
            }
            .into(),
        );
        // passt writes IPv6 addresses bare before the '/'.
        args.push(format!("{}/{}:{}", f.listen_addr(), f.host_port, f.guest_port).into());
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

/// Refuses forwards passt cannot set up, naming them: a host port listed twice for one
/// protocol, an address that is not this host's, a port taken or not ours to bind.
pub(crate) fn check_host_ports(hostfwd: &[HostFwd]) -> Result<(), NetError> {
    for (i, f) in hostfwd.iter().enumerate() {
        let same = |g: &&HostFwd| g.protocol == f.protocol && g.host_port == f.host_port;
        if let Some(first) = hostfwd[..i].iter().find(same) {
            return Err(NetError::HostPortTwice {
                port: f.host_port,
                first: *first,
                second: *f,
            });
        }
        // Bind and release at once. (For `::` this binds IPv4 too, where passt's socket is
        // IPv6-only: a port busy on IPv4 alone is refused that passt could have used.)
        let addr = (f.listen_addr(), f.host_port);
        let r = match f.protocol {
            Protocol::Tcp => TcpListener::bind(addr).map(drop),
            Protocol::Udp => UdpSocket::bind(addr).map(drop),
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(NetError::HostPortInUse {
                    fwd: *f,
                    addr: f.listen_addr(),
                    port: f.host_port,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                return Err(NetError::HostAddrNotLocal {
                    fwd: *f,
                    addr: f.listen_addr(),
                })
            }
            Err(source) => {
                return Err(NetError::HostPortDenied {
                    fwd: *f,
                    addr: f.listen_addr(),
                    port: f.host_port,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// `addr:port` as a socket address is written (IPv6 in brackets).
pub(crate) fn host_and_port(addr: &IpAddr, port: &u16) -> String {
    std::net::SocketAddr::new(*addr, *port).to_string()
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

/// passt's stderr: an unlinked file rather than a pipe, so that nothing has to drain it for
/// passt's whole life (a thread would have to, and a VMM entering its jail may have none), and
/// a start-up failure can be explained. passt runs with `--quiet`: it writes errors only.
fn stderr_file() -> std::io::Result<File> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "vireo-passt-{}-{}.err",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

/// The last [`STDERR_TAIL`] bytes of passt's stderr file.
fn tail_of(f: &File) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(STDERR_TAIL as u64);
    let mut buf = vec![0u8; (len - start) as usize];
    let n = f.read_at(&mut buf, start).unwrap_or(0);
    buf.truncate(n);
    buf
}

fn stderr_text(t: &[u8]) -> String {
    // passt tries syslog first; where there is none it says so on every line. Skip that noise.
    let text: Vec<String> = String::from_utf8_lossy(t)
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

    fn fwd(s: &str) -> HostFwd {
        s.parse().unwrap()
    }

    #[test]
    fn command_line() {
        let fwds = [
            fwd("tcp:8080-:80"),
            fwd("tcp:0.0.0.0:2222-:22"),
            fwd("udp:[::1]:5353-:53"),
            fwd("udp::5353-:53"),
            fwd("tcp:[::]:8443-:443"),
        ];
        let args = command_args(Path::new("/tmp/x.sock"), &fwds);
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
                // No address given: the loopback, never passt's every-interface default.
                "-t",
                "127.0.0.1/8080:80",
                "-t",
                "0.0.0.0/2222:22",
                "-u",
                "::1/5353:53",
                "-u",
                "127.0.0.1/5353:53",
                "-t",
                "::/8443:443",
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
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let f = HostFwd::tcp(port, 80);
        let e = check_host_ports(&[f]).unwrap_err();
        assert!(matches!(e, NetError::HostPortInUse { .. }), "{e}");
        assert!(
            e.to_string().contains(&format!(
                "port {port} is already in use (on 127.0.0.1:{port})"
            )),
            "{e}"
        );
        drop(l);
        check_host_ports(&[f]).unwrap();
        let e = check_host_ports(&[f, f]).unwrap_err();
        assert!(e.to_string().contains(&port.to_string()), "{e}");
        // One port per protocol, whatever the addresses (passt's limit) ...
        let other = fwd(&format!("tcp:127.0.0.2:{port}-:81"));
        assert!(matches!(
            check_host_ports(&[f, other]),
            Err(NetError::HostPortTwice { .. })
        ));
        // ... but TCP and UDP are separate.
        let udp = fwd(&format!("udp::{port}-:80"));
        check_host_ports(&[f, udp]).unwrap();
        let u = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let e = check_host_ports(&[udp]).unwrap_err();
        assert!(e.to_string().contains("udp::"), "{e}");
        drop(u);
    }

    #[test]
    fn an_address_that_is_not_the_hosts_is_named() {
        // TEST-NET-3 (RFC 5737): never assigned to a real host.
        let f = fwd("tcp:203.0.113.7:8080-:80");
        let e = check_host_ports(&[f]).unwrap_err();
        assert!(matches!(e, NetError::HostAddrNotLocal { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("203.0.113.7 is not an address of this host"),
            "{e}"
        );
    }

    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn reachable(addr: impl Into<IpAddr>, port: u16) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(addr.into(), port),
            Duration::from_secs(2),
        )
        .is_ok()
    }

    /// The real passt listens where vireo asked, and only there. 127.0.0.2 is this host's
    /// too (all of 127/8 is), so a forward that listened on every address would answer there.
    #[test]
    fn real_passt_listens_on_the_loopback_unless_told_otherwise() {
        if find_passt(std::env::var_os("PATH").as_deref()).is_err() {
            panic!("passt is not installed: apt-get install passt");
        }
        let (tcp, wide, udp) = (free_port(), free_port(), free_port());
        let fwds = [
            HostFwd::tcp(tcp, 80),
            fwd(&format!("tcp:0.0.0.0:{wide}-:81")),
            fwd(&format!("udp::{udp}-:53")),
        ];
        let (passt, _stream) = Passt::start(&fwds).unwrap();
        assert!(
            reachable([127, 0, 0, 1], tcp),
            "default forward not on 127.0.0.1"
        );
        assert!(
            !reachable([127, 0, 0, 2], tcp),
            "default forward on 127.0.0.2"
        );
        assert!(
            !reachable(std::net::Ipv6Addr::LOCALHOST, tcp),
            "default forward on ::1"
        );
        assert!(
            reachable([127, 0, 0, 2], wide),
            "0.0.0.0 forward not on 127.0.0.2"
        );
        // UDP: passt holds 127.0.0.1:udp and nothing wider.
        let taken = UdpSocket::bind(("127.0.0.1", udp)).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        UdpSocket::bind(("127.0.0.2", udp))
            .expect("passt's UDP forward listens wider than 127.0.0.1");
        // The socket path went as soon as vireo was connected.
        assert!(
            !passt.socket().exists(),
            "{} is left",
            passt.socket().display()
        );
        drop(passt);
        assert!(
            !reachable([127, 0, 0, 1], tcp),
            "the forward outlived passt"
        );
    }

    #[test]
    fn stderr_noise_is_filtered() {
        let t = b"Failed to send 5 bytes to syslog\nbad option\n\n";
        assert_eq!(stderr_text(t), "bad option");
    }
}
