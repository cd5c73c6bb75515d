//! `vireo disk`: create, grow, describe, convert, check, commit and rebase disk images (raw and
//! qcow2; qcow2 through imago, see crates/virtio/src/block/image.rs). qemu-img reads what it
//! creates and agrees with what it checks.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use vireo_spec::MemSize;
use vireo_virtio::block::image::{self, CheckReport, ImageInfo};
use vireo_virtio::block::DiskFormat;

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
    /// Copy an image into a new one, raw or qcow2, its backing chain flattened; zero and
    /// unallocated ranges are not written (the new image is sparse). DST must not exist; it
    /// appears only once complete.
    Convert {
        src: PathBuf,
        dst: PathBuf,
        /// The source's format, raw or qcow2 (default: found from its content).
        #[arg(short = 'f', long = "source-format", value_name = "FORMAT")]
        source_format: Option<String>,
        /// The new image's format: qcow2 (the default) or raw.
        #[arg(short = 'O', long = "output-format", default_value = "qcow2")]
        output_format: String,
        /// Make the new qcow2 image an overlay on FILE: only what differs from it is written.
        #[arg(short = 'B', long, value_name = "FILE")]
        backing: Option<PathBuf>,
        /// The new qcow2 image's cluster size, e.g. 64K (the default) or 2M.
        #[arg(long, value_name = "SIZE")]
        cluster_size: Option<String>,
    },
    /// Check a qcow2 image's metadata (refcounts against real use, tables inside the file and
    /// aligned, overlapping metadata, COPIED flags, the dirty and corrupt bits). Exit status as
    /// qemu-img check's: 0 clean, 2 corruptions, 3 leaked clusters only, 1 not checked (not
    /// found, in use, not a readable qcow2 image). Raw images have nothing to check (0).
    Check {
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write what a qcow2 overlay holds into its backing file (raw or qcow2, grown if smaller),
    /// then empty the overlay, which reads the same through the updated backing file. Neither
    /// may be in use.
    Commit { path: PathBuf },
    /// Put a qcow2 image on another backing file. By default the guest's disk stays the same:
    /// every range the image does not hold where the old and the new backing file differ is
    /// copied into it first. With -u only the backing file name is rewritten (for a backing
    /// file that was moved or renamed).
    Rebase {
        path: PathBuf,
        /// The new backing file (a relative name is relative to the image's directory); ''
        /// makes the image standalone.
        #[arg(
            short = 'b',
            long,
            value_name = "FILE",
            required_unless_present = "no_backing"
        )]
        backing: Option<String>,
        /// Make the image standalone (the same as -b '').
        #[arg(long, conflicts_with = "backing")]
        no_backing: bool,
        /// The new backing file's format, raw or qcow2 (default: found from its content).
        #[arg(short = 'F', long, value_name = "FORMAT")]
        backing_format: Option<String>,
        /// Only rewrite the name; copy nothing.
        #[arg(short = 'u', long = "unsafe")]
        unsafe_: bool,
    },
}

/// `vireo disk check`: the image could not be checked (qemu-img check's code for it).
const CHECK_FAILED: u8 = 1;

pub fn run(cmd: DiskCmd) -> u8 {
    if let DiskCmd::Check { path, json } = cmd {
        return check(&path, json);
    }
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

fn format_arg(flag: &str, f: &str) -> Result<DiskFormat, String> {
    match f {
        "qcow2" => Ok(DiskFormat::Qcow2),
        "raw" => Ok(DiskFormat::Raw),
        f => Err(format!("{flag} '{f}': expected qcow2 or raw")),
    }
}

fn cluster_arg(c: &str) -> Result<usize, String> {
    let n = size("--cluster-size", c)?;
    if !n.is_power_of_two() || !(512..=2 << 20).contains(&n) {
        return Err(format!(
            "--cluster-size '{c}': expected a power of two from 512 to 2M"
        ));
    }
    Ok(n as usize)
}

/// A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
fn bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn with_bar<T>(
    what: &str,
    f: impl FnOnce(image::Progress) -> std::io::Result<T>,
) -> Result<T, String> {
    let b = bar(what);
    let r = f(&mut |done, total| {
        b.set_length(total);
        b.set_position(done);
    });
    b.finish_and_clear();
    r.map_err(|e| e.to_string())
}

fn check(path: &Path, json: bool) -> u8 {
    let report = match image::check(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vireo: {e}");
            return CHECK_FAILED;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("vireo: {e}");
                return CHECK_FAILED;
            }
        }
    } else {
        print_check(&report);
    }
    report.exit_code()
}

