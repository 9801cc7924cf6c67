//! Runs a function the way Lambda does: its real `bootstrap` binary as a child process,
//! talking to a minimal Lambda Runtime API served here on loopback. Or, for fast tests, the
//! same handler in-process. Both sit behind [`Invoke`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot};

use crate::http::{read_message, write_response};

/// What a Lambda invocation returned.
#[derive(Debug, Clone, PartialEq)]
pub enum InvokeResult {
    Ok(serde_json::Value),
    /// The function reported an error (`/error`); Lambda retries the whole batch.
    Error(String),
}

/// A function the harness can invoke.
pub trait Invoke: Send + Sync {
    fn name(&self) -> &str;
    fn invoke(&self, payload: String) -> BoxFuture<'_, Result<InvokeResult>>;
    /// The next invocation crashes `after` into it, if it has not answered by then: a
    /// binary is killed (SIGKILL) and Lambda's behaviour follows (the invocation fails with
    /// `Runtime.ExitError`, a fresh process serves the next one); an in-process handler is
    /// dropped where it stands. `None` disarms a crash not reached yet.
    fn crash_next(&self, after: Option<Duration>);
    /// Invocations that crashed so far.
    fn crashes(&self) -> usize;
}

/// The error an invocation whose process died returns (Lambda's `errorType`).
pub const EXIT_ERROR: &str = "Runtime.ExitError";

type Pending = (String, String, oneshot::Sender<InvokeResult>); // (request id, payload, reply)

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Pending>>,
    inflight: Mutex<Vec<(String, oneshot::Sender<InvokeResult>)>>,
    notify: Notify,
    init_error: Mutex<Option<String>>,
    stdout: Mutex<Vec<String>>,
    stderr: Mutex<Vec<String>>,
    next_id: Mutex<u64>,
    /// When the first `GET …/invocation/next` arrived (init finished).
    first_next: Mutex<Option<std::time::Instant>>,
    /// The running bootstrap.
    child: Mutex<Option<Child>>,
    /// Kill the process this long after handing it the next invocation.
    crash: Mutex<Option<Duration>>,
    /// Processes killed that way while they held an invocation.
    crashes: std::sync::atomic::AtomicUsize,
    /// The running process finished its init (asked for an invocation).
    ready: std::sync::atomic::AtomicBool,
}

/// A real bootstrap under the Runtime API.
pub struct BinaryFunction {
    name: String,
    shared: Arc<Shared>,
    /// How to start the process again after it died mid-invocation.
    command: Mutex<Command>,
    timeout: Duration,
    spawned_at: std::time::Instant,
    /// Serves one invocation at a time (as one Lambda execution environment does), so a
    /// crash and the restart after it belong to one invocation.
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for BinaryFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryFunction")
            .field("name", &self.name)
            .finish()
    }
}

/// Where `scripts/build-local.sh` put the local bootstraps
/// (`target/lambda-local/<name>/bootstrap`: not `target/lambda`, where `sam build` puts its
/// arm64 ones), or `TIDEMARK_BIN_DIR/<name>/bootstrap`.
pub fn bootstrap_path(function: &str) -> Result<PathBuf> {
    let dir = match std::env::var("TIDEMARK_BIN_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/lambda-local"),
    };
    let p = dir.join(function).join("bootstrap");
    if !p.exists() {
        bail!(
            "{} not found: build the functions first (scripts/build-local.sh)",
            p.display()
        );
    }
    Ok(p)
}

