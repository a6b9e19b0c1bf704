//! `switchboard-proxy`: flags, logging, signals. The work happens in the library.

use std::process::ExitCode;

use clap::Parser;
use switchboard_proxy::sync::manifests;
use switchboard_proxy::{Settings, telemetry};

fn main() -> ExitCode {
    let settings = Settings::parse();
    match runtime(&settings) {
        Ok(runtime) => runtime.block_on(run(settings)),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime requests are served on. On one thread (the default on one CPU), a
/// current-thread runtime: its run queue is first in, first out. The multi-thread
/// scheduler with one worker lets woken tasks overflow its local queue of 256 into a
/// global queue it looks at only every 31st turn; at 256 connections on one core that
/// put p99 at 48 ms against 15 ms here, for the same throughput (bench/README.md).
fn runtime(settings: &Settings) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = settings
        .worker_threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get);
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    builder.enable_all().build()
}

async fn run(settings: Settings) -> ExitCode {
    let (telemetry, problem) = telemetry::init(settings.log_format);
    if let Some(problem) = problem {
        tracing::error!("{problem}");
    }
    if settings.check {
        return check(&settings);
    }
    let proxy = match switchboard_proxy::start(settings).await {
        Ok(proxy) => proxy,
        Err(error) => {
            tracing::error!("{error:#}");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutdown signal received");
    proxy.shutdown().await;
    // Flushing the last spans blocks on the exporter (bounded by its timeout).
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    ExitCode::SUCCESS
}

/// `--check`: print each object's conditions; fail if anything is wrong.
fn check(settings: &Settings) -> ExitCode {
    let Some(dir) = &settings.manifests else {
        eprintln!("error: --check needs --manifests DIR");
        return ExitCode::FAILURE;
    };
    let options = manifests::LoadOptions::from_settings(settings);
    let compiled = match manifests::load_and_compile(dir, &options) {
        Ok(compiled) => compiled,
        Err(errors) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    for (key, status) in &compiled.statuses {
        let problems: Vec<_> = status.problems().collect();
        if problems.is_empty() {
            println!("ok     {key}");
        }
        for condition in problems {
            println!("error  {key}: {}: {}", condition.reason, condition.message);
        }
    }
    println!("config version {}", compiled.snapshot.version);
    if compiled.problems().next().is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
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
