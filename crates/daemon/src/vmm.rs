//! The daemon's side of the VMM process protocol (version 1): run-directory files and the
//! control socket. The contract (kept by `vireo vmm`): the VMM holds an exclusive flock on
//! DIR/lock for its whole life and writes DIR/pid; it serves line-delimited JSON requests on
//! DIR/control.sock (`hello`, `state`, `pause`, `resume`, `shutdown`, `kill`, `stats`, `watch`,
//! `snapshot`),
//! the console on DIR/console.sock, and writes DIR/exit.json (reason, status, message) before
//! any exit it can see. No exit.json after it is gone means it crashed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub const PROTOCOL: u64 = 1;
pub const CONTROL_SOCK: &str = "control.sock";
pub const CONSOLE_SOCK: &str = "console.sock";

/// How long one control request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a snapshot may take (it copies the writable disks).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The control socket is not there or refuses connections.
    #[error("cannot reach the VMM's control socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    /// The VMM answered {"ok": false}.
    #[error("{message}")]
    Refused { code: String, message: String },
    /// The VMM hung up, timed out or said something that is not the protocol.
    #[error("VMM protocol error: {0}")]
    Protocol(String),
}

/// DIR/exit.json.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExitFile {
    pub reason: String,
    #[serde(default)]
    pub status: i32,
    #[serde(default)]
    pub message: String,
}

/// Reads DIR/exit.json; `None` when there is none (or it is not the protocol's).
pub fn read_exit(dir: &Path) -> Option<ExitFile> {
    let text = std::fs::read(dir.join("exit.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Reads DIR/pid.
pub fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Whether a VMM holds DIR/lock (is alive). Taking the lock means it is gone; it is released
/// at once.
pub fn lock_held(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

async fn connect(dir: &Path) -> Result<UnixStream, VmmError> {
    let path = dir.join(CONTROL_SOCK);
    UnixStream::connect(&path)
        .await
        .map_err(|source| VmmError::Connect {
            path: path.display().to_string(),
            source,
        })
}

fn answer(line: &str) -> Result<Value, VmmError> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| VmmError::Protocol(format!("bad answer {line:?}: {e}")))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v),
        Some(false) => Err(VmmError::Refused {
            code: v["error"].as_str().unwrap_or("internal").into(),
            message: v["message"].as_str().unwrap_or("the VMM refused").into(),
        }),
        None => Err(VmmError::Protocol(format!(
            "answer without \"ok\": {line:?}"
        ))),
    }
}

pub async fn exchange(dir: &Path, req: &Value) -> Result<(Value, BufReader<UnixStream>), VmmError> {
    exchange_within(dir, req, REQUEST_TIMEOUT).await
}

async fn exchange_within(
    dir: &Path,
    req: &Value,
    limit: Duration,
) -> Result<(Value, BufReader<UnixStream>), VmmError> {
    let mut s = connect(dir).await?;
    let mut line = req.to_string();
    line.push('\n');
    let io = |e: std::io::Error| VmmError::Protocol(e.to_string());
    s.write_all(line.as_bytes()).await.map_err(io)?;
    let mut r = BufReader::new(s);
    let mut resp = String::new();
    let n = tokio::time::timeout(limit, r.read_line(&mut resp))
        .await
        .map_err(|_| VmmError::Protocol(format!("no answer to {req} in {limit:?}")))?
        .map_err(io)?;
    if n == 0 {
        return Err(VmmError::Protocol(format!("the VMM hung up on {req}")));
    }
    Ok((answer(resp.trim_end())?, r))
}

/// Sends one request and returns the VMM's `{"ok": true, ...}` answer.
pub async fn request(dir: &Path, op: &str, extra: Value) -> Result<Value, VmmError> {
    let mut req = json!({ "op": op });
    if let (Some(m), Value::Object(e)) = (req.as_object_mut(), extra) {
        m.extend(e);
    }
    Ok(exchange(dir, &req).await?.0)
}

/// What the VMM's `snapshot` answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Taken {
    /// The state file's id.
    pub id: String,
    pub dir: String,
    /// `full` or `diff`.
    pub kind: String,
    #[serde(default)]
    pub memory_pages: u64,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default)]
    pub paused_ms: f64,
    #[serde(default)]
    pub total_ms: f64,
}

/// Asks the VMM for a snapshot in `dir` (absolute, not there yet), a diff of the snapshot in
/// `parent` when given. The VMM leaves no files when it fails.
pub async fn snapshot(dir: &Path, snap: &Path, parent: Option<&Path>) -> Result<Taken, VmmError> {
    let mut req = json!({"op": "snapshot", "dir": snap});
    if let Some(p) = parent {
        req["parent"] = json!(p);
    }
    let (v, _) = exchange_within(dir, &req, SNAPSHOT_TIMEOUT).await?;
    serde_json::from_value(v["snapshot"].clone())
        .map_err(|e| VmmError::Protocol(format!("bad snapshot answer {v}: {e}")))
}

/// Opens a `watch` connection: its lines are state events until EOF (the VMM is gone).
pub async fn watch(dir: &Path) -> Result<tokio::io::Lines<BufReader<UnixStream>>, VmmError> {
    let (_, r) = exchange(dir, &json!({"op": "watch"})).await?;
    Ok(r.lines())
}

/// A watch line.
#[derive(Debug, PartialEq)]
pub enum WatchEvent {
    State(String),
    GuestReady,
    GuestIp(String),
    Other,
}

pub fn parse_watch(line: &str) -> WatchEvent {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return WatchEvent::Other;
    };
    match v["event"].as_str() {
        Some("state") => match v["state"].as_str() {
            Some(s) => WatchEvent::State(s.into()),
            None => WatchEvent::Other,
        },
        Some("guest_ip") => match v["ip"].as_str() {
            Some(ip) => WatchEvent::GuestIp(ip.into()),
            None => WatchEvent::Other,
        },
        Some("guest_ready") => WatchEvent::GuestReady,
        _ => WatchEvent::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(
            answer(r#"{"ok":true,"state":"running"}"#).unwrap()["state"],
            "running"
        );
        match answer(r#"{"ok":false,"error":"conflict","message":"it is paused"}"#) {
            Err(VmmError::Refused { code, message }) => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("conflict", "it is paused")
                )
            }
            r => panic!("{r:?}"),
        }
        assert!(matches!(answer("nope"), Err(VmmError::Protocol(_))));
        assert!(matches!(answer("{}"), Err(VmmError::Protocol(_))));
    }

    #[test]
    fn watch_lines() {
        assert_eq!(
            parse_watch(r#"{"event":"state","state":"paused"}"#),
            WatchEvent::State("paused".into())
        );
        assert_eq!(
            parse_watch(r#"{"event":"guest_ready"}"#),
            WatchEvent::GuestReady
        );
        assert_eq!(parse_watch(r#"{"event":"x"}"#), WatchEvent::Other);
        assert_eq!(parse_watch("garbage"), WatchEvent::Other);
    }

    #[test]
    fn exit_file() {
        let d = std::env::temp_dir().join(format!("vireo-exit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(read_exit(&d), None);
        std::fs::write(
            d.join("exit.json"),
            r#"{"reason":"error","status":125,"message":"no kernel"}"#,
        )
        .unwrap();
        assert_eq!(
            read_exit(&d),
            Some(ExitFile {
                reason: "error".into(),
                status: 125,
                message: "no kernel".into()
            })
        );
        assert!(!lock_held(&d));
        let _ = std::fs::remove_dir_all(&d);
    }
}
