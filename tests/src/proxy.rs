//! TEST CODE: a loopback HTTP proxy in front of moto. It counts calls per operation,
//! injects errors and latency on demand, and answers HEAD of an object version the
//! harness replicated with `x-amz-replication-status: REPLICA` (moto never sets it).
//! It also answers GetBucketReplication and GetBucketNotificationConfiguration with the
//! document last put (moto returns every replication filter as `Prefix ""` and drops
//! `EventBridgeConfiguration`), so `tidemark check --live` sees what AWS would return.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::http::{Message, read_message, write_response};

/// An injected fault: requests whose operation name equals `operation` fail with `status`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub operation: String,
    pub status: u16,
    /// How many requests to fail; `None` = until cleared.
    pub remaining: Option<usize>,
    pub latency: Duration,
}

#[derive(Debug, Default)]
pub struct ProxyState {
    pub faults: Mutex<Vec<Fault>>,
    pub calls: Mutex<HashMap<String, usize>>,
    /// Request body sizes per operation (for message-size assertions).
    pub bodies: Mutex<HashMap<String, Vec<usize>>>,
    /// Operations whose request bodies are kept whole (see [`Proxy::keep_bodies`]).
    pub keep: Mutex<HashSet<String>>,
    /// Kept request bodies per operation, in arrival order.
    pub kept: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    /// (bucket, key) whose current version is a replica (HEAD without a version id).
    pub replicas: Mutex<HashSet<(String, String)>>,
    /// (bucket, key, version id) of every replica version (HEAD of that version).
    pub replica_versions: Mutex<HashSet<(String, String, String)>>,
    /// (bucket, `replication` | `notification`) → the configuration document last put.
    pub bucket_configs: Mutex<HashMap<(String, &'static str), Vec<u8>>>,
}

#[derive(Debug, Clone)]
pub struct Proxy {
    pub url: String,
    pub state: Arc<ProxyState>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Result<Self> {
        Self::start_in_account(upstream, None).await
    }

    /// A proxy whose every request goes to moto's account `account` (`x-moto-account-id`):
    /// each world deploys the template into an account of its own, so worlds never share
    /// a resource name.
    pub async fn start_in_account(upstream: &str, account: Option<String>) -> Result<Self> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(ProxyState::default());
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                let up = upstream.clone();
                let account = account.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, s, up, account).await;
                });
            }
        });
        Ok(Self { url, state })
    }

    pub fn fail(&self, operation: &str, status: u16, times: Option<usize>) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Fault {
                operation: operation.to_owned(),
                status,
                remaining: times,
                latency: Duration::ZERO,
            });
    }

    pub fn clear_faults(&self) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn calls(&self, operation: &str) -> usize {
        self.state
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    pub fn body_sizes(&self, operation: &str) -> Vec<usize> {
        self.state
            .bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(operation)
            .cloned()
            .unwrap_or_default()
    }

    /// Keeps the whole request bodies of `operation` from now on.
    pub fn keep_bodies(&self, operation: &str) {
        self.state
            .keep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(operation.to_owned());
    }

    /// The kept request bodies of `operation`.
    pub fn kept_bodies(&self, operation: &str) -> Vec<Vec<u8>> {
        self.state
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(operation)
            .cloned()
            .unwrap_or_default()
    }

    /// Marks `version` of `key` a replica (and the key's current version, until the next
    /// mark of that key).
    pub fn mark_replica(&self, bucket: &str, key: &str, version: Option<&str>) {
        self.state
            .replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((bucket.to_owned(), key.to_owned()));
        if let Some(v) = version {
            self.state
                .replica_versions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((bucket.to_owned(), key.to_owned(), v.to_owned()));
        }
    }
}

/// Operation name: the JSON protocols' `X-Amz-Target` suffix, the query protocols'
/// `Action=`, or `S3:<METHOD>` for REST calls.
pub fn operation(req: &Message) -> String {
    if let Some(t) = req.header("x-amz-target") {
        return t.rsplit('.').next().unwrap_or(t).to_owned();
    }
    let body = String::from_utf8_lossy(&req.body);
    if let Some(a) = body.split('&').find_map(|p| p.strip_prefix("Action=")) {
        return a.to_owned();
    }
    format!("S3:{}", req.method())
}

/// `(bucket, subresource)` of a path-style S3 bucket-configuration request we keep.
fn bucket_config(req: &Message) -> Option<(String, &'static str)> {
    if req.header("x-amz-target").is_some() {
        return None;
    }
    let (path, query) = req.path().split_once('?')?;
    let bucket = path.trim_matches('/');
    if bucket.is_empty() || bucket.contains('/') {
        return None;
    }
    let kind = query.split('&').find_map(|q| match q.split('=').next() {
        Some("replication") => Some("replication"),
        Some("notification") => Some("notification"),
        _ => None,
    })?;
    Some((bucket.to_owned(), kind))
}

