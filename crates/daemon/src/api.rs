//! The REST API of `vireo daemon`: HTTP/1.1 with JSON bodies, on the daemon's Unix socket (mode
//! 0600: whoever can open it owns the VMs) and optionally on TCP, where every request carries
//! `Authorization: Bearer <token>`. The contract is the OpenAPI 3 document this module
//! generates (`GET /openapi.json`, checked in as docs/api/openapi.json; a test fails when the
//! router and the document disagree or the file is stale).
//!
//! Resources:
//! - `POST /vms` `{"name", "spec"}` defines a VM (201); `GET /vms`, `GET /vms/{name}`,
//!   `DELETE /vms/{name}?force=true` (204; without force only a VM with no VMM).
//! - `POST /vms/{name}/start` (`{"wait_ready": true}` waits for the guest's /init), `/pause`,
//!   `/resume`, `/stop` (`{"timeout_secs": N}`: a guest power-off, forced after N s, default
//!   30), `/kill`, `/restart`: each answers the VM after the change.
//! - `GET /vms/{name}/logs?follow=true` (console.log as text/plain), `/stats` (the VMM's
//!   stats), `/console` (an HTTP Upgrade to the VMM's console stream: the client's first line
//!   is `rw` or `ro`, unless `?mode=` gave it); `POST /vms/{name}/exec?command=JSON` (an HTTP
//!   Upgrade to a framed stream: the command's stdin, stdout, stderr and exit status).
//! - `GET /events?since=ID&vm=NAME&follow=true` (a JSON array, or with follow JSON lines as they
//!   happen), `GET /metrics` (Prometheus text), `GET /host`, `GET /openapi.json`.
//! - Storage (crates/daemon/src/storage.rs): `GET /pools`, `POST /pools` `{"name", "path"}`
//!   (201), `GET /pools/{pool}`, `DELETE /pools/{pool}?force=true` (204; force forgets a pool
//!   that still has volumes, keeping the files); `GET /pools/{pool}/volumes`,
//!   `POST /pools/{pool}/volumes` `{"name", "size_bytes", "format", "backing"}` (201),
//!   `GET /pools/{pool}/volumes/{name}`, `DELETE /pools/{pool}/volumes/{name}` (204),
//!   `POST /pools/{pool}/volumes/{name}/clone` `{"name", "overlay"}` (201).
//! - Snapshots (crates/daemon/src/snapshots.rs): `POST /vms/{name}/snapshots` `{"name", "diff"}`
//!   (201; of a running or paused VM), `GET /snapshots?vm=NAME`, `GET /snapshots/{snap}`,
//!   `DELETE /snapshots/{snap}` (204; 409 while a diff, a restored VM or another snapshot's
//!   disks depend on it), `POST /snapshots/{snap}/restore` `{"name", "paused", "force"}` (201:
//!   the new VM, running or paused), `POST /snapshots/{snap}/clone` and `POST /vms/{name}/clone`
//!   `{"count", "prefix"}` (201: the clones, each with fresh MACs and vsock CID).
//!
//! VM and pool names are 1–63 characters of `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; volume names 1–255 of
//! `[a-zA-Z0-9_][a-zA-Z0-9_.+-]*`.
//!
//! Errors are `{"error": CODE, "message": TEXT}`: 400 `bad_request` (malformed JSON or query;
//! a pool or volume name, size or path that cannot be), 401 `unauthorized`, 404 `not_found`
//! (naming the VM, pool, volume or route), 405 `method_not_allowed`, 409 `conflict` (a taken
//! name; a request the VM's state forbids, naming the state; a volume or pool in use, naming
//! the VM or volume; a pool with volumes; an image someone writes) and `insufficient_capacity`
//! (with the numbers; a pool's full file system), 413 `payload_too_large` (bodies over 1 MiB),
//! 415 `unsupported_media_type` (a body that is not application/json), 422 `invalid_body`
//! (unknown fields, wrong types), `invalid_spec` (a definition that cannot run: values, paths,
//! image) and `start_failed` (the VMM's own message), 500 `internal`, 502 `vmm_error`. Bad
//! input never gets a 5xx.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::capacity::{self, HostInfo, Usage};
use crate::metrics;
use crate::snapshots::{CloneReport, SnapshotInfo};
use crate::storage::{self, DiskInfo, PoolInfo, VolumeInfo};
use crate::store::{Event, ExitInfo};
use crate::supervisor::{Daemon, Error, VmInfo};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

type AppState = Arc<Daemon>;

/// An error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable: not_found, conflict, invalid_body, ...
    pub error: String,
    /// What went wrong, naming the thing.
    pub message: String,
}

/// An error with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.into(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Capacity(_) => (StatusCode::CONFLICT, "insufficient_capacity"),
            Error::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec"),
            Error::StartFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "start_failed"),
            Error::Vmm(_) => (StatusCode::BAD_GATEWAY, "vmm_error"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Missing(_) => (StatusCode::NOT_FOUND, "not_found"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

/// Reads a JSON body: 413 past [`MAX_BODY`], 415 without a JSON content type, 400 for
/// malformed JSON, 422 for a well-formed body of the wrong shape. An empty body is `None`.
async fn read_json<T: DeserializeOwned>(req: Request) -> ApiResult<Option<T>> {
    let json = is_json(req.headers());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over {MAX_BODY} bytes"),
        )
    };
    // Refused before reading any of it: the client learns at once, not after sending 1 MiB.
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let bytes = Bytes::from_request(req, &()).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON (Content-Type: application/json)",
        ));
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("invalid request body: {e}"),
            ),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("malformed JSON in the request body: {e}"),
            ),
        }
    })
}

/// A required JSON body.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _: &S) -> ApiResult<Self> {
        match read_json(req).await? {
            Some(v) => Ok(JsonBody(v)),
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request needs a JSON body",
            )),
        }
    }
}

