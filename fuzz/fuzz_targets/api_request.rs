//! The daemon's REST API in-process: the router `vireo daemon` serves (crates/daemon's
//! `api::router`), on a fresh daemon each input (an in-memory store, a scratch state directory,
//! pools allowed only under a scratch root, a VMM program that does not exist, so a start
//! fails at once and cleanly), fed a sequence of HTTP requests from the input through
//! `tower::ServiceExt::oneshot` on a current-thread runtime.
//!
//! What must hold, as crates/daemon/src/api.rs documents it: bad input never gets a 5xx (no
//! VMM runs, so not even the documented 502), nothing panics, and every error is a JSON
//! `{"error", "message"}` body.
//!
//! Input: requests separated by NUL bytes (at most [`MAX_REQUESTS`]), each in HTTP/1.1's
//! shape: `METHOD TARGET` on the first line, `Name: value` header lines, an empty line, the
//! body. `$R` anywhere stands for the scratch root (the kernel file `$R/vmlinux`, the pool root
//! `$R/pools`), so seeds can name paths that exist. Content-Length is set to the body's length,
//! as hyper's framing guarantees, unless the request is chunked. With VIREO_FUZZ_API_LOG set,
//! each answer is printed (for writing seeds).
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use vireo_daemon::api::ErrorBody;
use vireo_daemon::store::Store;
use vireo_daemon::supervisor::Daemon;
use vireo_daemon::DaemonConfig;

const MAX_REQUESTS: usize = 8;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| std::env::temp_dir().join(format!("vireo-fuzz-api-{}", std::process::id())))
}

/// A request from its text; `None` when hyper would not have let it through (a method, target
/// or header that does not parse).
fn request(text: &[u8], root: &str) -> Option<Request<Body>> {
    let text = String::from_utf8_lossy(text).replace("$R", root);
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h.to_owned(), b.to_owned()),
        None => (text.clone(), String::new()),
    };
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let mut words = first.split(' ');
    let method = Method::from_bytes(words.next().unwrap_or_default().as_bytes()).ok()?;
    let uri: Uri = words.next().unwrap_or("/").parse().ok()?;
    let mut req = Request::builder().method(method).uri(uri);
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
        let value = HeaderValue::from_str(value.trim()).ok()?;
        if name == header::CONTENT_LENGTH {
            continue;
        }
        chunked |= name == header::TRANSFER_ENCODING;
        req = req.header(name, value);
    }
    if !chunked {
        req = req.header(header::CONTENT_LENGTH, body.len());
    }
    req.body(Body::from(body)).ok()
}

async fn serve(app: axum::Router, req: Request<Body>) {
    let what = format!("{} {}", req.method(), req.uri());
    let Ok(resp) = app.oneshot(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // Streams (followed logs and events) never end: what came in a moment is enough.
    let body = tokio::time::timeout(
        Duration::from_millis(20),
        axum::body::to_bytes(resp.into_body(), 4 << 20),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let text = body
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    if std::env::var_os("VIREO_FUZZ_API_LOG").is_some() {
        eprintln!(
            "{what} -> {status} {}",
            text.chars().take(300).collect::<String>()
        );
    }
    assert!(
        !status.is_server_error(),
        "{what}: {status} for a request from outside: {text}"
    );
    if status.is_client_error() {
        let parsed = body
            .as_ref()
            .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
        assert!(
            json && parsed.is_some(),
            "{what}: {status} without a JSON error body: {text}"
        );
    }
}

fn fresh(root: &Path) -> Option<DaemonConfig> {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("pools")).ok()?;
    std::fs::write(root.join("vmlinux"), b"not really a kernel").ok()?;
    Some(DaemonConfig {
        state_dir: root.join("state"),
        socket: root.join("vireo.sock"),
        listen: None,
        vmm_program: root.join("no-such-vmm"),
        memory_reserve: 0,
        cpu_ratio: 4.0,
        cgroup_parent: "vireo-fuzz".into(),
        start_timeout: Duration::from_secs(1),
        pool_root: Some(root.join("pools")),
        jail: None,
        // Only `run_blocking` installs it; the fuzzer drives the router directly.
        seccomp: Default::default(),
    })
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    let Some(cfg) = fresh(root) else { return };
    let Ok(store) = Store::in_memory() else {
        return;
    };
    let app = vireo_daemon::api::router(Daemon::new(cfg, store));
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let root_text = root.display().to_string();
    rt.block_on(async {
        for text in data.split(|&b| b == 0).take(MAX_REQUESTS) {
            if let Some(req) = request(text, &root_text) {
                serve(app.clone(), req).await;
            }
        }
    });
    // Stops what the requests left running (followers, a start's supervisor) before the
    // next input's daemon.
    drop(rt);
});
