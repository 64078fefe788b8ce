//! Socket.IO: admission (middleware), connection setup, and in-order dispatch of client events.
//!
//! socketioxide runs each `async` event handler in its own task, which can reorder two events of
//! one socket (and costs a task per event). Dispatch therefore happens in [`Inbound`], a
//! handler of our own that socketioxide calls synchronously, in packet order, on the
//! connection's task: no task is spawned per event.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ConnectInfo;
use serde_json::Value;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::message::MessageHandler;
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::Socket;
use socketioxide::SocketIo;
use socketioxide_core::Value as RawValue;
use tandem_signaling::{ClientEvent, ConnId, SessionId, SignalError};

use crate::hub::{guest_room, Command, Hub, Reply};
use crate::limits::{IpSlot, OverHandshakeLimit};
use crate::metrics::SignalingMetrics;
use crate::App;

/// A refused connection; its Display is the `connect_error` message the client sees.
#[derive(Debug)]
struct Refusal(&'static str);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// What the middleware learned, for the connect handler: the guest, and the connection's
/// place in the per-address count (released when the socket disconnects, or with the socket
/// if it never connects).
#[derive(Clone)]
struct Admitted {
    session: SessionId,
    ip: Option<IpAddr>,
    slot: Option<Arc<ConnSlot>>,
}

/// A connection's place in its address's counts: this node's, and the cluster's.
struct ConnSlot {
    _local: IpSlot,
    _global: Option<GlobalConn>,
}

/// A connection counted cluster-wide; the count drops when this does.
struct GlobalConn {
    cluster: crate::cluster::Cluster,
    key: IpAddr,
}

impl Drop for GlobalConn {
    fn drop(&mut self) {
        let (cluster, key) = (self.cluster.clone(), self.key);
        tokio::spawn(async move {
            let _ = cluster.close_conn(key).await;
        });
    }
}

/// Per-socket context for event dispatch.
#[derive(Clone)]
struct ConnCtx {
    conn: ConnId,
    /// In a cluster: events go to the hub as received (the core parses them, or forwards
    /// them to the chat's home node).
    raw: bool,
    hub: Hub,
    metrics: SignalingMetrics,
}

pub fn setup(io: &SocketIo, app: Arc<App>) {
    let a = app.clone();
    let handler = move |s: SocketRef| {
        let app = a.clone();
        async move { on_connect(s, app) }
    };
    let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let app = app.clone();
        async move {
            let r = admit(&s, auth.ok(), &app).await;
            if let Err(Refusal(reason)) = &r {
                app.signaling_metrics
                    .connect_refusals
                    .with_label_values(&[reason])
                    .inc();
                if *reason == "rate_limited" {
                    app.signaling_metrics
                        .rate_limited
                        .with_label_values(&["connect"])
                        .inc();
                }
            }
            r
        }
    };
    io.ns("/", handler.with(middleware));
}

fn client_ip(s: &SocketRef) -> Option<IpAddr> {
    s.req_parts()
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

async fn admit(s: &SocketRef, auth: Option<Value>, app: &App) -> Result<(), Refusal> {
    let parts = s.req_parts();
    let header =
        |name: http::header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if !app
        .origins
        .allows(header(http::header::ORIGIN), header(http::header::HOST))
    {
        return Err(Refusal("origin_not_allowed"));
    }
    if app.draining.load(Ordering::Relaxed) || app.memory.busy() {
        return Err(Refusal("server_busy"));
    }
    // The handshake came over the address's limit (`--socket-handshakes-per-min`).
    if parts.extensions.get::<OverHandshakeLimit>().is_some() {
        return Err(Refusal("rate_limited"));
    }
    let token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str);
    let (session, username, token_exp_ms) = token
        .and_then(|t| app.tokens.verify_named(t))
        .ok_or(Refusal("unauthorized"))?;
    let ip = client_ip(s);
    // Counted now, atomically with the check: connections arriving at once cannot pass the
    // limit together. A refusal below drops the slot again.
    let slot = match ip {
        Some(ip) => {
            let local = app.ip_conns.try_open(ip).ok_or(Refusal("rate_limited"))?;
            // In a cluster the address's connections on every node count (a load balancer
            // spreads them); without Redis, this node's alone.
            let global = match &app.cluster {
                Some(cluster) => match cluster.open_conn(local.key(), app.ip_conns.max()).await {
                    Ok(true) => Some(GlobalConn {
                        cluster: cluster.clone(),
                        key: local.key(),
                    }),
                    Ok(false) => return Err(Refusal("rate_limited")),
                    Err(_) => None,
                },
                None => None,
            };
            Some(Arc::new(ConnSlot {
                _local: local,
                _global: global,
            }))
        }
        None => None,
    };
    // In a cluster the guest may have been made, or be in a chat, elsewhere: its shared
    // record says (gone: refused like an expired token). Without Redis the node serves alone
    // and trusts the signed token.
    let mut lost_record = false;
    let adopt = match &app.cluster {
        Some(cluster) => Some(match cluster.session_attach(session).await {
            Ok(Some(record)) => crate::hub::Adopt {
                username,
                home: Some(cluster.record_home(&record).await),
                lives: Some(record.lives),
                held_only: false,
            },
            Ok(None) => {
                lost_record = true;
                crate::hub::Adopt {
                    username,
                    home: None,
                    lives: None,
                    held_only: true,
                }
            }
            Err(_) => crate::hub::Adopt {
                username,
                home: None,
                lives: None,
                held_only: false,
            },
        }),
        None => None,
    };
    app.hub
        .admit(session, adopt)
        .await
        .map_err(|e| Refusal(e.code()))?;
    if let (true, Some(cluster)) = (lost_record, &app.cluster) {
        // A guest of this node whose record Redis lost (made during an outage, or Redis
        // restarted empty): written again so that other nodes know it.
        let _ = cluster.session_new(session, token_exp_ms).await;
        let _ = cluster.session_attach(session).await;
    }
    s.extensions.insert(Admitted { session, ip, slot });
    Ok(())
}

