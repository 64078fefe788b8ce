//! Batched UDP I/O for the media workers, on `quinn-udp`: several datagrams per receive call
//! (`recvmmsg`, and GRO where the kernel coalesces a flow), and runs of equal-sized datagrams to
//! one address in one send call (UDP GSO: a video frame's packets leave in one `sendmsg`).
//!
//! A socket bound to the unspecified address answers each remote from the local address that
//! remote wrote to (`IP_PKTINFO`): on a host with several addresses, the kernel would otherwise
//! pick the source by route, and a browser's ICE drops an answer from an address it did not ask.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receive slots per call.
const RECV_SLOTS: usize = 8;
/// Largest datagram accepted (str0m's packets are well under 1,500 bytes).
const MAX_DATAGRAM: usize = 2048;
/// The most one GSO send may carry (the IP payload limit, with room for headers).
const MAX_GSO_BYTES: usize = 65_000;
/// Remotes whose local address a wildcard-bound socket remembers, at most; past it the map is
/// cleared and learned again from the next datagrams.
const MAX_REPLY_ADDRS: usize = 16_384;

/// A worker's UDP socket with its batch buffers.
pub struct BatchSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    recv_bufs: [Vec<u8>; RECV_SLOTS],
    meta: Vec<RecvMeta>,
    gso_buf: Vec<u8>,
    /// Cleared after a GSO send failed for a reason other than a full buffer (a device
    /// without segmentation offload, say): from then on every datagram goes on its own.
    gso: bool,
    reply_from: ReplyFrom,
}

/// For a socket bound to the unspecified address: which local address answers to each remote
/// leave from — the one it last wrote to. Nearly every remote writes to one address (the node's
/// media or TURN address), so that one is kept apart and only remotes that wrote to another are
/// looked up: on the forwarding path a single-address host pays a comparison per datagram, not
/// a hash lookup. Nothing to remember for a socket bound to one address.
struct ReplyFrom {
    wildcard: bool,
    /// The first local address a remote wrote to.
    usual: Option<IpAddr>,
    /// Remotes that last wrote to another local address (at most [`MAX_REPLY_ADDRS`]).
    others: HashMap<SocketAddr, IpAddr>,
}

impl ReplyFrom {
    fn for_socket(socket: &std::net::UdpSocket) -> io::Result<ReplyFrom> {
        Ok(ReplyFrom {
            wildcard: socket.local_addr()?.ip().is_unspecified(),
            usual: None,
            others: HashMap::new(),
        })
    }

    fn learn(&mut self, remote: SocketAddr, local: Option<IpAddr>) {
        let Some(local) = local.filter(|_| self.wildcard) else {
            return;
        };
        let usual = *self.usual.get_or_insert(local);
        if local == usual {
            if !self.others.is_empty() {
                self.others.remove(&remote);
            }
        } else if self.others.get(&remote) != Some(&local) {
            if self.others.len() >= MAX_REPLY_ADDRS {
                self.others.clear();
            }
            self.others.insert(remote, local);
        }
    }

    fn source(&self, remote: SocketAddr) -> Option<IpAddr> {
        if self.others.is_empty() {
            return self.usual;
        }
        self.others.get(&remote).copied().or(self.usual)
    }
}

/// A UDP socket read and written one datagram at a time (a TURN worker's client socket), which
/// answers each remote from the address it wrote to.
pub struct ReplySocket {
    socket: UdpSocket,
    state: UdpSocketState,
    reply_from: ReplyFrom,
}

impl ReplySocket {
    pub fn new(socket: std::net::UdpSocket) -> io::Result<ReplySocket> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        // One datagram per read: no receive offload coalescing a flow's datagrams.
        let _ =
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::UdpGroSegment, &false);
        let reply_from = ReplyFrom::for_socket(&socket)?;
        Ok(ReplySocket {
            socket: UdpSocket::from_std(socket)?,
            state,
            reply_from,
        })
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// One datagram into `buf`: its length and source (`WouldBlock` when none is queued).
    pub fn try_recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut meta = [RecvMeta::default()];
        let state = &self.state;
        let socket = &self.socket;
        let mut slices = [IoSliceMut::new(buf)];
        let n = socket.try_io(Interest::READABLE, || {
            state.recv(socket.into(), &mut slices, &mut meta)
        })?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let [m] = meta;
        self.reply_from.learn(m.addr, m.dst_ip);
        Ok((m.len, m.addr))
    }

    /// Sends one datagram to `to`, from the address `to` last wrote to.
    pub fn try_send_to(&self, contents: &[u8], to: SocketAddr) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: self.reply_from.source(to),
        };
        let state = &self.state;
        let socket = &self.socket;
        socket.try_io(Interest::WRITABLE, || {
            state.try_send(socket.into(), &transmit)
        })
    }
}

