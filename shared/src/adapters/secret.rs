//! Secrets Manager adapter for [`SecretSource`]: the HMAC key that hashes keys in logs and
//! alerts. Read when first needed, never at init.

use futures::future::BoxFuture;

use crate::adapters::aws::port_error;
use crate::error::PortError;
use crate::ports::SecretSource;

#[derive(Debug, Clone)]
pub struct SecretsManagerSecret {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerSecret {
    /// No network I/O here.
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String) -> Self {
        Self { client, secret_id }
    }
}

impl SecretSource for SecretsManagerSecret {
    /// The secret's binary value, or its string value as UTF-8 bytes. An empty secret is a
    /// permanent error: an HMAC under an empty key would be a plain hash.
    fn read(&self) -> BoxFuture<'_, Result<Vec<u8>, PortError>> {
        Box::pin(async move {
            let out = self
                .client
                .get_secret_value()
                .secret_id(&self.secret_id)
                .send()
                .await
                .map_err(|e| port_error(&format!("GetSecretValue {}", self.secret_id), e))?;
            let bytes = match (out.secret_binary(), out.secret_string()) {
                (Some(b), _) => b.as_ref().to_vec(),
                (None, Some(s)) => s.as_bytes().to_vec(),
                (None, None) => Vec::new(),
            };
            if bytes.is_empty() {
                return Err(PortError::Permanent(format!(
                    "secret {} is empty: expected the key for hashing keys in logs",
                    self.secret_id
                )));
            }
            Ok(bytes)
        })
    }
}
