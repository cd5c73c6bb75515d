//! The host side of the guest console and the terminal: raw terminal input fed to the guest
//! (`Ctrl-A x` quits, `Ctrl-A h` lists the keys, `Ctrl-A Ctrl-A` sends a literal Ctrl-A, as in
//! QEMU), and console output copied to the log file and, filtered, to the terminal.
//!
//! An interactive guest's console is the user's terminal from vireo's /init start marker on
//! (boot messages before it are hidden unless `--verbose`). A command's own streams travel on
//! virtio-serial ports (`crate::stdio`); its console only goes to the log, and with
//! `--verbose` to stderr.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vireo_devices::{ConsoleOutput, Uart};

use vireo_vmm::supervise::Supervisor;

/// Where typed input goes: takes what fits, returns how many bytes it took.
pub type InputSink = Box<dyn FnMut(&[u8]) -> usize + Send>;

/// Input into the guest's 16550 UART.
pub fn uart_sink(uart: Arc<Mutex<Uart>>) -> InputSink {
    Box::new(move |b| {
        uart.lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(b)
    })
}

/// Where the guest console's output goes on the host.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// The console is the user's terminal (an interactive guest).
    Stdout,
    /// Kernel and /init messages beside a command's own output (`--verbose`).
    Stderr,
    /// Only to the log file, if any.
    Nothing,
}

pub struct Options {
    pub show: Show,
    /// Hide what comes before vireo's /init start marker (boot messages); off shows the
    /// whole console (`--verbose`, a custom initramfs).
    pub gate_on_marker: bool,
    pub log: Option<PathBuf>,
}

/// What the console saw, for the exit message.
pub struct Report {
    pub panic: Option<String>,
    /// The last few KiB of guest output.
    pub tail: String,
}

/// What the output thread has seen so far; the tail stays bytes until someone asks.
#[derive(Default)]
struct Seen {
    marker_seen: bool,
    panic: Option<String>,
    tail: Vec<u8>,
    /// Finds panics in whole lines across chunks.
    watch: vireo_vmm::watch::ConsoleWatch,
}

/// The host side of the guest console, for the life of the run (across reboots).
pub struct Console {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    input: SharedSink,
    out_thread: Option<JoinHandle<()>>,
}

/// Where input from the terminal goes now; swapped when the guest reboots.
pub type SharedSink = Arc<Mutex<Option<InputSink>>>;

const CTRL_A: u8 = 0x01;
const TAIL: usize = 4096;

/// The escape keys, for Ctrl-A h.
pub const ESCAPE_HELP: &str = "\r\nC-a x    quit: stop the VM at once (vireo exits 130)\r\n\
    C-a h    this help\r\n\
    C-a C-a  send C-a to the guest\r\n";

/// The status vireo exits with when the user quits with Ctrl-A x (as an interrupted command).
pub const QUIT_STATUS: u8 = 130;