fn print_check(r: &CheckReport) {
    let p = r.path.display();
    if r.format == "raw" {
        println!("{p}: a raw image has no metadata: nothing to check");
        return;
    }
    for m in &r.messages {
        eprintln!("{m}");
    }
    if r.corruptions > 0 {
        println!(
            "{p}: {} corruption(s) and {} leaked cluster(s) found: the metadata is inconsistent \
             and a write may destroy data; copy what can be read (vireo disk convert) or repair \
             it (qemu-img check -r all) before using it",
            r.corruptions, r.leaks
        );
    } else if r.leaks > 0 {
        println!(
            "{p}: {} leaked cluster(s) found: they waste space but the data is intact \
             (qemu-img check -r leaks frees them)",
            r.leaks
        );
    } else {
        println!("{p}: no errors found");
    }
    let pct = |n: u64| {
        if r.total_clusters == 0 {
            0.0
        } else {
            n as f64 * 100.0 / r.total_clusters as f64
        }
    };
    println!(
        "{}/{} = {:.2}% allocated, {:.2}% compressed clusters; image end offset: {}",
        r.allocated_clusters,
        r.total_clusters,
        pct(r.allocated_clusters),
        pct(r.compressed_clusters),
        r.image_end_offset
    );
}

fn run_inner(cmd: DiskCmd) -> Result<(), String> {
    match cmd {
        DiskCmd::Check { .. } => unreachable!("handled by run"),
        DiskCmd::Convert {
            src,
            dst,
            source_format,
            output_format,
            backing,
            cluster_size,
        } => {
            let qcow2 = format_arg("-O", &output_format)? == DiskFormat::Qcow2;
            let opts = image::ConvertOptions {
                src_format: source_format
                    .as_deref()
                    .map(|f| format_arg("-f", f))
                    .transpose()?,
                qcow2,
                cluster_size: cluster_size.as_deref().map(cluster_arg).transpose()?,
                backing: backing.map(|b| resolve_backing(&dst, b)),
            };
            if !qcow2 && (opts.backing.is_some() || opts.cluster_size.is_some()) {
                return Err("-B and --cluster-size are for a qcow2 image (-O qcow2)".into());
            }
            with_bar("converting", |p| image::convert(&src, &dst, &opts, p))?;
            let i = image::info(&dst).map_err(|e| e.to_string())?;
            println!("{}: {} {}", dst.display(), i.format, human(i.virtual_size));
            Ok(())
        }
        DiskCmd::Commit { path } => {
            let base = with_bar("committing", |p| image::commit(&path, p))?;
            println!("{}: committed into {}", path.display(), base.display());
            Ok(())
        }
        DiskCmd::Rebase {
            path,
            backing,
            no_backing,
            backing_format,
            unsafe_,
        } => {
            let backing = if no_backing {
                None
            } else {
                backing.filter(|b| !b.is_empty())
            };
            let opts = image::RebaseOptions {
                backing_format: backing_format
                    .as_deref()
                    .map(|f| format_arg("-F", f))
                    .transpose()?,
                backing,
                unsafe_names_only: unsafe_,
            };
            with_bar("rebasing", |p| image::rebase(&path, &opts, p))?;
            match &opts.backing {
                Some(b) => println!("{}: now on {b}", path.display()),
                None => println!("{}: now standalone", path.display()),
            }
            Ok(())
        }
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
            let cluster = cluster_size.as_deref().map(cluster_arg).transpose()?;
            let backing = backing.map(|b| resolve_backing(&path, b));
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

/// The overlay records the base by the name given; resolve it from here, as qemu-img does
/// with a relative name (relative to the overlay's directory).
fn resolve_backing(overlay: &Path, b: PathBuf) -> PathBuf {
    if b.is_relative() && !b.exists() {
        overlay.parent().unwrap_or(Path::new(".")).join(b)
    } else {
        b
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