/// An optional JSON body: empty means the type's default.
pub struct OptBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _: &S) -> ApiResult<Self> {
        // No body and a JSON `null` both mean the defaults.
        Ok(OptBody(
            read_json::<Option<T>>(req)
                .await?
                .flatten()
                .unwrap_or_default(),
        ))
    }
}

/// Query parameters, with a JSON 400 when they do not parse.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &S) -> ApiResult<Self> {
        Query::<T>::from_request_parts(parts, s)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid query: {}", e.body_text()),
                )
            })
    }
}

/// The `{name}` path segment, with a JSON 400 when it is not UTF-8 after percent-decoding.
pub struct VmName(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for VmName {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &S) -> ApiResult<Self> {
        Path::<String>::from_request_parts(parts, s)
            .await
            .map(|Path(n)| VmName(n))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
    }
}

/// Path segments (`{pool}`, `{pool}/{name}`), with a JSON 400 when they do not decode.
pub struct Segs<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for Segs<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &S) -> ApiResult<Self> {
        Path::<T>::from_request_parts(parts, s)
            .await
            .map(|Path(v)| Segs(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
    }
}

/// Runs `f` on a blocking thread: storage requests read and write image files, and a clone
/// copies a whole one.
async fn blocking<T: Send + 'static>(
    d: AppState,
    f: impl FnOnce(&Daemon) -> Result<T, Error> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(move || f(&d))
        .await
        .map_err(|e| ApiError::from(Error::Internal(format!("a storage request failed: {e}"))))?
        .map_err(ApiError::from)
}

fn json<T: Serialize>(status: StatusCode, v: T) -> Response {
    (status, axum::Json(v)).into_response()
}

/// `POST /vms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// 1–63 characters: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
    )]
    pub name: String,
    /// The definition; all paths absolute.
    #[schema(value_type = SpecDoc)]
    pub spec: vireo_spec::VmSpec,
}

/// `vireo_spec::VmSpec` as JSON: the config-file keys (docs/config.md). Unknown keys are
/// refused; missing ones take their defaults. The daemon needs every path absolute.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SpecDoc {
    /// auto, kvm or emu.
    #[schema(pattern = "^(auto|kvm|emu)$")]
    accel: Option<String>,
    /// A pulled image's name.
    image: Option<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    firmware: Option<String>,
    #[schema(minimum = 1, maximum = 32)]
    cpus: Option<u32>,
    /// `512M`, `1G`, or a number of MiB.
    #[schema(value_type = Option<String>)]
    memory: Option<String>,
    verbose: Option<bool>,
    console_log: Option<String>,
    command: Option<Vec<String>>,
    /// `IMAGE[,readonly][,overlay][,serial=ID][,format=raw|qcow2]`; IMAGE is an absolute path,
    /// or a volume: `vol:POOL/NAME`, `vol:NAME` for the default pool. `overlay` gives the VM a
    /// persistent qcow2 overlay on the image, in its own directory, kept until the VM is
    /// removed.
    disk: Option<Vec<String>>,
    /// `PATH[,serial=ID][,format=raw|qcow2]`, standing in for the image's root disk (needs
    /// `image`); the daemon sets it, with `overlay`, for a VM restored from a snapshot.
    root_disk: Option<String>,
    /// `user[,hostfwd=...]` or `tap=NAME`, then optionally `,mac=XX:XX:XX:XX:XX:XX`.
    net: Option<Vec<String>>,
    rng: Option<bool>,
    /// `cid=N,uds=PATH`.
    vsock: Option<String>,
    /// serial or virtio.
    #[schema(pattern = "^(serial|virtio)$")]
    console: Option<String>,
    /// auto, mmio or pci.
    #[schema(pattern = "^(auto|mmio|pci)$")]
    virtio_transport: Option<String>,
    cpu: Option<String>,
    /// restart or exit.
    reboot: Option<String>,
}

/// `POST /pools`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    /// 1–63 characters: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; `default` is taken.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
    )]
    pub name: String,
    /// The pool's directory, an absolute path: an empty directory, or a new one (whose parent
    /// exists) that the daemon makes. Not inside the daemon's state directory.
    #[schema(pattern = "^/")]
    pub path: String,
}

/// A volume's image format.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    #[default]
    Qcow2,
    Raw,
}

/// `POST /pools/{pool}/volumes`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// The file's name in the pool: 1–255 characters, `[a-zA-Z0-9_][a-zA-Z0-9_.+-]*`.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[a-zA-Z0-9_][a-zA-Z0-9_.+-]*$"
    )]
    pub name: String,
    /// The virtual size in bytes, at most 64 TiB; without it, the backing image's.
    #[schema(minimum = 1, maximum = 70368744177664_i64)]
    pub size_bytes: Option<u64>,
    /// qcow2 (the default) or raw.
    pub format: Option<VolumeFormat>,
    /// A qcow2 volume's backing image, which it only reads: a volume of this pool (NAME),
    /// another pool's (`vol:POOL/NAME`), or an absolute path.
    pub backing: Option<String>,
}

/// `POST /pools/{pool}/volumes/{name}/clone`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneVolume {
    /// The new volume's name, in the same pool.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[a-zA-Z0-9_][a-zA-Z0-9_.+-]*$"
    )]
    pub name: String,
    /// A qcow2 overlay on the volume instead of a full copy.
    #[serde(default)]
    pub overlay: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PoolDeleteQuery {
    /// Forget a pool that still has volumes (their files stay).
    #[serde(default)]
    pub force: bool,
}

/// `POST /vms/{name}/snapshots`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CreateSnapshot {
    /// The snapshot's name (global; VM name rules); default `VM-N`, the first free N.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
    )]
    pub name: Option<String>,
    /// Only the memory that differs from the VM's latest snapshot, which becomes the parent.
    pub diff: bool,
}

