//! Valkey/Redis adapter for [`Cache`]: UNLINK in one pipelined round trip per batch on a
//! single node; in cluster mode keys are grouped by hash slot (a multi-key command whose
//! keys span slots is rejected with CROSSSLOT) and the per-slot commands run concurrently.
//!
//! The connection is opened on first use, never at init, and dropped after an error so the
//! next batch reconnects (and re-authenticates). Connecting and every reply are bounded by
//! timeouts, so a cache that accepts connections and never answers fails the batch (its
//! messages are retried) instead of hanging the invocation until Lambda kills it.
//!
//! With IAM auth the connection is also replaced before its token is
//! [`IAM_CONNECTION_MAX_AGE`] old: the cluster client re-authenticates its node connections
//! with the token it was built with, so a token older than 15 minutes is never sent.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use tokio::sync::Mutex;

use crate::error::PortError;
use crate::ports::{Cache, FlushPlan};

/// Keys per UNLINK command: bounded so one command never blocks the server for long.
const KEYS_PER_COMMAND: usize = 512;

/// Bound on opening a connection (TCP, TLS, AUTH and the setup commands).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on each reply.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// An IAM-authenticated connection is replaced once its token is this old (tokens are
/// valid for 15 minutes; the margin covers the reconnects a cluster client makes itself).
pub const IAM_CONNECTION_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// Where the IAM token's signing time comes from: the system clock, or a test's clock.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    pub fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// How to reach the cache, from the function's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// `redis://host:port` or `rediss://host:port` (TLS). No credentials in the URL.
    pub url: String,
    pub cluster: bool,
    /// PEM root certificate(s) to trust instead of the system roots (private CAs, tests).
    pub ca_pem: Option<Vec<u8>>,
    pub username: Option<String>,
    pub auth: CacheAuth,
}

/// Where the cache password comes from. Never a plain environment variable.
#[derive(Debug, Clone)]
pub enum CacheAuth {
    None,
    /// A password given in code (tests, tools).
    Password(String),
    /// A Secrets Manager secret, read when a connection is opened (not at init) and read
    /// again after a failed connection, so a rotated password is picked up. The secret
    /// string is the password itself or JSON with a `password` field.
    Secret {
        client: aws_sdk_secretsmanager::Client,
        secret_id: String,
    },
    /// ElastiCache IAM auth: a fresh presigned token for every new connection, signed
    /// with the function's credentials at `clock`'s time; the user is the target's user id.
    Iam {
        target: crate::adapters::iam_auth::IamTarget,
        credentials: aws_credential_types::provider::SharedCredentialsProvider,
        clock: Clock,
    },
}

impl PartialEq for CacheAuth {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (CacheAuth::None, CacheAuth::None) => true,
            (CacheAuth::Password(a), CacheAuth::Password(b)) => a == b,
            (CacheAuth::Secret { secret_id: a, .. }, CacheAuth::Secret { secret_id: b, .. }) => {
                a == b
            }
            (CacheAuth::Iam { target: a, .. }, CacheAuth::Iam { target: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for CacheAuth {}

enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

pub struct RedisCache {
    settings: CacheSettings,
    /// The connection and, with IAM auth, when its token was signed.
    conn: Mutex<Option<(Conn, Option<SystemTime>)>>,
    /// The secret's password, once read.
    password: Mutex<Option<String>>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("url", &self.settings.url)
            .field("cluster", &self.settings.cluster)
            .finish()
    }
}

impl RedisCache {
    /// No network I/O here.
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            settings,
            conn: Mutex::new(None),
            password: Mutex::new(None),
        }
    }

