//! Guest creation: `POST /api/guest` over a minimal HTTP/1.1 keep-alive client, a few workers in
//! parallel, each on its own connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Shared;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: usize = 5;
/// Largest response accepted (headers + body).
const MAX_RESPONSE: usize = 64 * 1024;

struct Response {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

struct Client {
    addr: SocketAddr,
    host: String,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<Response> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: keep-alive\r\n\r\n{body}",
            self.host,
            body.len()
        );
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).await.context("connect")?;
            s.set_nodelay(true)?;
            self.conn = Some(s);
        }
        let stream = self.conn.as_mut().expect("connected above");
        let res = exchange(stream, &mut self.buf, req.as_bytes()).await;
        match &res {
            Ok(r) if !r.close => {}
            _ => self.conn = None,
        }
        res
    }
}

async fn exchange(s: &mut TcpStream, buf: &mut Vec<u8>, req: &[u8]) -> anyhow::Result<Response> {
    s.write_all(req).await?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("non-UTF-8 response head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body = if chunked {
        read_chunked(s, buf, head_end).await?
    } else if let Some(len) = length {
        while buf.len() < head_end + len {
            fill(s, buf).await?;
        }
        buf[head_end..head_end + len].to_vec()
    } else {
        // No length: the body runs to the end of the connection.
        close = true;
        while fill(s, buf).await.is_ok() {}
        buf[head_end..].to_vec()
    };
    Ok(Response {
        status,
        body,
        close,
    })
}

async fn read_chunked(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut pos: usize,
) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf[pos..], b"\r\n") {
                break pos + i;
            }
            fill(s, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[pos..line_end])?
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        pos = line_end + 2;
        while buf.len() < pos + size + 2 {
            fill(s, buf).await?;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
        if size == 0 {
            return Ok(body);
        }
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    if buf.len() >= MAX_RESPONSE {
        bail!("response too large");
    }
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed mid-response");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Creates `n` guests with `concurrency` parallel keep-alive connections; returns their tokens
/// (fewer than `n` when some could not be created; every failure is counted in `shared`).
pub async fn create_guests(
    addr: SocketAddr,
    host: String,
    n: usize,
    concurrency: usize,
    shared: Arc<Shared>,
) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (next, shared, host) = (next.clone(), shared.clone(), host.clone());
        workers.push(tokio::spawn(async move {
            let mut client = Client {
                addr,
                host,
                conn: None,
                buf: Vec::with_capacity(4096),
            };
            let mut tokens = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                if let Some(t) = create_one(&mut client, &shared).await {
                    tokens.push(t);
                }
            }
            tokens
        }));
    }
    let mut tokens = Vec::with_capacity(n);
    for w in workers {
        if let Ok(t) = w.await {
            tokens.extend(t);
        }
    }
    tokens
}

async fn create_one(client: &mut Client, shared: &Shared) -> Option<String> {
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
        }
        let res = match tokio::time::timeout(REQUEST_TIMEOUT, client.post("/api/guest", "{}")).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                shared.error(&format!("http_guest: {e:#}"));
                continue;
            }
            Err(_) => {
                client.conn = None;
                shared.error("http_guest: timeout");
                continue;
            }
        };
        if res.status != 201 {
            let code = serde_json::from_slice::<serde_json::Value>(&res.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            shared.error(&format!("http_guest: {} {code}", res.status));
            continue;
        }
        let token = serde_json::from_slice::<serde_json::Value>(&res.body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_owned));
        match token {
            Some(t) => return Some(t),
            None => shared.error("http_guest: 201 without token"),
        }
    }
    None
}
