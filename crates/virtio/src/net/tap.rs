//! A pre-created tap device, opened through /dev/net/tun.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::Recv;
use super::NetError;

/// Linux's limit on interface names, NUL excluded (`IFNAMSIZ - 1`).
const MAX_IFNAME: usize = 15;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union is
/// padding for this request).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap device: each read returns one frame, each write sends one.
pub(crate) struct Tap {
    file: File,
}

impl Tap {
    /// Opens the existing tap `name`. Refuses to create one: whoever sets up the host network
    /// creates the tap (and its addresses, bridge, firewall) beforehand.
    pub(crate) fn open(name: &str) -> Result<Tap, NetError> {
        let bad_name = || NetError::TapName { name: name.into() };
        if name.is_empty() || name.len() > MAX_IFNAME || name.contains('/') {
            return Err(bad_name());
        }
        let cname = CString::new(name).map_err(|_| bad_name())?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(NetError::TapMissing { name: name.into() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| NetError::TunOpen {
                name: name.into(),
                source,
            })?;
        let mut req = IfReqFlags {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(cname.as_bytes()) {
            *d = *s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes on Linux, which `IfReqFlags`
        // matches in size and in the layout of the fields it reads) from a pointer that is valid
        // for the duration of the call; `file` is an open /dev/net/tun descriptor.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF as _,
                &mut req as *mut IfReqFlags,
            )
        };
        if rc < 0 {
            return Err(NetError::TapAttach {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap { file })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub(crate) fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.file.write(frame) {
            Ok(_) => Ok(()),
            // The tap's queue is full: drop the frame, as a switch would.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        loop {
            match self.file.read(buf) {
                Ok(0) => return Ok(Recv::Empty),
                Ok(n) => return Ok(Recv::Frame(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Recv::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == 40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_tap() {
        let e = Tap::open("vireo-no-such").err().unwrap();
        assert!(matches!(e, NetError::TapMissing { .. }), "{e}");
        assert!(e.to_string().contains("vireo-no-such"), "{e}");
        let e = Tap::open("a-name-longer-than-15").err().unwrap();
        assert!(e.to_string().contains("a-name-longer-than-15"), "{e}");
        assert!(matches!(Tap::open(""), Err(NetError::TapName { .. })));
        // `lo` exists but is not a tap: TUNSETIFF refuses it (or /dev/net/tun is missing).
        let e = Tap::open("lo").err().unwrap();
        assert!(
            matches!(e, NetError::TapAttach { .. } | NetError::TunOpen { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("\"lo\""), "{e}");
    }
}
