//! Signals to vireo: SIGINT, SIGTERM and SIGHUP stop the guest gracefully (it is asked to sync
//! and power off, then stopped after a grace period) and vireo exits 128 + the signal's
//! number; a second one stops it at once. With a command on a guest pseudo-terminal, SIGWINCH
//! passes the terminal's new size on. Handlers only record the signal (signal-hook); the
//! work happens on this module's thread.

use std::sync::Arc;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};
use signal_hook::iterator::{Handle, Signals};

use crate::console::Terminal;
use vireo_vmm::supervise::Supervisor;

/// The signal thread; dropping it ends the thread (the handlers stay installed and only
/// record signals, which nothing reads any more: vireo is on its way out).
pub struct SignalThread {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn start(sup: Arc<Supervisor>, pty: bool) -> Result<SignalThread, String> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGWINCH])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                match sig {
                    SIGWINCH if pty => {
                        if let Some((rows, cols)) = Terminal::size() {
                            sup.tty_write(&crate::stdio::telnet_naws(rows, cols));
                        }
                    }
                    SIGWINCH => {}
                    s => sup.shutdown(128 + s as u8),
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(SignalThread {
        handle,
        thread: Some(thread),
    })
}
