//! Which counters an attempt is weighed against: its client, its account
//! (or the fingerprint of a login name that names none), the pair, and an
//! IPv6 client's /48.

use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::auth::client::ClientInfo;

/// Who an attempt is against: a known account, or a login name that matches
/// none (counted like an account, so that probing names costs the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptSubject {
    /// An existing account.
    Account(Uuid),
    /// A login name that names no account; only its hash is kept.
    UnknownLogin(String),
}

impl AttemptSubject {
    fn key_part(&self) -> String {
        match self {
            Self::Account(id) => id.to_string(),
            Self::UnknownLogin(login) => format!("login-{}", login_fingerprint(login)),
        }
    }
}

/// A short, stable fingerprint of a login name that matched no account: what
/// throttle keys and audit rows keep instead of the name (people paste
/// passwords into login fields).
pub fn login_fingerprint(login: &str) -> String {
    let digest = Sha256::digest(login.trim().to_lowercase().as_bytes());
    hex::encode(&digest[..8])
}

/// The counters one attempt is weighed against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptKeys {
    pub(super) client: String,
    pub(super) account: String,
    pub(super) client_on_account: String,
    pub(super) network: Option<String>,
}

impl AttemptKeys {
    /// The keys of `subject` tried from `client`.
    pub fn new(subject: &AttemptSubject, client: &ClientInfo) -> Self {
        let bucket = client.throttle_bucket();
        let account = subject.key_part();
        Self {
            client: format!("ip:{bucket}"),
            client_on_account: format!("acct-ip:{account}|{bucket}"),
            account: format!("acct:{account}"),
            network: client.network_bucket().map(|net| format!("net:{net}")),
        }
    }

    pub(super) fn all(&self) -> Vec<String> {
        let mut keys = vec![
            self.client.clone(),
            self.account.clone(),
            self.client_on_account.clone(),
        ];
        keys.extend(self.network.clone());
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_logins_are_kept_as_fingerprints() {
        let subject = AttemptSubject::UnknownLogin("Hunter2-Pasted".into());
        let keys = AttemptKeys::new(
            &subject,
            &ClientInfo {
                ip: Some("198.51.100.1".parse().unwrap()),
                user_agent: String::new(),
                ..ClientInfo::default()
            },
        );
        assert!(!keys.account.to_lowercase().contains("hunter2"));
        assert_eq!(
            login_fingerprint("hunter2-pasted"),
            login_fingerprint(" HUNTER2-PASTED ")
        );
        assert_eq!(keys.client, "ip:198.51.100.1");
    }
}
