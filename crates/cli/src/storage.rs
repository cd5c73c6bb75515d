//! `vireo pool` and `vireo volume`: the daemon's storage pools and their volumes
//! (crates/daemon/src/storage.rs), each verb one or a few requests to its `/pools` routes. A VM
//! names a volume as `--disk vol:POOL/NAME` (`vol:NAME` in the default pool).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{json, Value};
use vireo_daemon::client::Client;

use crate::manage::{abs, seg};
use crate::run::{fail, Failure};

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Define a pool on a directory: an empty one, or a new one (made; its parent must exist).
    Create {
        /// 1-63 of letters, digits, '_', '.', '-', starting with a letter or digit.
        name: String,
        #[arg(long, value_name = "DIR")]
        path: PathBuf,
    },
    /// List pools: their file system's capacity, allocation and available space, and how many
    /// volumes each holds.
    Ls {
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a pool; its directory goes too if the daemon made it and it is empty. A pool a VM
    /// uses is kept, and one with volumes unless --force.
    Rm {
        name: String,
        /// Forget it although it holds volumes (their files stay).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume: qcow2 (the default) or raw, optionally on a backing image (an overlay:
    /// the base is only read).
    Create {
        /// The pool (default: the daemon's default pool).
        #[arg(long, default_value = "default")]
        pool: String,
        /// Its file name in the pool: letters, digits, '_', '.', '+', '-'.
        name: String,
        /// Virtual size, e.g. 10G or 512M (a bare number is bytes); default: the backing
        /// image's.
        size: Option<String>,
        /// qcow2 or raw.
        #[arg(short = 'f', long, default_value = "qcow2")]
        format: String,
        /// The backing image: a volume of the pool (NAME), another pool's (vol:POOL/NAME), or
        /// a file (a path with a '/').
        #[arg(short = 'b', long, value_name = "VOL-or-PATH")]
        backing: Option<String>,
    },
    /// List volumes: format, virtual and allocated size, and the VMs (and overlay volumes)
    /// that use each.
    Ls {
        /// Only this pool's (default: every pool's).
        #[arg(long)]
        pool: Option<String>,
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a volume's file; one a VM or another volume uses is kept.
    Rm {
        #[arg(long, default_value = "default")]
        pool: String,
        name: String,
    },
    /// Make a volume from another of the same pool: a full copy, or with --overlay a qcow2
    /// overlay on it.
    Clone {
        #[arg(long, default_value = "default")]
        pool: String,
        /// The volume to clone.
        src: String,
        /// The new volume's name.
        new: String,
        /// A qcow2 overlay on SRC (which it then only reads) instead of a copy.
        #[arg(long)]
        overlay: bool,
    },
}

/// A size as `vireo volume create` takes it: bytes, or a number with K, M, G or T (powers of
/// 1024, with an optional B or iB).
fn parse_size(s: &str) -> Result<u64, Failure> {
    let err = || {
        fail(format!(
            "size '{s}': expected a number of bytes or one with K, M, G or T, e.g. 10G"
        ))
    };
    let upper = s.trim().to_ascii_uppercase();
    let unit = upper.trim_start_matches(|c: char| c.is_ascii_digit());
    let digits = &upper[..upper.len() - unit.len()];
    let shift = match unit
        .strip_suffix("IB")
        .or(unit.strip_suffix('B'))
        .unwrap_or(unit)
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(err()),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Bytes as `64G`, `1.5G`, `196K`, `512B`.
pub(crate) fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() < 0.05 || v >= 100.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn cwd() -> Result<PathBuf, Failure> {
    std::env::current_dir().map_err(|e| fail(format!("cannot read the current directory: {e}")))
}

/// A volume's line: `POOL/NAME: FORMAT SIZE`.
fn summary(v: &Value) -> String {
    format!(
        "{}/{}: {} {}",
        v["pool"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        v["format"].as_str().unwrap_or(""),
        human(v["virtual_size_bytes"].as_u64().unwrap_or(0))
    )
}

pub fn pool(c: &Client, cmd: PoolCmd) -> Result<(), Failure> {
    match cmd {
        PoolCmd::Create { name, path } => {
            let path = abs(&cwd()?, &path);
            let p = c
                .call("POST", "/pools", Some(&json!({"name": name, "path": path})))
                .map_err(fail)?;
            println!("{name}: {}", p["path"].as_str().unwrap_or(""));
            Ok(())
        }
        PoolCmd::Ls { json } => {
            let v = c.call("GET", "/pools", None).map_err(fail)?;
            if json {
                println!("{}", pretty(&v));
                return Ok(());
            }
            println!(
                "{:<16} {:>9} {:>10} {:>9} {:>7}  PATH",
                "NAME", "CAPACITY", "ALLOCATION", "AVAILABLE", "VOLUMES"
            );
            for p in v.as_array().into_iter().flatten() {
                let n = |k: &str| human(p[k].as_u64().unwrap_or(0));
                println!(
                    "{:<16} {:>9} {:>10} {:>9} {:>7}  {}{}",
                    p["name"].as_str().unwrap_or(""),
                    n("capacity_bytes"),
                    n("allocation_bytes"),
                    n("available_bytes"),
                    p["volumes"].as_u64().unwrap_or(0),
                    p["path"].as_str().unwrap_or(""),
                    p["error"]
                        .as_str()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        PoolCmd::Rm { name, force } => {
            c.call(
                "DELETE",
                &format!("/pools/{}?force={force}", seg(&name)),
                None,
            )
            .map_err(fail)?;
            println!("{name}");
            Ok(())
        }
    }
}

pub fn volume(c: &Client, cmd: VolumeCmd) -> Result<(), Failure> {
    match cmd {
        VolumeCmd::Create {
            pool,
            name,
            size,
            format,
            backing,
        } => {
            if !matches!(format.as_str(), "qcow2" | "raw") {
                return Err(fail(format!("-f '{format}': expected qcow2 or raw")));
            }
            let size = size.as_deref().map(parse_size).transpose()?;
            // A file is named by a path, which the daemon needs absolute; a bare name is a
            // volume of the pool.
            let backing = match backing {
                Some(b) if !b.starts_with("vol:") && b.contains('/') => {
                    Some(abs(&cwd()?, Path::new(&b)).display().to_string())
                }
                b => b,
            };
            let mut body = json!({"name": name, "format": format});
            if let Some(s) = size {
                body["size_bytes"] = json!(s);
            }
            if let Some(b) = backing {
                body["backing"] = json!(b);
            }
            let v = c
                .call(
                    "POST",
                    &format!("/pools/{}/volumes", seg(&pool)),
                    Some(&body),
                )
                .map_err(fail)?;
            println!("{}", summary(&v));
            Ok(())
        }
        VolumeCmd::Ls { pool, json } => {
            let pools: Vec<String> = match pool {
                Some(p) => vec![p],
                None => c
                    .call("GET", "/pools", None)
                    .map_err(fail)?
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str().map(str::to_string))
                    .collect(),
            };
            let mut all = Vec::new();
            for p in &pools {
                let v = c
                    .call("GET", &format!("/pools/{}/volumes", seg(p)), None)
                    .map_err(fail)?;
                all.extend(v.as_array().cloned().unwrap_or_default());
            }
            if json {
                println!("{}", pretty(&Value::Array(all)));
                return Ok(());
            }
            println!(
                "{:<12} {:<24} {:<7} {:>7} {:>9}  USED BY",
                "POOL", "NAME", "FORMAT", "SIZE", "ALLOCATED"
            );
            for v in &all {
                let users: Vec<&str> = ["used_by", "backs"]
                    .iter()
                    .flat_map(|k| v[*k].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<12} {:<24} {:<7} {:>7} {:>9}  {}",
                    v["pool"].as_str().unwrap_or(""),
                    v["name"].as_str().unwrap_or(""),
                    v["format"].as_str().unwrap_or(""),
                    human(v["virtual_size_bytes"].as_u64().unwrap_or(0)),
                    human(v["allocated_bytes"].as_u64().unwrap_or(0)),
                    if users.is_empty() {
                        "-".to_string()
                    } else {
                        users.join(", ")
                    }
                );
            }
            Ok(())
        }
        VolumeCmd::Rm { pool, name } => {
            c.call(
                "DELETE",
                &format!("/pools/{}/volumes/{}", seg(&pool), seg(&name)),
                None,
            )
            .map_err(fail)?;
            println!("{pool}/{name}");
            Ok(())
        }
        VolumeCmd::Clone {
            pool,
            src,
            new,
            overlay,
        } => {
            let v = c
                .call(
                    "POST",
                    &format!("/pools/{}/volumes/{}/clone", seg(&pool), seg(&src)),
                    Some(&json!({"name": new, "overlay": overlay})),
                )
                .map_err(fail)?;
            let how = if overlay { "overlay on" } else { "copy of" };
            println!("{} ({how} {src})", summary(&v));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let ok = |s: &str| parse_size(s).ok();
        assert_eq!(ok("4096"), Some(4096));
        assert_eq!(ok("10G"), Some(10 << 30));
        assert_eq!(ok("512m"), Some(512 << 20));
        assert_eq!(ok("2TiB"), Some(2 << 40));
        assert_eq!(ok("64KB"), Some(64 << 10));
        for bad in [
            "",
            "G",
            "1.5G",
            "-1",
            "10X",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(human(0), "0B");
        assert_eq!(human(64 << 30), "64G");
        assert_eq!(human(3 << 29), "1.5G");
        assert_eq!(human(200 << 10), "200K");
        assert_eq!(human((250 << 30) + 1), "250G");
    }
}
