//! The daemon's client: HTTP/1.1 over the Unix socket (hyper), blocking calls for the CLI, and
//! starting a daemon on demand when none answers (as libvirt's session daemon is started).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon answers on the socket.
    #[error("cannot reach the vireo daemon at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// A daemon could not be started.
    #[error("cannot start a vireo daemon for {}: {message}", socket.display())]
    Spawn { socket: PathBuf, message: String },
    /// The API answered an error.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The connection broke or the answer is not HTTP/JSON.
    #[error("talking to the vireo daemon: {0}")]
    Protocol(String),
}

fn proto(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// A response: status and body.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// How a client starts a daemon when none answers.
pub struct Autostart {
    /// The daemon command (e.g. `vireo daemon --socket S`); it is run in its own session.
    pub command: Command,
    /// Where the daemon's stderr goes.
    pub log: Option<PathBuf>,
}

impl Client {
    pub fn new(socket: &Path) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(proto)?;
        Ok(Client {
            socket: socket.into(),
            rt,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether a daemon answers.
    pub fn ping(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    /// Makes sure a daemon answers, starting one with `start` when none does.
    pub fn ensure_daemon(&self, start: Option<Autostart>) -> Result<(), ClientError> {
        if self.ping() {
            return Ok(());
        }
        let Some(mut a) = start else {
            return std::os::unix::net::UnixStream::connect(&self.socket)
                .map(|_| ())
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                });
        };
        let spawn_err = |message: String| ClientError::Spawn {
            socket: self.socket.clone(),
            message,
        };
        let stderr = match &a.log {
            Some(p) => {
                if let Some(d) = p.parent() {
                    let _ = std::fs::create_dir_all(d);
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map(Stdio::from)
                    .map_err(|e| spawn_err(format!("cannot open {}: {e}", p.display())))?
            }
            None => Stdio::null(),
        };
        a.command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec and calls only setsid, which is
        // async-signal-safe.
        unsafe {
            a.command.pre_exec(|| {
                // Detached: its own session, so it outlives this command and its terminal.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = a.command.spawn().map_err(|e| spawn_err(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.ping() {
                // The daemon runs on; nobody waits for it (init reaps it when we exit).
                return Ok(());
            }
            if let Ok(Some(st)) = child.try_wait() {
                // The daemon's last words say why (a lock held, a socket in use).
                let log = a
                    .log
                    .as_ref()
                    .map(|p| {
                        let text = std::fs::read_to_string(p).unwrap_or_default();
                        match text.lines().rev().find(|l| !l.trim().is_empty()) {
                            Some(l) => format!(": {} (log: {})", l.trim(), p.display()),
                            None => format!(" (log: {})", p.display()),
                        }
                    })
                    .unwrap_or_default();
                return Err(spawn_err(format!("it exited with {st}{log}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(spawn_err("it did not open its socket within 15 s".into()))
    }

    async fn send(
        socket: &Path,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        upgrade: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: socket.into(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(proto)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "vireo");
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(protocol) = upgrade {
            req = req
                .header(hyper::header::CONNECTION, "upgrade")
                .header(hyper::header::UPGRADE, protocol);
        }
        let req = req.body(Full::new(body)).map_err(proto)?;
        sender.send_request(req).await.map_err(proto)
    }

    /// One request with a raw body; the whole answer, whatever its status.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<Answer, ClientError> {
        let method = Method::from_bytes(method.as_bytes()).map_err(proto)?;
        let body = body.into();
        self.rt.block_on(async {
            let resp = Self::send(&self.socket, method, path, content_type, body, None).await?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.into_body().collect().await.map_err(proto)?.to_bytes();
            Ok(Answer {
                status,
                content_type,
                body,
            })
        })
    }

    /// A JSON request; an error status becomes [`ClientError::Api`] with the API's message.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (ct, bytes) = match body {
            Some(b) => (Some("application/json"), Bytes::from(b.to_string())),
            None => (None, Bytes::new()),
        };
        let a = self.raw(method, path, ct, bytes)?;
        check(&a)?;
        if a.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&a.body)
            .map_err(|e| proto(format!("answer to {method} {path}: {e}")))
    }

    /// A GET whose body is handed to `chunk` as it arrives (logs, followed events); `chunk`
    /// returns false to stop.
    pub fn stream(
        &self,
        path: &str,
        mut chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        self.rt.block_on(async {
            let resp =
                Self::send(&self.socket, Method::GET, path, None, Bytes::new(), None).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let b = body.collect().await.map_err(proto)?.to_bytes();
                return check(&Answer {
                    status,
                    content_type: String::new(),
                    body: b,
                });
            }
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(proto)?;
                if let Some(d) = frame.data_ref() {
                    if !chunk(d) {
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    /// Upgrades `GET /vms/{name}/console` to the console's byte stream: a blocking socket and
    /// the bytes that came with the answer.
    pub fn console(
        &self,
        name: &str,
        mode: &str,
    ) -> Result<(std::os::unix::net::UnixStream, Bytes), ClientError> {
        let path = format!("/vms/{name}/console?mode={mode}");
        self.upgrade(Method::GET, &path, "vireo-console")
    }

    /// Upgrades `POST /vms/{name}/exec` to the framed stream of `command` run in the guest.
    pub fn exec(
        &self,
        name: &str,
        command: &[String],
    ) -> Result<(std::os::unix::net::UnixStream, Bytes), ClientError> {
        let json = serde_json::to_string(command).map_err(proto)?;
        let path = format!("/vms/{name}/exec?command={}", percent_encode(&json));
        self.upgrade(Method::POST, &path, "vireo-exec")
    }

    fn upgrade(
        &self,
        method: Method,
        path: &str,
        protocol: &str,
    ) -> Result<(std::os::unix::net::UnixStream, Bytes), ClientError> {
        self.rt.block_on(async {
            let resp = Self::send(
                &self.socket,
                method,
                path,
                None,
                Bytes::new(),
                Some(protocol),
            )
            .await?;
            let status = resp.status();
            if status != StatusCode::SWITCHING_PROTOCOLS {
                let b = resp.into_body().collect().await.map_err(proto)?.to_bytes();
                check(&Answer {
                    status,
                    content_type: String::new(),
                    body: b,
                })?;
                return Err(proto(format!("{path} answered {status}, not an upgrade")));
            }
            let up = hyper::upgrade::on(resp).await.map_err(proto)?;
            let parts = up
                .downcast::<TokioIo<UnixStream>>()
                .map_err(|_| proto("the upgraded connection is not the Unix socket"))?;
            let stream = parts.io.into_inner().into_std().map_err(proto)?;
            stream.set_nonblocking(false).map_err(proto)?;
            Ok((stream, parts.read_buf))
        })
    }
}

/// `s` as a URL query value: unreserved characters as they are, every other byte %XX.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check(a: &Answer) -> Result<(), ClientError> {
    if a.status.is_success() || a.status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    Err(ClientError::Api {
        status: a.status.as_u16(),
        code: v["error"].as_str().unwrap_or("unknown").into(),
        message: v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the daemon answered {}", a.status)),
    })
}
