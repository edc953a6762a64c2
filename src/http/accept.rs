//! The HTTP port's accept side: connections come through the same bounded
//! accept loops as the gRPC port's (`crate::tls`), so that a flood of silent
//! clients holds a bounded number of places for a bounded time, and, when
//! the server has a certificate, speak TLS with it.

use std::{io, net::SocketAddr, time::Duration};

use axum::serve::{Listener, ListenerExt as _, TapIo};
use futures_util::StreamExt as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

use crate::tls::{self, TlsServer};

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

/// Connections prepared by an accept loop, as axum's [`Listener`].
pub struct Prepared<S> {
    incoming: ReceiverStream<io::Result<S>>,
    local: SocketAddr,
}

impl<S> Listener for Prepared<S>
where
    S: AsyncRead + AsyncWrite + PeerAddr + Unpin + Send + 'static,
{
    type Io = S;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (S, SocketAddr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => match stream.peer() {
                    Ok(peer) => return (stream, peer),
                    // Gone between its preparation and now.
                    Err(_) => continue,
                },
                Some(Err(_)) => continue,
                // The accept loop ends only once this side is dropped.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accepted TCP connections, Nagle off and keepalive on as on the gRPC port.
fn tcp(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// A listener whose connections tell axum their peer's address
/// (`ConnectInfo<SocketAddr>`): axum provides that for its own listeners
/// and for a tapped one, which this is, with nothing done on the tap.
pub type WithPeer<S> = TapIo<Prepared<S>, fn(&mut S)>;

fn with_peer<S>(prepared: Prepared<S>) -> WithPeer<S>
where
    S: AsyncRead + AsyncWrite + PeerAddr + Unpin + Send + 'static,
{
    prepared.tap_io(|_: &mut S| {})
}

/// Plaintext connections, handed over once their client has spoken.
pub fn plaintext(listener: tokio::net::TcpListener, local: SocketAddr) -> WithPeer<TcpStream> {
    with_peer(Prepared {
        incoming: tls::plaintext(tcp(listener)),
        local,
    })
}

/// TLS connections with the HTTP port's configuration in force.
pub fn https(
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    tls: TlsServer,
) -> WithPeer<TlsStream<TcpStream>> {
    with_peer(Prepared {
        incoming: tls::https(tls, tcp(listener)),
        local,
    })
}
