//! The baseline: the same pairs of webrtc-rs peers connected straight to each other in this
//! process (no tandem), so the report can show the tool's own latency floor.

use std::sync::Arc;
use std::time::Duration;

use crate::media::now_ns;
use crate::peer::{stopped, Peer};
use crate::tandem::CallCtx;
use crate::Setup;

const GATHER_TIMEOUT: Duration = Duration::from_secs(10);

/// One direct pair: offer/answer in memory (candidates inside the SDP), media until `stop`.
pub async fn call(ctx: CallCtx) {
    let started = now_ns();
    let peers = async {
        let pa = Arc::new(Peer::new(2 * ctx.pair as u32, &ctx.cfg, ctx.metrics.clone()).await?);
        let pb = Arc::new(Peer::new(2 * ctx.pair as u32 + 1, &ctx.cfg, ctx.metrics.clone()).await?);
        pa.offer().await?;
        let offer = pa.gathered_sdp(GATHER_TIMEOUT).await?;
        pb.answer(offer).await?;
        let answer = pb.gathered_sdp(GATHER_TIMEOUT).await?;
        pa.accept_answer(answer).await?;
        anyhow::Ok((pa, pb))
    };
    let (pa, pb) = match peers.await {
        Ok(p) => p,
        Err(e) => {
            let _ = ctx
                .setup_tx
                .send(Setup::Failed(format!("direct pair {}: {e:#}", ctx.pair)));
            return;
        }
    };
    let senders = [
        pa.start_sending(ctx.cfg.clone(), ctx.metrics.clone(), ctx.stop.clone()),
        pb.start_sending(ctx.cfg.clone(), ctx.metrics.clone(), ctx.stop.clone()),
    ];
    let both = async {
        pa.wait_connected(ctx.setup_timeout).await?;
        pb.wait_connected(ctx.setup_timeout).await
    };
    let outcome = match both.await {
        Ok(()) => Setup::Connected {
            ms: (pa.connected_ns().max(pb.connected_ns()) - started) as f64 / 1e6,
        },
        Err(e) => Setup::Failed(format!("direct pair {}: {e:#}", ctx.pair)),
    };
    let _ = ctx.setup_tx.send(outcome);
    let mut stop = ctx.stop.clone();
    stopped(&mut stop).await;
    for s in senders {
        let _ = s.await;
    }
    pa.close().await;
    pb.close().await;
}
