//! Worker supervision, written once for every thread and background task the shell starts:
//!
//! - [`Supervisor::spawn_worker`] starts a named thread with its own current-thread runtime
//!   (the media and TURN workers), hands it a [`Beat`] to show it is alive and a [`Stop`] to
//!   hear the shutdown, and catches a panic that escapes it: the panic is logged and counted
//!   (`tandem_worker_panics_total{kind}`), and the process is told to exit non-zero (a worker's
//!   state — its calls or allocations — cannot be rebuilt in place, and a supervisor restarts
//!   a clean process). Panics a core can pin on one peer or allocation never get here: the
//!   media core ends just that peer.
//! - [`Supervisor::spawn_task`] starts a background task the same way (its end is a fault).
//! - [`Supervisor::readiness`] is what `/readyz` reports: every worker beat within
//!   [`BEAT_LIMIT`].
//! - [`Supervisor::shutdown`] tells every worker and task to stop and joins them.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, LocalSet};

/// A worker that has not beaten for this long is not ready.
pub const BEAT_LIMIT: Duration = Duration::from_secs(3);

/// A worker's heartbeat: the last moment its loop came round.
#[derive(Clone)]
pub struct Beat {
    name: Arc<str>,
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last: Arc<AtomicU64>,
}

impl Beat {
    fn new(name: &str, epoch: Instant) -> Beat {
        Beat {
            name: name.into(),
            epoch,
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The worker is alive at `now` (one relaxed store).
    pub fn beat(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn age(&self, now: Instant) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        now.saturating_duration_since(self.epoch)
            .saturating_sub(last)
    }
}

/// Resolves when the shutdown begins.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// Why the process must go.
#[derive(Debug)]
pub struct Fatal(pub String);

pub struct Supervisor {
    epoch: Instant,
    /// A worker whose beat is older than this is not ready.
    beat_limit: Duration,
    stop: watch::Sender<bool>,
    beats: Mutex<Vec<Beat>>,
    threads: Mutex<Vec<(String, std::thread::JoinHandle<()>)>>,
    /// Background tasks: the task itself (to abort) and its watcher (to join).
    tasks: Mutex<Vec<(tokio::task::AbortHandle, JoinHandle<()>)>>,
    fatal_tx: mpsc::UnboundedSender<Fatal>,
    fatal_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Fatal>>,
    panics: IntCounterVec,
}

impl Supervisor {
    pub fn new(panics: IntCounterVec) -> Arc<Supervisor> {
        Self::with_beat_limit(panics, BEAT_LIMIT)
    }

    fn with_beat_limit(panics: IntCounterVec, beat_limit: Duration) -> Arc<Supervisor> {
        let (stop, _) = watch::channel(false);
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        Arc::new(Supervisor {
            epoch: Instant::now(),
            beat_limit,
            stop,
            beats: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            fatal_tx,
            fatal_rx: tokio::sync::Mutex::new(fatal_rx),
            panics,
        })
    }

    /// A handle that resolves when the shutdown begins.
    pub fn stop(&self) -> Stop {
        Stop(self.stop.subscribe())
    }

    /// Starts thread `name` (`kind`: `media` or `turn`, the metric label) running `make`'s
    /// future on its own current-thread runtime and `LocalSet`. The future gets the thread's
    /// [`Beat`] (call it at least every second) and a [`Stop`]; it should return once stopped.
    pub fn spawn_worker<F, Fut>(
        &self,
        name: String,
        kind: &'static str,
        make: F,
    ) -> anyhow::Result<()>
    where
        F: FnOnce(Beat, Stop) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let beat = Beat::new(&name, self.epoch);
        beat.beat(Instant::now());
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(beat.clone());
        let stop = self.stop();
        let fatal = self.fatal_tx.clone();
        let panics = self.panics.clone();
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    let local = LocalSet::new();
                    local.block_on(&rt, make(beat, stop.clone()));
                    Ok::<(), String>(())
                }));
                let why = match run {
                    Ok(Ok(())) if stop.requested() => return,
                    Ok(Ok(())) => "stopped on its own".to_owned(),
                    Ok(Err(e)) => format!("could not start its runtime: {e}"),
                    Err(payload) => {
                        panics.with_label_values(&[kind]).inc();
                        format!("panicked: {}", panic_message(&payload))
                    }
                };
                tracing::error!(worker = %thread_name, %why, "worker thread ended");
                let _ = fatal.send(Fatal(format!("worker {thread_name} {why}")));
            })?;
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, handle));
        Ok(())
    }

    /// Starts background task `name`; its end before the shutdown (or a panic) is fatal.
    pub fn spawn_task<Fut>(&self, name: &str, fut: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fatal = self.fatal_tx.clone();
        let panics = self.panics.clone();
        let stop = self.stop();
        let task_name = name.to_owned();
        let inner = tokio::spawn(fut);
        let abort = inner.abort_handle();
        let watcher = tokio::spawn(async move {
            let why = match inner.await {
                Ok(()) if stop.requested() => return,
                Ok(()) => "stopped on its own".to_owned(),
                Err(e) if e.is_cancelled() => return,
                Err(e) => {
                    panics.with_label_values(&["task"]).inc();
                    format!("panicked: {}", panic_message(&e.into_panic()))
                }
            };
            tracing::error!(task = %task_name, %why, "background task ended");
            let _ = fatal.send(Fatal(format!("task {task_name} {why}")));
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((abort, watcher));
    }

    /// Resolves with the first fatal fault (a worker or task that died).
    pub async fn fatal(&self) -> Fatal {
        let mut rx = self.fatal_rx.lock().await;
        match rx.recv().await {
            Some(f) => f,
            // The sender lives in `self`: never reached while `self` exists.
            None => std::future::pending().await,
        }
    }

    /// `Ok` when every worker beat within [`BEAT_LIMIT`]; else the names of those that did not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let now = Instant::now();
        let stale: Vec<String> = self
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|b| b.age(now) > self.beat_limit)
            .map(|b| b.name.to_string())
            .collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(stale)
        }
    }

    /// Tells every worker and task to stop, then joins them, waiting at most `grace` for the
    /// threads (tasks that do not end at once are aborted).
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for (task, watcher) in tasks {
            task.abort();
            let _ = watcher.await;
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let joined = tokio::task::spawn_blocking(move || {
            for (name, handle) in threads {
                if handle.join().is_err() {
                    tracing::warn!(worker = %name, "worker panicked while stopping");
                }
            }
        });
        if tokio::time::timeout(grace, joined).await.is_err() {
            tracing::warn!("workers did not stop within the grace; exiting anyway");
        }
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("p", "p"), &["kind"]).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_worker_is_counted_and_fatal_never_silent() {
        let p = panics();
        let sup = Supervisor::new(p.clone());
        sup.spawn_worker("media-9".into(), "media", |_beat, _stop| async {
            panic!("boom in the loop");
        })
        .unwrap();
        let f = tokio::time::timeout(Duration::from_secs(5), sup.fatal())
            .await
            .expect("the panic is reported");
        assert!(
            f.0.contains("media-9") && f.0.contains("boom in the loop"),
            "{}",
            f.0
        );
        assert_eq!(p.with_label_values(&["media"]).get(), 1);
    }

    #[tokio::test]
    async fn a_worker_that_returns_before_the_shutdown_is_fatal_too() {
        let sup = Supervisor::new(panics());
        sup.spawn_worker("turn-0".into(), "turn", |_beat, _stop| async {})
            .unwrap();
        let f = tokio::time::timeout(Duration::from_secs(5), sup.fatal())
            .await
            .expect("reported");
        assert!(f.0.contains("stopped on its own"), "{}", f.0);
    }

    #[tokio::test]
    async fn a_background_task_that_panics_is_fatal() {
        let p = panics();
        let sup = Supervisor::new(p.clone());
        sup.spawn_task("sweeper", async { panic!("task boom") });
        let f = tokio::time::timeout(Duration::from_secs(5), sup.fatal())
            .await
            .expect("reported");
        assert!(
            f.0.contains("sweeper") && f.0.contains("task boom"),
            "{}",
            f.0
        );
        assert_eq!(p.with_label_values(&["task"]).get(), 1);
    }

    #[tokio::test]
    async fn readiness_names_the_worker_that_stopped_beating_and_shutdown_joins_all() {
        let sup = Supervisor::with_beat_limit(panics(), Duration::from_millis(200));
        let (stuck_tx, stuck_rx) = std::sync::mpsc::channel::<()>();
        // A healthy worker beats every 20 ms until told to stop.
        sup.spawn_worker("media-0".into(), "media", |beat, mut stop| async move {
            loop {
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(Duration::from_millis(20)) => beat.beat(Instant::now()),
                }
            }
        })
        .unwrap();
        // A stuck one: blocks its thread until released, then hears the stop.
        sup.spawn_worker("turn-1".into(), "turn", move |_beat, mut stop| async move {
            let _ = stuck_rx.recv();
            stop.wait().await;
        })
        .unwrap();
        assert_eq!(sup.readiness(), Ok(()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(sup.readiness(), Err(vec!["turn-1".to_owned()]));
        stuck_tx.send(()).unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        sup.spawn_task("ticker", async move {
            loop {
                t.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), sup.shutdown(Duration::from_secs(5)))
            .await
            .expect("shutdown joins every worker");
        assert!(sup.threads.lock().unwrap().is_empty());
        let after = ticks.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ticks.load(Ordering::Relaxed), after, "the task was stopped");
        // Stopping is not a fault.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), sup.fatal())
                .await
                .is_err()
        );
    }
}