/// `POST /snapshots/{snap}/restore`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreSnapshot {
    /// The new VM's name; default the snapshot's VM's, when no VM has it.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
    )]
    pub name: Option<String>,
    /// Leave the restored guest paused.
    pub paused: bool,
    /// Restore even though a disk the snapshot references changed since.
    pub force: bool,
}

/// `POST /snapshots/{snap}/clone`, `POST /vms/{name}/clone`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneBody {
    /// How many clones: 1 to 64.
    #[schema(minimum = 1, maximum = 64)]
    pub count: u32,
    /// Their names are `PREFIX-1` ... `PREFIX-N`; default the snapshot's VM's name.
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotsQuery {
    /// Only the snapshots of this VM.
    pub vm: Option<String>,
}

/// `POST /vms/{name}/start`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StartBody {
    /// Answer only once vireo's /init in the guest is up (or the VM ended).
    pub wait_ready: bool,
}

/// The seconds a stop gives the guest: `timeout_secs`, default 30, at most a day.
fn grace(b: &StopBody) -> ApiResult<u64> {
    match b.timeout_secs.unwrap_or(30) {
        t @ 0..=86400 => Ok(t),
        t => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("timeout_secs: {t} is more than 86400 (a day)"),
        )),
    }
}

/// `POST /vms/{name}/stop` and `/restart`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StopBody {
    /// Seconds the guest has to power off before it is stopped by force (default 30).
    #[schema(minimum = 0, maximum = 86400)]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Kill a running VM first.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FollowQuery {
    /// Keep the response open and send new output as it comes.
    #[serde(default)]
    pub follow: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StartQuery {
    /// As the body's `wait_ready`.
    #[serde(default)]
    pub wait_ready: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    /// rw or ro; without it the client's first line says.
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecQuery {
    /// The command and its arguments, as a JSON array of strings (URL-encoded), e.g.
    /// `["uname","-m"]`.
    pub command: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a larger id. With follow and no since, only new events.
    pub since: Option<i64>,
    /// Only this VM's events.
    pub vm: Option<String>,
    /// Stream events as JSON lines as they happen.
    #[serde(default)]
    pub follow: bool,
    /// At most this many past events (the newest; default 1000, at most 100000 are sent).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub limit: Option<u32>,
}

/// `GET /host`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostReport {
    pub host: HostInfo,
    /// What running VMs have.
    pub allocated: Usage,
    /// Guest RAM all running VMs may have together.
    pub memory_limit_bytes: u64,
    pub memory_reserve_bytes: u64,
    /// vCPUs all running VMs may have together.
    pub vcpu_limit: u64,
    pub cpu_ratio: f64,
}

/// The VMM's stats (the VMM protocol's `stats` object), with the VM's name.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsReport {
    pub name: String,
    /// accel, state, vcpus, guest_ram_bytes, vmm_rss_bytes, vcpu_seconds, uptime_seconds,
    /// console_bytes, console_dropped_bytes, counters, devices.
    #[schema(value_type = Object)]
    pub stats: Value,
}

const NAME: &str = "The VM's name.";

#[utoipa::path(get, path = "/vms", tag = "vms",
    responses((status = 200, description = "Every VM, by name.", body = [VmInfo])))]
async fn list_vms(State(d): State<AppState>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.list()?))
}

#[utoipa::path(post, path = "/vms", tag = "vms", request_body = CreateVm,
    responses(
        (status = 201, description = "Defined.", body = VmInfo),
        (status = 400, description = "Malformed JSON.", body = ErrorBody),
        (status = 409, description = "The name is taken.", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB.", body = ErrorBody),
        (status = 415, description = "Not JSON.", body = ErrorBody),
        (status = 422, description = "Unknown fields, wrong types, a bad name or spec.", body = ErrorBody)))]
async fn create_vm(
    State(d): State<AppState>,
    JsonBody(b): JsonBody<CreateVm>,
) -> ApiResult<Response> {
    Ok(json(StatusCode::CREATED, d.create(&b.name, b.spec).await?))
}

#[utoipa::path(get, path = "/vms/{name}", tag = "vms", params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "The VM.", body = VmInfo),
              (status = 404, description = "No such VM.", body = ErrorBody)))]
async fn get_vm(State(d): State<AppState>, VmName(name): VmName) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.get(&name)?))
}

#[utoipa::path(delete, path = "/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = NAME), DeleteQuery),
    responses((status = 204, description = "Deleted."),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "It runs (use force).", body = ErrorBody)))]
async fn delete_vm(
    State(d): State<AppState>,
    VmName(name): VmName,
    Q(q): Q<DeleteQuery>,
) -> ApiResult<Response> {
    d.delete(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/vms/{name}/start", tag = "lifecycle",
    params(("name" = String, Path, description = NAME), StartQuery), request_body(content = Option<StartBody>),
    responses((status = 200, description = "It runs.", body = VmInfo),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "Its state forbids it, or no capacity.", body = ErrorBody),
              (status = 422, description = "The VMM could not start it (its message); the VM is defined again.", body = ErrorBody)))]
async fn start_vm(
    State(d): State<AppState>,
    VmName(name): VmName,
    Q(q): Q<StartQuery>,
    OptBody(b): OptBody<StartBody>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::OK,
        d.start(&name, b.wait_ready || q.wait_ready).await?,
    ))
}

#[utoipa::path(post, path = "/vms/{name}/pause", tag = "lifecycle", params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "Paused.", body = VmInfo),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "It is not running.", body = ErrorBody)))]
async fn pause_vm(State(d): State<AppState>, VmName(name): VmName) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.pause(&name, false).await?))
}

#[utoipa::path(post, path = "/vms/{name}/resume", tag = "lifecycle", params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "Running.", body = VmInfo),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "It is not paused.", body = ErrorBody)))]
async fn resume_vm(State(d): State<AppState>, VmName(name): VmName) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.pause(&name, true).await?))
}