    /// The password to AUTH with and, for an IAM token, when it was signed.
    async fn password(&self) -> Result<(Option<String>, Option<SystemTime>), String> {
        match &self.settings.auth {
            CacheAuth::None => Ok((None, None)),
            CacheAuth::Password(p) => Ok((Some(p.clone()), None)),
            CacheAuth::Iam {
                target,
                credentials,
                clock,
            } => {
                use aws_credential_types::provider::ProvideCredentials;
                let creds = credentials
                    .provide_credentials()
                    .await
                    .map_err(|e| format!("cache IAM credentials: {e}"))?;
                let now = clock.now();
                let token = crate::adapters::iam_auth::token(target, &creds, now)?;
                Ok((Some(token), Some(now)))
            }
            CacheAuth::Secret { client, secret_id } => {
                let mut cached = self.password.lock().await;
                if let Some(p) = cached.as_ref() {
                    return Ok((Some(p.clone()), None));
                }
                let out = client
                    .get_secret_value()
                    .secret_id(secret_id)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "cache secret {secret_id}: {}",
                            aws_sdk_secretsmanager::error::DisplayErrorContext(e)
                        )
                    })?;
                let text = out
                    .secret_string()
                    .ok_or_else(|| format!("cache secret {secret_id} has no string value"))?;
                let password = match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(serde_json::Value::Object(m)) => m
                        .get("password")
                        .and_then(|p| p.as_str())
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            format!("cache secret {secret_id}: JSON without a `password` field")
                        })?,
                    _ => text.to_owned(),
                };
                *cached = Some(password.clone());
                Ok((Some(password), None))
            }
        }
    }

    async fn connect(&self) -> Result<(Conn, Option<SystemTime>), String> {
        let result = self.try_connect().await;
        if result.is_err() {
            // Read the secret again next time: it may have been rotated.
            *self.password.lock().await = None;
        }
        result
    }

    async fn try_connect(&self) -> Result<(Conn, Option<SystemTime>), String> {
        self.try_connect_to(&self.settings.url, self.settings.cluster)
            .await
    }

    /// Connects to `url` (the configured URL, or one cluster node's) with the configured
    /// TLS roots and credentials.
    async fn try_connect_to(
        &self,
        url: &str,
        cluster: bool,
    ) -> Result<(Conn, Option<SystemTime>), String> {
        let s = &self.settings;
        let (password, signed_at) = self.password().await?;
        let username = match &s.auth {
            CacheAuth::Iam { target, .. } => Some(target.user_id.clone()),
            _ => s.username.clone(),
        };
        let mut info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| format!("cache url: {e}"))?;
        let mut redis_settings = info.redis_settings().clone();
        if let Some(u) = &username {
            redis_settings = redis_settings.set_username(u);
        }
        if let Some(p) = &password {
            redis_settings = redis_settings.set_password(p);
        }
        info = info.set_redis_settings(redis_settings);
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: s.ca_pem.clone(),
        };
        if cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(vec![info.clone()]);
            if let Some(u) = &username {
                b = b.username(u.clone());
            }
            if let Some(p) = &password {
                b = b.password(p.clone());
            }
            if s.ca_pem.is_some() {
                b = b.certs(certs());
            }
            b = b
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT);
            let client = b
                .build()
                .map_err(|e| format!("cache cluster client: {e}"))?;
            let c = client
                .get_async_connection()
                .await
                .map_err(|e| format!("cache cluster connect: {e}"))?;
            Ok((Conn::Cluster(c), signed_at))
        } else {
            let client = if s.ca_pem.is_some() {
                redis::Client::build_with_tls(info, certs())
            } else {
                redis::Client::open(info)
            }
            .map_err(|e| format!("cache client: {e}"))?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let c = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| format!("cache connect: {e}"))?;
            Ok((Conn::Single(c), signed_at))
        }
    }

    async fn unlink_all(&self, keys: &[String]) -> Result<u64, String> {
        let mut guard = self.conn.lock().await;
        // Replace an IAM connection before its token could be re-sent too old (a clock that
        // went backwards counts as old too).
        let expired = match (guard.as_ref(), &self.settings.auth) {
            (Some((_, Some(signed_at))), CacheAuth::Iam { clock, .. }) => !clock
                .now()
                .duration_since(*signed_at)
                .is_ok_and(|age| age < IAM_CONNECTION_MAX_AGE),
            _ => false,
        };
        if expired {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        let result = match guard.as_mut().map(|(c, _)| c) {
            Some(Conn::Single(c)) => {
                let mut pipe = redis::pipe();
                for chunk in keys.chunks(KEYS_PER_COMMAND) {
                    pipe.cmd("UNLINK").arg(chunk);
                }
                pipe.query_async::<Vec<u64>>(c)
                    .await
                    .map(|v| v.into_iter().sum())
                    .map_err(|e| format!("UNLINK: {e}"))
            }
            Some(Conn::Cluster(c)) => {
                let groups = group_by_slot(keys);
                let futures = groups.into_iter().flat_map(|(_, ks)| {
                    ks.chunks(KEYS_PER_COMMAND)
                        .map(|chunk| {
                            let mut c = c.clone();
                            let chunk: Vec<&str> = chunk.to_vec();
                            async move {
                                redis::cmd("UNLINK")
                                    .arg(&chunk)
                                    .query_async::<u64>(&mut c)
                                    .await
                            }
                        })
                        .collect::<Vec<_>>()
                });
                let results = futures::future::join_all(futures).await;
                let mut total = 0;
                let mut err = None;
                for r in results {
                    match r {
                        Ok(n) => total += n,
                        Err(e) => err = Some(format!("UNLINK: {e}")),
                    }
                }
                err.map_or(Ok(total), Err)
            }
            None => Err("no cache connection".to_owned()),
        };
        if result.is_err() {
            *guard = None; // reconnect next time
        }
        result
    }
}

/// SCAN MATCH pattern for keys starting with `prefix` (glob characters escaped).
pub fn prefix_pattern(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('*');
    p
}

/// Masters of a cluster from `CLUSTER NODES`: `host:port` each.
pub fn cluster_masters(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _id = f.next()?;
            let addr = f.next()?;
            let flags = f.next()?;
            let is_master = flags.split(',').any(|x| x == "master")
                && !flags.split(',').any(|x| x == "fail" || x == "noaddr");
            // `ip:port@cport[,hostname]`
            let hostport = addr.split('@').next()?;
            is_master.then(|| hostport.to_owned())
        })
        .collect()
}

