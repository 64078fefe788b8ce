//! HTTP routes: guest tokens, ICE servers, stats, health, metrics, and the embedded web client
//! (`web.rs`). Every `/api` error is `{"error":{"code","message"}}` with the right status.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tandem_signaling::{CallId, GuestInfo, NodeId, SessionId, SignalError};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::bearer;
use crate::limits::{client_key, Handshake, OverHandshakeLimit, RetryAfter};
use crate::App;

/// An HTTP error response.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn rate_limited(RetryAfter(wait): RetryAfter) -> Self {
        let mut e = Self::from(SignalError::RateLimited);
        e.retry_after = Some(wait.as_secs().max(1));
        e
    }
}

impl From<SignalError> for ApiError {
    fn from(e: SignalError) -> Self {
        let status = match e {
            SignalError::Unauthorized => StatusCode::UNAUTHORIZED,
            SignalError::RateLimited | SignalError::TooManySessions => {
                StatusCode::TOO_MANY_REQUESTS
            }
            SignalError::ServerBusy | SignalError::ServiceUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SignalError::NotInChat | SignalError::PartnerAwayQueueFull | SignalError::NoCall => {
                StatusCode::CONFLICT
            }
            SignalError::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SignalError::UnsupportedType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            SignalError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            SignalError::InvalidSignature | SignalError::Forbidden => StatusCode::FORBIDDEN,
            SignalError::Expired => StatusCode::GONE,
            SignalError::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut res = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    token: String,
    session_id: String,
    username: String,
    expires_at: String,
}

fn token_response(app: &App, info: GuestInfo) -> Result<TokenResponse, ApiError> {
    let token = app
        .tokens
        .issue(info.session_id, &info.username, info.expires_at_ms)
        .map_err(|e| {
            tracing::error!(error = %e, "signing a token failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong on our side.",
            )
        })?;
    let at = time::OffsetDateTime::from_unix_timestamp((info.expires_at_ms / 1000) as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    Ok(TokenResponse {
        token,
        session_id: info.session_id.to_string(),
        username: info.username,
        expires_at: at,
    })
}

fn ip_of(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The routes. `with_metrics`: also `/metrics` (off when `--metrics-bind` serves it apart).
pub fn router(app: Arc<App>, with_metrics: bool) -> Router {
    let cors_app = app.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            cors_app.origins.allows(origin.to_str().ok(), host)
        }))
        .allow_methods([http::Method::GET, http::Method::HEAD, http::Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    let api = Router::new()
        .route("/guest", post(create_guest))
        .route("/guest/refresh", post(refresh))
        .route("/ice-servers", get(ice_servers))
        .route("/stats", get(stats))
        .route("/limits", get(crate::files::limits))
        .route("/files", post(crate::files::upload))
        .route("/files/{id}", get(crate::files::download))
        .fallback(api_not_found)
        .method_not_allowed_fallback(api_method_not_allowed)
        .route_layer(middleware::from_fn_with_state(app.clone(), api_limits))
        .layer(cors);
    let mut root = Router::new()
        .nest("/api", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if with_metrics {
        root = root.route("/metrics", get(metrics));
    }
    root.merge(crate::web::routes())
        .fallback(crate::web::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), count_requests))
        .with_state(app)
}

/// `/metrics` alone, for `--metrics-bind`.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Engine.io handshakes per client address, in front of the Socket.IO layer. A handshake is a
/// request under `/socket.io` without a `sid` (a new polling session, or a WebSocket opened
/// directly); one over the limit goes on marked [`OverHandshakeLimit`], and the Socket.IO
/// middleware refuses its connect with `rate_limited`; past twice the limit it gets 429 here.
pub async fn socketio_handshakes(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Response {
    let handshake = is_socket_handshake(req.uri());
    if let (true, Some(ip)) = (handshake, ip_of(&req)) {
        let verdict = app.http_limits.handshake(ip);
        if !matches!(verdict, Handshake::Allowed) {
            app.http_metrics
                .rate_limited
                .with_label_values(&["socket_handshake"])
                .inc();
        }
        match verdict {
            Handshake::Allowed => {}
            Handshake::Refuse => {
                req.extensions_mut().insert(OverHandshakeLimit);
            }
            Handshake::Drop(wait) => return ApiError::rate_limited(wait).into_response(),
        }
    }
    next.run(req).await
}

/// The headers a Socket.IO connection needs after its handshake: the WebSocket upgrade's, and
/// what admission reads (`Origin`, `Host`). The client address was taken from the connection
/// (and a trusted proxy's forwarding headers) before this.
const SOCKET_HEADERS: [header::HeaderName; 9] = [
    header::HOST,
    header::ORIGIN,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
];

/// Whether a request opens a Socket.IO connection: under `/socket.io`, without a `sid` (a new
/// polling session, or a WebSocket opened directly).
fn is_socket_handshake(uri: &http::Uri) -> bool {
    uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sid=")))
}

/// A Socket.IO handshake as its socket keeps it for its whole life (socketioxide holds its
/// parts): only [`SOCKET_HEADERS`], and those and the URI copied out of hyper's read buffer.
/// Parsed header values and the URI are views of that 8 KiB buffer, so one kept header (or
/// the router's copy of the URI) kept it all alive: 8 KiB per connected guest, and a browser's
/// cookies and client hints on top. Applied as the request comes off the connection, before
/// anything clones a part of it. Other requests pass as they are.
pub fn lean_handshake<B>(req: http::Request<B>) -> http::Request<B> {
    if !is_socket_handshake(req.uri()) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    let mut headers = http::HeaderMap::with_capacity(SOCKET_HEADERS.len());
    for name in SOCKET_HEADERS {
        for value in parts.headers.get_all(&name) {
            if let Ok(value) = http::HeaderValue::from_bytes(value.as_bytes()) {
                headers.append(name.clone(), value);
            }
        }
    }
    parts.headers = headers;
    if let Ok(uri) = http::Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    http::Request::from_parts(parts, body)
}

/// Per-IP and per-guest request limits on `/api/*`.
async fn api_limits(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(ip) = ip_of(&req) {
        if let Err(r) = app.http_limits.request(ip) {
            app.http_metrics
                .rate_limited
                .with_label_values(&["ip"])
                .inc();
            return Err(ApiError::rate_limited(r));
        }
    }
    if let Some(session) =
        bearer(req.headers().get(header::AUTHORIZATION)).and_then(|t| app.tokens.verify(t))
    {
        if let Err(r) = app.http_limits.guest_request(session) {
            app.http_metrics
                .rate_limited
                .with_label_values(&["guest"])
                .inc();
            return Err(ApiError::rate_limited(r));
        }
    }
    Ok(next.run(req).await)
}

async fn count_requests(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_owned(),
        None if req.uri().path().starts_with("/api/") => "/api/*".to_owned(),
        None => "other".to_owned(),
    };
    let res = next.run(req).await;
    app.http_metrics
        .requests
        .with_label_values(&[route.as_str(), res.status().as_str()])
        .inc();
    res
}

async fn create_guest(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Err(r) = app.http_limits.creation(peer.ip()) {
        app.http_metrics
            .rate_limited
            .with_label_values(&["guest_creation"])
            .inc();
        return Err(ApiError::rate_limited(r));
    }
    if app.draining.load(Ordering::Relaxed) || app.memory.busy() {
        return Err(SignalError::ServerBusy.into());
    }
    if let Some(cluster) = &app.cluster {
        // The same limit across the cluster: a load balancer spreads one address's requests.
        let key = crate::limits::limit_key(peer.ip());
        if let Ok(Some(wait)) = cluster.count_creation(key, app.creations_per_min).await {
            app.http_metrics
                .rate_limited
                .with_label_values(&["guest_creation"])
                .inc();
            return Err(ApiError::rate_limited(crate::limits::RetryAfter(wait)));
        }
    }
    let username = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "The body must be a JSON object.",
            )
        })?;
        let Value::Object(o) = v else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "The body must be a JSON object.",
            ));
        };
        match o.get("username") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(SignalError::InvalidUsername.into()),
        }
    };
    let client = client_key(peer.ip());
    // In a cluster the cap on open sessions per address counts every node's (as published
    // within the last second or so); Redis lost, this node's alone.
    let elsewhere = match &app.cluster {
        Some(cluster) => cluster.sessions_elsewhere(client).await.unwrap_or(0),
        None => 0,
    };
    let info = match app
        .hub
        .create_guest(username, Some(client), elsewhere)
        .await
    {
        Err(SignalError::TooManySessions) => {
            app.http_metrics
                .rate_limited
                .with_label_values(&["sessions_per_ip"])
                .inc();
            return Err(SignalError::TooManySessions.into());
        }
        other => other?,
    };
    if let Some(cluster) = &app.cluster {
        // Written before the token is handed out: its socket may connect to any node at once.
        // Without Redis the guest is this node's alone (its record is written when its socket
        // connects here once Redis is back).
        if let Err(f) = cluster
            .session_new(info.session_id, info.expires_at_ms)
            .await
        {
            tracing::debug!(error = %f, "a guest's shared record could not be written");
        }
    }
    Ok((StatusCode::CREATED, Json(token_response(&app, info)?)).into_response())
}

