//! Just enough HTTP/1.1 for the harness's loopback servers (Runtime API, fault proxy):
//! requests and responses with Content-Length or chunked bodies.

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Request line or status line.
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
    }

    pub fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or("")
    }

    pub fn path(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    /// Serialises with a Content-Length body (chunked input is re-framed).
    pub fn to_bytes(&self, head_only_length: Option<usize>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 256);
        out.extend_from_slice(self.start.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("transfer-encoding")
                || k.eq_ignore_ascii_case("content-length")
            {
                continue;
            }
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        let len = head_only_length.unwrap_or(self.body.len());
        out.extend_from_slice(format!("content-length: {len}\r\n\r\n").as_bytes());
        if head_only_length.is_none() {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Reads one message; `None` at a clean end of stream. `no_body` for responses to HEAD.
pub async fn read_message<R: AsyncBufRead + Unpin>(
    r: &mut R,
    no_body: bool,
) -> Result<Option<Message>> {
    let mut start = String::new();
    if r.read_line(&mut start).await? == 0 {
        return Ok(None);
    }
    let mut m = Message {
        start: start.trim_end().to_owned(),
        ..Default::default()
    };
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed inside headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').context("malformed header")?;
        m.headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let status_no_body = m.start.starts_with("HTTP/") && {
        let code = m.start.split(' ').nth(1).unwrap_or("");
        code.starts_with('1') || code == "204" || code == "304"
    };
    if no_body || status_no_body {
        return Ok(Some(m));
    }
    if m.header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end).await?;
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk).await?;
            m.body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
        }
    } else if let Some(len) = m.header("content-length") {
        let n: usize = len.parse()?;
        m.body = vec![0; n];
        r.read_exact(&mut m.body).await?;
    } else if m.start.starts_with("HTTP/") {
        r.read_to_end(&mut m.body).await?;
    }
    Ok(Some(m))
}

pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<()> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut m = Message {
        start: format!("HTTP/1.1 {status} {reason}"),
        headers: Vec::new(),
        body: body.to_vec(),
    };
    for (k, v) in headers {
        m.headers.push(((*k).to_owned(), v.clone()));
    }
    w.write_all(&m.to_bytes(None)).await?;
    w.flush().await?;
    Ok(())
}