#[utoipa::path(post, path = "/vms/{name}/stop", tag = "lifecycle",
    params(("name" = String, Path, description = NAME)), request_body(content = Option<StopBody>),
    responses((status = 200, description = "Stopped.", body = VmInfo),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "It is not running or paused.", body = ErrorBody)))]
async fn stop_vm(
    State(d): State<AppState>,
    VmName(name): VmName,
    OptBody(b): OptBody<StopBody>,
) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.stop(&name, grace(&b)?).await?))
}

#[utoipa::path(post, path = "/vms/{name}/kill", tag = "lifecycle", params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "Stopped at once.", body = VmInfo),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "No VMM runs.", body = ErrorBody)))]
async fn kill_vm(State(d): State<AppState>, VmName(name): VmName) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.kill(&name).await?))
}

#[utoipa::path(post, path = "/vms/{name}/restart", tag = "lifecycle",
    params(("name" = String, Path, description = NAME)), request_body(content = Option<StopBody>),
    responses((status = 200, description = "Stopped and started again.", body = VmInfo),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "It is not running or paused.", body = ErrorBody),
              (status = 422, description = "The new start failed.", body = ErrorBody)))]
async fn restart_vm(
    State(d): State<AppState>,
    VmName(name): VmName,
    OptBody(b): OptBody<StopBody>,
) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.restart(&name, grace(&b)?).await?))
}

const SNAP: &str = "The snapshot's name.";

#[utoipa::path(post, path = "/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path, description = NAME)), request_body(content = Option<CreateSnapshot>),
    responses((status = 201, description = "Taken: the snapshot, with how long the VM was paused.", body = SnapshotInfo),
              (status = 400, description = "A bad snapshot name.", body = ErrorBody),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "The VM is not running or paused (its state named), the name is taken, or a diff has no parent.", body = ErrorBody),
              (status = 502, description = "The VMM failed the snapshot (nothing was kept).", body = ErrorBody)))]
async fn create_snapshot(
    State(d): State<AppState>,
    VmName(name): VmName,
    OptBody(b): OptBody<CreateSnapshot>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::CREATED,
        d.create_snapshot(&name, b.name, b.diff).await?,
    ))
}

#[utoipa::path(get, path = "/snapshots", tag = "snapshots", params(SnapshotsQuery),
    responses((status = 200, description = "Snapshots, oldest first.", body = [SnapshotInfo])))]
async fn list_snapshots(State(d): State<AppState>, Q(q): Q<SnapshotsQuery>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.list_snapshots(q.vm.as_deref())?))
}

#[utoipa::path(get, path = "/snapshots/{snap}", tag = "snapshots",
    params(("snap" = String, Path, description = SNAP)),
    responses((status = 200, description = "The snapshot.", body = SnapshotInfo),
              (status = 404, description = "No such snapshot.", body = ErrorBody)))]
async fn get_snapshot(State(d): State<AppState>, Segs(snap): Segs<String>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, d.get_snapshot(&snap)?))
}

#[utoipa::path(delete, path = "/snapshots/{snap}", tag = "snapshots",
    params(("snap" = String, Path, description = SNAP)),
    responses((status = 204, description = "Removed, with its directory."),
              (status = 404, description = "No such snapshot.", body = ErrorBody),
              (status = 409, description = "A diff snapshot, a VM restored from it, or another snapshot's disks depend on it (named).", body = ErrorBody)))]
async fn delete_snapshot(
    State(d): State<AppState>,
    Segs(snap): Segs<String>,
) -> ApiResult<Response> {
    d.delete_snapshot(&snap).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/snapshots/{snap}/restore", tag = "snapshots",
    params(("snap" = String, Path, description = SNAP)), request_body(content = Option<RestoreSnapshot>),
    responses((status = 201, description = "Defined from the snapshot (its disks overlays on the snapshot's copies) and continued: running, or paused.", body = VmInfo),
              (status = 400, description = "A bad VM name.", body = ErrorBody),
              (status = 404, description = "No such snapshot.", body = ErrorBody),
              (status = 409, description = "The name is taken (or, without a name, the snapshot's VM exists), or no capacity.", body = ErrorBody),
              (status = 422, description = "The VMM could not restore it (its message); no VM is left.", body = ErrorBody)))]
async fn restore_snapshot(
    State(d): State<AppState>,
    Segs(snap): Segs<String>,
    OptBody(b): OptBody<RestoreSnapshot>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::CREATED,
        d.restore(&snap, b.name, b.paused, b.force).await?,
    ))
}

#[utoipa::path(post, path = "/snapshots/{snap}/clone", tag = "snapshots",
    params(("snap" = String, Path, description = SNAP)), request_body = CloneBody,
    responses((status = 201, description = "The clones, running, each with new MAC addresses and vsock CID.", body = CloneReport),
              (status = 400, description = "A count out of range, or a prefix that makes bad names.", body = ErrorBody),
              (status = 404, description = "No such snapshot.", body = ErrorBody),
              (status = 409, description = "A clone's name is taken, or no capacity.", body = ErrorBody),
              (status = 422, description = "A clone could not be restored; none is left.", body = ErrorBody)))]
async fn clone_snapshot(
    State(d): State<AppState>,
    Segs(snap): Segs<String>,
    JsonBody(b): JsonBody<CloneBody>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::CREATED,
        d.clone_snapshot(&snap, b.count, b.prefix).await?,
    ))
}

#[utoipa::path(post, path = "/vms/{name}/clone", tag = "snapshots",
    params(("name" = String, Path, description = NAME)), request_body = CloneBody,
    responses((status = 201, description = "A full snapshot of the VM (`NAME.clone-N`, kept while the clones exist), and the clones.", body = CloneReport),
              (status = 400, description = "A count out of range, or a prefix that makes bad names.", body = ErrorBody),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "The VM is not running or paused, a clone's name is taken, or no capacity.", body = ErrorBody),
              (status = 422, description = "A clone could not be restored; none is left, nor the snapshot.", body = ErrorBody)))]
