//! Opening one PostgreSQL connection, over TLS when the URL asks for it.
//!
//! diesel-async's own `establish` speaks plaintext only, and tokio-postgres
//! knows neither `verify-ca` nor `verify-full` nor `sslrootcert`. So the URL's
//! `sslmode` and `sslrootcert` are read here, with libpq's meaning, and the
//! connection is made by tokio-postgres over rustls:
//!
//! | `sslmode` | the server's certificate |
//! |---|---|
//! | `disable`, `prefer` (or none) | plaintext, as before (`prefer` does not try TLS) |
//! | `require` | TLS, certificate not checked — unless `sslrootcert` is given, then as `verify-ca` (libpq does the same) |
//! | `verify-ca` | must chain to `sslrootcert`, which is required; any host name |
//! | `verify-full` | must chain to `sslrootcert` (`system`, or none: the system's roots) and name the URL's host |
//!
//! `verify-ca` against the system's roots would trust any certificate any
//! public CA ever issued, for any name: whoever holds one for any domain
//! could pose as the database and read its password. libpq refuses it, and
//! so does this: the system's roots are trusted only with the host name
//! checked (`sslrootcert=system` asks for them and wants `verify-full`).

use std::sync::Arc;

use diesel::{ConnectionError, ConnectionResult};
use diesel_async::AsyncPgConnection;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};

/// How a URL asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Encrypt only.
    Nothing,
    /// The chain, not the name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// Opens a connection to `url`, over TLS when its `sslmode` asks for it.
/// Every connection of the service is opened here: the pool's, the LISTEN
/// connections', and the migrations'.
pub async fn open_connection(url: &str) -> ConnectionResult<AsyncPgConnection> {
    let Some((plain_url, verify, root_cert)) = tls_request(url)? else {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| bad(e.to_string()))?;
        return super::pooling::adopt(client, connection).await;
    };
    let mut config: tokio_postgres::Config = plain_url
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectionError::BadConnection(e.to_string()))?;
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let roots = match &root_cert {
        Some(path) => Some(
            tokio::fs::read(path)
                .await
                .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?,
        ),
        None => None,
    };
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(verify, roots)?);
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        // tokio-postgres's message alone ("error performing TLS handshake")
        // hides why: the certificate's complaint is in the source.
        let cause = std::error::Error::source(&e)
            .map(|cause| format!(": {cause}"))
            .unwrap_or_default();
        ConnectionError::BadConnection(format!("{e}{cause}"))
    })?;
    super::pooling::adopt(client, connection).await
}

fn bad(message: String) -> ConnectionError {
    ConnectionError::BadConnection(message)
}

/// When `url` asks for TLS: the URL without the parameters tokio-postgres
/// does not know, what to verify, and the `sslrootcert` path.
#[allow(clippy::type_complexity)]
fn tls_request(url: &str) -> ConnectionResult<Option<(String, Verify, Option<String>)>> {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL (key=value form): tokio-postgres reads it as it is.
        return Ok(None);
    };
    let mut mode = None;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "sslmode" => mode = Some(value.into_owned()),
            "sslrootcert" => root_cert = Some(value.into_owned()),
            _ => rest.push((key.into_owned(), value.into_owned())),
        }
    }
    let system_roots = root_cert.as_deref() == Some("system");
    let verify = match (mode.as_deref(), &root_cert) {
        (None | Some("disable" | "prefer"), _) => return Ok(None),
        (Some("require" | "verify-ca"), Some(_)) if system_roots => {
            return Err(bad(
                "sslrootcert=system trusts every public CA: it needs sslmode=verify-full, \
                 which also checks the host name"
                    .into(),
            ));
        }
        (Some("verify-ca"), None) => {
            return Err(bad(
                "sslmode=verify-ca needs sslrootcert (the CA file of the database's \
                 certificate); to trust the system's CAs, use sslmode=verify-full"
                    .into(),
            ));
        }
        (Some("require"), None) => Verify::Nothing,
        (Some("require" | "verify-ca"), _) => Verify::Chain,
        (Some("verify-full"), _) => Verify::Full,
        (Some(other), _) => {
            return Err(bad(format!(
                "sslmode={other} is not supported (disable, prefer, require, verify-ca, \
                 verify-full)"
            )));
        }
    };
    parsed.set_query(None);
    if !rest.is_empty() {
        parsed.query_pairs_mut().extend_pairs(rest);
    }
    let root_cert = root_cert.filter(|_| !system_roots);
    Ok(Some((parsed.to_string(), verify, root_cert)))
}

/// rustls for PostgreSQL (which negotiates TLS itself, without ALPN).
fn client_config(verify: Verify, roots_pem: Option<Vec<u8>>) -> ConnectionResult<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(Unverified(provider)),
        Verify::Chain | Verify::Full => {
            let webpki = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots_pem)?),
                provider,
            )
            .build()
            .map_err(|e| bad(format!("sslrootcert: {e}")))?;
            if verify == Verify::Full {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CAs of `sslrootcert`, or the system's.
fn root_store(pem: Option<Vec<u8>>) -> ConnectionResult<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("sslrootcert: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("sslrootcert: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err(bad("no CA certificate to verify the database's with".into()));
    }
    Ok(roots)
}

/// `sslmode=verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `sslmode=require` without `sslrootcert`: encrypted, the certificate
/// taken as it comes (libpq's meaning; the handshake's signatures are still
/// checked).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_read_and_taken_out_of_the_url() {
        let plain = tls_request("postgres://u:p@h:5432/d?application_name=x").unwrap();
        assert_eq!(plain, None);
        let plain = tls_request("postgres://u:p@h/d?sslmode=disable").unwrap();
        assert_eq!(plain, None);
        let (url, verify, root) = tls_request(
            "postgres://u:p@h/d?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=5",
        )
        .unwrap()
        .unwrap();
        assert_eq!(url, "postgres://u:p@h/d?connect_timeout=5");
        assert_eq!(verify, Verify::Full);
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (_, verify, _) = tls_request("postgres://h/d?sslmode=require")
            .unwrap()
            .unwrap();
        assert_eq!(verify, Verify::Nothing);
        let (_, verify, _) = tls_request("postgres://h/d?sslmode=require&sslrootcert=/ca.pem")
            .unwrap()
            .unwrap();
        assert_eq!(verify, Verify::Chain);
        assert!(tls_request("postgres://h/d?sslmode=allow").is_err());
    }

    /// The system's CAs are trusted only with the host name checked: any
    /// public certificate would pass a chain-only check.
    #[test]
    fn the_system_roots_come_only_with_the_host_name_checked() {
        let refused = |url: &str| match tls_request(url) {
            Err(ConnectionError::BadConnection(why)) => why,
            other => panic!("{url}: {other:?}"),
        };
        assert!(refused("postgres://h/d?sslmode=verify-ca").contains("needs sslrootcert"));
        for mode in ["require", "verify-ca"] {
            assert!(
                refused(&format!("postgres://h/d?sslmode={mode}&sslrootcert=system"))
                    .contains("verify-full")
            );
        }
        let (_, verify, root) =
            tls_request("postgres://h/d?sslmode=verify-full&sslrootcert=system")
                .unwrap()
                .unwrap();
        assert_eq!((verify, root), (Verify::Full, None));
        let (_, verify, root) = tls_request("postgres://h/d?sslmode=verify-full")
            .unwrap()
            .unwrap();
        assert_eq!((verify, root), (Verify::Full, None));
    }
}