impl BinaryFunction {
    /// Starts the server and the child; `env` is the function's configuration.
    pub async fn start(
        function: &str,
        instance: &str,
        region: &str,
        env: &[(String, String)],
    ) -> Result<Arc<Self>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let server_shared = shared.clone();
        let arn = format!("arn:aws:lambda:{region}:123456789012:function:{instance}");
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let s = server_shared.clone();
                let arn = arn.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(sock, s, arn).await;
                });
            }
        });
        let bin = bootstrap_path(function)?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", instance)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{instance}"),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("AWS_REGION", region)
            .env("AWS_DEFAULT_REGION", region)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let spawned_at = std::time::Instant::now();
        let child = spawn(&mut cmd, &shared, instance)?;
        *shared.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(Arc::new(Self {
            name: instance.to_owned(),
            shared,
            command: Mutex::new(cmd),
            timeout: Duration::from_secs(60),
            spawned_at,
            serial: tokio::sync::Mutex::new(()),
        }))
    }

    /// Lambda after a process died mid-invocation: the invocation fails, and a fresh
    /// process (a new init) serves the next one.
    fn restart(&self, id: Option<&str>, status: std::process::ExitStatus) -> Result<InvokeResult> {
        self.shared
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| Some(i.as_str()) != id);
        self.shared
            .ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let child = spawn(
            &mut self.command.lock().unwrap_or_else(|e| e.into_inner()),
            &self.shared,
            &self.name,
        )?;
        *self.shared.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(InvokeResult::Error(
            serde_json::json!({
                "errorType": EXIT_ERROR,
                "errorMessage": format!("RequestId: {} Error: Runtime exited ({status})", id.unwrap_or("-")),
            })
            .to_string(),
        ))
    }

    /// Whether the Runtime API handed invocation `id` to the process.
    fn handed_out(&self, id: &str) -> bool {
        self.shared
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(i, _)| i == id)
    }

    /// EMF documents the function printed (stdout lines with `_aws`).
    pub fn emf(&self) -> Vec<serde_json::Value> {
        self.shared
            .stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }

    /// Log lines (stderr).
    pub fn logs(&self) -> Vec<String> {
        self.shared
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn init_error(&self) -> Option<String> {
        self.shared
            .init_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Process start → first Runtime API request (the function's init), once it happened.
    pub fn init_time(&self) -> Option<Duration> {
        let first = *self
            .shared
            .first_next
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        first.map(|t| t.duration_since(self.spawned_at))
    }

    /// Peak resident set size of the child (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// PID of the child, for memory measurements.
    pub fn pid(&self) -> Option<u32> {
        self.shared
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Child::id)
    }

    /// Exit status if the child has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.shared
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for BinaryFunction {
    fn drop(&mut self) {
        // The Runtime API's tasks hold `shared` (and the child in it) for as long as they
        // run: the process ends with its function.
        if let Some(mut c) = self
            .shared
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = c.start_kill();
        }
    }
}

impl Invoke for BinaryFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn crash_next(&self, after: Option<Duration>) {
        *self.shared.crash.lock().unwrap_or_else(|e| e.into_inner()) = after;
    }

    fn crashes(&self) -> usize {
        self.shared
            .crashes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn invoke(&self, payload: String) -> BoxFuture<'_, Result<InvokeResult>> {
        Box::pin(async move {
            let _one_at_a_time = self.serial.lock().await;
            let (tx, rx) = oneshot::channel();
            let id = {
                let mut n = self
                    .shared
                    .next_id
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *n += 1;
                format!("req-{}-{n}", self.name)
            };
            self.shared
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((id.clone(), payload, tx));
            self.shared.notify.notify_waiters();
            self.shared.notify.notify_one();
            let tick = Duration::from_millis(50);
            let mut waited = Duration::ZERO;
            let mut rx = rx;
            loop {
                match tokio::time::timeout(tick, &mut rx).await {
                    Ok(r) => return r.map_err(|_| anyhow!("{}: invocation dropped", self.name)),
                    Err(_) => {
                        waited += tick;
                        if let Some(e) = self.init_error() {
                            bail!("{}: init error: {e}", self.name);
                        }
                        if let Some(status) = self.exited() {
                            if self.handed_out(&id) {
                                // Died while it held this invocation (a crash, an OOM kill,
                                // a panic under `panic = "abort"`): the invocation fails and
                                // a fresh process serves the next one.
                                return self.restart(Some(&id), status);
                            }
                            if self.shared.ready.load(std::sync::atomic::Ordering::SeqCst) {
                                // Died between invocations (killed just after it answered
                                // the last one): a fresh process serves this one.
                                self.restart(None, status)?;
                                continue;
                            }
                            bail!(
                                "{}: bootstrap exited ({status}); logs:\n{}",
                                self.name,
                                self.logs().join("\n")
                            );
                        }
                        if waited > self.timeout {
                            bail!("{}: invocation timed out", self.name);
                        }
                    }
                }
            }
        })
    }
}

/// Starts the bootstrap; its stdout and stderr lines go to `shared`.
fn spawn(cmd: &mut Command, shared: &Arc<Shared>, instance: &str) -> Result<Child> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.as_std().get_program()))?;
    if let Some(out) = child.stdout.take() {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                s.stdout.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let s = shared.clone();
        let name = instance.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if std::env::var("TIDEMARK_ECHO_LOGS").is_ok() {
                    eprintln!("[{name}] {l}");
                }
                s.stderr.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
    }
    Ok(child)
}