/// The `versionId` query parameter of a request path.
fn version_id(path: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query
        .split('&')
        .find_map(|p| p.strip_prefix("versionId="))
        .and_then(tidemark::objects::decode_form_key)
}

fn s3_object(path: &str) -> Option<(String, String)> {
    let path = path.split('?').next()?.trim_start_matches('/');
    let (bucket, key) = path.split_once('/')?;
    let key = tidemark::objects::decode_form_key(&key.replace('+', "%2B"))?;
    Some((bucket.to_owned(), key))
}

async fn serve(
    sock: TcpStream,
    s: Arc<ProxyState>,
    upstream: String,
    account: Option<String>,
) -> Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    while let Some(mut req) = read_message(&mut r, false).await? {
        let op = operation(&req);
        *s.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op.clone())
            .or_default() += 1;
        s.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op.clone())
            .or_default()
            .push(req.body.len());
        if s.keep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&op)
        {
            s.kept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(op.clone())
                .or_default()
                .push(req.body.clone());
        }
        let fault = {
            let mut faults = s.faults.lock().unwrap_or_else(|e| e.into_inner());
            let hit = faults
                .iter_mut()
                .find(|f| f.operation == op && f.remaining != Some(0));
            hit.map(|f| {
                if let Some(n) = f.remaining.as_mut() {
                    *n -= 1;
                }
                f.clone()
            })
        };
        if let Some(f) = fault {
            tokio::time::sleep(f.latency).await;
            if f.status >= 400 {
                // A code that matches the status, as the services send: the adapters class
                // a failure by its code first, then by its status.
                let (kind, code) = match f.status {
                    403 => ("Sender", "AccessDenied"),
                    404 => ("Sender", "NotFound"),
                    429 => ("Sender", "Throttling"),
                    400..=499 => ("Sender", "InvalidRequest"),
                    500 => ("Receiver", "InternalError"),
                    _ => ("Receiver", "ServiceUnavailable"),
                };
                // In each protocol's own error shape, so the SDK reads the code.
                let message = format!("injected by the harness proxy ({op})");
                let (content_type, body) = if req.header("x-amz-target").is_some() {
                    (
                        "application/x-amz-json-1.0",
                        serde_json::json!({"__type": code, "message": message}).to_string(),
                    )
                } else if op.starts_with("S3:") {
                    (
                        "application/xml",
                        format!(
                            "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>injected</RequestId></Error>"
                        ),
                    )
                } else {
                    (
                        "text/xml",
                        format!(
                            "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>injected</RequestId></ErrorResponse>"
                        ),
                    )
                };
                write_response(
                    &mut w,
                    f.status,
                    &[("content-type", content_type.into())],
                    body.as_bytes(),
                )
                .await?;
                continue;
            }
        }
        let config = bucket_config(&req);
        if let Some(key) = &config
            && req.method() == "GET"
        {
            let stored = s
                .bucket_configs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .cloned();
            if let Some(body) = stored {
                write_response(
                    &mut w,
                    200,
                    &[("content-type", "application/xml".into())],
                    &body,
                )
                .await?;
                continue;
            }
        }
        let head = req.method() == "HEAD";
        req.set_header("connection", "close");
        if let Some(a) = &account {
            req.set_header("x-moto-account-id", a);
        }
        let mut up = TcpStream::connect(&upstream)
            .await
            .context("connect to moto")?;
        up.write_all(&req.to_bytes(None)).await?;
        let mut ur = BufReader::new(up);
        let mut resp = read_message(&mut ur, head)
            .await?
            .context("moto closed the connection")?;
        if std::env::var("TIDEMARK_PROXY_DEBUG").is_ok() && !resp.start.contains(" 200") {
            eprintln!(
                "proxy: {op} {} -> {}\n  request headers: {:?}\n  {}",
                req.start,
                resp.start,
                req.headers,
                String::from_utf8_lossy(&resp.body)
            );
        }
        let length = resp
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        resp.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("connection"));
        if let Some(key) = config
            && resp
                .start
                .split(' ')
                .nth(1)
                .is_some_and(|c| c.starts_with('2'))
        {
            let mut configs = s.bucket_configs.lock().unwrap_or_else(|e| e.into_inner());
            match req.method() {
                "PUT" => {
                    configs.insert(key, req.body.clone());
                }
                "DELETE" => {
                    configs.remove(&key);
                }
                _ => {}
            }
        }
        // A HEAD of one version is a replica only if that version is; without a version id
        // it asks about the key's current version.
        if head
            && let Some(obj) = s3_object(req.path())
            && match version_id(req.path()) {
                Some(v) => s
                    .replica_versions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&(obj.0.clone(), obj.1.clone(), v)),
                None => s
                    .replicas
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&obj),
            }
        {
            resp.set_header("x-amz-replication-status", "REPLICA");
        }
        w.write_all(&resp.to_bytes(if head { Some(length) } else { None }))
            .await?;
        w.flush().await?;
    }
    Ok(())
}
