//! Envoy's gRPC external authorization, `envoy.service.auth.v3.Authorization/Check`
//! (`--grpc-listen`): the decision of `/authz` ([`super::authz::decide`]), translated
//! from a `CheckRequest` and into a `CheckResponse`.
//!
//! The policy is named by the route, never by the client: the check's context extension
//! [`POLICY_EXTENSION`] (`authplane.io/policy: namespace/name`), which Envoy Gateway,
//! Istio and kgateway set per route. The checked request's path is the client's, so it
//! names nothing here. Without a policy, or with an unknown one, the request is refused.
//!
//! Served on a listener of its own, HTTP/2 only (h2c: prior knowledge), through the same
//! accept loop as HTTP ([`super::listen::serve_connections`]): its connection cap, and a
//! deadline for a new connection's first request. The HTTP/1.1 listener stays HTTP/1.1
//! only, so that its per-request path and its deadlines are untouched.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, StatusCode};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue as ProtoHeader, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service;

use super::AppState;
use super::authz::{AUDIT_HEADER, Outcome, REASON_HEADER, decide};
use super::listen::{ConnectionInfo, ServeConnection, deadlined};
use crate::api::ObjectKey;

/// The context extension that names the policy: `namespace/name`.
pub const POLICY_EXTENSION: &str = crate::attach::POLICY_EXTENSION;

/// Checks in flight on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`). Envoy opens
/// another connection when its streams reach this.
pub const MAX_STREAMS: u32 = 256;

/// How often an HTTP/2 PING checks a quiet connection, and how long its answer may take:
/// a peer that is gone (a node lost, a NAT that forgot us) frees its slot.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// gRPC status codes (`google.rpc.Code`) of the answers.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// The `Authorization` service over the server's state.
pub struct ExtAuthz {
    state: Arc<AppState>,
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let check = request.into_inner();
        let Some(id) = policy_of(&check)? else {
            return Ok(tonic::Response::new(refused_without_policy(
                "missing_policy",
                format!(
                    "the check names no policy: set the context extension {POLICY_EXTENSION}: <namespace>/<name> on the route"
                ),
            )));
        };
        let headers = request_headers(&check)?;
        let outcome = decide(&self.state, &id, &headers).await;
        Ok(tonic::Response::new(answer(outcome)))
    }
}

/// The policy the route named, `None` when it named none; an error for a name that is
/// not `namespace/name`.
fn policy_of(check: &CheckRequest) -> Result<Option<ObjectKey>, tonic::Status> {
    let Some(named) = check
        .attributes
        .as_ref()
        .and_then(|attributes| attributes.context_extensions.get(POLICY_EXTENSION))
    else {
        return Ok(None);
    };
    match named.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(Some(ObjectKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }))
        }
        _ => Err(tonic::Status::invalid_argument(format!(
            "context extension {POLICY_EXTENSION} must be <namespace>/<name>"
        ))),
    }
}

/// The checked request's headers as the decision reads them: from `header_map` when
/// Envoy sends it (`encode_raw_headers`, bytes as they came), else from `headers` (text,
/// repeated headers joined). Pseudo-headers (`:path`, ...) are not headers. A header
/// that cannot be one refuses the whole check: Envoy sends none, so it is not Envoy.
fn request_headers(check: &CheckRequest) -> Result<HeaderMap, tonic::Status> {
    let Some(http) = check
        .attributes
        .as_ref()
        .and_then(|attributes| attributes.request.as_ref())
        .and_then(|request| request.http.as_ref())
    else {
        return Ok(HeaderMap::new());
    };
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, value: &[u8]| -> Result<(), tonic::Status> {
        if name.starts_with(':') {
            return Ok(());
        }
        let invalid =
            || tonic::Status::invalid_argument(format!("invalid request header {name:?}"));
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        let value = axum::http::HeaderValue::from_bytes(value).map_err(|_| invalid())?;
        // A map holds at most 32,768 entries; the message size cap keeps far below.
        headers
            .try_append(name, value)
            .map_err(|_| tonic::Status::invalid_argument("too many request headers"))?;
        Ok(())
    };
    match &http.header_map {
        Some(map) => {
            for header in &map.headers {
                let value = match header.raw_value.is_empty() {
                    true => header.value.as_bytes(),
                    false => &header.raw_value,
                };
                add(&header.key, value)?;
            }
        }
        None => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes())?;
            }
        }
    }
    Ok(headers)
}

