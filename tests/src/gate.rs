//! TEST CODE: a TCP gate in front of a server (a region's redis), like the network between
//! a function and its cache:
//!
//! * open: it forwards;
//! * closed: it drops every connection and refuses new ones (a cache that is down);
//! * black hole: it accepts connections and swallows every byte both ways, so nothing is
//!   ever answered (a cache behind a lost route or a full security group): only the
//!   client's own timeouts can end a call.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const OPEN: u8 = 0;
const CLOSED: u8 = 1;
const BLACK_HOLE: u8 = 2;

#[derive(Debug, Clone)]
pub struct Gate {
    /// `host:port` to connect to instead of the server.
    pub addr: String,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

/// Copies `from` → `to`, swallowing the bytes while the gate is a black hole.
async fn pump(mut from: OwnedReadHalf, mut to: Option<OwnedWriteHalf>, mode: Arc<AtomicU8>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if mode.load(Ordering::SeqCst) == BLACK_HOLE {
            continue;
        }
        // Without an upstream (accepted while black-holed) the bytes are swallowed.
        if let Some(w) = to.as_mut()
            && w.write_all(&buf[..n]).await.is_err()
        {
            return;
        }
    }
}

impl Gate {
    pub async fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let mode = Arc::new(AtomicU8::new(OPEN));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (m, c, up) = (mode.clone(), conns.clone(), upstream.to_owned());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let now = m.load(Ordering::SeqCst);
                if now == CLOSED {
                    drop(client);
                    continue;
                }
                let (up, m) = (up.clone(), m.clone());
                let task = tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    if now == BLACK_HOLE {
                        // Hold the connection open and answer nothing.
                        pump(cr, None, m).await;
                        drop(cw);
                        return;
                    }
                    let Ok(server) = TcpStream::connect(&up).await else {
                        return;
                    };
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pump(cr, Some(sw), m.clone()) => {}
                        () = pump(sr, Some(cw), m) => {}
                    }
                });
                c.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(task.abort_handle());
            }
        });
        Ok(Self { addr, mode, conns })
    }

    /// Open: forward. Closed: drop every connection and refuse new ones.
    pub fn set_open(&self, open: bool) {
        self.set_mode(if open { OPEN } else { CLOSED });
    }

    /// Accept connections and never answer (existing connections stop answering too).
    pub fn black_hole(&self) {
        self.set_mode(BLACK_HOLE);
    }

    fn set_mode(&self, mode: u8) {
        let before = self.mode.swap(mode, Ordering::SeqCst);
        // Leaving a black hole or closing: the connections it held are gone (their
        // requests were swallowed, so clients must reconnect anyway).
        if mode == CLOSED || (before == BLACK_HOLE && mode == OPEN) {
            for c in self
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                c.abort();
            }
        }
    }
}