/// In a cluster: makes sure this node holds guest `session` (made, or connected, on another
/// node) before a route that needs it, from its token (`username`, expiry) and its shared
/// record; `unauthorized` when the record says the session is gone. Nothing on one node.
pub(crate) async fn adopt(
    app: &App,
    session: tandem_signaling::SessionId,
    username: String,
    token_exp_ms: u64,
) -> Result<(), SignalError> {
    let Some(cluster) = &app.cluster else {
        return Ok(());
    };
    let (adopt, lost) = match cluster.session_peek(session).await {
        Ok(Some(record)) => (
            crate::hub::Adopt {
                username,
                home: Some(cluster.record_home(&record).await),
                lives: Some(record.lives),
                held_only: false,
            },
            false,
        ),
        // Gone, unless this node holds it (made while Redis was lost).
        Ok(None) => (
            crate::hub::Adopt {
                username,
                home: None,
                lives: None,
                held_only: true,
            },
            true,
        ),
        Err(_) => (
            crate::hub::Adopt {
                username,
                home: None,
                lives: None,
                held_only: false,
            },
            false,
        ),
    };
    app.hub.adopt(session, adopt).await?;
    if lost {
        let _ = cluster.session_new(session, token_exp_ms).await;
    }
    Ok(())
}

async fn refresh(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<TokenResponse>, ApiError> {
    let (session, username, token_exp_ms) = bearer(headers.get(header::AUTHORIZATION))
        .and_then(|t| app.tokens.verify_named(t))
        .ok_or(SignalError::Unauthorized)?;
    adopt(&app, session, username, token_exp_ms).await?;
    let info = app.hub.refresh(session).await?;
    if let Some(cluster) = &app.cluster {
        // Every node's copy of the session follows the record (see `Core::adopt`).
        if let Err(f) = cluster.session_extend(session, info.expires_at_ms).await {
            tracing::warn!(error = %f, "a refresh could not reach the session's shared record");
        }
    }
    Ok(Json(token_response(&app, info)?))
}

/// How long a client may keep using an `/api/ice-servers` answer (and, once TURN is there, its
/// credentials) before asking again.
const ICE_SERVERS_TTL_SECS: u64 = 3600;

/// One entry of the browser's `RTCConfiguration.iceServers`.
#[derive(Serialize)]
struct IceServer {
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IceServersResponse {
    ice_servers: Vec<IceServer>,
    ttl: u64,
}

/// The ICE servers a guest's browser should use: the `turn:` (UDP, TCP) and `turns:` URLs of
/// the TURN server next to the call's media server, with REST credentials for `session` in
/// `call`, or none when TURN is off (the media server is ICE-lite with host candidates, which
/// browsers reach without STUN).
///
/// `media` is the call's media node when it is another node of the cluster (the chat's home):
/// its TURN server (from its registry entry) is the one that may relay to its media address,
/// so its URLs are named; every node shares `--turn-secret`, so the credentials minted here
/// are valid there (and revoked there too when the call ends, the call id being their grant).
/// A media node missing from the registry (gone), or a registry that cannot be read:
/// `service_unavailable`; one with TURN off: none.
async fn ice_server_list(
    app: &App,
    session: SessionId,
    call: CallId,
    media: Option<NodeId>,
) -> Result<Vec<IceServer>, ApiError> {
    let Some(turn) = &app.turn else {
        return Ok(Vec::new());
    };
    let urls = match media {
        None => turn.urls().to_vec(),
        Some(node) => {
            let cluster = app
                .cluster
                .as_ref()
                .ok_or(SignalError::ServiceUnavailable)?;
            let info = match cluster.node_info(node).await {
                Ok(Some(info)) => info,
                Ok(None) => return Err(SignalError::ServiceUnavailable.into()),
                Err(f) => {
                    tracing::debug!(error = %f, "a media node's registry entry could not be read");
                    return Err(SignalError::ServiceUnavailable.into());
                }
            };
            match info.turn {
                Some(t) => crate::turn::urls(t.ip, t.port, t.tls_port),
                None => return Ok(Vec::new()),
            }
        }
    };
    let (username, credential) = turn.credentials(&session.to_string(), &call.to_string());
    Ok(vec![IceServer {
        urls,
        username: Some(username),
        credential: Some(credential),
    }])
}

async fn ice_servers(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (session, username, token_exp_ms) = bearer(headers.get(header::AUTHORIZATION))
        .and_then(|t| app.tokens.verify_named(t))
        .ok_or(SignalError::Unauthorized)?;
    // In a cluster the request may land on a node that holds no socket of the guest: its
    // record names the chat's home (the media node) and the call.
    adopt(&app, session, username, token_exp_ms).await?;
    // Credentials only for a live guest in a ringing or accepted call (409 `no_call`
    // otherwise): TURN is for reaching the SFU, and they stop working with the call.
    let (call, media) = app.hub.call_of(session).await?;
    let body = IceServersResponse {
        ice_servers: ice_server_list(&app, session, call, media).await?,
        ttl: app
            .turn
            .as_ref()
            .map_or(ICE_SERVERS_TTL_SECS, |t| t.ttl().as_secs()),
    };
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response())
}

async fn stats(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    Ok(Json(app.hub.stats().await?).into_response())
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    if app.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
        )
            .into_response()
    } else {
        Json(json!({ "status": "ok" })).into_response()
    }
}