async fn clone_vm(
    State(d): State<AppState>,
    VmName(name): VmName,
    JsonBody(b): JsonBody<CloneBody>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::CREATED,
        d.clone_vm(&name, b.count, b.prefix).await?,
    ))
}

const POOL: &str = "The pool's name (`default`: the daemon's own).";
const VOLUME: &str = "The volume's name (its file's name in the pool).";

#[utoipa::path(get, path = "/pools", tag = "storage",
    responses((status = 200, description = "Every pool, the default one first, with its file system's sizes and its volume count.", body = [PoolInfo])))]
async fn list_pools(State(d): State<AppState>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, blocking(d, |d| d.list_pools()).await?))
}

#[utoipa::path(post, path = "/pools", tag = "storage", request_body = CreatePool,
    responses(
        (status = 201, description = "Defined (its directory made if it was new).", body = PoolInfo),
        (status = 400, description = "A bad name, or a path that is not absolute, not a directory, overlaps the state directory or cannot be made.", body = ErrorBody),
        (status = 409, description = "The name is taken, another pool is on the directory, or the directory is not empty.", body = ErrorBody)))]
async fn create_pool(
    State(d): State<AppState>,
    JsonBody(b): JsonBody<CreatePool>,
) -> ApiResult<Response> {
    let p = blocking(d, move |d| d.create_pool(&b.name, &b.path)).await?;
    Ok(json(StatusCode::CREATED, p))
}

#[utoipa::path(get, path = "/pools/{pool}", tag = "storage", params(("pool" = String, Path, description = POOL)),
    responses((status = 200, description = "The pool.", body = PoolInfo),
              (status = 400, description = "Not a pool name.", body = ErrorBody),
              (status = 404, description = "No such pool.", body = ErrorBody)))]
async fn get_pool(State(d): State<AppState>, Segs(pool): Segs<String>) -> ApiResult<Response> {
    Ok(json(
        StatusCode::OK,
        blocking(d, move |d| d.get_pool(&pool)).await?,
    ))
}

#[utoipa::path(delete, path = "/pools/{pool}", tag = "storage",
    params(("pool" = String, Path, description = POOL), PoolDeleteQuery),
    responses((status = 204, description = "Forgotten; its directory removed if the daemon made it and it is empty."),
              (status = 400, description = "Not a pool name.", body = ErrorBody),
              (status = 404, description = "No such pool.", body = ErrorBody),
              (status = 409, description = "The default pool; a VM or another pool's volume uses it (named); it has volumes (without force).", body = ErrorBody)))]
async fn delete_pool(
    State(d): State<AppState>,
    Segs(pool): Segs<String>,
    Q(q): Q<PoolDeleteQuery>,
) -> ApiResult<Response> {
    blocking(d, move |d| d.delete_pool(&pool, q.force)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/pools/{pool}/volumes", tag = "storage", params(("pool" = String, Path, description = POOL)),
    responses((status = 200, description = "The image files in the pool's directory, by name.", body = [VolumeInfo]),
              (status = 400, description = "Not a pool name.", body = ErrorBody),
              (status = 404, description = "No such pool.", body = ErrorBody),
              (status = 409, description = "The pool's directory cannot be read.", body = ErrorBody)))]
async fn list_volumes(State(d): State<AppState>, Segs(pool): Segs<String>) -> ApiResult<Response> {
    Ok(json(
        StatusCode::OK,
        blocking(d, move |d| d.list_volumes(&pool)).await?,
    ))
}

#[utoipa::path(post, path = "/pools/{pool}/volumes", tag = "storage",
    params(("pool" = String, Path, description = POOL)), request_body = CreateVolume,
    responses((status = 201, description = "Created.", body = VolumeInfo),
              (status = 400, description = "A bad name or size; a raw volume with a backing image; a backing image that cannot back one.", body = ErrorBody),
              (status = 404, description = "No such pool, or no such backing image.", body = ErrorBody),
              (status = 409, description = "The name is taken; the backing image is being written; the pool's file system is full.", body = ErrorBody)))]
async fn create_volume(
    State(d): State<AppState>,
    Segs(pool): Segs<String>,
    JsonBody(b): JsonBody<CreateVolume>,
) -> ApiResult<Response> {
    let req = storage::NewVolume {
        name: b.name,
        size: b.size_bytes,
        qcow2: matches!(b.format.unwrap_or_default(), VolumeFormat::Qcow2),
        backing: b.backing,
    };
    let v = blocking(d, move |d| d.create_volume(&pool, &req)).await?;
    Ok(json(StatusCode::CREATED, v))
}

#[utoipa::path(get, path = "/pools/{pool}/volumes/{name}", tag = "storage",
    params(("pool" = String, Path, description = POOL), ("name" = String, Path, description = VOLUME)),
    responses((status = 200, description = "The volume: format, sizes, backing file, and who uses it.", body = VolumeInfo),
              (status = 400, description = "Not a pool or volume name.", body = ErrorBody),
              (status = 404, description = "No such pool or volume.", body = ErrorBody)))]
async fn get_volume(
    State(d): State<AppState>,
    Segs((pool, name)): Segs<(String, String)>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::OK,
        blocking(d, move |d| d.get_volume(&pool, &name)).await?,
    ))
}

#[utoipa::path(delete, path = "/pools/{pool}/volumes/{name}", tag = "storage",
    params(("pool" = String, Path, description = POOL), ("name" = String, Path, description = VOLUME)),
    responses((status = 204, description = "Its file removed."),
              (status = 400, description = "Not a pool or volume name.", body = ErrorBody),
              (status = 404, description = "No such pool or volume.", body = ErrorBody),
              (status = 409, description = "A VM uses it, or it backs another volume (named).", body = ErrorBody)))]
