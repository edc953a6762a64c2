//! The accept loop for TLS: TCP connections (Nagle off, keepalive on, as in
//! plaintext) are handshaken each in a task of its own, so that a slow or
//! silent client never holds up the next one, and only finished TLS
//! streams reach tonic.

use std::{io, time::Duration};

use futures_util::StreamExt as _;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

use crate::tls::reloading::TlsServer;

/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for the server to take them.
const BACKLOG: usize = 128;

/// The stream of TLS connections [`incoming`] hands to
/// `serve_with_incoming`.
pub type TlsIncoming = ReceiverStream<Result<TlsStream<TcpStream>, io::Error>>;

/// Accepts on `tcp` and handshakes with the configuration in force at each
/// connection's arrival. The loop ends (closing the listener) when the
/// server drops the stream, which tonic does once shutdown begins.
pub fn incoming(tls: TlsServer, mut tcp: TcpIncoming) -> TlsIncoming {
    let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
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
            let acceptor = TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    // Scanners, plaintext clients and clients without an
                    // acceptable certificate end here; one line each at
                    // debug, so that they cannot flood the log.
                    Ok(Err(error)) => {
                        tracing::debug!(?peer, %error, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
