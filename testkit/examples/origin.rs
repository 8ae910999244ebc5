//! A tiny HTTP origin for the balancer benchmark (bench/balance): the
//! testkit's [`Origin`] as a process of its own, so a scenario can kill it.
//!
//! `origin NAME ADDR [DELAY_MS] [ERROR_PER_MILLE]` answers every request
//! with NAME (or `?size=N` bytes) after DELAY_MS, and 500 for that share of
//! requests. SIGUSR1 makes it 200 ms slower, SIGUSR2 fast again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use weir_testkit::{Origin, OriginState};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: origin NAME ADDR [DELAY_MS] [ERROR_PER_MILLE]");
        std::process::exit(2);
    }
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let state = Arc::new(OriginState::default());
    state.delay_ms.store(num(3), Ordering::Relaxed);
    state.error_per_mille.store(num(4), Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(&args[2])
            .await
            .unwrap_or_else(|e| panic!("bind {}: {e}", args[2]));
        let _origin = Origin::on(&args[1], l, state.clone());
        let mut slow =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .expect("SIGUSR1");
        let mut fast =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
                .expect("SIGUSR2");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM");
        loop {
            tokio::select! {
                _ = slow.recv() => state.delay_ms.store(200, Ordering::Relaxed),
                _ = fast.recv() => state.delay_ms.store(0, Ordering::Relaxed),
                _ = term.recv() => return,
            }
        }
    });
}
