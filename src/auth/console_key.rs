//! The key the web console signs its session cookies and CSRF tokens with,
//! derived from the JWT secret: every replica shares it (a cookie set by one
//! works on all), nothing else knows it, and a signature made with it can
//! never pass for anything else signed with the secret.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Hex characters of a signature: 128 bits.
const SIGNATURE_HEX: usize = 32;

/// See the module documentation.
#[derive(Clone)]
pub struct ConsoleKey([u8; 32]);

impl std::fmt::Debug for ConsoleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleKey(..)")
    }
}

impl ConsoleKey {
    /// The console's own key from `secret`.
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(b"automation-control-plane: web console v1");
        Self(mac.finalize().into_bytes().into())
    }

    /// The signature of `message` (hex).
    pub fn sign(&self, message: &str) -> String {
        let mut mac = self.mac();
        mac.update(message.as_bytes());
        let full = hex::encode(mac.finalize().into_bytes());
        full[..SIGNATURE_HEX].to_owned()
    }

    /// Whether `signature` is this key's signature of `message` (compared
    /// in constant time).
    pub fn verify(&self, message: &str, signature: &str) -> bool {
        let Ok(expected) = hex::decode(signature) else {
            return false;
        };
        if expected.len() != SIGNATURE_HEX / 2 {
            return false;
        }
        let mut mac = self.mac();
        mac.update(message.as_bytes());
        mac.verify_truncated_left(&expected).is_ok()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let key = ConsoleKey::derive(b"a secret of at least thirty-two bytes!!");
        let other = ConsoleKey::derive(b"another secret of thirty-two bytes!!!!");
        let signature = key.sign("session");
        assert!(key.verify("session", &signature));
        assert!(!key.verify("session2", &signature));
        assert!(!other.verify("session", &signature));
        assert!(!key.verify("session", ""));
        assert!(!key.verify("session", "zz"));
    }
}