fn on_connect(s: SocketRef, app: Arc<App>) {
    let Some(Admitted { session, ip, slot }) = s.extensions.remove::<Admitted>() else {
        let _ = s.disconnect();
        return;
    };
    let slot = Arc::new(std::sync::Mutex::new(slot));
    let conn = ConnId(app.next_conn.fetch_add(1, Ordering::Relaxed));
    let span = tracing::debug_span!("conn", conn = conn.0, session = %session);
    let _enter = span.enter();
    tracing::debug!(?ip, transport = ?s.transport_type(), "socket connected");
    s.extensions.insert(ConnCtx {
        conn,
        raw: app.cluster.is_some(),
        hub: app.hub.clone(),
        metrics: app.signaling_metrics.clone(),
    });
    s.join(guest_room(session));
    let a = app.clone();
    s.on_disconnect(move |_: SocketRef| {
        let app = a.clone();
        // The connection no longer counts against its address.
        drop(slot.lock().map(|mut s| s.take()));
        async move {
            app.hub.send(Command::Disconnect { conn }).await;
            tracing::debug!(conn = conn.0, "socket disconnected");
        }
    });
    s.on_fallback(Inbound);
    if app
        .hub
        .try_send(Command::Connect {
            session,
            conn,
            socket: s.clone(),
        })
        .is_err()
    {
        let _ = s.disconnect();
    }
}

/// The handler of every event: dispatches it to the hub in the socket's packet order, inline
/// (socketioxide spawns a task for each call of an `async` handler; this one is not).
#[derive(Clone, Copy)]
struct Inbound;

impl MessageHandler<LocalAdapter, Inbound> for Inbound {
    fn call(&self, s: Arc<Socket<LocalAdapter>>, mut v: RawValue, ack_id: Option<i64>) {
        dispatch(&s, &mut v, ack_id);
    }
}

fn dispatch(s: &Arc<Socket<LocalAdapter>>, v: &mut RawValue, ack_id: Option<i64>) {
    let received = Instant::now();
    let Some(ctx) = s.extensions.get::<ConnCtx>() else {
        return;
    };
    let Ok(Event(name)) = Event::from_message_parts(s, v, &ack_id) else {
        return;
    };
    let Ok(TryData(data)) = TryData::<Value>::from_message_parts(s, v, &ack_id);
    let reply = if ack_id.is_some() {
        let Ok(ack) = AckSender::from_message_parts(s, v, &ack_id);
        Reply::Ack(ack)
    } else {
        let Ok(socket) = SocketRef::from_message_parts(s, v, &ack_id);
        Reply::Socket(socket, name.clone())
    };
    if ctx.raw {
        let cmd = Command::RawEvent {
            conn: ctx.conn,
            name,
            payload: data.ok(),
            reply,
            received,
        };
        if let Err(Command::RawEvent { reply, .. }) = ctx.hub.try_command(cmd) {
            ctx.metrics.refused(SignalError::ServerBusy);
            reply.refuse(SignalError::ServerBusy);
        }
        return;
    }
    let event = match ClientEvent::parse(&name, data.ok().as_ref()) {
        Ok(event) => event,
        Err(e) => {
            ctx.metrics.refused(e);
            reply.refuse(e);
            return;
        }
    };
    if let Err(Command::Event { reply, .. }) = ctx.hub.try_command(Command::Event {
        conn: ctx.conn,
        event,
        reply,
        received,
    }) {
        ctx.metrics.refused(SignalError::ServerBusy);
        reply.refuse(SignalError::ServerBusy);
    }
}