/// Kills the process if invocation `id` is still unanswered: under the lock an answer is
/// taken with, so an answer and a kill never both win.
fn kill_unanswered(s: &Shared, id: &str) {
    let inflight = s.inflight.lock().unwrap_or_else(|e| e.into_inner());
    if inflight.iter().any(|(i, _)| *i == id)
        && let Some(c) = s.child.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
        && c.start_kill().is_ok()
    {
        s.crashes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn serve_connection(sock: tokio::net::TcpStream, s: Arc<Shared>, arn: String) -> Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    while let Some(req) = read_message(&mut r, false).await? {
        let path = req.path().to_owned();
        if req.method() == "GET" && path.ends_with("/invocation/next") {
            s.first_next
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(std::time::Instant::now);
            s.ready.store(true, std::sync::atomic::Ordering::SeqCst);
            let next = loop {
                let notified = s.notify.notified();
                if let Some(p) = s
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front()
                {
                    break p;
                }
                notified.await;
            };
            let (id, payload, reply) = next;
            s.inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id.clone(), reply));
            if let Some(after) = s.crash.lock().unwrap_or_else(|e| e.into_inner()).take() {
                if after.is_zero() {
                    // Dies as it receives the invocation: killed before the event is sent.
                    kill_unanswered(&s, &id);
                } else {
                    let (s, id) = (s.clone(), id.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        kill_unanswered(&s, &id);
                    });
                }
            }
            let deadline = crate::now_ms() + 300_000;
            write_response(
                &mut w,
                200,
                &[
                    ("content-type", "application/json".into()),
                    ("lambda-runtime-aws-request-id", id),
                    ("lambda-runtime-deadline-ms", deadline.to_string()),
                    ("lambda-runtime-invoked-function-arn", arn.clone()),
                    (
                        "lambda-runtime-trace-id",
                        "Root=1-00000000-000000000000000000000000;Sampled=0".into(),
                    ),
                ],
                payload.as_bytes(),
            )
            .await?;
        } else if req.method() == "POST"
            && (path.ends_with("/response") || path.ends_with("/error"))
        {
            let id = path.split('/').rev().nth(1).unwrap_or("").to_owned();
            let body = String::from_utf8_lossy(&req.body).into_owned();
            let result = if path.ends_with("/response") {
                InvokeResult::Ok(
                    serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                )
            } else {
                InvokeResult::Error(body)
            };
            let reply = {
                let mut inflight = s.inflight.lock().unwrap_or_else(|e| e.into_inner());
                inflight
                    .iter()
                    .position(|(i, _)| *i == id)
                    .map(|pos| inflight.remove(pos).1)
            };
            if let Some(tx) = reply {
                let _ = tx.send(result);
            }
            write_response(&mut w, 202, &[], b"{}").await?;
        } else if req.method() == "POST" && path.ends_with("/init/error") {
            *s.init_error.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(String::from_utf8_lossy(&req.body).into_owned());
            write_response(&mut w, 202, &[], b"{}").await?;
        } else {
            write_response(&mut w, 404, &[], b"{}").await?;
        }
    }
    Ok(())
}

/// A handler called in-process (fast tests); same contract as a binary.
pub struct InProcess<H> {
    name: String,
    handler: Arc<H>,
    crash: Mutex<Option<Duration>>,
    crashes: std::sync::atomic::AtomicUsize,
}

impl<H> InProcess<H> {
    pub fn new(name: &str, handler: H) -> Self {
        Self {
            name: name.to_owned(),
            handler: Arc::new(handler),
            crash: Mutex::new(None),
            crashes: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl<H: tidemark::lambda::BatchHandler + Send + 'static> Invoke for InProcess<H> {
    fn name(&self) -> &str {
        &self.name
    }

    fn crash_next(&self, after: Option<Duration>) {
        *self.crash.lock().unwrap_or_else(|e| e.into_inner()) = after;
    }

    fn crashes(&self) -> usize {
        self.crashes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn invoke(&self, payload: String) -> BoxFuture<'_, Result<InvokeResult>> {
        let handler = self.handler.clone();
        let crash = self.crash.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The span names the function (and its region) on every log line of the invocation,
        // as a binary's own stderr would.
        let span = tracing::info_span!("invoke", function = %self.name);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let handled = handler.handle(&payload);
                let result = match crash {
                    None => handled.await,
                    // Zero: the process dies as it receives the invocation (a handler can
                    // finish within its first poll, which a kill would not wait for).
                    Some(after) => match tokio::time::timeout(after, async {
                        if after.is_zero() {
                            std::future::pending().await
                        } else {
                            handled.await
                        }
                    })
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            // The handler is dropped where it stands, as a killed process
                            // stops.
                            self.crashes
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return Ok(InvokeResult::Error(
                                serde_json::json!({
                                    "errorType": EXIT_ERROR,
                                    "errorMessage": "Runtime exited (crashed mid-invocation)",
                                })
                                .to_string(),
                            ));
                        }
                    },
                };
                Ok(match result {
                    Ok(ids) => InvokeResult::Ok(serde_json::json!({
                        "batchItemFailures": ids.into_iter().map(|i| serde_json::json!({"itemIdentifier": i})).collect::<Vec<_>>()
                    })),
                    Err(e) => InvokeResult::Error(e),
                })
            },
            span,
        ))
    }
}

/// What a mapping invoked, in order: (record or message ids of the batch, the failed ids
/// the function reported, or its error).
pub type InvocationLog = Arc<Mutex<Vec<(Vec<String>, Result<Vec<String>, String>)>>>;

/// `batchItemFailures[].itemIdentifier` of a response.
pub fn failed_ids(v: &serde_json::Value) -> Vec<String> {
    v.get("batchItemFailures")
        .and_then(|f| f.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("itemIdentifier")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
