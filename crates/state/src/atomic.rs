//! Writing a file whole or not at all: a temporary file in the same directory, synced, renamed
//! over the target, and the directory synced so the rename itself survives a crash.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Result, StateError};

/// Writes `path` through `fill`, which gets a new empty file. On success the file is synced and
/// renamed to `path`; on failure the temporary file is removed and `path` is untouched.
pub(crate) fn write_with<T>(
    path: &Path,
    fill: impl FnOnce(&File, &Path) -> Result<T>,
) -> Result<T> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| StateError::io(path, std::io::Error::other("not a file name")))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        &random_hex(4)
    ));
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| StateError::io(&tmp, e))?;
    let result = fill(&file, &tmp).and_then(|v| {
        file.sync_all().map_err(|e| StateError::io(&tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| StateError::io(path, e))?;
        sync_dir(&dir)?;
        Ok(v)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io(dir, e))
}

/// `bytes` random bytes as lower-case hex, from the kernel's random source. Should
/// /dev/urandom be unreadable (a sandbox without /dev), the clock, the process id and a counter
/// are hashed instead: good enough to keep ids and temporary names apart, which is all they
/// are for.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let ok = File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        use sha2::Digest;
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut h = sha2::Sha256::new();
        h.update(now.to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let d = h.finalize();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = d[i % d.len()];
        }
    }
    hex(&buf)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
