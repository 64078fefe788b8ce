//! Baseline for `tandem-load`: socketioxide alone. The relay work per message that
//! `benches/node-baseline/server.mjs` does on the Node socket.io stack (ack, `chat:message:sent`,
//! the partner's delivery with ack, `chat:message:delivered`, read receipts), written the
//! plain way on axum + socketioxide: async handlers (socketioxide runs each call in a task of its
//! own; the message's handler awaits the partner's ack), one map behind a mutex. One runtime thread and mimalloc, as tandem's signaling runs. No
//! limits, no validation beyond the shape, no hub: what the Rust Socket.IO stack costs by itself,
//! so that tandem's figure splits into the stack's and tandem's own (`benches/compare.sh`).
//!
//! Usage: `tandem-sio-baseline <port>` (listens on 127.0.0.1).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::{AckError, SocketIo};

#[derive(Clone)]
struct Guest {
    id: String,
    username: String,
}

/// A connected socket's guest id (socket extension).
#[derive(Clone)]
struct Me(String);

#[derive(Default)]
struct State {
    by_token: HashMap<String, Guest>,
    /// Guest id → user name.
    names: HashMap<String, String>,
    sockets: HashMap<String, SocketRef>,
    /// Guest id → (partner id, room id).
    partner: HashMap<String, (String, String)>,
    waiting: Option<String>,
}

type Shared = Arc<Mutex<State>>;

fn hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn on_connect(s: SocketRef, auth: Option<Value>, state: Shared) {
    let token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(g) = lock(&state).by_token.get(token).cloned() else {
        let _ = s.disconnect();
        return;
    };
    s.extensions.insert(Me(g.id.clone()));
    lock(&state).sockets.insert(g.id.clone(), s.clone());
    let _ = s.emit(
        "connection:established",
        &json!({ "sessionId": g.id, "username": g.username, "state": "online" }),
    );

    let st = state.clone();
    s.on("match:start", move |s: SocketRef, ack: AckSender| {
        let st = st.clone();
        async move { match_start(s, ack, st) }
    });

    let st = state.clone();
    s.on(
        "chat:message",
        move |s: SocketRef, TryData(p): TryData<Value>, ack: AckSender| {
            let st = st.clone();
            async move { chat_message(s, p.unwrap_or_default(), ack, st).await }
        },
    );

    let st = state.clone();
    s.on(
        "chat:message:read",
        move |s: SocketRef, TryData(p): TryData<Value>, ack: AckSender| {
            let st = st.clone();
            async move {
                let _ = ack.send(&json!({ "ok": true }));
                let id = p.ok().and_then(|p| p.get("id").cloned());
                let partner = s.extensions.get::<Me>().and_then(|Me(me)| {
                    let st = lock(&st);
                    let (partner, _) = st.partner.get(&me)?;
                    st.sockets.get(partner).cloned()
                });
                if let Some(partner) = partner {
                    let _ = partner.emit("chat:message:read", &json!({ "id": id }));
                }
            }
        },
    );

    s.on_disconnect(move |s: SocketRef| {
        let state = state.clone();
        async move {
            if let Some(Me(me)) = s.extensions.get::<Me>() {
                let mut st = lock(&state);
                if st.waiting.as_deref() == Some(me.as_str()) {
                    st.waiting = None;
                }
                st.sockets.remove(&me);
                if let Some((partner, _)) = st.partner.remove(&me) {
                    st.partner.remove(&partner);
                }
            }
        }
    });
}

fn match_start(s: SocketRef, ack: AckSender, st: Shared) {
    let Some(Me(me)) = s.extensions.get::<Me>() else {
        return;
    };
    let _ = s.emit("match:searching", &json!({}));
    let mut guard = lock(&st);
    let st = &mut *guard;
    match st.waiting.take() {
        Some(other) if other != me => {
            let room = hex(16);
            st.partner.insert(me.clone(), (other.clone(), room.clone()));
            st.partner.insert(other.clone(), (me.clone(), room.clone()));
            let name = |id: &str| st.names.get(id).cloned().unwrap_or_default();
            if let Some(o) = st.sockets.get(&other) {
                let _ = o.emit(
                    "match:found",
                    &json!({ "roomId": room, "partner": { "username": name(&me) } }),
                );
            }
            let _ = s.emit(
                "match:found",
                &json!({ "roomId": room, "partner": { "username": name(&other) } }),
            );
            let _ = ack.send(&json!({ "ok": true, "state": "in_chat" }));
        }
        _ => {
            st.waiting = Some(me);
            let _ = ack.send(&json!({ "ok": true, "state": "searching" }));
        }
    }
}

async fn chat_message(s: SocketRef, p: Value, ack: AckSender, st: Shared) {
    let found = s.extensions.get::<Me>().and_then(|Me(me)| {
        let st = lock(&st);
        let (partner, room) = st.partner.get(&me)?.clone();
        Some((st.sockets.get(&partner)?.clone(), room))
    });
    let content = p.get("content").and_then(Value::as_str);
    let (Some((partner, room)), Some(content)) = (found, content) else {
        let _ = ack.send(&json!({ "ok": false, "error": { "code": "not_in_chat" } }));
        return;
    };
    let id = hex(8);
    let timestamp = now_ms();
    let _ = ack.send(&json!({ "ok": true, "id": id, "timestamp": timestamp }));
    let _ = s.emit(
        "chat:message:sent",
        &json!({ "clientId": p.get("clientId"), "id": id, "timestamp": timestamp }),
    );
    let message = json!({
        "id": id, "roomId": room, "type": "text", "content": content.trim(),
        "timestamp": timestamp, "from": "partner",
    });
    if let Ok(acks) = partner.emit_with_ack::<_, Value>("chat:message", &message) {
        // Any answer counts (a bare `ack()` carries no payload to decode).
        if matches!(acks.await, Ok(_) | Err(AckError::Decode(_))) {
            let _ = s.emit("chat:message:delivered", &json!({ "id": id }));
        }
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(18092);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let state: Shared = Arc::default();
        let (layer, io) = SocketIo::builder()
            .max_payload(16 * 1024)
            .ack_timeout(Duration::from_secs(10))
            .build_layer();
        let st = state.clone();
        io.ns("/", move |s: SocketRef, TryData(auth): TryData<Value>| {
            let st = st.clone();
            async move { on_connect(s, auth.ok(), st) }
        });
        let st = state.clone();
        let app = Router::new()
            .route(
                "/api/guest",
                post(move || {
                    let st = st.clone();
                    async move {
                        let token = hex(16);
                        let g = Guest {
                            id: hex(16),
                            username: format!("Guest-{}", hex(2)),
                        };
                        let body = json!({
                            "token": token, "sessionId": g.id, "username": g.username,
                            "expiresAt": "2099-01-01T00:00:00Z",
                        });
                        let mut st = lock(&st);
                        st.names.insert(g.id.clone(), g.username.clone());
                        st.by_token.insert(token, g);
                        (StatusCode::CREATED, Json(body))
                    }
                }),
            )
            .layer(layer);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("socketioxide baseline on 127.0.0.1:{port}");
        axum::serve(listener, app).await
    })
}
