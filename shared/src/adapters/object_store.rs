//! S3 adapter for [`ObjectStore`]: HEAD, tagging, delete and copy of one object version.

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};
use futures::future::BoxFuture;

use super::errors::{classify, status};
use crate::ports::{ObjectStore, PortError, VersionHead};

/// CopyObject copies at most 5 GB; above that a multipart copy is needed.
pub const COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
/// Multipart copies use at most 10,000 parts of at least this size.
const MIN_PART: u64 = 512 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    copy_limit: u64,
    min_part: u64,
}

impl S3ObjectStore {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        Self {
            client,
            copy_limit: COPY_LIMIT,
            min_part: MIN_PART,
        }
    }

    /// Lower limits, so tests can exercise the multipart path with small objects (S3
    /// requires parts of at least 5 MiB except the last).
    pub fn with_multipart_limits(mut self, copy_limit: u64, min_part: u64) -> Self {
        self.copy_limit = copy_limit;
        self.min_part = min_part;
        self
    }

    async fn multipart_copy(
        &self,
        bucket: &str,
        key: &str,
        version: &str,
        size: u64,
        to_bucket: &str,
        to_key: &str,
    ) -> Result<(), PortError> {
        let what = where_(bucket, version);
        // A multipart upload does not copy metadata or tags: carry them over explicitly.
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .version_id(version)
            .send()
            .await
            .map_err(|e| classify("HeadObject", &what, &e))?;
        let tags = self.version_tags(bucket, key, version).await?;
        let tagging = tags
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k, false), percent_encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(to_bucket)
            .key(to_key)
            .set_metadata(head.metadata().cloned())
            .set_content_type(head.content_type().map(str::to_owned));
        if !tagging.is_empty() {
            create = create.tagging(tagging);
        }
        let upload = create
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", to_bucket, &e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let part = self.min_part.max(size.div_ceil(MAX_PARTS));
        let source = copy_source(bucket, key, version);
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut number = 1i32;
        let result: Result<(), PortError> = async {
            while start < size {
                let end = (start + part).min(size) - 1;
                let r = self
                    .client
                    .upload_part_copy()
                    .bucket(to_bucket)
                    .key(to_key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| classify("UploadPartCopy", &what, &e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(
                            r.copy_part_result()
                                .and_then(|c| c.e_tag())
                                .map(str::to_owned),
                        )
                        .build(),
                );
                start = end + 1;
                number += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(to_bucket)
                .key(to_key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify("CompleteMultipartUpload", to_bucket, &e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Best effort: a lifecycle rule should abort what is left (parts cost storage).
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(to_bucket)
                .key(to_key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

/// Where a call failed, for its error text: bucket and version, never the object key (keys
/// can be personal data; the stage puts the key's label, hashed when configured, in front).
fn where_(bucket: &str, version: &str) -> String {
    format!("bucket `{bucket}`, version `{version}`")
}

/// `x-amz-copy-source`: bucket, URL-encoded key, version.
fn copy_source(bucket: &str, key: &str, version: &str) -> String {
    format!(
        "{bucket}/{}?versionId={}",
        percent_encode(key, true),
        percent_encode(version, false)
    )
}

/// RFC 3986 percent-encoding of everything but unreserved characters (and `/` if asked).
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl ObjectStore for S3ObjectStore {
    fn head_version<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionHead>, PortError>> {
        Box::pin(async move {
            let r = self
                .client
                .head_object()
                .bucket(bucket)
                .key(key)
                .version_id(version)
                .send()
                .await;
            match r {
                Ok(h) => Ok(Some(VersionHead {
                    replica: h.replication_status().map(|s| s.as_str()) == Some("REPLICA"),
                    size: h
                        .content_length()
                        .and_then(|l| u64::try_from(l).ok())
                        .unwrap_or(0),
                    metadata: h
                        .metadata()
                        .map(|m| {
                            let mut v: Vec<(String, String)> =
                                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                            v.sort();
                            v
                        })
                        .unwrap_or_default(),
                })),
                // The version is gone (deleted since the event), or it is a delete marker.
                Err(e) if matches!(status(&e), Some(404 | 405)) => Ok(None),
                Err(e) => Err(classify("HeadObject", &where_(bucket, version), &e)),
            }
        })
    }

    fn version_tags<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, PortError>> {
        Box::pin(async move {
            let r = self
                .client
                .get_object_tagging()
                .bucket(bucket)
                .key(key)
                .version_id(version)
                .send()
                .await
                .map_err(|e| classify("GetObjectTagging", &where_(bucket, version), &e))?;
            Ok(r.tag_set()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect())
        })
    }

    fn delete_version<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            match self
                .client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .version_id(version)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                // Already gone: the delete is idempotent.
                Err(e) if status(&e) == Some(404) => Ok(()),
                Err(e) => Err(classify("DeleteObject", &where_(bucket, version), &e)),
            }
        })
    }

    fn copy_version<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        version: &'a str,
        size: u64,
        to_bucket: &'a str,
        to_key: &'a str,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            if size > self.copy_limit {
                return self
                    .multipart_copy(bucket, key, version, size, to_bucket, to_key)
                    .await;
            }
            self.client
                .copy_object()
                .bucket(to_bucket)
                .key(to_key)
                .copy_source(copy_source(bucket, key, version))
                .metadata_directive(MetadataDirective::Copy)
                .send()
                .await
                .map_err(|e| {
                    classify(
                        "CopyObject",
                        &format!("{} to bucket `{to_bucket}`", where_(bucket, version)),
                        &e,
                    )
                })?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_percent_encodes_the_key_but_keeps_slashes() {
        assert_eq!(
            copy_source("b", "eu/red flower+1%é.txt", "v1"),
            "b/eu/red%20flower%2B1%25%C3%A9.txt?versionId=v1"
        );
    }
}
