//! What the media core itself costs per forwarded packet: one call between two str0m clients,
//! driven in simulated time with no sockets (the harness of `tests/sfu.rs`), both sides sending
//! audio (50 packets/s) and VP8 video (30 fps, a three-packet keyframe every second). Only the
//! real time spent inside the core's calls is counted — receive, SRTP, str0m's session and
//! pacer, forwarding, sending — so the result is the user-space floor of the server's cost per
//! packet, before any system call. The clients' own work is not counted.
//!
//! The baseline is str0m itself: the clients' `handle_input` for each datagram the core sent
//! them (SRTP decrypt, RTP parse, depacketize, stats), timed the same way in the same run, so the
//! core's figure reads as a multiple of one plain str0m receive.
//!
//! Run: `cargo bench -p tandem-media --bench forward`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Sim;

fn main() {
    let mut sim = Sim::connected_call();
    // Warm up: the estimator, the pacer and the buffers settle.
    sim.stream(&[0, 1], Duration::from_secs(2), |_| {});
    let mut best = f64::MAX;
    let mut best_ratio = f64::MAX;
    for round in 0..5 {
        let before = sim.core.counters();
        sim.core_time = Duration::ZERO;
        sim.core_split = Default::default();
        sim.client_rx_time = Duration::ZERO;
        sim.client_rx = 0;
        let wall = Instant::now();
        sim.stream(&[0, 1], Duration::from_secs(10), |_| {});
        let after = sim.core.counters();
        let out: u64 = (0..2)
            .map(|k| after.packets[k][1] - before.packets[k][1])
            .sum();
        let inn: u64 = (0..2)
            .map(|k| after.packets[k][0] - before.packets[k][0])
            .sum();
        let per_packet = sim.core_time.as_secs_f64() * 1e6 / out.max(1) as f64;
        let baseline = sim.client_rx_time.as_secs_f64() * 1e6 / sim.client_rx.max(1) as f64;
        best = best.min(per_packet);
        best_ratio = best_ratio.min(per_packet / baseline);
        println!(
            "round {round}: {inn} packets in, {out} forwarded; core {:.1} ms of {:.1} ms wall: \
             {per_packet:.2} µs per forwarded packet ({:.0} packets/s per core); baseline \
             (a str0m client receiving) {baseline:.2} µs per packet; ratio {:.2}",
            sim.core_time.as_secs_f64() * 1e3,
            wall.elapsed().as_secs_f64() * 1e3,
            1e6 / per_packet,
            per_packet / baseline,
        );
    }
    println!(
        "last round's core time by call: {}",
        ["timeouts", "receives", "output polls"]
            .iter()
            .zip(sim.core_split)
            .map(|(what, (t, n))| format!(
                "{what} {:.1} ms in {n} calls ({:.2} µs each)",
                t.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e6 / n.max(1) as f64
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "media core: best {best:.2} µs per forwarded packet = {:.0} forwarded packets/s per core \
         of user-space work alone, {best_ratio:.2}x one str0m receive",
        1e6 / best
    );
}
