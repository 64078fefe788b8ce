//! A small Socket.IO v5 client for the call signaling (WebSocket transport only): one task owns
//! the socket, answers Engine.IO pings and server acks, hands every server event to an mpsc
//! channel, and resolves the acks of the events we emit.
//!
//! Unlike `tandem-load`'s hot-path connection (benches/load/conn.rs, tuned for thousands of
//! sockets and chat traffic), this one parses every packet with serde_json: call signaling is a
//! handful of events per guest, and SDP bodies carry escapes that need real JSON decoding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// A server → client event.
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

type AckMap = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// The sending half of a connected socket; events arrive on the receiver returned by
/// [`connect`].
pub struct Socket {
    out: mpsc::UnboundedSender<Message>,
    acks: AckMap,
    next_ack: AtomicU64,
    io: tokio::task::JoinHandle<()>,
}

/// Opens the WebSocket and completes the Socket.IO handshake with `auth = {token}`.
pub async fn connect(
    ws_url: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<(Socket, mpsc::UnboundedReceiver<Event>)> {
    let (ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(ws_url))
        .await
        .map_err(|_| anyhow!("websocket connect timed out"))?
        .context("websocket connect")?;
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let acks: AckMap = Arc::default();
    let auth = format!("40{}", json!({ "token": token }));
    let io = tokio::spawn(io_loop(ws, out_rx, ev_tx, acks.clone(), auth, ready_tx));
    let socket = Socket {
        out: out_tx,
        acks,
        next_ack: AtomicU64::new(1),
        io,
    };
    match tokio::time::timeout(timeout, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok((socket, ev_rx)),
        Ok(Ok(Err(why))) => {
            socket.io.abort();
            bail!("connect_error: {why}")
        }
        Ok(Err(_)) => bail!("socket closed during the handshake"),
        Err(_) => {
            socket.io.abort();
            bail!("Socket.IO handshake timed out")
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn io_loop(
    mut ws: Ws,
    mut out: mpsc::UnboundedReceiver<Message>,
    events: mpsc::UnboundedSender<Event>,
    acks: AckMap,
    auth: String,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    loop {
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let reply = match on_frame(text.as_str(), &events, &acks, &auth, &mut ready) {
                    Ok(reply) => reply,
                    Err(()) => break,
                };
                if let Some(r) = reply {
                    if ws.send(Message::text(r)).await.is_err() {
                        break;
                    }
                }
            }
            msg = out.recv() => match msg {
                Some(m) => {
                    let closing = matches!(m, Message::Close(_));
                    if ws.send(m).await.is_err() || closing {
                        // Wait briefly for the server's close, then drop the socket.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        break;
                    }
                }
                None => break,
            },
        }
    }
    // Dropping `events` tells the owner the socket is gone; pending acks fail with it.
    acks.lock().expect("ack map").clear();
}

/// Handles one text frame; returns a frame to send back, or `Err` when the session is over.
fn on_frame(
    t: &str,
    events: &mpsc::UnboundedSender<Event>,
    acks: &AckMap,
    auth: &str,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
) -> Result<Option<String>, ()> {
    let (eio, rest) = (t.get(..1).unwrap_or(""), t.get(1..).unwrap_or(""));
    match eio {
        "0" => Ok(Some(auth.to_owned())),
        "2" => Ok(Some("3".to_owned())),
        "1" => Err(()),
        "4" => {
            let (sio, body) = (rest.get(..1).unwrap_or(""), rest.get(1..).unwrap_or(""));
            match sio {
                "0" => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                    Ok(None)
                }
                "4" => {
                    let why = serde_json::from_str::<Value>(body)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| body.to_owned());
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(why));
                    }
                    Err(())
                }
                "1" => Err(()),
                "2" | "3" => {
                    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
                    let id = body[..digits].parse::<u64>().ok();
                    let Ok(Value::Array(mut args)) = serde_json::from_str::<Value>(&body[digits..])
                    else {
                        return Ok(None);
                    };
                    if sio == "3" {
                        let waiter = id.and_then(|id| acks.lock().expect("ack map").remove(&id));
                        if let Some(w) = waiter {
                            let first = if args.is_empty() {
                                Value::Null
                            } else {
                                args.swap_remove(0)
                            };
                            let _ = w.send(first);
                        }
                        return Ok(None);
                    }
                    let mut it = args.into_iter();
                    let name = match it.next() {
                        Some(Value::String(s)) => s,
                        _ => return Ok(None),
                    };
                    let data = it.next().unwrap_or(Value::Null);
                    let _ = events.send(Event { name, data });
                    // Server events that want an ack (e.g. chat messages) get an empty one.
                    Ok(id.map(|id| format!("43{id}[]")))
                }
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

impl Socket {
    fn frame(name: &str, data: &Value, ack: Option<u64>) -> String {
        let args = if data.is_null() {
            json!([name])
        } else {
            json!([name, data])
        };
        match ack {
            Some(id) => format!("42{id}{args}"),
            None => format!("42{args}"),
        }
    }

    /// Emits an event without an ack.
    pub fn emit(&self, name: &str, data: Value) -> anyhow::Result<()> {
        self.out
            .send(Message::text(Self::frame(name, &data, None)))
            .map_err(|_| anyhow!("socket closed"))
    }

    /// Emits an event with an ack and waits for it; `{ok:false}` acks are errors.
    pub async fn request(
        &self,
        name: &str,
        data: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks.lock().expect("ack map").insert(id, tx);
        self.out
            .send(Message::text(Self::frame(name, &data, Some(id))))
            .map_err(|_| anyhow!("{name}: socket closed"))?;
        let ack = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => bail!("{name}: socket closed before the ack"),
            Err(_) => {
                self.acks.lock().expect("ack map").remove(&id);
                bail!("{name}: no ack within {timeout:?}")
            }
        };
        if ack.get("ok") == Some(&Value::Bool(false)) {
            let code = ack["error"]["code"].as_str().unwrap_or("?");
            bail!("{name} refused: {code}");
        }
        Ok(ack)
    }

    /// Socket.IO disconnect, then a WebSocket close; waits (bounded) for the I/O task to end.
    pub async fn close(self) {
        let _ = self.out.send(Message::text("41"));
        let _ = self.out.send(Message::Close(None));
        let mut io = self.io;
        if tokio::time::timeout(Duration::from_secs(2), &mut io)
            .await
            .is_err()
        {
            io.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(
            Socket::frame("call:request", &json!({"video": true}), Some(7)),
            r#"427["call:request",{"video":true}]"#
        );
        assert_eq!(
            Socket::frame("call:accept", &Value::Null, None),
            r#"42["call:accept"]"#
        );
    }

    #[test]
    fn parses_events_and_acks() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let acks: AckMap = Arc::default();
        let (atx, mut arx) = oneshot::channel();
        acks.lock().unwrap().insert(3, atx);
        let mut ready = None;
        let sdp = r#"42["webrtc:answer",{"sdp":"v=0\r\nm=audio"}]"#;
        assert_eq!(on_frame(sdp, &tx, &acks, "40{}", &mut ready), Ok(None));
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.name, "webrtc:answer");
        assert_eq!(ev.data["sdp"], "v=0\r\nm=audio");
        assert_eq!(
            on_frame(r#"4212["chat:message",{}]"#, &tx, &acks, "", &mut ready),
            Ok(Some("4312[]".to_owned()))
        );
        assert_eq!(
            on_frame(
                r#"433[{"ok":true,"roomId":"ab"}]"#,
                &tx,
                &acks,
                "",
                &mut ready
            ),
            Ok(None)
        );
        assert_eq!(arx.try_recv().unwrap()["roomId"], "ab");
        assert_eq!(
            on_frame("2", &tx, &acks, "", &mut ready),
            Ok(Some("3".to_owned()))
        );
    }
}
