//! `vireo disk`: create, grow and describe disk images (raw and qcow2; qcow2 through imago, see
//! crates/virtio/src/block/image.rs). qemu-img reads what it creates.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use vireo_spec::MemSize;
use vireo_virtio::block::image::{self, ImageInfo};

use crate::run::VIREO_ERROR;

#[derive(Subcommand)]
pub enum DiskCmd {
    /// Create an image: qcow2 (the default) or raw, optionally on a backing file (an overlay:
    /// the VM writes only its own file, the base stays as it is).
    Create {
        path: PathBuf,
        /// Virtual size, e.g. 10G (default: the backing file's).
        size: Option<String>,
        /// qcow2 or raw.
        #[arg(short = 'f', long, default_value = "qcow2")]
        format: String,
        /// The image this one is an overlay on (qcow2 or raw).
        #[arg(short = 'b', long, value_name = "FILE")]
        backing: Option<PathBuf>,
        /// qcow2 cluster size, e.g. 64K (the default) or 2M.
        #[arg(long, value_name = "SIZE")]
        cluster_size: Option<String>,
    },
    /// Grow an image (raw or qcow2) to SIZE; the new space reads as zeroes.
    Resize { path: PathBuf, size: String },
    /// Describe an image and its backing chain.
    Info {
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: DiskCmd) -> u8 {
    match run_inner(cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vireo: {e}");
            VIREO_ERROR
        }
    }
}

fn size(what: &str, s: &str) -> Result<u64, String> {
    let bytes = if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().map_err(|e| format!("{what} '{s}': {e}"))?
    } else {
        s.parse::<MemSize>()
            .map_err(|e| format!("{what} '{s}': {e}"))?
            .bytes()
    };
    if bytes == 0 {
        return Err(format!("{what} '{s}': expected more than 0 bytes"));
    }
    Ok(bytes)
}

fn run_inner(cmd: DiskCmd) -> Result<(), String> {
    match cmd {
        DiskCmd::Create {
            path,
            size: sz,
            format,
            backing,
            cluster_size,
        } => {
            let qcow2 = match format.as_str() {
                "qcow2" => true,
                "raw" => false,
                f => return Err(format!("-f '{f}': expected qcow2 or raw")),
            };
            let bytes = sz.as_deref().map(|s| size("size", s)).transpose()?;
            let cluster = cluster_size
                .as_deref()
                .map(|c| {
                    let n = size("--cluster-size", c)?;
                    if !n.is_power_of_two() || !(512..=2 << 20).contains(&n) {
                        return Err(format!(
                            "--cluster-size '{c}': expected a power of two from 512 to 2M"
                        ));
                    }
                    Ok(n as usize)
                })
                .transpose()?;
            // The overlay records the base by the name given; resolve it from here, as
            // qemu-img does with a relative name (relative to the overlay's directory).
            let backing = backing.map(|b| {
                if b.is_relative() && !b.exists() {
                    path.parent().unwrap_or(Path::new(".")).join(b)
                } else {
                    b
                }
            });
            image::create(&path, qcow2, bytes, backing.as_deref(), cluster)
                .map_err(|e| e.to_string())?;
            let i = image::info(&path).map_err(|e| e.to_string())?;
            println!("{}: {} {}", path.display(), i.format, human(i.virtual_size));
            Ok(())
        }
        DiskCmd::Resize { path, size: s } => {
            let bytes = size("size", &s)?;
            image::resize(&path, bytes).map_err(|e| e.to_string())?;
            let i = image::info(&path).map_err(|e| e.to_string())?;
            println!("{}: {} {}", path.display(), i.format, human(i.virtual_size));
            Ok(())
        }
        DiskCmd::Info { path, json } => {
            let i = image::info(&path).map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&i).map_err(|e| e.to_string())?
                );
            } else {
                print_info(&i, 0);
            }
            Ok(())
        }
    }
}

fn human(b: u64) -> String {
    MemSize(b).to_string()
}

fn print_info(i: &ImageInfo, depth: usize) {
    let pad = "  ".repeat(depth);
    println!("{pad}image: {}", i.path.display());
    println!("{pad}format: {}", i.format);
    println!(
        "{pad}virtual size: {} ({} bytes)",
        human(i.virtual_size),
        i.virtual_size
    );
    println!("{pad}allocated: {} bytes", i.allocated);
    if let Some(v) = i.version {
        println!("{pad}qcow2 version: {v}");
    }
    if let Some(c) = i.cluster_size {
        println!("{pad}cluster size: {c}");
    }
    if i.dirty || i.corrupt || i.encrypted {
        let flags: Vec<&str> = [
            (i.dirty, "dirty"),
            (i.corrupt, "corrupt"),
            (i.encrypted, "encrypted"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        println!("{pad}flags: {}", flags.join(", "));
    }
    if let Some(b) = &i.backing_file {
        println!(
            "{pad}backing file: {b} (format {})",
            i.backing_format.as_deref().unwrap_or("not recorded")
        );
    }
    if let Some(b) = &i.backing {
        print_info(b, depth + 1);
    }
}
