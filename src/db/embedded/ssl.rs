//! TLS for an embedded cluster: the certificate and key PostgreSQL serves
//! with `ssl=on`.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use super::{Result, failed};

/// The server certificate of an embedded cluster that speaks TLS.
#[derive(Debug, Clone)]
pub struct EmbeddedSsl {
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

/// Writes the certificate and key where PostgreSQL looks for them
/// (`server.crt`, `server.key` in the data directory), readable by the
/// server's user only (PostgreSQL refuses a key others can read); `own`
/// gives a file to that user.
pub(super) fn write_files(
    pgdata: &Path,
    ssl: &EmbeddedSsl,
    own: impl Fn(&Path) -> Result<()>,
) -> Result<()> {
    for (name, contents) in [("server.crt", &ssl.cert_pem), ("server.key", &ssl.key_pem)] {
        let path = pgdata.join(name);
        fs::write(&path, contents).map_err(|e| failed("writing the TLS files", e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| failed("writing the TLS files", e))?;
        own(&path)?;
    }
    Ok(())
}
