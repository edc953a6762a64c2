//! The HTTP port's connections. They are accepted through the same bounded
//! accept loops as the gRPC port's (`crate::tls`): a flood of silent clients
//! holds a bounded number of places for a bounded time, and, when the server
//! has a certificate, every connection speaks TLS with it. Then each is
//! served by hyper here rather than by `axum::serve`, for what that does not
//! bound: how long a client may take to send a request's headers and its
//! body (a client trickling bytes would otherwise hold its connection
//! forever), how many
//! connections are served at once, and how long a connection may outlive
//! the server's stop.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use futures_util::StreamExt as _;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::Semaphore,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::TcpIncoming;
use tower::ServiceExt as _;

use crate::tls::{self, TlsServer};

/// Longest a client may take to send a request's headers, counted from the
/// first byte of the request (or, on a kept-alive connection, from the end
/// of the previous response: an idle connection is closed after it too).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a request may take from its headers to its answer's headers:
/// reading its body included (a client trickling a form's body would
/// otherwise hold its connection as long as it likes). An event stream's
/// body, sent after its headers, is not bounded by it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Most connections served at once. Beyond it, accepted connections wait
/// for a place (their clients see a slow answer, not a refusal); the live
/// job pages' event streams each hold one while open.
pub const MAX_CONNECTIONS: usize = 4_096;

/// Longest a connection may take to finish what it is answering once the
/// server stops (an event stream never finishes by itself).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a connection's peer address is read from.
pub trait PeerAddr {
    /// The client's address.
    fn peer(&self) -> io::Result<SocketAddr>;
}

impl PeerAddr for TcpStream {
    fn peer(&self) -> io::Result<SocketAddr> {
        self.peer_addr()
    }
}

impl PeerAddr for TlsStream<TcpStream> {
    fn peer(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.peer_addr()
    }
}

/// Connections prepared by an accept loop.
pub struct Prepared<S> {
    incoming: ReceiverStream<io::Result<S>>,
}

impl<S: PeerAddr> Prepared<S> {
    /// The next connection and its peer; `None` once the loop ended.
    async fn next(&mut self) -> Option<(S, SocketAddr)> {
        loop {
            match self.incoming.next().await? {
                Ok(stream) => match stream.peer() {
                    Ok(peer) => return Some((stream, peer)),
                    // Gone between its preparation and now.
                    Err(_) => continue,
                },
                Err(_) => continue,
            }
        }
    }
}

/// Accepted TCP connections, Nagle off and keepalive on as on the gRPC port.
fn tcp(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// Plaintext connections, handed over once their client has spoken.
pub fn plaintext(listener: tokio::net::TcpListener) -> Prepared<TcpStream> {
    Prepared {
        incoming: tls::plaintext(tcp(listener)),
    }
}

/// TLS connections with the HTTP port's configuration in force.
pub fn https(listener: tokio::net::TcpListener, tls: TlsServer) -> Prepared<TlsStream<TcpStream>> {
    Prepared {
        incoming: tls::https(tls, tcp(listener)),
    }
}

/// Serves `routes` on every connection of `incoming` until `stop`; then
/// stops accepting, lets each connection finish its answer within
/// [`STOP_GRACE`], and returns once all are closed.
pub async fn serve<S>(mut incoming: Prepared<S>, routes: Router, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + PeerAddr + Unpin + Send + 'static,
{
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let place = tokio::select! {
            () = stop.cancelled() => break,
            place = places.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            next = incoming.next() => match next {
                Some(next) => next,
                None => break,
            },
        };
        connections.spawn(serve_one(stream, peer, routes.clone(), stop.clone(), place));
    }
    drop(incoming);
    connections.close();
    connections.wait().await;
}

/// One connection, HTTP/1.1 with keep-alive; the peer's address reaches the
/// handlers as axum's `ConnectInfo` (audit rows, login throttling).
async fn serve_one<S>(
    stream: S,
    peer: SocketAddr,
    routes: Router,
    stop: CancellationToken,
    place: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let routes = routes.clone();
        async move {
            let answered = tokio::time::timeout(REQUEST_TIMEOUT, routes.oneshot(request)).await;
            Ok::<_, Infallible>(match answered {
                Ok(response) => response.unwrap_or_else(|e| match e {}),
                Err(_) => {
                    tracing::debug!(%peer, "HTTP request timed out");
                    axum::response::IntoResponse::into_response((
                        axum::http::StatusCode::REQUEST_TIMEOUT,
                        [(axum::http::header::CONNECTION, "close")],
                        "request timed out\n",
                    ))
                }
            })
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(STOP_GRACE, connection.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%peer, %error, "HTTP connection ended");
    }
    drop(place);
}
