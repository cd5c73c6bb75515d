//! A guest command's standard streams, carried on four virtio-serial ports that vireo's /init
//! knows by name (see `crates/image/src/init.sh` for the guest's half):
//!
//! | port | direction | carries |
//! |---|---|---|
//! | `vireo.stdin` | host → guest | vireo's stdin; its end of file closes the port (the guest reads EOF) |
//! | `vireo.stdout` | guest → host | the command's stdout (and, on a pseudo-terminal, everything it prints) |
//! | `vireo.stderr` | guest → host | the command's stderr |
//! | `vireo.ctl` | both | host: `winsize ROWS COLS`, `poweroff`; guest: `started` before the command runs |
//!
//! With pipes, bytes pass unchanged (the ports are not ttys) and in order within a port. On a
//! guest pseudo-terminal (vireo's stdin and stdout are a terminal), busybox telnetd relays the
//! terminal over `vireo.stdin`/`vireo.stdout` with telnet framing (RFC 854): the host doubles
//! 0xff (IAC) in what it sends and sends window sizes as NAWS subnegotiations (RFC 1073);
//! [`TelnetDecoder`] drops the guest's option negotiations and undoes its doubling. A slow reader of
//! vireo's stdout makes the guest's writes wait, nothing is dropped. When vireo's stdout is
//! closed (`vireo run ... | head`), the run ends as if by SIGPIPE (status 141). The exit status
//! comes through /init's finisher register, not these ports.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vireo_virtio::serial::{ReadOutcome, SerialPort};

use crate::console::InputSink;
use vireo_vmm::supervise::Supervisor;

/// The status of a run whose stdout was closed: as a process killed by SIGPIPE.
pub const PIPE_STATUS: u8 = 128 + libc::SIGPIPE as u8;

pub use vireo_vmm::channel::{channel, Channel};

/// The threads copying a command's output out; see [`Pumps::finish`].
pub struct Pumps {
    /// Any of the ports: ending one ends the device's reads.
    port: SerialPort,
    started: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pumps {
    /// Starts copying stdout and stderr to vireo's, and reading the control port.
    /// With `pty`, stdout carries telnet framing (see the module doc) and is decoded.
    pub fn start(ch: &Channel, sup: Arc<Supervisor>, pty: bool) -> Result<Pumps, String> {
        let started = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let port = ch.stdout.clone();
            let mut telnet = pty.then(TelnetDecoder::default);
            let mut plain = Vec::new();
            threads.push(pump("stdout", ch.stdout.clone(), move |b| {
                let b = match telnet.as_mut() {
                    Some(t) => {
                        plain.clear();
                        t.decode(b, &mut plain);
                        &plain[..]
                    }
                    None => b,
                };
                let mut o = std::io::stdout().lock();
                if o.write_all(b).and_then(|()| o.flush()).is_err() {
                    // Nobody reads our stdout any more: let the guest write on unblocked,
                    // and end the run as SIGPIPE would.
                    port.close_output();
                    sup.shutdown(PIPE_STATUS);
                }
            })?);
        }
        {
            let port = ch.stderr.clone();
            threads.push(pump("stderr", ch.stderr.clone(), move |b| {
                if std::io::stderr().lock().write_all(b).is_err() {
                    port.close_output();
                }
            })?);
        }
        {
            let started = started.clone();
            let mut line = Vec::new();
            threads.push(pump("ctl", ch.ctl.clone(), move |b| {
                for &c in b {
                    if c == b'\n' {
                        if line == b"started" {
                            started.store(true, Ordering::Release);
                        }
                        line.clear();
                    } else if line.len() < 64 {
                        line.push(c);
                    }
                }
            })?);
        }
        Ok(Pumps {
            port: ch.ctl.clone(),
            started,
            threads,
        })
    }

    /// Waits until every byte the guest wrote is out (the guest has stopped, so nothing
    /// more comes), and says whether /init reported starting the command.
    pub fn finish(self) -> bool {
        self.port.end();
        for t in self.threads {
            let _ = t.join();
        }
        self.started.load(Ordering::Acquire)
    }
}

/// Copies what the guest writes to `port` into `sink` until the device is ended and drained.
fn pump(
    name: &str,
    port: SerialPort,
    mut sink: impl FnMut(&[u8]) + Send + 'static,
) -> Result<JoinHandle<()>, String> {
    let body = move || {
        // It reads what the guest wrote (the command channel's lines among it).
        vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Control);
        let mut buf = vec![0u8; 64 * 1024];
        while let ReadOutcome::Data(n) = port.read(&mut buf, None) {
            sink(&buf[..n]);
        }
    };
    std::thread::Builder::new()
        .name(format!("guest-{name}"))
        .spawn(body)
        .map_err(|e| format!("cannot start the guest {name} thread: {e}"))
}

