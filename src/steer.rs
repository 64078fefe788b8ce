//! Steering a media peer's datagrams to the socket of the worker that owns its call.
//!
//! The media workers' sockets share one UDP port (SO_REUSEPORT), and the kernel picks a socket
//! by a hash of the sender's address, while a call lives on one worker: without steering, a
//! datagram lands on the wrong worker one time in `1 − 1/n` and is handed over (a copy, a
//! channel send and a wake-up of another thread). So the workers publish the IPv4 addresses
//! their peers send from, and a classic BPF program attached to the port's reuseport group
//! (`SO_ATTACH_REUSEPORT_CBPF`: no privilege needed) returns the owning worker's socket for
//! them: a binary search over a key of the source address's low 16 bits and the source port.
//! Anything else, and any datagram the program cannot read (IPv6, IP options), goes by the
//! kernel's hash as before and is handed over if it must be; a key two peers share steers to
//! one of them, and the other's datagrams are handed over. Steering only saves work: it never
//! decides who receives a datagram.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::libc::{self, sock_filter};
use nix::sys::socket::{setsockopt, sockopt::AttachReusePortCbpf};

/// The most peers a program steers: about 5 instructions each, in a program of at most 4,096.
pub const MAX_STEERED: usize = 800;
/// What the program returns for a datagram it does not steer: out of range, so the kernel
/// falls back to its hash.
const FALLBACK: u32 = u32::MAX;
/// The network header, for loads relative to it (the program starts at the UDP payload).
const NET: u32 = 0xfff0_0000; // SKF_NET_OFF, −0x100000 as a u32

/// The steering table of one reuseport group: which worker's socket (its index in the group,
/// the order the sockets were bound in) each known peer address goes to.
pub struct Steering {
    table: Mutex<Table>,
}

struct Table {
    /// Each worker's peers, as last published.
    by_worker: Vec<Vec<SocketAddrV4>>,
    changed: bool,
}

impl Steering {
    pub fn new(workers: usize) -> Steering {
        Steering {
            table: Mutex::new(Table {
                by_worker: vec![Vec::new(); workers],
                changed: false,
            }),
        }
    }

    /// Worker `w`'s peers are now `peers` (at most its share of [`MAX_STEERED`]).
    pub fn publish(&self, w: usize, mut peers: Vec<SocketAddrV4>) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let share = MAX_STEERED / t.by_worker.len().max(1);
        peers.truncate(share);
        peers.sort_unstable();
        if let Some(slot) = t.by_worker.get_mut(w) {
            if *slot != peers {
                *slot = peers;
                t.changed = true;
            }
        }
    }

    /// Attaches the current table's program to the group through `socket` (any socket of the
    /// group), if it changed since the last attach.
    pub fn attach_if_changed(&self, socket: &impl AsFd) -> io::Result<()> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !t.changed {
            return Ok(());
        }
        t.changed = false;
        let mut entries = BTreeMap::new();
        for (w, peers) in t.by_worker.iter().enumerate() {
            for p in peers {
                // A key two peers share steers to the first.
                entries.entry(key(*p)).or_insert(w as u32);
            }
        }
        let entries: Vec<(u32, u32)> = entries.into_iter().collect();
        let mut filter = program(&entries);
        let prog = libc::sock_fprog {
            len: u16::try_from(filter.len()).map_err(|_| io::Error::other("program too long"))?,
            filter: filter.as_mut_ptr(),
        };
        setsockopt(socket, AttachReusePortCbpf, &prog).map_err(io::Error::from)
    }
}

/// The key of a peer address: the address's low 16 bits, then the port.
pub fn key(a: SocketAddrV4) -> u32 {
    (u32::from(*a.ip()) & 0xffff) << 16 | u32::from(a.port())
}

fn stmt(code: u32, k: u32) -> sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        // BPF opcodes fit in 16 bits.
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program for `entries` (keys sorted, each with its socket index): the key of an IPv4
/// datagram without IP options, then a binary search for it.
pub fn program(entries: &[(u32, u32)]) -> Vec<sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LSH,
        BPF_MISC, BPF_OR, BPF_RET, BPF_TAX, BPF_W, BPF_X,
    };
    let mut p = vec![
        // Version 4, a 20-byte header.
        stmt(BPF_LD | BPF_B | BPF_ABS, NET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x45, 1, 0),
        stmt(BPF_RET | BPF_K, FALLBACK),
        // X = the source address's low 16 bits, shifted up.
        stmt(BPF_LD | BPF_W | BPF_ABS, NET + 12),
        stmt(BPF_ALU | BPF_AND | BPF_K, 0xffff),
        stmt(BPF_ALU | BPF_LSH | BPF_K, 16),
        stmt(BPF_MISC | BPF_TAX, 0),
        // A = X | the source port (the UDP header follows the 20-byte IP header).
        stmt(BPF_LD | BPF_H | BPF_ABS, NET + 20),
        stmt(BPF_ALU | BPF_OR | BPF_X, 0),
    ];
    if entries.is_empty() {
        p.push(stmt(BPF_RET | BPF_K, FALLBACK));
    } else {
        search(entries, &mut p);
    }
    p
}

