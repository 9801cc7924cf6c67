//! ElastiCache IAM authentication: the password is a SigV4-presigned URL
//! `https://<cache-name>/?Action=connect&User=<user-id>` (plus `ResourceType=ServerlessCache`
//! for serverless caches) without its scheme, signed for the service `elasticache`, valid
//! for 15 minutes. A token only has to be valid when a connection authenticates; the adapter
//! makes a fresh one for every new connection (and reconnects after any error, including
//! ElastiCache closing IAM connections after 12 hours), so a token never expires in use.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;

/// What identifies the cache and its IAM-enabled user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamTarget {
    /// Replication group id or serverless cache name (not the endpoint host).
    pub cache_name: String,
    /// ElastiCache user id (also the AUTH user name).
    pub user_id: String,
    pub region: String,
    pub serverless: bool,
}

/// Token validity AWS allows for connect URLs.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// Presigns the connect URL; the token is the URL without `https://`.
pub fn token(
    target: &IamTarget,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<String, String> {
    let mut url = format!(
        "https://{}/?Action=connect&User={}",
        target.cache_name,
        crate::objects::encode_form_key(&target.user_id).replace('+', "%20")
    );
    if target.serverless {
        url.push_str("&ResourceType=ServerlessCache");
    }
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&target.region)
        .name("elasticache")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| format!("IAM token: {e}"))?
        .into();
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| format!("IAM token: {e}"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("IAM token: {e}"))?
        .into_parts();
    let mut request = http::Request::get(&url)
        .body(())
        .map_err(|e| format!("IAM token: {e}"))?;
    instructions.apply_to_request_http1x(&mut request);
    let signed = request.uri().to_string();
    Ok(signed
        .strip_prefix("https://")
        .unwrap_or(&signed)
        .to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target(serverless: bool) -> IamTarget {
        IamTarget {
            cache_name: "sessions".into(),
            user_id: "tidemark".into(),
            region: "eu-west-1".into(),
            serverless,
        }
    }

    #[test]
    fn token_is_a_presigned_connect_url_for_elasticache() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("session".into()),
            None,
            "test",
        );
        let t = token(
            &target(false),
            &creds,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_812_800),
        )
        .unwrap();
        assert!(
            t.starts_with("sessions/?Action=connect&User=tidemark&"),
            "{t}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20251122%2Feu-west-1%2Felasticache%2Faws4_request",
            "X-Amz-Date=20251122T120000Z",
            "X-Amz-Expires=900",
            "X-Amz-Security-Token=session",
            "X-Amz-Signature=",
        ] {
            assert!(t.contains(part), "{part} missing from {t}");
        }
        assert!(!t.contains("secret"));
    }

    #[test]
    fn serverless_tokens_name_the_resource_type_and_differ_over_time() {
        let creds = Credentials::new("AKID", "secret", None, None, "test");
        let t0 = token(
            &target(true),
            &creds,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_812_800),
        )
        .unwrap();
        let t1 = token(
            &target(true),
            &creds,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_813_800),
        )
        .unwrap();
        assert!(t0.contains("ResourceType=ServerlessCache"));
        assert_ne!(t0, t1, "a fresh token per connection");
    }
}