async fn delete_volume(
    State(d): State<AppState>,
    Segs((pool, name)): Segs<(String, String)>,
) -> ApiResult<Response> {
    blocking(d, move |d| d.delete_volume(&pool, &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/pools/{pool}/volumes/{name}/clone", tag = "storage",
    params(("pool" = String, Path, description = POOL), ("name" = String, Path, description = VOLUME)),
    request_body = CloneVolume,
    responses((status = 201, description = "The new volume: a full copy (holes kept; a qcow2 keeps its backing file), or a qcow2 overlay on this one.", body = VolumeInfo),
              (status = 400, description = "Not a pool or volume name.", body = ErrorBody),
              (status = 404, description = "No such pool or volume.", body = ErrorBody),
              (status = 409, description = "The new name is taken; the volume is being written (a running VM); the file system is full.", body = ErrorBody)))]
async fn clone_volume(
    State(d): State<AppState>,
    Segs((pool, name)): Segs<(String, String)>,
    JsonBody(b): JsonBody<CloneVolume>,
) -> ApiResult<Response> {
    let v = blocking(d, move |d| d.clone_volume(&pool, &name, &b.name, b.overlay)).await?;
    Ok(json(StatusCode::CREATED, v))
}

/// A response body fed from a channel.
fn channel_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    }))
}

async fn read_from(path: &PathBuf, pos: u64) -> (Vec<u8>, u64) {
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return (Vec::new(), 0);
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    // A shorter file was rotated: start over.
    let pos = if len < pos { 0 } else { pos };
    let mut buf = Vec::new();
    if f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
        let _ = f.read_to_end(&mut buf).await;
    }
    let n = buf.len() as u64;
    (buf, pos + n)
}

#[utoipa::path(get, path = "/vms/{name}/logs", tag = "vms",
    params(("name" = String, Path, description = NAME), FollowQuery),
    responses((status = 200, description = "The console output of the current or last run.", content_type = "text/plain", body = String),
              (status = 404, description = "No such VM.", body = ErrorBody)))]
async fn vm_logs(
    State(d): State<AppState>,
    VmName(name): VmName,
    Q(q): Q<FollowQuery>,
) -> ApiResult<Response> {
    let (old, cur) = d.console_files(&name)?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let (rotated, _) = read_from(&old, 0).await;
        let (first, mut pos) = read_from(&cur, 0).await;
        for chunk in [rotated, first] {
            if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
        if !q.follow {
            return;
        }
        loop {
            let active = d.is_active(&name);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (more, p) = read_from(&cur, pos).await;
            pos = p;
            if !more.is_empty() && tx.send(Bytes::from(more)).await.is_err() {
                return;
            }
            if !active {
                return;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        channel_body(rx),
    )
        .into_response())
}

#[utoipa::path(get, path = "/vms/{name}/stats", tag = "vms", params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "The VMM's counters.", body = StatsReport),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "No VMM runs.", body = ErrorBody)))]
async fn vm_stats(State(d): State<AppState>, VmName(name): VmName) -> ApiResult<Response> {
    let stats = d.stats(&name).await?;
    Ok(json(StatusCode::OK, StatsReport { name, stats }))
}

#[utoipa::path(get, path = "/vms/{name}/console", tag = "vms",
    params(("name" = String, Path, description = NAME), ConsoleQuery),
    responses((status = 101, description = "Upgraded (`Upgrade: vireo-console`): raw console bytes both ways. The client's first line is `rw` or `ro` unless `mode` was given; an `rw` client's bytes go to the guest."),
              (status = 400, description = "No Upgrade header, or a bad mode.", body = ErrorBody),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "No VMM runs.", body = ErrorBody)))]
async fn vm_console(
    State(d): State<AppState>,
    VmName(name): VmName,
    Q(q): Q<ConsoleQuery>,
    mut req: Request,
) -> ApiResult<Response> {
    let sock = d.console_socket(&name)?;
    let mode = match q.mode.as_deref() {
        None => None,
        Some(m @ ("rw" | "ro")) => Some(format!("{m}\n")),
        Some(m) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("console mode '{m}': expected rw or ro"),
            ))
        }
    };
    need_upgrade(&req, "the console", "vireo-console")?;
    let mut vmm = tokio::net::UnixStream::connect(&sock)
        .await
        .map_err(|e| ApiError::from(Error::Vmm(format!("cannot reach {}: {e}", sock.display()))))?;
    if let Some(m) = mode {
        vmm.write_all(m.as_bytes())
            .await
            .map_err(|e| ApiError::from(Error::Vmm(format!("console of {name}: {e}"))))?;
    }
    Ok(splice_upgrade(&mut req, vmm, "vireo-console"))
}

/// A 400 unless `req` asks for an HTTP Upgrade (to `protocol`).
fn need_upgrade(req: &Request, what: &str, protocol: &'static str) -> ApiResult<()> {
    if req.headers().contains_key(header::UPGRADE) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("{what} is a byte stream: send an HTTP Upgrade (Connection: upgrade, Upgrade: {protocol})"),
    ))
}

/// Answers 101 Switching Protocols and, once the client's connection is handed over, copies
/// bytes both ways between it and the VMM's socket until either side closes.
fn splice_upgrade<S>(req: &mut Request, mut vmm: S, protocol: &'static str) -> Response
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        let mut client = hyper_util::rt::TokioIo::new(up);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut vmm).await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(protocol));
    resp
}

#[utoipa::path(post, path = "/vms/{name}/exec", tag = "vms",
    params(("name" = String, Path, description = NAME), ExecQuery),
    responses((status = 101, description = "Upgraded (`Upgrade: vireo-exec`): the command runs in the guest (an interactive VM with vireo's /init), one at a time. Frames both ways: a kind byte, a 4-byte little-endian length, the payload. Client: 0 stdin, 1 end of stdin, 2 a signal (one byte). Daemon: 1 stdout, 2 stderr, then 3 the exit status (i32 LE) or 4 an error (UTF-8) as the last frame."),
              (status = 400, description = "No Upgrade header, or the command is not a non-empty JSON array of strings.", body = ErrorBody),
              (status = 404, description = "No such VM.", body = ErrorBody),
              (status = 409, description = "No VMM runs, the VM is not running, its guest has no command channel or is not up, or another exec runs.", body = ErrorBody)))]