/// A binary search over `entries` for the key in A, returning its socket index.
fn search(entries: &[(u32, u32)], p: &mut Vec<sock_filter>) {
    use libc::{BPF_JA, BPF_JEQ, BPF_JGT, BPF_JMP, BPF_K, BPF_RET};
    if let [(k, idx)] = entries {
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *k, 0, 1));
        p.push(stmt(BPF_RET | BPF_K, *idx));
        p.push(stmt(BPF_RET | BPF_K, FALLBACK));
        return;
    }
    let (left, right) = entries.split_at(entries.len() / 2);
    // Above the left half's largest key: the right half, through a long jump (conditional
    // jumps reach 255 instructions only).
    let at = p.len();
    p.push(jump(
        BPF_JMP | BPF_JGT | BPF_K,
        left[left.len() - 1].0,
        0,
        1,
    ));
    p.push(stmt(BPF_JMP | BPF_JA, 0));
    search(left, p);
    let skip = p.len() - (at + 2);
    // A program is at most a few thousand instructions.
    p[at + 1].k = skip as u32;
    search(right, p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_JA, BPF_JEQ, BPF_JGT, BPF_JMP, BPF_LD,
        BPF_LSH, BPF_MISC, BPF_OR, BPF_RET, BPF_TAX, BPF_W, BPF_X,
    };
    use proptest::prelude::*;

    /// A classic BPF interpreter for the instructions [`program`] emits, over an IPv4 packet
    /// (`net` is the IP header and what follows).
    fn run(p: &[sock_filter], net: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |k: u32, n: usize| -> u32 {
            let off = (k - NET) as usize;
            net[off..off + n]
                .iter()
                .fold(0u32, |v, b| v << 8 | u32::from(*b))
        };
        loop {
            let i = p[pc];
            let code = u32::from(i.code);
            pc += 1;
            match code {
                c if c == BPF_LD | BPF_B | BPF_ABS => a = load(i.k, 1),
                c if c == BPF_LD | BPF_H | BPF_ABS => a = load(i.k, 2),
                c if c == BPF_LD | BPF_W | BPF_ABS => a = load(i.k, 4),
                c if c == BPF_ALU | BPF_AND => a &= i.k,
                c if c == BPF_ALU | BPF_LSH => a <<= i.k,
                c if c == BPF_ALU | BPF_OR | BPF_X => a |= x,
                c if c == BPF_MISC | BPF_TAX => x = a,
                c if c == BPF_RET => return i.k,
                c if c == BPF_JMP | BPF_JA => pc += i.k as usize,
                c if c == BPF_JMP | BPF_JEQ => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf })
                }
                c if c == BPF_JMP | BPF_JGT => pc += usize::from(if a > i.k { i.jt } else { i.jf }),
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    fn packet(from: SocketAddrV4, ihl: u8) -> Vec<u8> {
        let mut net = vec![0u8; usize::from(ihl) * 4 + 8];
        net[0] = 0x40 | ihl;
        net[12..16].copy_from_slice(&from.ip().octets());
        let udp = usize::from(ihl) * 4;
        net[udp..udp + 2].copy_from_slice(&from.port().to_be_bytes());
        net
    }

    /// The program in the kernel: a reuseport group of two sockets on loopback, clients
    /// published to socket 1 reach socket 1 only, whatever the hash would have said.
    #[test]
    fn the_kernel_steers_published_peers_to_their_socket() {
        use std::net::UdpSocket;
        let bind = |port: u16| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
                .unwrap();
            s.set_nonblocking(true).unwrap();
            UdpSocket::from(s)
        };
        let first = bind(0);
        let port = first.local_addr().unwrap().port();
        let group = [first, bind(port)];
        let clients: Vec<UdpSocket> = (0..16)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let v4 = |s: &UdpSocket| match s.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        let steering = Steering::new(2);
        steering.publish(1, clients.iter().map(v4).collect());
        steering.attach_if_changed(&group[0]).unwrap();
        for c in &clients {
            for _ in 0..4 {
                c.send_to(&v4(c).port().to_be_bytes(), ("127.0.0.1", port))
                    .unwrap();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let drain = |s: &UdpSocket| {
            let mut n = 0;
            let mut buf = [0u8; 16];
            while s.recv(&mut buf).is_ok() {
                n += 1;
            }
            n
        };
        assert_eq!(
            drain(&group[0]),
            0,
            "published peers reached the other socket"
        );
        assert_eq!(drain(&group[1]), 4 * clients.len());
    }

    proptest! {
        #[test]
        fn every_published_peer_goes_to_its_worker_and_others_to_the_hash(
            peers in proptest::collection::vec((any::<u32>(), any::<u16>(), 0u32..8), 0..MAX_STEERED),
            other in (any::<u32>(), any::<u16>()),
        ) {
            let mut entries = BTreeMap::new();
            for (ip, port, w) in &peers {
                entries.entry(key(SocketAddrV4::new((*ip).into(), *port))).or_insert(*w);
            }
            let entries: Vec<(u32, u32)> = entries.into_iter().collect();
            let p = program(&entries);
            prop_assert!(p.len() <= 4096, "{} instructions", p.len());
            for (ip, port, _) in &peers {
                let a = SocketAddrV4::new((*ip).into(), *port);
                let want = entries.iter().find(|(k, _)| *k == key(a)).map(|(_, w)| *w);
                prop_assert_eq!(Some(run(&p, &packet(a, 5))), want);
                // With IP options the ports are elsewhere: the hash decides.
                prop_assert_eq!(run(&p, &packet(a, 6)), FALLBACK);
            }
            let o = SocketAddrV4::new(other.0.into(), other.1);
            let want = entries.iter().find(|(k, _)| *k == key(o)).map_or(FALLBACK, |(_, w)| *w);
            prop_assert_eq!(run(&p, &packet(o, 5)), want);
        }
    }
}