impl Console {
    /// Starts copying console output; `sup` hears of kernel panics.
    pub fn start(
        out: ConsoleOutput,
        opts: Options,
        sup: Arc<Supervisor>,
    ) -> Result<Console, String> {
        let log = match &opts.log {
            Some(p) => Some(
                File::create(p)
                    .map_err(|e| format!("cannot create console log {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let out_thread = {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::Builder::new()
                .name("console-out".into())
                .spawn(move || {
                    // It scans what the guest printed (for panics and /init's marker).
                    vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Control);
                    output_loop(out, stop, seen, sup, opts, log)
                })
                .map_err(|e| format!("cannot start the console thread: {e}"))?
        };
        Ok(Console {
            stop,
            seen,
            input: Arc::new(Mutex::new(None)),
            out_thread: Some(out_thread),
        })
    }

    /// The sink terminal input goes to (see [`spawn_input`]).
    pub fn input(&self) -> SharedSink {
        self.input.clone()
    }

    /// Sends terminal input to `sink` from now on (a new boot has new devices).
    pub fn set_input(&self, sink: InputSink) {
        *lock(&self.input) = Some(sink);
    }

    /// A new boot: hide its boot messages again and forget the last one's panic.
    pub fn rearm(&self) {
        let mut s = lock(&self.seen);
        s.marker_seen = false;
        s.panic = None;
        s.watch.rearm();
    }

    /// What the console saw so far.
    pub fn report(&self) -> Report {
        let s = lock(&self.seen);
        Report {
            panic: s.panic.clone(),
            tail: String::from_utf8_lossy(&s.tail).into_owned(),
        }
    }

    /// Flushes the remaining output and reports.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.out_thread.take() {
            let _ = t.join();
        }
        self.report()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads standard input on its own thread into `sink` until end of input (then runs `eof`).
/// With `escapes` (a raw terminal), Ctrl-A x quits through `sup`, Ctrl-A h shows the keys and
/// Ctrl-A Ctrl-A sends one Ctrl-A. The thread is never joined: it may sit in a read of a
/// terminal nobody types on.
pub fn spawn_input(
    sink: SharedSink,
    escapes: bool,
    sup: Arc<Supervisor>,
    eof: Option<Box<dyn FnOnce() + Send>>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Control);
            input_loop(&sink, escapes, &sup);
            if let Some(f) = eof {
                f();
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the input thread: {e}"))
}

fn input_loop(sink: &SharedSink, escapes: bool, sup: &Supervisor) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64 * 1024];
    let mut escape = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut bytes = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if escapes && escape {
                escape = false;
                match b {
                    b'x' | b'X' => {
                        sup.abort(QUIT_STATUS);
                        return;
                    }
                    b'h' | b'H' | b'?' => {
                        let mut o = std::io::stdout().lock();
                        let _ = o.write_all(ESCAPE_HELP.as_bytes());
                        let _ = o.flush();
                    }
                    CTRL_A => bytes.push(CTRL_A),
                    _ => {}
                }
            } else if escapes && b == CTRL_A {
                escape = true;
            } else {
                bytes.push(b);
            }
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let took = match lock(sink).as_mut() {
                Some(input) => input(rest),
                None => 0,
            };
            rest = &rest[took..];
            if !rest.is_empty() {
                // The guest's receive buffer is full (or it is rebooting): let it drain.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn output_loop(
    out: ConsoleOutput,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Seen>>,
    sup: Arc<Supervisor>,
    opts: Options,
    mut log: Option<File>,
) {
    let marker = vireo_image::START_MARKER;
    let mut pending: Vec<u8> = Vec::new();
    let write = |bytes: &[u8]| {
        if bytes.is_empty() {
            return;
        }
        match opts.show {
            Show::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(bytes);
                let _ = o.flush();
            }
            Show::Stderr => {
                let mut o = std::io::stderr().lock();
                let _ = o.write_all(bytes);
            }
            Show::Nothing => {}
        }
    };
    let show_all = !opts.gate_on_marker;
    loop {
        let finishing = stop.load(Ordering::Acquire);
        let chunk = out.take();
        if !chunk.is_empty() {
            if let Some(f) = log.as_mut() {
                let _ = f.write_all(&chunk);
            }
            let mut report = lock(&shared);
            let seen = report.watch.feed(&chunk);
            if let Some(line) = seen.panic {
                report.panic.get_or_insert(line);
            }
            if seen.panic_ended {
                sup.guest_panicked();
            }
            report.tail.extend_from_slice(&chunk);
            let excess = report.tail.len().saturating_sub(TAIL);
            report.tail.drain(..excess);
            pending.extend_from_slice(&chunk);
            if let Some(pos) = find(&pending, marker) {
                if !report.marker_seen && show_all {
                    write(&pending[..pos]);
                }
                report.marker_seen = true;
                write(&pending[pos + marker.len()..]);
                pending.clear();
            } else {
                // Hold back a possible marker prefix at the end of the chunk.
                let keep = partial_suffix(&pending, marker);
                let cut = pending.len() - keep;
                if report.marker_seen || show_all {
                    write(&pending[..cut]);
                }
                pending.drain(..cut);
            }
        }
        if finishing && out.is_empty() {
            if lock(&shared).marker_seen || show_all {
                write(&pending);
            }
            break;
        }
        if chunk.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if let Some(f) = log.as_mut() {
        let _ = f.flush();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest suffix of `hay` that is a proper prefix of `needle`.
fn partial_suffix(hay: &[u8], needle: &[u8]) -> usize {
    (1..needle.len().min(hay.len() + 1))
        .rev()
        .find(|&k| hay[hay.len() - k..] == needle[..k])
        .unwrap_or(0)
}

/// The terminal settings to restore if vireo dies from an internal error.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Restores the terminal saved by the last raw-mode switch, if any (for the panic hook).
pub fn restore_terminal() {
    if let Some(t) = SAVED_TERMIOS.lock().ok().and_then(|mut g| g.take()) {
        // SAFETY: restores attributes previously read from descriptor 0.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
}

/// What vireo's standard streams are.
#[derive(Clone, Copy, Debug)]
pub struct Terminal {
    pub stdin_tty: bool,
    pub stdout_tty: bool,
    /// vireo is in the terminal's foreground process group (not started with `&`).
    pub foreground: bool,
}

impl Terminal {
    pub fn inspect() -> Terminal {
        // SAFETY: isatty, tcgetpgrp and getpgrp only inspect descriptors and the process.
        unsafe {
            let stdin_tty = libc::isatty(0) == 1;
            // A terminal that is not our controlling one has no foreground group to lose:
            // reading it cannot stop vireo (SIGTTIN), so it counts as ours.
            let fg = libc::tcgetpgrp(0);
            Terminal {
                stdin_tty,
                stdout_tty: libc::isatty(1) == 1,
                foreground: stdin_tty && (fg < 0 || fg == libc::getpgrp()),
            }
        }
    }

    /// The terminal's size on stdin as (rows, cols), if it has one.
    pub fn size() -> Option<(u16, u16)> {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it for descriptor 0.
        let mut w: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and a valid pointer to a winsize.
        let r = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut w) };
        (r == 0 && w.ws_row > 0 && w.ws_col > 0).then_some((w.ws_row, w.ws_col))
    }
}

/// Puts the terminal in raw mode and restores it when dropped.
pub struct TermGuard {
    saved: libc::termios,
}

impl TermGuard {
    pub fn raw(keep_output_processing: bool) -> Option<TermGuard> {
        // SAFETY: termios is plain data; tcgetattr fills it for descriptor 0.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and a valid pointer to a termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut t) };
        if keep_output_processing {
            // A command's output has bare newlines: let the host terminal add the returns.
            t.c_oflag |= libc::OPOST | libc::ONLCR;
        }
        // SAFETY: valid descriptor and a valid termios.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        if let Ok(mut g) = SAVED_TERMIOS.lock() {
            *g = Some(saved);
        }
        Some(TermGuard { saved })
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        if let Ok(mut g) = SAVED_TERMIOS.lock() {
            *g = None;
        }
        // SAFETY: restores the attributes saved from the same descriptor.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_helpers() {
        assert_eq!(
            find(b"abc\x1b]vireo;run\x07def", vireo_image::START_MARKER),
            Some(3)
        );
        assert_eq!(partial_suffix(b"xx\x1b]vir", vireo_image::START_MARKER), 5);
        assert_eq!(partial_suffix(b"xx", vireo_image::START_MARKER), 0);
        assert_eq!(partial_suffix(b"", vireo_image::START_MARKER), 0);
    }
}
