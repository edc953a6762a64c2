//! Connections that never speak: a client that connects and sends nothing
//! (plaintext), never starts its TLS handshake, or finishes it and sends no
//! HTTP/2, is closed before tonic sees it; and a flood of them holds at
//! most `MAX_PENDING_CONNECTIONS` of the server's file descriptors, for a
//! bounded time, while the clients that do speak keep calling.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use automation_control_plane::tls::{self, MAX_PENDING_CONNECTIONS};
use tokio::{io::AsyncReadExt as _, net::TcpStream};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{health_over, tls_app};
use crate::common::{TestApp, certs::TestCa};

/// Generous bound on how long the server may leave a silent client open
/// (its timeouts are 5 s, and 5 s more after a TLS handshake).
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

/// Connections the server may hold beyond the cap: the honest clients'
/// and a few prepared ones waiting for tonic to take them.
const MARGIN: usize = 64;

/// Silent connections beyond the cap in the flood.
const EXTRA: usize = 300;

/// How long `stream` stays open with nothing sent, or `None` if it is still
/// open after [`CLOSED_WITHIN`]. A read of 0 (FIN) or an error (reset) both
/// count as closed.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0; 64];
    loop {
        match tokio::time::timeout_at((started + CLOSED_WITHIN).into(), stream.read(&mut buf)).await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // A TLS session ticket or the like: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

/// Sockets of this process on the server's side of `port` (its local port),
/// listener aside: the connections the server holds, read from
/// `/proc/net/tcp{,6}` and matched against `/proc/self/fd`.
fn server_held(port: u16) -> usize {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            // 0A is LISTEN.
            if local_port == Some(port) && fields[3] != "0A" && fields[9] != "0" {
                inodes.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|link| inodes.contains(link.to_string_lossy().as_ref()))
        .count()
}

/// How many of `streams` the server has closed (a read would return 0 or
/// fail now).
async fn closed_now(streams: &[TcpStream]) -> usize {
    let peeks = streams.iter().map(|stream| async move {
        let mut byte = [0; 1];
        let peeked = tokio::time::timeout(Duration::from_millis(50), stream.peek(&mut byte)).await;
        matches!(peeked, Ok(Ok(0) | Err(_)))
    });
    futures::future::join_all(peeks)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

/// Every file descriptor this process holds.
fn all_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// A health check on `channel`.
async fn healthy(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = HealthClient::new(channel);
    tokio::time::timeout(
        Duration::from_secs(5),
        client.check(HealthCheckRequest::default()),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("health check"))?
    .map(|_| ())
}

/// A health Watch stream: open as long as its connection is.
async fn watch(channel: Channel) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch")
        .into_inner();
    stream
        .message()
        .await
        .expect("first status")
        .expect("status");
    stream
}

/// Whether `stream` is still open: no error and no end within a moment.
async fn still_open(stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> bool {
    match tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        Err(_) | Ok(Ok(Some(_))) => true,
        Ok(Ok(None) | Err(_)) => false,
    }
}

#[tokio::test]
async fn a_plaintext_client_that_sends_nothing_is_closed_while_others_keep_calling() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let mut watching = watch(channel.clone()).await;

    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let closed = closed_after(&mut silent).await;
    eprintln!("plaintext silent client closed after {closed:?}");
    assert!(closed.is_some(), "still open after {CLOSED_WITHIN:?}");

    // The clients that spoke are not touched by the first-bytes timeout.
    assert!(still_open(&mut watching).await, "an open stream was closed");
    healthy(channel).await.expect("the open connection");
    healthy(app.channel().await)
        .await
        .expect("a new connection");
    app.stop().await;
}

