//! Host randomness for virtio-rng: the kernel's `getrandom(2)`, which never blocks once the
//! host's pool is initialised and needs no open file.

use std::io;

/// Fills `buf` from the host's random pool; errors only if the kernel refuses.
pub(crate) fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we borrow
        // mutably for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Large requests may come back short; ask again for the rest.
        done += n as usize;
    }
    Ok(())
}
