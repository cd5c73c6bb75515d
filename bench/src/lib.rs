//! What the bench binaries share: finding tools, failing loudly, and building the initramfs a
//! guest command travels in.

use std::path::{Path, PathBuf};

/// Prints `msg` prefixed with the binary's name and exits 1.
pub fn die(msg: &str) -> ! {
    let me = std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "bench".into());
    eprintln!("{me}: {msg}");
    std::process::exit(1);
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Writes to `out` the image's initramfs plus an archive carrying `script` as the guest
/// command, exactly as `vireo run -- CMD` builds it, so vireo and QEMU boot byte-identical
/// files.
pub fn command_initrd(base: &Path, script: &str, out: &Path) {
    let mut data = std::fs::read(base).unwrap_or_else(|e| die(&format!("{}: {e}", base.display())));
    // The kernel finds an appended archive only on a 4-byte boundary.
    while !data.len().is_multiple_of(4) {
        data.push(0);
    }
    let mut w = vireo_image::cpio::Writer::new();
    w.dir("vireo", 0o755)
        .and_then(|w| w.file(vireo_image::COMMAND_FILE, 0o644, script.as_bytes()))
        .unwrap_or_else(|e| die(&e.to_string()));
    data.extend_from_slice(&w.finish());
    std::fs::write(out, data).unwrap_or_else(|e| die(&format!("{}: {e}", out.display())));
}

/// The run count from the first argument, or `default`; anything else ends the bench.
pub fn run_count(default: usize) -> usize {
    std::env::args()
        .nth(1)
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| die(&format!("bad run count '{a}'")))
        })
        .unwrap_or(default)
}

/// The vireo binary built next to this bench binary (bench/run.sh builds both).
pub fn vireo_binary() -> PathBuf {
    let here = std::env::current_exe().unwrap_or_else(|e| die(&e.to_string()));
    let vireo = here.with_file_name("vireo");
    if !vireo.exists() {
        die("target/release/vireo is missing: run bench/run.sh, which builds it");
    }
    vireo
}
