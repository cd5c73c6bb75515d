//! Where the daemon keeps its state and listens, and its limits: flags, environment, defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vireo_jail::jail::is_root;
use vireo_spec::MemSize;

/// Environment variable naming the program the daemon runs as `PROGRAM vmm --name N --dir D`
/// (default: the daemon's own executable, which is `vireo`). Tests point it at a fake VMM.
pub const VMM_PROGRAM_ENV: &str = "VIREO_VMM_PROGRAM";

/// `vireo daemon`'s flags (the socket is the global `--socket`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DaemonArgs {
    /// Where definitions, the database and VM run directories live (default
    /// $XDG_DATA_HOME/vireo, ~/.local/share/vireo; /var/lib/vireo for root).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Also serve the API on TCP: tcp:ADDR:PORT (needs --token-file).
    #[arg(long, value_name = "tcp:ADDR:PORT")]
    pub listen: Option<String>,
    /// A file holding the bearer token every TCP request must carry.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Host RAM kept for the host: running VMs' memory may not exceed host RAM minus this
    /// (default 1G).
    #[arg(long, value_name = "SIZE")]
    pub memory_reserve: Option<String>,
    /// Most vCPUs per host CPU over all running VMs (default 4).
    #[arg(long, value_name = "RATIO")]
    pub cpu_ratio: Option<f64>,
    /// The cgroup (under each controller's hierarchy) that holds one cgroup per VM.
    #[arg(long, value_name = "NAME", default_value = "vireo")]
    pub cgroup_parent: String,
    /// Make storage pools only inside DIR (default: wherever a client asks and the daemon can
    /// write), for a daemon whose clients should not choose where it writes.
    #[arg(long, value_name = "DIR")]
    pub pool_root: Option<PathBuf>,
    /// Run every VMM in a jail (its own namespaces, a root holding only its files, an
    /// unprivileged user, no capabilities; crates/jail/src/jail.rs), in vms/NAME/jail. A jailed
    /// VM's diff snapshots are refused (its jail does not show it the parent's files).
    #[arg(long)]
    pub jail: bool,
    /// With --jail, for a daemon run as root: the user (and group) the VMMs run as (default
    /// nobody).
    #[arg(long, value_name = "USER[:GROUP]", requires = "jail")]
    pub jail_user: Option<String>,
    /// System-call filters on the daemon's own threads (those that parse requests and talk
    /// to VMMs): kill (a call outside the daemon's list ends the daemon, its VMs run on; the
    /// default), log (it fails with EPERM and is reported on stderr), or off.
    #[arg(long, default_value = "kill", value_name = "MODE")]
    pub seccomp: vireo_jail::Mode,
}

/// Everything the daemon runs with, resolved.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The TCP address and the token it requires.
    pub listen: Option<(SocketAddr, String)>,
    pub vmm_program: PathBuf,
    pub memory_reserve: u64,
    pub cpu_ratio: f64,
    pub cgroup_parent: String,
    /// How long a VMM may take from spawn to a running guest.
    pub start_timeout: Duration,
    /// Where pools may be made (`--pool-root`), absolute; anywhere when `None`.
    pub pool_root: Option<PathBuf>,
    /// Jail the VMMs (`--jail`), as this user (`--jail-user`, checked at start).
    pub jail: Option<JailConfig>,
    /// The daemon's own threads' filter (`--seccomp`).
    pub seccomp: vireo_jail::Mode,
}

/// `--jail [--jail-user USER[:GROUP]]`.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// As given (passed on to each VMM, which looks it up again).
    pub user: Option<String>,
    /// The resolved uid and gid, for the files the daemon gives the VMM (none: the daemon's
    /// own user, in a user namespace).
    pub ids: Option<vireo_jail::Credentials>,
}

/// A flag combination or value the daemon cannot run with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `$XDG_DATA_HOME/vireo`, else `~/.local/share/vireo`; `/var/lib/vireo` for root.
pub fn default_state_dir() -> Result<PathBuf, ConfigError> {
    if is_root() {
        return Ok(PathBuf::from("/var/lib/vireo"));
    }
    if let Some(d) = env_path("XDG_DATA_HOME") {
        return Ok(d.join("vireo"));
    }
    env_path("HOME")
        .map(|h| h.join(".local/share/vireo"))
        .ok_or_else(|| {
            ConfigError("cannot find a state directory: HOME is not set (give --state-dir)".into())
        })
}

/// `$XDG_RUNTIME_DIR/vireo/vireo.sock`, else `<state-dir>/vireo.sock`; `/run/vireo/vireo.sock`
/// for root.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/vireo/vireo.sock");
    }
    match env_path("XDG_RUNTIME_DIR") {
        Some(d) => d.join("vireo/vireo.sock"),
        None => state_dir.join("vireo.sock"),
    }
}

/// The socket a client talks to: `--socket`, then `VIREO_SOCKET`, then the default.
pub fn client_socket(flag: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    if let Some(s) = flag.or_else(|| std::env::var_os("VIREO_SOCKET").map(PathBuf::from)) {
        return Ok(s);
    }
    Ok(default_socket(&default_state_dir()?))
}