/// Ready to take traffic: not draining, the signaling hub answers, every media and TURN worker
/// beat within the last 3 s, and (with `--redis-url`) the last heartbeat reached Redis. 503
/// with the reasons otherwise.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let mut reasons: Vec<String> = Vec::new();
    if app.draining.load(Ordering::Relaxed) {
        reasons.push("shutting down".to_owned());
    }
    let hub = tokio::time::timeout(std::time::Duration::from_secs(1), app.hub.stats()).await;
    if !matches!(hub, Ok(Ok(_))) {
        reasons.push("the signaling hub does not answer".to_owned());
    }
    if let Some(Err(why)) = app.cluster.as_ref().map(|c| c.readiness()) {
        reasons.push(why);
    }
    if let Err(stale) = app.supervisor.readiness() {
        reasons.extend(
            stale
                .into_iter()
                .map(|w| format!("worker {w} is not beating")),
        );
    }
    if reasons.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reasons": reasons })),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let body = crate::metrics::encode(&app.registry);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        Body::from(body),
    )
        .into_response()
}

async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such route.")
}

async fn api_method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This route does not take that method.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_handshake_keeps_only_the_headers_its_socket_needs() {
        let req = http::Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header(header::HOST, "chat.example")
            .header(header::ORIGIN, "https://chat.example")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::COOKIE, "a=".to_owned() + &"x".repeat(4000))
            .header(header::USER_AGENT, "Mozilla/5.0")
            .body(())
            .expect("a valid request");
        let lean = lean_handshake(req);
        assert_eq!(lean.uri(), "/socket.io/?EIO=4&transport=websocket");
        let names: Vec<_> = lean.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "origin", "upgrade", "sec-websocket-key"]);
        assert_eq!(lean.headers()[header::ORIGIN], "https://chat.example");

        // Anything else (a polling request of a session, the API) passes as it is.
        for uri in ["/socket.io/?EIO=4&transport=polling&sid=abc", "/api/guest"] {
            let req = http::Request::builder()
                .uri(uri)
                .header(header::COOKIE, "a=b")
                .body(())
                .expect("a valid request");
            assert!(
                lean_handshake(req).headers().contains_key(header::COOKIE),
                "{uri}"
            );
        }
    }

    #[test]
    fn ice_servers_shape() {
        let empty = IceServersResponse {
            ice_servers: Vec::new(),
            ttl: ICE_SERVERS_TTL_SECS,
        };
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            json!({ "iceServers": [], "ttl": 3600 })
        );
        let turn = IceServer {
            urls: vec!["turn:example.test:3478?transport=udp".into()],
            username: Some("1700000000:abcd".into()),
            credential: Some("secret".into()),
        };
        assert_eq!(
            serde_json::to_value(&turn).unwrap(),
            json!({
                "urls": ["turn:example.test:3478?transport=udp"],
                "username": "1700000000:abcd",
                "credential": "secret"
            })
        );
    }
}

