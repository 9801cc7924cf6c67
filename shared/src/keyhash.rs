//! Keys in logs and alerts, hashed when `residency.hash_keys_in_alerts` is on.
//!
//! A cache or item key can itself be personal data (`user-email:plain@example.com`). A plain
//! hash of an e-mail falls to a dictionary, so the hash is a keyed HMAC-SHA256. Its key is
//! one Secrets Manager secret shared by every region, so the same key hashes alike
//! everywhere and logs of different regions can be joined. The secret is read at first use
//! (the first log line that needs a hash), never at init; a failed read is retried at the
//! next use. Invalidation messages always carry the real keys: the cache needs them.

use std::sync::Arc;

use hmac::{KeyInit, Mac};

use crate::error::PortError;
use crate::ports::SecretSource;

/// Prefix of a hashed key, so a reader knows it is not the key itself.
pub const HASH_PREFIX: &str = "hmac-sha256:";

/// Turns keys into what logs and alerts may carry.
pub struct KeyLabels {
    secret: Option<Arc<dyn SecretSource>>,
    key: tokio::sync::OnceCell<Vec<u8>>,
}

impl std::fmt::Debug for KeyLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLabels")
            .field("hashed", &self.secret.is_some())
            .finish()
    }
}

impl KeyLabels {
    /// Keys are logged as they are (`hash_keys_in_alerts = false`).
    pub fn plain() -> Self {
        Self {
            secret: None,
            key: tokio::sync::OnceCell::new(),
        }
    }

    /// Keys are logged as HMAC-SHA256 under the secret `source` yields. No I/O here.
    pub fn hashed(source: Arc<dyn SecretSource>) -> Self {
        Self {
            secret: Some(source),
            key: tokio::sync::OnceCell::new(),
        }
    }

    pub fn is_hashed(&self) -> bool {
        self.secret.is_some()
    }

    /// What a log line or an alert may carry for `key`: the key itself, or
    /// `hmac-sha256:<hex>`. Reads the secret on first use.
    pub async fn label(&self, key: &str) -> Result<String, PortError> {
        let Some(source) = &self.secret else {
            return Ok(key.to_owned());
        };
        let secret = self
            .key
            .get_or_try_init(|| async { source.read().await })
            .await?;
        Ok(format!(
            "{HASH_PREFIX}{}",
            hmac_sha256_hex(secret, key.as_bytes())
        ))
    }
}

/// HMAC-SHA256 of `data` under `key`, lower-case hex.
pub fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    // HMAC accepts keys of any length; the error arm cannot happen.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(data);
    let bytes = mac.finalize().into_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    struct Counting(AtomicUsize, bool);
    impl SecretSource for Counting {
        fn read(&self) -> BoxFuture<'_, Result<Vec<u8>, PortError>> {
            Box::pin(async move {
                let n = self.0.fetch_add(1, Ordering::SeqCst);
                if self.1 && n == 0 {
                    return Err(PortError::Transient("secret unavailable".into()));
                }
                Ok(b"shared-secret".to_vec())
            })
        }
    }

    #[tokio::test]
    async fn hashed_labels_hide_the_key_and_read_the_secret_once_on_first_use() {
        let source = Arc::new(Counting(AtomicUsize::new(0), false));
        let labels = KeyLabels::hashed(source.clone());
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            0,
            "nothing read at construction"
        );
        let a = labels.label("user-email:plain@example.com").await.unwrap();
        let b = labels.label("user-email:plain@example.com").await.unwrap();
        assert_eq!(a, b, "the same key hashes alike");
        assert!(
            a.starts_with(HASH_PREFIX) && !a.contains("plain@example.com"),
            "{a}"
        );
        assert_eq!(
            a,
            format!(
                "{HASH_PREFIX}{}",
                hmac_sha256_hex(b"shared-secret", b"user-email:plain@example.com")
            )
        );
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            1,
            "the secret is read once"
        );
    }

    #[tokio::test]
    async fn a_failed_secret_read_is_tried_again_at_the_next_use() {
        let source = Arc::new(Counting(AtomicUsize::new(0), true));
        let labels = KeyLabels::hashed(source.clone());
        assert!(labels.label("k").await.is_err());
        assert!(labels.label("k").await.unwrap().starts_with(HASH_PREFIX));
    }

    #[tokio::test]
    async fn plain_labels_are_the_keys() {
        assert_eq!(KeyLabels::plain().label("user:1").await.unwrap(), "user:1");
    }
}
