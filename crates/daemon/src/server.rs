//! Starting the daemon: the state directory and its lock, the database, the sockets, reattaching
//! to running VMMs, serving until SIGTERM/SIGINT. VMMs are left running when the daemon exits.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::DaemonConfig;
use crate::store::Store;
use crate::supervisor::Daemon;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory cannot be made or used.
    #[error("cannot use state directory {}: {source}", dir.display())]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// Another daemon holds the state directory's lock.
    #[error("another vireo daemon{} is using state directory {}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), dir.display())]
    Locked { dir: PathBuf, pid: Option<u32> },
    /// A live daemon answers on the socket.
    #[error("a vireo daemon is already listening on {}", .0.display())]
    SocketInUse(PathBuf),
    /// The socket cannot be made.
    #[error("cannot listen on {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TCP listener cannot be made.
    #[error("cannot listen on tcp:{addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

fn mkdir_private(dir: &Path) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DaemonError::StateDir {
            dir: dir.into(),
            source,
        })
}

/// Takes `<state-dir>/daemon.lock` (held while the returned file is open) and writes our pid.
fn take_lock(dir: &Path) -> Result<File, DaemonError> {
    let path = dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| DaemonError::StateDir {
            dir: dir.into(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        return Err(DaemonError::Locked {
            dir: dir.into(),
            pid,
        });
    }
    let _ = f.set_len(0);
    let _ = std::fs::write(&path, format!("{}\n", std::process::id()));
    Ok(f)
}

/// Binds the API socket: a stale file (nobody answers) is replaced, a live daemon's never.
fn bind_socket(path: &Path) -> Result<(tokio::net::UnixListener, u64), DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        mkdir_private(parent)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse(path.into()));
        }
        tracing::info!("replacing stale socket {}", path.display());
        std::fs::remove_file(path).map_err(err)?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    let ino = std::fs::metadata(path).map_err(err)?.ino();
    Ok((l, ino))
}

/// Runs the daemon on a runtime of its own until SIGTERM or SIGINT.
pub fn run_blocking(cfg: DaemonConfig) -> Result<(), DaemonError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    // `vireod` in ps and /proc (its threads too): the VMMs are `vireo`.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from a live
    // literal; it renames only this thread.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"vireod".as_ptr()) };
    // The launcher first, unfiltered; then this thread's filter, which every thread started
    // from here on (the runtime's) inherits.
    crate::launcher::start(cfg.vmm_program.clone()).map_err(DaemonError::Other)?;
    vireo_jail::seccomp::confine_daemon(cfg.seccomp)
        .map_err(|e| DaemonError::Other(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vireod")
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Other(format!("cannot start the runtime: {e}")))?;
    rt.block_on(run(cfg))
}

/// Serves until SIGTERM or SIGINT, on the caller's runtime. [`run_blocking`] confines the
/// daemon's threads first; called on its own, nothing is filtered (the VMM launcher starts
/// here, which refuses a filtered caller: its VMMs would inherit the filter).
pub async fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    crate::launcher::start(cfg.vmm_program.clone()).map_err(DaemonError::Other)?;
    mkdir_private(&cfg.state_dir)?;
    let _lock = take_lock(&cfg.state_dir)?;
    let store = Store::open(&cfg.state_dir.join("vireo.db"))?;
    let (unix, ino) = bind_socket(&cfg.socket)?;
    let socket = cfg.socket.clone();
    let listen = cfg.listen.clone();
    let daemon = Daemon::new(cfg, store);
    daemon
        .recover()
        .map_err(|e| DaemonError::Other(format!("reattaching to running VMs: {e}")))?;
    let app = crate::api::router(daemon.clone());
    if let Some((addr, token)) = listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Tcp { addr, source })?;
        let app = app.clone().layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            crate::api::require_token,
        ));
        tracing::info!("listening on tcp:{addr} (bearer token required)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, app).await {
                tracing::error!("tcp listener: {e}");
            }
        });
    }
    tracing::info!(
        "vireo daemon {} on {} (state {})",
        std::process::id(),
        socket.display(),
        daemon.cfg.state_dir.display()
    );
    let serve = axum::serve(unix, app);
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    let result = tokio::select! {
        r = serve => r.map_err(|e| DaemonError::Other(format!("serving {}: {e}", socket.display()))),
        _ = stop => Ok(()),
    };
    // Only our own socket file: a successor may have replaced it.
    if std::fs::metadata(&socket).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(&socket);
    }
    tracing::info!("vireo daemon exits; running VMs keep running");
    result
}
