//! The receive worker: one thread per active device, polling the backend and a wake-up eventfd.
//!
//! Each round it takes the device lock, resumes a blocked transmit, moves received frames into
//! the guest's buffers, asks the state what to wait for, drops the lock and polls. It waits for
//! readability only while no frame is held back for want of a guest buffer and for
//! writability only while a transmit is blocked, so an idle or starved device sleeps.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::device::{lock, NetState};

pub(crate) use crate::worker::Worker;

/// Starts the worker for `state`.
pub(crate) fn start(state: Arc<Mutex<NetState>>) -> io::Result<Worker> {
    Worker::start("virtio-net-rx", move |wake, stop| run(&state, wake, stop))
}

fn run(state: &Mutex<NetState>, wake: &EventFd, stop: &AtomicBool) {
    loop {
        let (fd, events) = {
            let mut st = lock(state);
            if stop.load(Ordering::Acquire) {
                return;
            }
            st.service();
            st.poll_interest()
        };
        let mut fds = [
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structures for the duration of the
        // call; a negative fd is ignored by poll(2).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // poll itself failing (EFAULT/ENOMEM) is not something a retry loop fixes.
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = wake.read();
        }
    }
}
