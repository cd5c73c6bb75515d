use std::path::PathBuf;

/// Everything that can go wrong while finding, fetching, building or opening an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image name is not one vireo knows how to build.
    #[error("unknown image `{name}`: expected one of {known}")]
    UnknownImage { name: String, known: String },

    /// The image is known but has not been pulled into the cache (or is incomplete).
    #[error("image `{name}` is not in the cache ({reason}): run `vireo image pull {name}`")]
    NotPulled { name: String, reason: String },

    /// No cache directory can be derived from the environment.
    #[error(
        "cannot find a cache directory: expected VIREO_CACHE_DIR, XDG_CACHE_HOME or HOME to be set to an absolute path"
    )]
    NoCacheDir,

    /// The host's apt configuration names no main Debian archive.
    #[error(
        "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d: set VIREO_DEBIAN_MIRROR to a Debian archive URL"
    )]
    NoMirror,

    /// A host tool needed to fetch packages is not installed.
    #[error("`{tool}` is not installed: install the Debian package `{package}`")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },

    /// Building the image needs root and vireo runs as another user.
    #[error(
        "building `{image}` needs root: mmdebstrap --mode=root installs the packages and runs their maintainer scripts in a chroot; run `sudo vireo image pull {image}` (the image then goes to root's cache unless VIREO_CACHE_DIR is set)"
    )]
    NeedsRoot { image: String },

    /// The host cannot run the guest architecture's programs, which a root filesystem build
    /// needs for the packages' maintainer scripts.
    #[error(
        "this host cannot run {arch} programs (no enabled binfmt_misc entry for them in /proc/sys/fs/binfmt_misc), which mmdebstrap needs to configure the packages: install the Debian packages `qemu-user-static` and `binfmt-support`, mount binfmt_misc if that directory is empty (`mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc`), then run `update-binfmts --enable qemu-{arch}` (scripts/setup.sh does all of this)"
    )]
    NoBinfmt { arch: &'static str },

    /// A host command ran but did not succeed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },

    /// A file or directory could not be read, written or created.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// The image manifest is not valid JSON of the expected shape.
    #[error("manifest {path} is not a valid vireo image manifest: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// The kernel metapackage could not be resolved to a versioned kernel package.
    #[error("cannot resolve the kernel package of `{meta}`: {reason}")]
    KernelPackage { meta: String, reason: String },

    /// A file expected inside an extracted Debian package is absent.
    #[error("expected {what} in the extracted packages at {path}, found none")]
    MissingFile { what: String, path: PathBuf },

    /// A kernel module file is not an ELF object with a readable `.modinfo` section.
    #[error("kernel module {path}: {reason}")]
    BadModule { path: PathBuf, reason: String },

    /// A required kernel module is neither shipped as a file nor built into the kernel.
    #[error("kernel module `{name}` (needed by {needed_by}) is neither a module file nor listed in modules.builtin")]
    ModuleNotFound { name: String, needed_by: String },

    /// An entry cannot be represented in a cpio "newc" archive.
    #[error("cpio entry `{path}`: {reason}")]
    CpioEntry { path: String, reason: String },
}

impl ImageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
