//! `changecast healthcheck`: one plain HTTP/1.0 GET against a running `serve`, for
//! container healthchecks in an image without curl. Knows nothing of the server's code.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A healthcheck must answer quickly or count as failed.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The status line fits easily; the body is not read.
const MAX_HEAD: usize = 1024;

/// GETs `url` (`http://host:port/path`); `Ok` on status 200.
pub async fn check(url: &str) -> anyhow::Result<()> {
    tokio::time::timeout(TIMEOUT, get_status(url))
        .await
        .with_context(|| format!("no answer from {url} within {TIMEOUT:?}"))?
        .and_then(|status| {
            anyhow::ensure!(status == 200, "{url} answered {status}");
            Ok(())
        })
}

async fn get_status(url: &str) -> anyhow::Result<u16> {
    let (authority, path) = split_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.contains(&b'\n') && head.len() < MAX_HEAD {
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .with_context(|| format!("{url} did not answer HTTP"))
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    anyhow::ensure!(!authority.is_empty(), "{url:?} has no host");
    Ok((authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/healthz").unwrap(),
            ("127.0.0.1:8080", "/healthz")
        );
        assert_eq!(
            split_url("http://localhost:80").unwrap(),
            ("localhost:80", "/")
        );
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///healthz").is_err());
    }
}
