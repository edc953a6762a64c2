//! The HTTP port (probes, metrics, console) under TLS: with a certificate
//! it speaks HTTPS with the gRPC port's certificate, rotated with it, and
//! no plaintext; it asks no client certificate even when gRPC is mutual
//! (probes and Prometheus carry none); the console's cookie is `Secure`.
//! On any HTTP port, a client that never finishes its headers is closed.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use automation_control_plane::{http::HttpListener, tls::TlsFiles};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::common::{
    TestApp, TestOptions,
    certs::{self, TestCa},
};

/// A mutual-TLS server with an HTTP port; its certificate files in `dir`.
async fn app_with_http(dir: &Path, ca: &TestCa, client_ca: &TestCa) -> (TestApp, SocketAddr) {
    let server = ca.server();
    let listener = HttpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr();
    let mut options = TestOptions::default();
    options.server.http_listener = Some(listener);
    options.server.tls = Some(TlsFiles {
        cert_file: certs::write(dir, "server.pem", &server.cert),
        key_file: certs::write(dir, "server.key", &server.key),
        client_ca_file: Some(certs::write(dir, "client-ca.pem", &client_ca.pem)),
        reload_interval: Duration::from_millis(100),
    });
    options.tls_client = Some(
        ca.trusted_by_client()
            .identity(client_ca.client("tester").identity()),
    );
    (TestApp::spawn_with(options).await, addr)
}

/// `GET path` over HTTPS trusting `ca` only, with no client certificate:
/// the whole response (status line, headers, body) or where it failed.
async fn https_get(addr: SocketAddr, ca: &TestCa, path: &str) -> Result<String, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let config = ClientConfig::builder_with_provider(automation_control_plane::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response))
        .await
        .map_err(|_| "response timed out".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    String::from_utf8(response).map_err(|e| format!("UTF-8: {e}"))
}

/// `GET path` in plaintext: the response, or where it failed.
async fn plain_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response))
        .await
        .map_err(|_| "response timed out".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

#[tokio::test]
async fn the_http_port_speaks_tls_with_the_grpc_certificate_and_follows_its_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let (app, addr) = app_with_http(dir.path(), &ca, &client_ca).await;
    // gRPC works (mutual TLS) …
    let token = app.admin_token().await;
    assert_eq!(app.current_user(&token).await.username, "admin");

    // … and the probes answer over HTTPS without a client certificate.
    let ready = https_get(addr, &ca, "/health/ready").await.expect("HTTPS");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = https_get(addr, &ca, "/metrics").await.expect("HTTPS");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    // The console's login page, its cookies marked Secure.
    let login = https_get(addr, &ca, "/console/login").await.expect("HTTPS");
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    let cookies: Vec<&str> = login
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .collect();
    assert!(!cookies.is_empty(), "{login}");
    for cookie in cookies {
        assert!(cookie.contains("; Secure"), "{cookie}");
    }

    // No plaintext answer: the handshake fails and nothing is served.
    let plain = plain_get(addr, "/health/ready").await;
    assert!(
        !plain.as_deref().unwrap_or_default().contains("ready"),
        "plaintext must not be served: {plain:?}"
    );
    // A client that does not trust the server's CA stops at the handshake.
    let stranger = TestCa::new("someone else's CA");
    assert!(https_get(addr, &stranger, "/health/live").await.is_err());

    // Rotation: the HTTP port serves the new certificate to new connections.
    let new_ca = TestCa::new("new server CA");
    let rotated = new_ca.server();
    certs::write(dir.path(), "server.key", &rotated.key);
    certs::write(dir.path(), "server.pem", &rotated.cert);
    let mut served = Err(String::new());
    for _ in 0..100 {
        served = https_get(addr, &new_ca, "/health/live").await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = served.expect("the rotated certificate on the HTTP port");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert!(https_get(addr, &ca, "/health/live").await.is_err());
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_closed_while_others_are_served() {
    let listener = HttpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr();
    let mut options = TestOptions::default();
    options.server.http_listener = Some(listener);
    let app = TestApp::spawn_with(options).await;

    // Half a request, then a byte now and then: never a complete header.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    let closed = async {
        let mut buf = [0; 256];
        loop {
            tokio::select! {
                read = slow.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return started.elapsed(),
                    // hyper may answer 408 before closing.
                    Ok(_) => continue,
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if slow.write_all(b"X").await.is_err() {
                        return started.elapsed();
                    }
                }
            }
        }
    };
    // Meanwhile an honest client is served.
    let honest = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        plain_get(addr, "/health/live").await
    };
    let (closed, honest) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(closed, honest)
    })
    .await
    .expect("the trickling client is closed within 30 s");
    assert!(
        honest
            .as_deref()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 200"),
        "{honest:?}"
    );
    assert!(
        closed >= Duration::from_secs(5),
        "closed after {closed:?}: too early for a 10 s header timeout"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_trickles_a_request_body_gets_a_timeout() {
    let listener = HttpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr();
    let mut options = TestOptions::default();
    options.server.http_listener = Some(listener);
    let app = TestApp::spawn_with(options).await;

    // Headers in full, then a body announced at 2 MB and sent a byte a
    // second: the request is answered 408 once its time is up.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(
        b"POST /console/login HTTP/1.1\r\nHost: localhost\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 2000000\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0; 512];
        loop {
            tokio::select! {
                read = slow.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if slow.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "the trickled request was never ended");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    app.stop().await;
}