impl RedisCache {
    /// SCANs one node for `pattern` and UNLINKs what it finds, `plan.batch` keys at a time
    /// with `plan.pause` between batches. On a cluster node the UNLINKs are single-key
    /// (pipelined): keys of one node span many slots.
    async fn flush_node(
        &self,
        c: &mut MultiplexedConnection,
        pattern: &str,
        per_key: bool,
        plan: &FlushPlan,
        done: &mut u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), String> {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(plan.batch.max(1))
                .query_async(c)
                .await
                .map_err(|e| format!("SCAN: {e}"))?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                if per_key {
                    for k in &keys {
                        pipe.cmd("UNLINK").arg(k);
                    }
                } else {
                    for chunk in keys.chunks(KEYS_PER_COMMAND) {
                        pipe.cmd("UNLINK").arg(chunk);
                    }
                }
                let removed: Vec<u64> = pipe
                    .query_async(c)
                    .await
                    .map_err(|e| format!("UNLINK: {e}"))?;
                *done += removed.into_iter().sum::<u64>();
                progress(*done);
                if !plan.pause.is_zero() {
                    tokio::time::sleep(plan.pause).await;
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    async fn flush_all_nodes(
        &self,
        prefix: &str,
        plan: &FlushPlan,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, String> {
        let pattern = prefix_pattern(prefix);
        let mut done = 0;
        if !self.settings.cluster {
            let (Conn::Single(mut c), _) = self.try_connect_to(&self.settings.url, false).await?
            else {
                return Err("cache connect: not a single-node connection".into());
            };
            self.flush_node(&mut c, &pattern, false, plan, &mut done, progress)
                .await?;
            return Ok(done);
        }
        let (Conn::Cluster(mut cluster), _) = self.try_connect_to(&self.settings.url, true).await?
        else {
            return Err("cache connect: not a cluster connection".into());
        };
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut cluster)
            .await
            .map_err(|e| format!("CLUSTER NODES: {e}"))?;
        let masters = cluster_masters(&nodes);
        if masters.is_empty() {
            return Err("CLUSTER NODES lists no reachable master".into());
        }
        let scheme = if self.settings.url.starts_with("rediss://") {
            "rediss"
        } else {
            "redis"
        };
        for m in masters {
            let url = format!("{scheme}://{m}");
            let (Conn::Single(mut c), _) = self.try_connect_to(&url, false).await? else {
                return Err(format!("cache node {m}: not a single-node connection"));
            };
            self.flush_node(&mut c, &pattern, true, plan, &mut done, progress)
                .await
                .map_err(|e| format!("cache node {m}: {e}"))?;
        }
        Ok(done)
    }
}

impl Cache for RedisCache {
    /// Every cache failure is transient: a message's keys stay valid to delete, so it is
    /// retried until the cache answers (and the queue's redrive policy bounds that).
    fn unlink<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, PortError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(0);
            }
            self.unlink_all(keys).await.map_err(PortError::Transient)
        })
    }

    fn flush_prefix<'a>(
        &'a self,
        prefix: &'a str,
        plan: FlushPlan,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, PortError>> {
        Box::pin(async move {
            self.flush_all_nodes(prefix, &plan, progress)
                .await
                .map_err(PortError::Transient)
        })
    }
}

/// Redis cluster hash slot of a key (CRC16/XMODEM mod 16384, honouring `{hash tags}`).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        key[open + 1..]
            .iter()
            .position(|&b| b == b'}')
            .filter(|&len| len > 0)
            .map(|len| &key[open + 1..open + 1 + len])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Keys grouped by slot, in first-seen order.
pub fn group_by_slot(keys: &[String]) -> Vec<(u16, Vec<&str>)> {
    let mut groups: Vec<(u16, Vec<&str>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for k in keys {
        let s = slot(k.as_bytes());
        let i = *index.entry(s).or_insert_with(|| {
            groups.push((s, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(k.as_str());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_redis_specification() {
        // Reference values from the Redis cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"somekey"), 11058);
        // A hash tag: only `user1000` is hashed, so both keys share slot 3443.
        assert_eq!(slot(b"{user1000}.following"), 3443);
        assert_eq!(slot(b"{user1000}.followers"), 3443);
        assert_eq!(slot(b"user1000"), 3443);
        // An empty tag `{}` is no tag: the whole key is hashed.
        assert_eq!(slot(b"{}x"), crc16(b"{}x") % 16384);
        assert_ne!(slot(b"{}x"), slot(b"x"));
    }

    #[test]
    fn prefixes_become_escaped_patterns() {
        assert_eq!(prefix_pattern("user:"), "user:*");
        assert_eq!(prefix_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
        assert_eq!(prefix_pattern(""), "*");
    }

    #[test]
    fn cluster_masters_are_the_reachable_masters() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host.example master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
";
        assert_eq!(cluster_masters(nodes), ["127.0.0.1:7000", "127.0.0.1:7001"]);
    }

    #[test]
    fn grouping_keeps_every_key_once() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let groups = group_by_slot(&keys);
        assert_eq!(groups.iter().map(|(_, k)| k.len()).sum::<usize>(), 100);
        for (s, ks) in &groups {
            assert!(ks.iter().all(|k| slot(k.as_bytes()) == *s));
        }
    }
}
