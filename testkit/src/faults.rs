//! Faults that are not a stopped service: a peer that accepts connections
//! and never answers (a firewall dropping replies, a hung server). A
//! refused connection fails fast; this one is what timeouts are for.

/// A loopback listener that accepts every connection and never reads or
/// writes; its address, and the task holding the sockets (abort it, or let
/// the test end, to close them).
pub async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a black-hole listener");
    let addr = l.local_addr().expect("black-hole address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}
