//! A stream whose client has been heard from: its first bytes were read
//! ahead (a TLS stream has no `peek`), and are handed out again before the
//! rest, so that tonic reads the connection from its first byte.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Bytes read ahead: the length of the HTTP/2 client preface, though one is
/// enough to know that the client speaks.
const HEAD: usize = 24;

/// `inner`, its first bytes read and kept in `head[pos..len]`.
pub struct Started<S> {
    head: [u8; HEAD],
    pos: usize,
    len: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> Started<S> {
    /// Waits for the client's first bytes: `None` if it closed without
    /// sending any. Without a timeout around it, this waits forever.
    pub async fn first_bytes(mut inner: S) -> io::Result<Option<Self>> {
        let mut head = [0; HEAD];
        let len = inner.read(&mut head).await?;
        Ok((len > 0).then_some(Self {
            head,
            pos: 0,
            len,
            inner,
        }))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Started<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.len {
            let n = (this.len - this.pos).min(buf.remaining());
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Started<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The connection's details (peer address, client certificate) are the
/// inner stream's, so that callers see no difference.
impl<S: Connected> Connected for Started<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn the_bytes_read_ahead_come_first_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut started = Started::first_bytes(server).await.unwrap().unwrap();
        client.write_all(b" and the rest").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        started.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PRI * HTTP/2.0 and the rest");
    }

    #[tokio::test]
    async fn a_client_that_closes_without_a_byte_is_none() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert!(Started::first_bytes(server).await.unwrap().is_none());
    }
}