pub use self::own_metrics::HttpMetrics;

/// This component's metrics: it registers its own.
mod own_metrics {
    use crate::metrics::reg;
    use prometheus::{IntCounterVec, Opts, Registry};

    /// HTTP metrics, registered by [`HttpMetrics::register`].
    #[derive(Clone)]
    pub struct HttpMetrics {
        pub requests: IntCounterVec,
        pub rate_limited: IntCounterVec,
    }

    impl HttpMetrics {
        pub fn register(r: &Registry) -> Self {
            let m = Self {
                requests: reg(
                    r,
                    IntCounterVec::new(
                        Opts::new(
                            "tandem_http_requests_total",
                            "HTTP requests, by route and status",
                        ),
                        &["route", "status"],
                    )
                    .expect("valid"),
                ),
                rate_limited: reg(
                    r,
                    IntCounterVec::new(
                        Opts::new(
                            "tandem_http_rate_limited_total",
                            "HTTP requests refused by a limit",
                        ),
                        &["limit"],
                    )
                    .expect("valid"),
                ),
            };
            for limit in [
                "ip",
                "guest",
                "guest_creation",
                "sessions_per_ip",
                "socket_handshake",
            ] {
                m.rate_limited.with_label_values(&[limit]);
            }
            m
        }
    }
}
