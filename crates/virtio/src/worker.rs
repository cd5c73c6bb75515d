//! The handle of a device's host-side worker thread: a wake-up eventfd the device kicks when
//! the guest adds buffers, and a stop flag. Dropping the handle stops and joins the thread.
//! Each device supplies the loop itself (what it polls and when it sleeps).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// A running worker; stopped and joined on drop.
pub(crate) struct Worker {
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts thread `name` running `body(wake, stop)`; the body must return soon after `stop`
    /// is set and `wake` becomes readable.
    pub(crate) fn start<F>(name: &str, body: F) -> io::Result<Worker>
    where
        F: FnOnce(&EventFd, &AtomicBool) + Send + 'static,
    {
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (wake, stop) = (wake.clone(), stop.clone());
            // Started by the sandbox's spawner: the thread activating the device (a vCPU,
            // the emulator) then needs none of the worker's calls in its own filter.
            vireo_machine::sandbox::spawn(name, move || {
                // Before the first look at a queue.
                vireo_machine::sandbox::enter(vireo_machine::sandbox::ThreadKind::Device);
                body(&wake, &stop)
            })?
        };
        Ok(Worker {
            wake,
            stop,
            thread: Some(thread),
        })
    }

    /// Makes the worker look at its queues and host descriptors again.
    pub(crate) fn kick(&self) {
        let _ = self.wake.write(1);
    }

    /// The wake-up eventfd, for a notifier outside the process to write (a KVM ioeventfd).
    pub(crate) fn event(&self) -> Arc<EventFd> {
        self.wake.clone()
    }
}

/// Sleeps until `fd` (a non-blocking eventfd) is readable, then resets it. An error from poll
/// itself returns at once: the caller's loop checks its stop flag either way.
pub(crate) fn wait_readable(fd: &EventFd) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut p, 1, -1) };
        if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    let _ = fd.read();
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