/// Parses `tcp:ADDR:PORT` (ADDR may be `[v6]`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    let rest = s.strip_prefix("tcp:").ok_or_else(|| {
        ConfigError(format!(
            "--listen '{s}': expected tcp:ADDR:PORT, e.g. tcp:127.0.0.1:7070"
        ))
    })?;
    rest.parse().map_err(|_| {
        ConfigError(format!(
            "--listen '{s}': '{rest}' is not ADDR:PORT, e.g. tcp:127.0.0.1:7070"
        ))
    })
}

impl DaemonConfig {
    /// Resolves flags, environment and defaults.
    pub fn from_args(args: &DaemonArgs, socket: Option<PathBuf>) -> Result<Self, ConfigError> {
        let state_dir = match &args.state_dir {
            Some(d) => absolute(d)?,
            None => default_state_dir()?,
        };
        let socket = match socket {
            Some(s) => absolute(&s)?,
            None => default_socket(&state_dir),
        };
        let listen = match (&args.listen, &args.token_file) {
            (None, None) => None,
            (None, Some(_)) => return Err(ConfigError("--token-file needs --listen".into())),
            (Some(_), None) => {
                return Err(ConfigError(
                    "--listen needs --token-file FILE: every TCP request must carry its token"
                        .into(),
                ))
            }
            (Some(l), Some(f)) => {
                let addr = parse_listen(l)?;
                let token = std::fs::read_to_string(f)
                    .map_err(|e| {
                        ConfigError(format!("cannot read --token-file {}: {e}", f.display()))
                    })?
                    .trim()
                    .to_string();
                if token.is_empty() {
                    return Err(ConfigError(format!(
                        "--token-file {} is empty",
                        f.display()
                    )));
                }
                Some((addr, token))
            }
        };
        let memory_reserve = match &args.memory_reserve {
            Some(m) => m
                .parse::<MemSize>()
                .map_err(|e| ConfigError(format!("--memory-reserve: {e}")))?
                .bytes(),
            None => 1 << 30,
        };
        let cpu_ratio = args.cpu_ratio.unwrap_or(4.0);
        if !(cpu_ratio.is_finite() && cpu_ratio > 0.0) {
            return Err(ConfigError(format!(
                "--cpu-ratio {cpu_ratio}: expected a number above 0"
            )));
        }
        if crate::names::validate(&args.cgroup_parent).is_err() {
            return Err(ConfigError(format!(
                "--cgroup-parent '{}': expected a name of letters, digits, '_', '.', '-'",
                args.cgroup_parent
            )));
        }
        let vmm_program = match std::env::var_os(VMM_PROGRAM_ENV) {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(|e| ConfigError(format!("cannot find vireo's own executable: {e}")))?,
        };
        Ok(DaemonConfig {
            state_dir,
            socket,
            listen,
            vmm_program,
            memory_reserve,
            cpu_ratio,
            cgroup_parent: args.cgroup_parent.clone(),
            start_timeout: Duration::from_secs(60),
            pool_root: args.pool_root.as_deref().map(absolute).transpose()?,
            jail: jail_config(args)?,
            seccomp: args.seccomp,
        })
    }
}

fn jail_config(args: &DaemonArgs) -> Result<Option<JailConfig>, ConfigError> {
    if !args.jail {
        return Ok(None);
    }
    let ids =
        match (&args.jail_user, is_root()) {
            (Some(u), _) => Some(
                vireo_jail::Credentials::parse(u)
                    .map_err(|e| ConfigError(format!("--jail-user: {e}")))?,
            ),
            (None, true) => Some(vireo_jail::Credentials::parse("nobody").map_err(|e| {
                ConfigError(format!("--jail (as root, the VMMs run as nobody): {e}"))
            })?),
            (None, false) => None,
        };
    if ids.as_ref().is_some_and(|c| c.uid == 0) {
        return Err(ConfigError(
            "--jail-user: the VMMs' user must not be root".into(),
        ));
    }
    Ok(Some(JailConfig {
        user: args.jail_user.clone(),
        ids,
    }))
}

fn absolute(p: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(p).map_err(|e| ConfigError(format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("tcp:127.0.0.1:7070").unwrap(),
            "127.0.0.1:7070".parse().unwrap()
        );
        assert_eq!(
            parse_listen("tcp:[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_listen("127.0.0.1:7070")
            .unwrap_err()
            .0
            .contains("tcp:ADDR:PORT"));
        assert!(parse_listen("tcp:localhost").is_err());
    }

    #[test]
    fn listen_needs_a_token() {
        let args = DaemonArgs {
            state_dir: Some("/tmp/x".into()),
            listen: Some("tcp:127.0.0.1:1".into()),
            cgroup_parent: "vireo".into(),
            ..Default::default()
        };
        let e = DaemonConfig::from_args(&args, None).unwrap_err();
        assert!(e.0.contains("--token-file"), "{e}");
    }
}
