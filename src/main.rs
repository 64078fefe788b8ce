// mimalloc: less fragmentation across the runtime's threads (RSS) and cheaper small allocations
// (every Socket.IO packet is a few of them).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use tandem_config::{Invocation, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process: mimalloc asks for them on its arenas, and a
    // server holding thousands of small per-connection buffers then keeps whole 2 MiB pages
    // resident for a few KiB each (measured: ~6 KiB more RSS per connected guest, 13 MB more
    // at rest, no CPU difference). Operators who want them back set `MIMALLOC_ALLOW_THP=1`.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
    let config = match tandem_config::invocation() {
        Ok(Invocation::Run(config)) => config,
        // Validated like a start, and nothing started: no runtime, no socket, no Redis.
        Ok(Invocation::CheckConfig(effective)) => {
            print!("{effective}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => e.exit(),
    };
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
    // HTTP, Socket.IO and the hub: on this thread alone by default (`--signaling-threads`),
    // which spares a cross-thread wake-up per frame; media and TURN run their own threads.
    let mut builder = match config.signaling_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match tandem::run(config, shutdown_signal()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "tandem stopped");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on the first SIGINT/SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("tandem: second signal, exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
