//! str0m alone (no tandem code): what sending a forwarded video stream costs the sender, the
//! upstream way (`StreamTx::write_rtp` on an unpaced stream: each packet waits for a timeout,
//! one per timeout) and the fork's (`DirectApi::forward_rtp`: out on the next poll). Bursts of
//! 10 packets at 30 fps into a connected receiver, simulated time, every call on the sender
//! timed. The harness and the counting tests are `tests/str0m_alone.rs`.
//!
//! Run: `cargo bench -p tandem-media --bench str0m_alone`.

#[path = "../tests/str0m_alone.rs"]
mod repro;

fn main() {
    let frames = 900; // 30 simulated seconds
    let mut best = [f64::MAX; 2];
    for round in 0..5 {
        let mut per = [0.0; 2];
        for (k, direct) in [false, true].into_iter().enumerate() {
            let (spent, sent) = repro::sender_cost(direct, frames);
            per[k] = spent.as_secs_f64() * 1e6 / sent.max(1) as f64;
            best[k] = best[k].min(per[k]);
        }
        println!(
            "round {round}: upstream write_rtp {:.2} µs per packet sent, fork forward_rtp {:.2} µs; {:.2}x",
            per[0],
            per[1],
            per[0] / per[1]
        );
    }
    println!(
        "str0m alone, sender CPU per forwarded packet (best of 5): upstream {:.2} µs, fork {:.2} µs: {:.2}x less",
        best[0],
        best[1],
        best[0] / best[1]
    );
}