async fn vm_exec(
    State(d): State<AppState>,
    VmName(name): VmName,
    Q(q): Q<ExecQuery>,
    mut req: Request,
) -> ApiResult<Response> {
    let command: Vec<String> = match serde_json::from_str(&q.command) {
        Ok(c) => c,
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("command: expected a JSON array of strings ({e})"),
            ))
        }
    };
    if command.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "command: expected at least the program to run",
        ));
    }
    need_upgrade(&req, "exec", "vireo-exec")?;
    // The VMM is asked first, so that a refusal is an HTTP error and not a dead stream.
    let vmm = d.exec_connection(&name, &command).await?;
    Ok(splice_upgrade(&mut req, vmm, "vireo-exec"))
}

#[utoipa::path(get, path = "/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "Past events (a JSON array), or with follow a stream of JSON lines (application/x-ndjson), one event each.", body = [Event])))]
async fn events(State(d): State<AppState>, Q(q): Q<EventsQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    if !q.follow {
        return Ok(json(
            StatusCode::OK,
            d.events(q.since, q.vm.as_deref(), limit)?,
        ));
    }
    // Subscribe before reading the past, so nothing falls between the two.
    let mut sub = d.subscribe();
    let since = match q.since {
        Some(s) => s,
        None => d.last_event_id()?,
    };
    let past = d.events(Some(since), q.vm.as_deref(), limit)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let line = |e: &Event| {
        let mut s = serde_json::to_string(e).unwrap_or_default();
        s.push('\n');
        Bytes::from(s)
    };
    tokio::spawn(async move {
        let mut last = since;
        for e in &past {
            last = e.id;
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        loop {
            match sub.recv().await {
                Ok(e) if e.id > last && q.vm.as_ref().is_none_or(|v| *v == e.vm) => {
                    last = e.id;
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        channel_body(rx),
    )
        .into_response())
}

#[utoipa::path(get, path = "/metrics", tag = "host",
    responses((status = 200, description = "Prometheus text format 0.0.4.", content_type = "text/plain", body = String)))]
async fn metrics_text(State(d): State<AppState>) -> ApiResult<Response> {
    let vms = d.list()?;
    let mut stats = Vec::new();
    for vm in &vms {
        let s = if vm.state.is_active() {
            tokio::time::timeout(Duration::from_secs(2), d.stats(&vm.name))
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        stats.push(s);
    }
    let list: Vec<metrics::VmMetrics> = vms
        .iter()
        .zip(&stats)
        .map(|(v, s)| metrics::VmMetrics {
            name: &v.name,
            state: v.state,
            stats: s.as_ref(),
        })
        .collect();
    let text = metrics::render(&d.host, &d.usage(None)?, &list);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[utoipa::path(get, path = "/host", tag = "host",
    responses((status = 200, description = "Host CPUs and RAM, and what running VMs have.", body = HostReport)))]
async fn host(State(d): State<AppState>) -> ApiResult<Response> {
    let p = d.policy();
    Ok(json(
        StatusCode::OK,
        HostReport {
            host: d.host,
            allocated: d.usage(None)?,
            memory_limit_bytes: capacity::memory_limit(&d.host, &p),
            memory_reserve_bytes: p.memory_reserve,
            vcpu_limit: capacity::vcpu_limit(&d.host, &p),
            cpu_ratio: p.cpu_ratio,
        },
    ))
}

#[utoipa::path(get, path = "/openapi.json", tag = "host",
    responses((status = 200, description = "This document.", body = Object)))]
async fn openapi() -> Response {
    json(StatusCode::OK, ApiDoc::openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vireo daemon API",
        description = "VM definitions and lifecycle, console, logs, events and metrics of `vireo daemon`, its storage pools and volumes, and snapshots, restores and clones. Errors are {\"error\": CODE, \"message\": TEXT}."
    ),
    paths(
        list_vms,
        create_vm,
        get_vm,
        delete_vm,
        start_vm,
        pause_vm,
        resume_vm,
        stop_vm,
        kill_vm,
        restart_vm,
        vm_logs,
        vm_stats,
        vm_console,
        vm_exec,
        events,
        metrics_text,
        host,
        list_pools,
        create_pool,
        get_pool,
        delete_pool,
        list_volumes,
        create_volume,
        get_volume,
        delete_volume,
        clone_volume,
        create_snapshot,
        list_snapshots,
        get_snapshot,
        delete_snapshot,
        restore_snapshot,
        clone_snapshot,
        clone_vm,
        openapi
    ),
    components(schemas(
        ErrorBody,
        VmInfo,
        ExitInfo,
        Event,
        CreateVm,
        SpecDoc,
        StartBody,
        StopBody,
        HostReport,
        HostInfo,
        Usage,
        StatsReport,
        DiskInfo,
        PoolInfo,
        VolumeInfo,
        CreatePool,
        CreateVolume,
        VolumeFormat,
        CloneVolume,
        SnapshotInfo,
        CreateSnapshot,
        RestoreSnapshot,
        CloneBody,
        CloneReport
    )),
    modifiers(&CommonErrors)
)]
pub struct ApiDoc;

/// The answers every route may give besides its own, so that the document names every
/// status the daemon sends: 400 for a query that does not parse, 401 on TCP without the token,
/// and for a route with a body 413 (over 1 MiB), 415 (not JSON) and 422 (unknown fields,
/// wrong types or values).
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let err = |desc: &str| {
            ResponseBuilder::new()
                .description(desc)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let has_body = op.request_body.is_some();
                let r = &mut op.responses.responses;
                let mut add = |code: &str, desc: &str| {
                    r.entry(code.to_string())
                        .or_insert_with(|| err(desc).into());
                };
                add("400", "A malformed query or body.");
                add("401", "On TCP: no or a wrong bearer token.");
                if has_body {
                    add("413", "Body over 1 MiB.");
                    add("415", "A body that is not application/json.");
                    add(
                        "422",
                        "Unknown fields, wrong types, or values the definition cannot have.",
                    );
                }
            }
        }
    }
}