impl std::os::fd::AsFd for BatchSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl BatchSocket {
    pub fn new(socket: std::net::UdpSocket) -> io::Result<BatchSocket> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let reply_from = ReplyFrom::for_socket(&socket)?;
        let socket = UdpSocket::from_std(socket)?;
        // A GRO read can hold several datagrams of one flow back to back.
        let slot = MAX_DATAGRAM * state.gro_segments().max(1);
        Ok(BatchSocket {
            socket,
            recv_bufs: std::array::from_fn(|_| vec![0u8; slot]),
            meta: vec![RecvMeta::default(); RECV_SLOTS],
            gso_buf: Vec::with_capacity(MAX_GSO_BYTES),
            gso: state.max_gso_segments() > 1,
            state,
            reply_from,
        })
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Reads what is queued, at most `max_calls` receive calls, handing each datagram to `f`
    /// (source and contents). Stops at the first would-block.
    pub fn recv_batch(&mut self, max_calls: usize, mut f: impl FnMut(SocketAddr, &[u8])) {
        for _ in 0..max_calls {
            let mut slices = self.recv_bufs.each_mut().map(|b| IoSliceMut::new(b));
            let state = &self.state;
            let meta = &mut self.meta;
            let socket = &self.socket;
            let n = match socket.try_io(Interest::READABLE, || {
                state.recv(socket.into(), &mut slices, meta)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "media recv");
                    return;
                }
            };
            for (m, buf) in self.meta.iter().zip(slices.iter()).take(n) {
                self.reply_from.learn(m.addr, m.dst_ip);
                let data = &buf[..m.len.min(buf.len())];
                let stride = if m.stride == 0 { data.len() } else { m.stride };
                for d in data.chunks(stride.max(1)) {
                    f(m.addr, d);
                }
            }
            if n < RECV_SLOTS {
                // The queue is empty (or nearly): do not pay for a call that finds nothing.
                return;
            }
        }
    }

    /// Sends `out` in order. Consecutive datagrams to one address of one size (the last of a
    /// run may be shorter) go as one GSO send. A full socket buffer drops datagrams, as the
    /// network would.
    pub fn send_all<T>(&mut self, out: &[T], datagram: impl Fn(&T) -> (SocketAddr, &[u8])) {
        let max_segments = if self.gso {
            self.state.max_gso_segments()
        } else {
            1
        };
        let mut i = 0;
        while i < out.len() {
            let (destination, first) = datagram(&out[i]);
            let size = first.len();
            let mut end = i + 1;
            let mut bytes = size;
            while size > 0 && end < out.len() && end - i < max_segments {
                let (d, c) = datagram(&out[end]);
                if d != destination || c.len() > size || bytes + c.len() > MAX_GSO_BYTES {
                    break;
                }
                bytes += c.len();
                end += 1;
                if c.len() < size {
                    // A shorter datagram ends a run.
                    break;
                }
            }
            if end - i == 1 {
                self.send_one(destination, first, None);
            } else {
                let mut buf = std::mem::take(&mut self.gso_buf);
                buf.clear();
                for o in &out[i..end] {
                    buf.extend_from_slice(datagram(o).1);
                }
                if !self.send_one(destination, &buf, Some(size)) {
                    for o in &out[i..end] {
                        let (d, c) = datagram(o);
                        self.send_one(d, c, None);
                    }
                }
                self.gso_buf = buf;
            }
            i = end;
        }
    }

    /// False only when a GSO send failed for a reason other than a full buffer (GSO is then
    /// turned off and the caller sends the run one by one).
    fn send_one(
        &mut self,
        destination: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> bool {
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: self.reply_from.source(destination),
        };
        let state = &self.state;
        let socket = &self.socket;
        match socket.try_io(Interest::WRITABLE, || {
            state.try_send(socket.into(), &transmit)
        }) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) if segment.is_some() => {
                tracing::warn!(error = %e, "UDP segmentation offload failed; sending datagrams one by one");
                self.gso = false;
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, %destination, "media send");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback")
    }

    /// Every datagram arrives on its own, whole and in order, however `send_all` grouped them.
    #[tokio::test]
    async fn runs_arrive_as_separate_datagrams() {
        let mut tx = BatchSocket::new(loopback()).expect("batch socket");
        let (a, b) = (loopback(), loopback());
        let to_a = a.local_addr().expect("addr");
        let to_b = b.local_addr().expect("addr");
        let datagram = |n: u8, len: usize| vec![n; len];
        // A run of equal sizes with a shorter last one, a run cut by a larger one, another
        // address in between, and more than one GSO send's worth.
        let mut plan: Vec<(SocketAddr, Vec<u8>)> = vec![
            (to_a, datagram(1, 1200)),
            (to_a, datagram(2, 1200)),
            (to_a, datagram(3, 700)),
            (to_a, datagram(4, 700)),
            (to_a, datagram(5, 900)),
            (to_b, datagram(6, 100)),
            (to_a, datagram(7, 100)),
        ];
        for n in 0..80u8 {
            plan.push((to_b, datagram(100 + n, 1000)));
        }
        // Sends only happen once the reactor has seen the socket writable, as in a worker.
        tx.socket.writable().await.expect("writable");
        tx.send_all(&plan, |(d, c)| (*d, &c[..]));

        let mut buf = [0u8; 4096];
        let mut got = |s: &std::net::UdpSocket| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            s.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec())
        };
        for (d, c) in &plan {
            let s = if *d == to_a { &a } else { &b };
            match got(s) {
                Ok(g) => assert_eq!(&g, c, "datagram {} intact and in order", c[0]),
                Err(e) => panic!("datagram {} ({} bytes) did not arrive: {e}", c[0], c.len()),
            }
        }
    }

    /// A loopback client that waits at most 5 s for an answer.
    fn timed_client() -> std::net::UdpSocket {
        let client = loopback();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        client
    }

    /// Where the client writes to a server bound to 0.0.0.0:`port`: three local addresses.
    fn asked_at(port: u16) -> Vec<SocketAddr> {
        ["127.0.0.2", "127.0.0.1", "127.0.0.3"]
            .iter()
            .map(|ip| format!("{ip}:{port}").parse().expect("address"))
            .collect()
    }

    /// The server's "pong" reaches the client from the very address the client wrote to.
    fn expect_pong_from(client: &std::net::UdpSocket, asked: SocketAddr) {
        let mut buf = [0u8; 16];
        let (n, answered_from) = client.recv_from(&mut buf).expect("an answer");
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(
            answered_from, asked,
            "the answer comes from the address asked"
        );
    }

    /// Bound to 0.0.0.0 and written to at 127.0.0.2, the socket answers from 127.0.0.2, not
    /// from the address the kernel's route would pick (127.0.0.1).
    #[tokio::test]
    async fn a_wildcard_socket_answers_from_the_address_it_was_written_to() {
        let mut server = BatchSocket::new(
            std::net::UdpSocket::bind("0.0.0.0:0").expect("bind the unspecified address"),
        )
        .expect("batch socket");
        let port = server.socket.local_addr().expect("addr").port();
        let client = timed_client();
        for asked in asked_at(port) {
            client.send_to(b"ping", asked).expect("send");
            let mut from = None;
            while from.is_none() {
                tokio::time::timeout(std::time::Duration::from_secs(5), server.readable())
                    .await
                    .expect("the datagram arrives")
                    .expect("readable");
                server.recv_batch(RECV_SLOTS, |source, _| from = Some(source));
            }
            let from = from.expect("a datagram");
            server.socket.writable().await.expect("writable");
            server.send_all(&[(from, b"pong".to_vec())], |(d, c)| (*d, &c[..]));
            expect_pong_from(&client, asked);
        }
    }

    /// The same for the one-datagram socket (a TURN worker's).
    #[tokio::test]
    async fn a_wildcard_reply_socket_answers_from_the_address_it_was_written_to() {
        let mut server = ReplySocket::new(
            std::net::UdpSocket::bind("0.0.0.0:0").expect("bind the unspecified address"),
        )
        .expect("reply socket");
        let port = server.socket.local_addr().expect("addr").port();
        let client = timed_client();
        for asked in asked_at(port) {
            client.send_to(b"ping", asked).expect("send");
            let mut buf = [0u8; 64];
            let (n, from) = loop {
                tokio::time::timeout(std::time::Duration::from_secs(5), server.readable())
                    .await
                    .expect("the datagram arrives")
                    .expect("readable");
                match server.try_recv_from(&mut buf) {
                    Ok(r) => break r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("recv: {e}"),
                }
            };
            assert_eq!(&buf[..n], b"ping");
            server.socket.writable().await.expect("writable");
            server.try_send_to(b"pong", from).expect("send");
            expect_pong_from(&client, asked);
        }
    }

    /// A batch read hands every queued datagram over, whole, in order, with its source.
    #[tokio::test]
    async fn batch_reads_return_every_datagram() {
        let mut rx = BatchSocket::new(loopback()).expect("batch socket");
        let to = rx.socket.local_addr().expect("addr");
        let tx = loopback();
        let from = tx.local_addr().expect("addr");
        // More than one receive call's worth.
        let sent: Vec<Vec<u8>> = (0..20u8)
            .map(|n| vec![n; 50 + usize::from(n) * 40])
            .collect();
        for d in &sent {
            tx.send_to(d, to).expect("send");
        }
        let mut got = Vec::new();
        while got.len() < sent.len() {
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.readable())
                .await
                .expect("datagrams arrive")
                .expect("readable");
            rx.recv_batch(RECV_SLOTS, |source, d| got.push((source, d.to_vec())));
        }
        assert!(got.iter().all(|(s, _)| *s == from));
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, sent);
    }
}
