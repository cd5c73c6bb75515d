//! The vsock worker: one thread per active device, polling the host listener, half-open host
//! clients, connected host sockets and a wake-up eventfd.
//!
//! Each round it takes the device lock, lets the state do everything that is possible without
//! blocking (accept, read `CONNECT` lines, flush guest data to host sockets, fill receive
//! buffers, resume a stalled transmit), collects what to wait for, drops the lock and polls.
//! A socket is polled for reading only while the guest has credit and buffers for its data,
//! and for writing only while guest data waits for it, so the thread sleeps when nothing can
//! move.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::device::{lock, VsockState};

pub(crate) use crate::worker::Worker;

/// Starts the worker for `state`.
pub(crate) fn start(state: Arc<Mutex<VsockState>>) -> io::Result<Worker> {
    Worker::start("virtio-vsock", move |wake, stop| run(&state, wake, stop))
}

fn run(state: &Mutex<VsockState>, wake: &EventFd, stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        fds.push(libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout = {
            let mut st = lock(state);
            if stop.load(Ordering::Acquire) {
                return;
            }
            st.service();
            st.poll_set(&mut fds)
        };
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfd structures for the
        // duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = wake.read();
        }
    }
}