/// The `CheckResponse` of an outcome.
///
/// A pass sets each identity header with a verified value, overwriting whatever the
/// client sent, and removes the others (no verified value: a client's copy must not
/// reach the workload); a legacy pass's notice and the audit header are set likewise. A
/// refusal carries the status, the challenge and the reason for the client.
fn answer(outcome: Outcome) -> CheckResponse {
    match outcome {
        Outcome::Pass {
            headers,
            identity,
            audit,
        } => {
            let mut ok = OkHttpResponse::default();
            for (index, (name, value)) in headers.into_iter().enumerate() {
                if index < identity && value.is_empty() {
                    ok.headers_to_remove.push(name.as_str().to_owned());
                } else {
                    ok.headers.push(overwrite(name.as_str(), value.as_bytes()));
                }
            }
            // A client's own copy of the audit header never reaches the workload.
            match audit {
                Some(audit) => ok
                    .headers
                    .push(overwrite(AUDIT_HEADER.as_str(), audit.as_bytes())),
                None => ok.headers_to_remove.push(AUDIT_HEADER.as_str().to_owned()),
            }
            CheckResponse {
                status: Some(rpc::Status {
                    code: OK,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(ok)),
                ..Default::default()
            }
        }
        Outcome::Deny {
            status,
            challenge,
            reason,
        } => {
            let mut headers = Vec::with_capacity(2);
            if let Some(challenge) = challenge {
                headers.push(overwrite("www-authenticate", challenge.as_bytes()));
            }
            headers.push(overwrite(REASON_HEADER.as_str(), reason.as_bytes()));
            let code = match status {
                StatusCode::UNAUTHORIZED => UNAUTHENTICATED,
                _ => PERMISSION_DENIED,
            };
            denied(code, String::new(), status, headers)
        }
        Outcome::NoPolicy {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason,
            message,
        } => denied(
            UNAVAILABLE,
            message,
            StatusCode::SERVICE_UNAVAILABLE,
            vec![overwrite(REASON_HEADER.as_str(), reason.as_bytes())],
        ),
        Outcome::NoPolicy {
            reason, message, ..
        } => refused_without_policy(reason, message),
    }
}

/// A check the route's policy cannot decide (none named, none such): refused, 403, as
/// Envoy refuses when its authorization service fails. The message, which names the
/// policy, goes to Envoy's logs (the gRPC status), not to the client.
fn refused_without_policy(reason: &'static str, message: String) -> CheckResponse {
    denied(
        PERMISSION_DENIED,
        message,
        StatusCode::FORBIDDEN,
        vec![overwrite(REASON_HEADER.as_str(), reason.as_bytes())],
    )
}

fn denied(
    code: i32,
    message: String,
    status: StatusCode,
    headers: Vec<HeaderValueOption>,
) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code,
            message,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                // envoy.type.v3.StatusCode's numbers are the HTTP status codes.
                code: i32::from(status.as_u16()),
            }),
            headers,
            body: String::new(),
        })),
        ..Default::default()
    }
}

/// A header to set, replacing any copy of it: never appended, so that a client's copy
/// never stands beside ours. `append: false` says so to every Envoy (it takes precedence
/// where `append_action` is read, and is all that older ones read); `append_action` says
/// it again for when `append` is gone.
#[allow(deprecated)]
fn overwrite(name: &str, value: &[u8]) -> HeaderValueOption {
    let header = match std::str::from_utf8(value) {
        Ok(text) => ProtoHeader {
            key: name.to_owned(),
            value: text.to_owned(),
            ..Default::default()
        },
        Err(_) => ProtoHeader {
            key: name.to_owned(),
            raw_value: value.to_vec(),
            ..Default::default()
        },
    };
    HeaderValueOption {
        header: Some(header),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// HTTP/2 connections carrying `Check` calls.
#[derive(Clone)]
pub struct Grpc {
    service: AuthorizationServer<ExtAuthz>,
    http: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
    /// Reading a check and answering it, whole; then `DEADLINE_EXCEEDED`.
    check_timeout: Duration,
}

impl Grpc {
    /// The service over `state`, under the listener's `limits`: a check's message may be
    /// twice `max_header_bytes` (the checked request's headers and their attributes), and
    /// must arrive within `body_timeout`.
    pub fn new(state: Arc<AppState>, limits: super::limits::Limits) -> Self {
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http.timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        Self {
            service: AuthorizationServer::new(ExtAuthz { state })
                .max_decoding_message_size(2 * limits.max_header_bytes),
            http: Arc::new(http),
            check_timeout: limits.body_timeout,
        }
    }
}

impl ServeConnection for Grpc {
    async fn serve<S>(
        self,
        stream: S,
        info: ConnectionInfo,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Grpc {
            service,
            http,
            check_timeout,
        } = self;
        // A new connection owes its first check within the header timeout; after that
        // HTTP/2 keeps it (Envoy multiplexes every check over a few long-lived
        // connections), and the keep-alive PINGs close it when its peer is gone.
        let (io, phase) = deadlined(stream, &info);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            phase.request_started();
            let answered = service.clone().call(request);
            async move {
                match tokio::time::timeout(check_timeout, answered).await {
                    Ok(response) => response,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(
                        "the check was not received in time",
                    )
                    .into_http()),
                }
            }
        });
        // Errors are the client's (a reset, a protocol error): nothing to report.
        let _ = watcher
            .watch(http.serve_connection(TokioIo::new(io), service))
            .await;
    }
}

/// Serves `Check` on `listener` (h2c) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    limits: super::limits::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    super::listen::serve_connections(listener, Grpc::new(state, limits), None, limits, shutdown)
        .await
}