#[tokio::test]
async fn a_tls_client_that_never_handshakes_or_never_speaks_http2_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let app = tls_app(dir.path(), &ca, &ca.server(), None).await;
    let channel = app.channel().await;
    let mut watching = watch(channel.clone()).await;

    // TCP only: the handshake never starts.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    // A finished handshake, then no HTTP/2 preface.
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            ca.pem.as_bytes(),
        )
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut mute = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            "localhost".try_into().unwrap(),
            TcpStream::connect(app.addr).await.unwrap(),
        )
        .await
        .expect("handshake");

    let (silent, mute) = tokio::join!(closed_after(&mut silent), closed_after(&mut mute));
    eprintln!("TLS: no handshake closed after {silent:?}, no HTTP/2 after {mute:?}");
    assert!(
        silent.is_some(),
        "no handshake: open after {CLOSED_WITHIN:?}"
    );
    assert!(mute.is_some(), "no HTTP/2: open after {CLOSED_WITHIN:?}");

    assert!(still_open(&mut watching).await, "an open stream was closed");
    healthy(channel).await.expect("the open connection");
    health_over(&app, Some(ca.trusted_by_client()))
        .await
        .expect("a new connection");
    app.stop().await;
}

/// Floods `app` with more silent connections than the cap: the server holds
/// at most the cap (plus a margin) of them, an open connection keeps
/// calling, a new one gets in once the silent ones time out, and all of
/// them are closed in the end. `connect` opens a new honest connection.
async fn flood<F, Fut>(app: &TestApp, channel: Channel, connect: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let port = app.addr.port();
    let mut watching = watch(channel.clone()).await;
    let (held_before, fds_before) = (server_held(port), all_fds());

    let mut silent = Vec::with_capacity(MAX_PENDING_CONNECTIONS + EXTRA);
    for _ in 0..MAX_PENDING_CONNECTIONS + EXTRA {
        silent.push(TcpStream::connect(app.addr).await.expect("connect"));
    }
    let opened = Instant::now();
    // Those beyond the cap are closed at once (well before the first
    // timeouts, 5 s after their accept).
    let mut closed_at_once = closed_now(&silent).await;
    while closed_at_once < EXTRA && opened.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        closed_at_once = closed_now(&silent).await;
    }
    let held = server_held(port);
    let fds = all_fds();
    eprintln!(
        "port {port}: {} silent connections; server held {held_before} before, {held} after \
         (cap {MAX_PENDING_CONNECTIONS}); {closed_at_once} closed at once; fds of the process \
         {fds_before} -> {fds}",
        silent.len()
    );
    assert!(
        held <= MAX_PENDING_CONNECTIONS + MARGIN,
        "the server holds {held} connections"
    );
    assert!(
        closed_at_once + MARGIN >= EXTRA,
        "{closed_at_once} closed beyond the cap"
    );

    // The connection that spoke before the flood keeps calling.
    assert!(still_open(&mut watching).await, "an open stream was closed");
    healthy(channel).await.expect("the open connection");

    // A new client gets in, at the latest once the silent ones time out.
    let mut new_client = Err(String::new());
    while opened.elapsed() < CLOSED_WITHIN {
        new_client = connect().await;
        if new_client.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("a new client got in {:?} after the flood", opened.elapsed());
    new_client.expect("a new client during the flood");

    // All silent ones end up closed.
    let mut held = server_held(port);
    while held > held_before + 4 && opened.elapsed() < CLOSED_WITHIN {
        tokio::time::sleep(Duration::from_millis(200)).await;
        held = server_held(port);
    }
    eprintln!(
        "{:?} after the flood the server holds {held}",
        opened.elapsed()
    );
    assert!(held <= held_before + 4, "still held: {held}");
}

#[tokio::test]
async fn a_flood_of_silent_plaintext_connections_is_capped() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    flood(&app, channel, || health_over(&app, None)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_silent_tls_connections_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let app = tls_app(dir.path(), &ca, &ca.server(), None).await;
    let channel = app.channel().await;
    flood(&app, channel, || {
        health_over(&app, Some(ca.trusted_by_client()))
    })
    .await;
    app.stop().await;
}