/// The document as it is checked in: pretty JSON with a final newline.
pub fn openapi_text() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// Every route: the router is built from this table and the OpenAPI test checks it.
fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    fn r<H, T>(m: Method, p: &'static str, h: H) -> (Method, &'static str, MethodRouter<AppState>)
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(m.clone()).unwrap_or(MethodFilter::GET);
        (m, p, on(filter, h))
    }
    vec![
        r(Method::GET, "/vms", list_vms),
        r(Method::POST, "/vms", create_vm),
        r(Method::GET, "/vms/{name}", get_vm),
        r(Method::DELETE, "/vms/{name}", delete_vm),
        r(Method::POST, "/vms/{name}/start", start_vm),
        r(Method::POST, "/vms/{name}/pause", pause_vm),
        r(Method::POST, "/vms/{name}/resume", resume_vm),
        r(Method::POST, "/vms/{name}/stop", stop_vm),
        r(Method::POST, "/vms/{name}/kill", kill_vm),
        r(Method::POST, "/vms/{name}/restart", restart_vm),
        r(Method::GET, "/vms/{name}/logs", vm_logs),
        r(Method::GET, "/vms/{name}/stats", vm_stats),
        r(Method::GET, "/vms/{name}/console", vm_console),
        r(Method::POST, "/vms/{name}/exec", vm_exec),
        r(Method::GET, "/events", events),
        r(Method::GET, "/metrics", metrics_text),
        r(Method::GET, "/host", host),
        r(Method::GET, "/pools", list_pools),
        r(Method::POST, "/pools", create_pool),
        r(Method::GET, "/pools/{pool}", get_pool),
        r(Method::DELETE, "/pools/{pool}", delete_pool),
        r(Method::GET, "/pools/{pool}/volumes", list_volumes),
        r(Method::POST, "/pools/{pool}/volumes", create_volume),
        r(Method::GET, "/pools/{pool}/volumes/{name}", get_volume),
        r(
            Method::DELETE,
            "/pools/{pool}/volumes/{name}",
            delete_volume,
        ),
        r(
            Method::POST,
            "/pools/{pool}/volumes/{name}/clone",
            clone_volume,
        ),
        r(Method::POST, "/vms/{name}/snapshots", create_snapshot),
        r(Method::POST, "/vms/{name}/clone", clone_vm),
        r(Method::GET, "/snapshots", list_snapshots),
        r(Method::GET, "/snapshots/{snap}", get_snapshot),
        r(Method::DELETE, "/snapshots/{snap}", delete_snapshot),
        r(Method::POST, "/snapshots/{snap}/restore", restore_snapshot),
        r(Method::POST, "/snapshots/{snap}/clone", clone_snapshot),
        r(Method::GET, "/openapi.json", openapi),
    ]
}

/// (method, path) of every route.
pub fn route_table() -> Vec<(Method, &'static str)> {
    routes().into_iter().map(|(m, p, _)| (m, p)).collect()
}

pub fn router(d: Arc<Daemon>) -> Router {
    let mut r = Router::new();
    for (_, path, mr) in routes() {
        r = r.route(path, mr);
    }
    r.fallback(|req: Request| async move {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {} {}", req.method(), req.uri().path()),
        )
    })
    .method_not_allowed_fallback(|req: Request| async move {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method(), req.uri().path()),
        )
    })
    .layer(DefaultBodyLimit::max(MAX_BODY))
    .with_state(d)
}

/// Requires `Authorization: Bearer <token>` (the TCP listener's layer).
pub async fn require_token(
    State(token): State<Arc<String>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong bearer token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this listener needs Authorization: Bearer <token>",
        )
        .into_response(),
    }
}

/// Compares without stopping at the first difference, so timing says nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router has is in the document, with its method, and the other way round.
    #[test]
    fn document_covers_the_router() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = Vec::new();
        for (p, item) in paths {
            for m in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                    documented.push((m.to_uppercase(), p.clone()));
                }
            }
        }
        let mut routed: Vec<(String, String)> = route_table()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        routed.sort();
        documented.sort();
        for r in &routed {
            assert!(
                documented.contains(r),
                "route {} {} is not in the OpenAPI document",
                r.0,
                r.1
            );
        }
        for d in &documented {
            assert!(
                routed.contains(d),
                "the OpenAPI document has {} {}, which no route serves",
                d.0,
                d.1
            );
        }
    }

    /// docs/api/openapi.json is the generated document.
    #[test]
    fn checked_in_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api/openapi.json");
        let want = openapi_text();
        if std::env::var_os("VIREO_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
            return;
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/api/openapi.json is not the document the code generates; regenerate it with \
             `VIREO_BLESS=1 cargo test -p vireo-daemon checked_in_document_is_current` and commit it"
        );
    }

    /// The documented spec keys are VmSpec's keys.
    #[test]
    fn spec_doc_matches_vmspec() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut documented: Vec<String> = doc["components"]["schemas"]["SpecDoc"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let full = vireo_spec::VmSpec {
            image: Some("i".into()),
            kernel: Some("k".into()),
            initrd: Some("i".into()),
            cmdline: Some("c".into()),
            firmware: Some("f".into()),
            console_log: Some("l".into()),
            vsock: Some("v".into()),
            root_disk: Some("r".into()),
            ..Default::default()
        };
        let mut keys: Vec<String> = serde_json::to_value(full)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        documented.sort();
        assert_eq!(documented, keys);
    }

    #[test]
    fn tokens_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