/// Where vireo's stdin goes in pipes mode: the command's stdin, as it is.
pub fn stdin_sink(port: SerialPort) -> InputSink {
    Box::new(move |b: &[u8]| {
        // Fewer bytes taken means the guest has stopped or closed its input: they are
        // dropped, there is no one left to read them.
        port.write_all(b, None);
        b.len()
    })
}

/// Where the terminal's keys go on a guest pseudo-terminal: telnet-framed, to the command's
/// stdin.
pub fn tty_sink(port: SerialPort) -> InputSink {
    Box::new(move |b: &[u8]| {
        port.write_all(&telnet_encode(b), None);
        b.len()
    })
}

/// Host bytes for a guest telnetd: IAC (0xff) doubled.
pub fn telnet_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    for &b in bytes {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
    out
}

/// A window-size report (NAWS subnegotiation) for a guest telnetd.
pub fn telnet_naws(rows: u16, cols: u16) -> Vec<u8> {
    let mut out = vec![IAC, SB, NAWS];
    out.extend(telnet_encode(&cols.to_be_bytes()));
    out.extend(telnet_encode(&rows.to_be_bytes()));
    out.extend([IAC, SE]);
    out
}

const IAC: u8 = 0xff;
const SB: u8 = 0xfa;
const SE: u8 = 0xf0;
const NAWS: u8 = 0x1f;

/// Where [`TelnetDecoder`] is in the guest's telnet framing.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum TelnetState {
    #[default]
    Data,
    Iac,
    /// After WILL/WONT/DO/DONT: one option byte follows.
    Option,
    Sub,
    SubIac,
}

/// busybox telnetd starts every session with "\r\n" on the new pseudo-terminal (it prints an
/// empty login issue), which arrives as "\r\r\n": not the command's, so it is dropped.
const LEADING: &[u8] = b"\r\r\n";

/// Turns a guest telnetd's output back into the terminal's bytes.
pub struct TelnetDecoder {
    state: TelnetState,
    /// How much of [`LEADING`] the first data bytes matched; `None` once past it.
    leading: Option<usize>,
}

impl Default for TelnetDecoder {
    fn default() -> Self {
        TelnetDecoder {
            state: TelnetState::Data,
            leading: Some(0),
        }
    }
}

impl TelnetDecoder {
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        use TelnetState::*;
        for &b in input {
            self.state = match (self.state, b) {
                (Data, IAC) => Iac,
                (Data, _) | (Iac, IAC) => {
                    self.data(b, out);
                    Data
                }
                (Iac, 0xfb..=0xfe) => Option,
                (Iac, SB) => Sub,
                // Other two-byte commands (NOP, GA, ...) carry nothing for the terminal.
                (Iac, _) | (Option, _) => Data,
                (Sub, IAC) => SubIac,
                (Sub, _) => Sub,
                (SubIac, SE) => Data,
                (SubIac, _) => Sub,
            };
        }
    }

    fn data(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.leading {
            Some(n) if LEADING[n] == b => {
                self.leading = (n + 1 < LEADING.len()).then_some(n + 1);
            }
            Some(n) => {
                out.extend_from_slice(&LEADING[..n]);
                out.push(b);
                self.leading = None;
            }
            None => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<u8> {
        let mut d = TelnetDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.decode(c, &mut out);
        }
        out
    }

    #[test]
    fn busybox_session_start_is_dropped() {
        // What busybox telnetd -i sends first, then the command's output.
        let got = decode(&[b"\xff\xfd\x01\xff\xfd\x1f\xff\xfb\x01\xff\xfb\x03\r\r\n30 100\r\n"]);
        assert_eq!(got, b"30 100\r\n");
    }

    #[test]
    fn split_anywhere_gives_the_same_bytes() {
        let stream: &[u8] =
            b"\xff\xfd\x01\xff\xfb\x03\r\r\nab\xff\xffc\xff\xfa\x1f\x00\x50\xff\xf0d";
        let whole = decode(&[stream]);
        assert_eq!(whole, b"ab\xffcd");
        for cut in 0..stream.len() {
            assert_eq!(
                decode(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn output_not_starting_with_the_issue_line_is_kept() {
        assert_eq!(decode(&[b"\r\nx"]), b"\r\nx");
        assert_eq!(decode(&[b"hi"]), b"hi");
    }

    #[test]
    fn encoding_doubles_iac_and_naws_escapes_sizes() {
        assert_eq!(telnet_encode(b"a\xffb"), b"a\xff\xffb");
        assert_eq!(
            telnet_naws(30, 100),
            vec![0xff, 0xfa, 0x1f, 0, 100, 0, 30, 0xff, 0xf0]
        );
        assert_eq!(
            telnet_naws(0xff, 0x1ff),
            vec![0xff, 0xfa, 0x1f, 1, 0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xf0]
        );
    }
}
