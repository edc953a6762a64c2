//! gRPC (and the HTTP port) over TLS: the server's certificate (and, for mutual TLS, the CA its
//! clients' certificates must chain to) read from files, re-read when they
//! change, and the accept loops (TLS and plaintext alike) that hand tonic
//! only connections whose client has spoken, a bounded number at a time.
//!
//! rustls does the protocol; this module only decides which configuration
//! the next connection gets. A rotation swaps the whole `ServerConfig`
//! (certificate, key and client CA alike) for connections accepted after it:
//! open connections, and the Work streams on them, keep the session they
//! negotiated. A certificate that does not load is logged and the previous
//! configuration stays in force.

mod incoming;
mod reloading;
mod started;

pub use incoming::{
    FIRST_BYTES_TIMEOUT, HANDSHAKE_TIMEOUT, HttpsIncoming, MAX_PENDING_CONNECTIONS, PlainIncoming,
    TlsIncoming, https, incoming, plaintext,
};
pub use reloading::{TlsFiles, TlsServer, provider};
pub use started::Started;
