//! The accept loops, TLS and plaintext: each TCP connection (Nagle off,
//! keepalive on) is prepared in a task of its own, so that a slow or silent
//! client never holds up the next one, and only connections whose client
//! has spoken reach tonic (whose HTTP/2 keepalive covers a connection only
//! once HTTP/2 has started).
//!
//! Connections being prepared are bounded ([`MAX_PENDING_CONNECTIONS`]), and
//! so is the time each may take: a flood of clients that connect and say
//! nothing holds a bounded number of file descriptors for a bounded time,
//! and the clients that do speak keep getting in.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use tokio::{net::TcpStream, sync::Semaphore, time::timeout};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

use crate::{
    telemetry::names,
    tls::{reloading::TlsServer, started::Started},
};

/// Most connections accepted and not yet handed to tonic: TLS handshakes in
/// flight, and connections (TLS or plaintext) waiting for their client's
/// first bytes. A connection arriving beyond it is closed at once (logged
/// at DEBUG, counted in `grpc_connections_dropped_total{reason="over_limit"}`);
/// each pending one frees its place within [`HANDSHAKE_TIMEOUT`] plus
/// [`FIRST_BYTES_TIMEOUT`].
pub const MAX_PENDING_CONNECTIONS: usize = 1024;

/// Longest a client may take to complete its TLS handshake, counted from
/// the accept (the handshake needs the client's bytes, so a client that
/// sends nothing is closed after it).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a client may stay silent before its first HTTP/2 bytes: from the
/// accept in plaintext, from the end of the handshake with TLS.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared connections waiting for the server to take them.
const BACKLOG: usize = 128;

/// The stream of TLS connections [`incoming`] hands to
/// `serve_with_incoming`.
pub type TlsIncoming = ReceiverStream<Result<Started<TlsStream<TcpStream>>, io::Error>>;

/// The stream of plaintext connections [`plaintext`] hands to
/// `serve_with_incoming`.
pub type PlainIncoming = ReceiverStream<Result<TcpStream, io::Error>>;

/// Accepts on `tcp` and handshakes with the configuration in force at each
/// connection's arrival; a connection reaches tonic once its client has
/// sent its first bytes after the handshake. The loop ends (closing the
/// listener) when the server drops the stream, which tonic does once
/// shutdown begins.
pub fn incoming(tls: TlsServer, tcp: TcpIncoming) -> TlsIncoming {
    gated(tcp, move |stream, peer| {
        let acceptor = TlsAcceptor::from(tls.config());
        async move {
            let stream = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                // Scanners, plaintext clients and clients without an
                // acceptable certificate end here; one line each at debug,
                // so that they cannot flood the log.
                Ok(Err(error)) => {
                    tracing::debug!(?peer, %error, "TLS handshake failed");
                    names::connection_dropped("handshake_failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(?peer, "TLS handshake timed out");
                    names::connection_dropped("timeout");
                    return None;
                }
            };
            first_bytes(
                timeout(FIRST_BYTES_TIMEOUT, Started::first_bytes(stream)).await,
                peer,
            )
        }
    })
}

/// The stream of TLS connections [`https`] hands to the HTTP port.
pub type HttpsIncoming = ReceiverStream<Result<TlsStream<TcpStream>, io::Error>>;

/// Accepts on `tcp` for the HTTP port and handshakes with the HTTP
/// configuration in force at each connection's arrival, bounded like
/// [`incoming`]. Ends when the HTTP server drops the stream.
pub fn https(tls: TlsServer, tcp: TcpIncoming) -> HttpsIncoming {
    gated(tcp, move |stream, peer| {
        let acceptor = TlsAcceptor::from(tls.http_config());
        async move {
            match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(error)) => {
                    tracing::debug!(?peer, %error, "TLS handshake on the HTTP port failed");
                    names::connection_dropped("handshake_failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(?peer, "TLS handshake on the HTTP port timed out");
                    names::connection_dropped("timeout");
                    None
                }
            }
        }
    })
}

/// Accepts on `tcp`; a connection reaches tonic once its client has sent
/// its first bytes. Ends like [`incoming`].
pub fn plaintext(tcp: TcpIncoming) -> PlainIncoming {
    gated(tcp, |stream, peer| async move {
        let heard = timeout(FIRST_BYTES_TIMEOUT, async {
            // `peek` leaves the bytes for tonic; 0 is the client closing.
            let read = stream.peek(&mut [0; 1]).await?;
            Ok((read > 0).then_some(()))
        })
        .await;
        first_bytes(heard, peer).map(|()| stream)
    })
}

/// The outcome of waiting for a client's first bytes: the stream if they
/// came, otherwise `None` and one line at debug.
fn first_bytes<S>(
    waited: Result<io::Result<Option<S>>, tokio::time::error::Elapsed>,
    peer: Option<SocketAddr>,
) -> Option<S> {
    match waited {
        Ok(Ok(Some(stream))) => Some(stream),
        Ok(Ok(None)) => {
            tracing::debug!(?peer, "client closed before sending anything");
            None
        }
        Ok(Err(error)) => {
            tracing::debug!(?peer, %error, "reading a client's first bytes failed");
            None
        }
        Err(_) => {
            tracing::debug!(?peer, "client sent nothing; closing");
            names::connection_dropped("timeout");
            None
        }
    }
}

/// The accept loop: each connection accepted on `tcp` takes a place among
/// the [`MAX_PENDING_CONNECTIONS`] (or is closed at once), and `prepare`
/// runs in a task of its own; what it yields goes to tonic. `prepare` must
/// be bounded in time: the place is held until it ends.
fn gated<S, F, Fut>(mut tcp: TcpIncoming, mut prepare: F) -> ReceiverStream<io::Result<S>>
where
    S: Send + 'static,
    F: FnMut(TcpStream, Option<SocketAddr>) -> Fut + Send + 'static,
    Fut: Future<Output = Option<S>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = tcp.next() => accepted,
            };
            let stream = match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => return,
            };
            let peer = stream.peer_addr().ok();
            let Ok(place) = pending.clone().try_acquire_owned() else {
                tracing::debug!(
                    ?peer,
                    limit = MAX_PENDING_CONNECTIONS,
                    "too many connections not yet speaking; closing this one"
                );
                names::connection_dropped("over_limit");
                drop(stream);
                continue;
            };
            let prepared = prepare(stream, peer);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(stream) = prepared.await {
                    let _ = tx.send(Ok(stream)).await;
                }
                drop(place);
            });
        }
    });
    ReceiverStream::new(rx)
}
