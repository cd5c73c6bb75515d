//! A private apt setup per (suite, architecture): its own sources, lists, cache and an
//! empty dpkg status, so fetching guest packages never reads or changes the host's apt
//! state. Signatures are still checked against the host's trusted keys, as apt does.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ImageError;

/// Commands this module runs and the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
];

/// Fails with the providing package's name if a needed host tool is absent.
pub(crate) fn check_tools() -> Result<(), ImageError> {
    for &(tool, package) in TOOLS {
        if find_in_path(tool).is_none() {
            return Err(ImageError::ToolMissing { tool, package });
        }
    }
    Ok(())
}

pub(crate) fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

pub(crate) struct Apt {
    root: PathBuf,
    arch: String,
}

impl Apt {
    /// Lays out the private apt directories under `root` and points the sources at
    /// `mirror`. Existing lists are kept so a later update only fetches what changed.
    pub fn prepare(root: &Path, mirror: &str, suite: &str, arch: &str) -> Result<Self, ImageError> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "state",
            "etc/preferences.d",
        ] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| ImageError::io("create directory", &d, e))?;
        }
        let sources = root.join("etc/sources.list");
        std::fs::write(
            &sources,
            format!("deb [arch={arch}] {mirror} {suite} main\n"),
        )
        .map_err(|e| ImageError::io("write", &sources, e))?;
        let status = root.join("state/status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(|e| ImageError::io("write", &status, e))?;
        }
        Ok(Apt {
            root: root.to_path_buf(),
            arch: arch.to_string(),
        })
    }

    fn options(&self) -> Vec<String> {
        let r = self.root.display();
        let mut opts = vec![
            format!("-oAPT::Architecture={}", self.arch),
            format!("-oAPT::Architectures={}", self.arch),
            format!("-oDir::State={r}/state"),
            format!("-oDir::State::Lists={r}/lists"),
            format!("-oDir::State::Status={r}/state/status"),
            format!("-oDir::Cache={r}/cache"),
            format!("-oDir::Etc::SourceList={r}/etc/sources.list"),
            "-oDir::Etc::SourceParts=/nonexistent".to_string(),
            // Host pins must not change which guest packages are chosen.
            format!("-oDir::Etc::Preferences={r}/etc/preferences"),
            format!("-oDir::Etc::PreferencesParts={r}/etc/preferences.d"),
            // Run as root, apt would hand downloads to the `_apt` user, which cannot
            // write into a user's cache directory.
            "-oAPT::Sandbox::User=root".to_string(),
            // Only the Packages index is needed; skip translations and AppStream data.
            "-oAcquire::Languages=none".to_string(),
        ];
        for target in [
            "DEP-11",
            "DEP-11-icons",
            "DEP-11-icons-small",
            "DEP-11-icons-large",
            "DEP-11-icons-hidpi",
            "Contents-deb",
        ] {
            opts.push(format!(
                "-oAcquire::IndexTargets::deb::{target}::DefaultEnabled=false"
            ));
        }
        opts
    }

    pub fn update(&self) -> Result<(), ImageError> {
        run(Command::new("apt-get").args(self.options()).arg("update"))?;
        Ok(())
    }

    /// The `apt-cache show` record of the candidate version of `pkg`, or `None` when
    /// the archive has no such (real) package.
    pub fn show(&self, pkg: &str) -> Result<Option<String>, ImageError> {
        let mut cmd = Command::new("apt-cache");
        cmd.args(self.options())
            .args(["show", "--no-all-versions", pkg]);
        match run(&mut cmd) {
            Ok(out) if out.trim().is_empty() => Ok(None),
            Ok(out) => Ok(Some(out)),
            Err(ImageError::Command { output, .. })
                if output.contains("No packages found") || output.contains("purely virtual") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Downloads the candidate versions of `pkgs` as `.deb` files into `dest`.
    pub fn download(&self, pkgs: &[String], dest: &Path) -> Result<(), ImageError> {
        std::fs::create_dir_all(dest).map_err(|e| ImageError::io("create directory", dest, e))?;
        run(Command::new("apt-get")
            .args(self.options())
            .arg("download")
            .args(pkgs)
            .current_dir(dest))?;
        Ok(())
    }
}

/// Package name and version recorded in a `.deb`.
pub(crate) fn deb_identity(deb: &Path) -> Result<(String, String), ImageError> {
    let out = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .args(["Package", "Version"]))?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    match (field("Package"), field("Version")) {
        (Some(p), Some(v)) => Ok((p, v)),
        _ => Err(ImageError::Command {
            command: format!("dpkg-deb -f {} Package Version", deb.display()),
            status: "unexpected output".into(),
            output: format!("expected Package and Version fields, got: {out}"),
        }),
    }
}

pub(crate) fn extract(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    Ok(())
}

/// The versioned package a kernel metapackage depends on, from its `apt-cache show`
/// record: the first `linux-image-*` name in `Depends`, ignoring version constraints.
pub(crate) fn kernel_dependency(record: &str) -> Option<String> {
    let depends = record.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends
        .split([',', '|'])
        .map(|alt| {
            let name = alt.split_whitespace().next().unwrap_or("");
            name.split(':').next().unwrap_or("").to_string()
        })
        .find(|name| name.starts_with("linux-image-"))
}

/// Runs a command with a fixed locale and returns its standard output; on failure the
/// error carries the end of its output, which is where apt and dpkg explain themselves.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args().filter(|a| !is_option(a)))
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| ImageError::Command {
            command: shown.clone(),
            status: "could not start".into(),
            output: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
    let tail = all[all.len().saturating_sub(15)..].join("\n");
    Err(ImageError::Command {
        command: shown,
        status: out.status.to_string(),
        output: tail,
    })
}

/// The long `-o` settings would drown the interesting part of an error message.
fn is_option(arg: &OsStr) -> bool {
    arg.to_string_lossy().starts_with("-o")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dependency_from_record() {
        let record = "Package: linux-image-riscv64\nVersion: 6.12.107-1\n\
            Depends: linux-image-6.12.107+deb13-riscv64 (= 6.12.107-1)\nDescription: x\n";
        assert_eq!(
            kernel_dependency(record).as_deref(),
            Some("linux-image-6.12.107+deb13-riscv64")
        );
        let record = "Package: m\nDepends: initramfs-tools | linux-initramfs-tool, \
            linux-image-6.1.0-40-cloud-amd64:amd64 (>= 6.1)\n";
        assert_eq!(
            kernel_dependency(record).as_deref(),
            Some("linux-image-6.1.0-40-cloud-amd64")
        );
        assert_eq!(kernel_dependency("Package: m\n"), None);
    }

    #[test]
    fn missing_tool_names_package() {
        let e = ImageError::ToolMissing {
            tool: "dpkg-deb",
            package: "dpkg",
        };
        assert!(e.to_string().contains("install the Debian package `dpkg`"));
    }
}
