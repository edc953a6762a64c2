//! Signatures of what replicas tell each other on the `caller_changes`
//! channel. PostgreSQL lets any role that can connect NOTIFY on any
//! channel, so without them anyone with database access could acknowledge a
//! fence for a replica that has not applied a change (and that replica
//! would serve a revoked caller), or announce replicas that never answer
//! (and every identity write would wait out the fence's timeout).

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Hex characters of a signature: 128 bits, as much as a forger must
/// guess.
const SIGNATURE_HEX: usize = 32;

/// The key replicas sign with, derived from the secret they all share.
#[derive(Clone)]
pub struct ChannelKey([u8; 32]);

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

impl ChannelKey {
    /// A key of its own for the channel, so that a signature on it can
    /// never serve as anything else signed with `secret`.
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(b"automation-control-plane: caller_changes channel v1");
        Self(mac.finalize().into_bytes().into())
    }

    /// `message` with its signature appended (`<message>:<signature>`).
    pub fn sign(&self, message: &str) -> String {
        format!("{message}:{}", self.signature(message))
    }

    /// The message of a signed payload, when its signature is this key's.
    pub fn verify<'a>(&self, payload: &'a str) -> Option<&'a str> {
        let (message, signature) = payload.rsplit_once(':')?;
        let mut mac = self.mac();
        mac.update(message.as_bytes());
        let expected = hex::decode(signature).ok()?;
        (expected.len() == SIGNATURE_HEX / 2)
            .then(|| mac.verify_truncated_left(&expected).ok())
            .flatten()
            .map(|()| message)
    }

    fn signature(&self, message: &str) -> String {
        let mut mac = self.mac();
        mac.update(message.as_bytes());
        let full = hex::encode(mac.finalize().into_bytes());
        full[..SIGNATURE_HEX].to_owned()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelKey;

    #[test]
    fn only_the_shared_key_signs_and_a_signature_covers_the_whole_message() {
        let key = ChannelKey::derive(b"the secret every replica shares");
        let signed = key.sign("ack:a:7:b");
        assert_eq!(key.verify(&signed), Some("ack:a:7:b"));
        let other = ChannelKey::derive(b"another secret altogether, same length");
        assert_eq!(other.verify(&signed), None);
        let (_, signature) = signed.rsplit_once(':').unwrap();
        assert_eq!(key.verify(&format!("ack:a:8:b:{signature}")), None);
        assert_eq!(key.verify("ack:a:7:b"), None);
        assert_eq!(key.verify("ack:a:7:b:zz"), None);
        assert_eq!(key.verify(""), None);
    }
}
