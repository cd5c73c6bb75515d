//! The host side of the guest console: raw terminal input fed to the guest UART (`Ctrl-A x`
//! quits, `Ctrl-A Ctrl-A` sends a literal Ctrl-A, as in QEMU), and guest output copied to the
//! log file and, filtered, to stdout.
//!
//! In command mode stdout shows only what follows vireo's /init start marker, so a command's
//! output is not mixed with boot messages; `--verbose` shows everything.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vireo_devices::{ConsoleOutput, Uart};

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

pub struct Options {
    pub show_all: bool,
    pub gate_on_marker: bool,
    pub log: Option<PathBuf>,
    pub command_mode: bool,
}

/// What the console saw, for the exit message.
#[derive(Default)]
pub struct Report {
    pub user_quit: bool,
    pub marker_seen: bool,
    pub panic: Option<String>,
    /// The last few KiB of guest output.
    pub tail: String,
}

pub struct Console {
    stop: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    panicked: Arc<AtomicBool>,
    out_thread: Option<JoinHandle<Report>>,
    _term: Option<TermGuard>,
}

const CTRL_A: u8 = 0x01;
const TAIL: usize = 4096;

impl Console {
    pub fn start(out: ConsoleOutput, input: InputSink, opts: Options) -> Result<Console, String> {
        let log = match &opts.log {
            Some(p) => Some(
                File::create(p)
                    .map_err(|e| format!("cannot create console log {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let quit = Arc::new(AtomicBool::new(false));
        let panicked = Arc::new(AtomicBool::new(false));
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(0) } == 1;
        let term = if tty {
            TermGuard::raw(opts.command_mode)
        } else {
            None
        };
        {
            let quit = quit.clone();
            std::thread::Builder::new()
                .name("console-in".into())
                .spawn(move || input_loop(input, quit, tty))
                .map_err(|e| format!("cannot start the console thread: {e}"))?;
        }
        let out_thread = {
            let stop = stop.clone();
            let panicked = panicked.clone();
            std::thread::Builder::new()
                .name("console-out".into())
                .spawn(move || output_loop(out, stop, panicked, opts, log))
                .map_err(|e| format!("cannot start the console thread: {e}"))?
        };
        Ok(Console {
            stop,
            quit,
            panicked,
            out_thread: Some(out_thread),
            _term: term,
        })
    }

    /// Set when the user typed Ctrl-A x.
    pub fn quit_flag(&self) -> Arc<AtomicBool> {
        self.quit.clone()
    }

    /// Set when the guest kernel finished printing a panic: a kernel without `panic=-1` would
    /// spin forever, so the VMM stops it.
    pub fn panic_flag(&self) -> Arc<AtomicBool> {
        self.panicked.clone()
    }

    /// Flushes the remaining output, restores the terminal and reports.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Release);
        let mut r = self
            .out_thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        r.user_quit = self.quit.load(Ordering::Acquire);
        r
    }
}

fn input_loop(mut input: InputSink, quit: Arc<AtomicBool>, tty: bool) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    let mut escape = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut bytes = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if tty && escape {
                escape = false;
                match b {
                    b'x' | b'X' => {
                        quit.store(true, Ordering::Release);
                        return;
                    }
                    CTRL_A => bytes.push(CTRL_A),
                    _ => {}
                }
            } else if tty && b == CTRL_A {
                escape = true;
            } else {
                bytes.push(b);
            }
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let took = input(rest);
            rest = &rest[took..];
            if !rest.is_empty() {
                // The guest's receive buffer is full: let it drain.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn output_loop(
    out: ConsoleOutput,
    stop: Arc<AtomicBool>,
    panicked: Arc<AtomicBool>,
    opts: Options,
    mut log: Option<File>,
) -> Report {
    let marker = vireo_image::START_MARKER;
    let mut report = Report::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    let stdout = std::io::stdout();
    loop {
        let finishing = stop.load(Ordering::Acquire);
        let chunk = out.take();
        if !chunk.is_empty() {
            if let Some(f) = log.as_mut() {
                let _ = f.write_all(&chunk);
            }
            for &b in &chunk {
                if b == b'\n' {
                    let s = String::from_utf8_lossy(&line);
                    if report.panic.is_none() && s.contains("Kernel panic - not syncing") {
                        report.panic = Some(s.trim().to_string());
                    }
                    if s.contains("---[ end Kernel panic") {
                        panicked.store(true, Ordering::Release);
                    }
                    line.clear();
                } else if line.len() < 512 {
                    line.push(b);
                }
            }
            tail.extend_from_slice(&chunk);
            if tail.len() > TAIL {
                tail.drain(..tail.len() - TAIL);
            }
            pending.extend_from_slice(&chunk);
            let mut emit: Vec<u8> = Vec::new();
            if let Some(pos) = find(&pending, marker) {
                if !report.marker_seen && opts.show_all {
                    emit.extend_from_slice(&pending[..pos]);
                }
                report.marker_seen = true;
                emit.extend_from_slice(&pending[pos + marker.len()..]);
                pending.clear();
            } else if report.marker_seen || !opts.gate_on_marker || opts.show_all {
                // Hold back a possible marker prefix at the end of the chunk.
                let keep = partial_suffix(&pending, marker);
                let cut = pending.len() - keep;
                emit.extend(pending.drain(..cut));
            } else {
                let keep = partial_suffix(&pending, marker);
                pending.drain(..pending.len() - keep);
            }
            if !emit.is_empty() {
                let mut o = stdout.lock();
                let _ = o.write_all(&emit);
                let _ = o.flush();
            }
        }
        if finishing && out.is_empty() {
            if report.marker_seen || !opts.gate_on_marker || opts.show_all {
                let mut o = stdout.lock();
                let _ = o.write_all(&pending);
                let _ = o.flush();
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
    report.tail = String::from_utf8_lossy(&tail).into_owned();
    report
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

/// Puts the terminal in raw mode and restores it when dropped.
struct TermGuard {
    saved: libc::termios,
}

impl TermGuard {
    fn raw(keep_output_processing: bool) -> Option<TermGuard> {
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
