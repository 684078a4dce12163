//! An identity provider's published keys (`CHANGECAST_JWKS_URL`): fetched at start, every
//! [`REFRESH_EVERY`] (so a key the provider withdrew stops being trusted), and again when
//! a token names a `kid` the set lacks — at most once per [`REFETCH_INTERVAL`], so that
//! tokens with made-up `kid`s cannot make the service hammer the provider. A failed fetch
//! changes nothing: the last good set keeps serving.
//!
//! A refetch runs as a task of its own, which requests wait for with a bound: a client
//! that hangs up while waiting cannot cancel it (and so cannot spend the refetch
//! allowance without a fetch happening).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::time::Instant;

use super::keys::KeySet;
use crate::sync::lock;

/// Fewest seconds between two fetches asked for by unknown `kid`s.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// How often the set is fetched regardless: a key the provider removed (revoked) is
/// trusted at most this long after.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10 * 60);
/// Longest one fetch may take, connecting and reading included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read. Providers' sets are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// How long `serve` keeps trying to fetch the keys at start before giving up: an
/// identity provider starting beside the service gets this long to answer.
pub const START_WINDOW: Duration = Duration::from_secs(15);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub struct RemoteKeys {
    url: hyper::Uri,
    client: HttpsClient,
    keys: Mutex<Arc<KeySet>>,
    refetch: Mutex<Refetch>,
}

/// The fetches asked for by unknown `kid`s.
#[derive(Default)]
struct Refetch {
    /// When the last one began.
    last_began: Option<Instant>,
    /// The one under way or last finished: true once it has.
    done: Option<watch::Receiver<bool>>,
}

impl RemoteKeys {
    /// Fetches the key set, retrying for up to `window` (see [`START_WINDOW`]); an error
    /// names the URL and the last failure.
    pub async fn start(url: &str, window: Duration) -> anyhow::Result<Arc<RemoteKeys>> {
        let url = parse_url(url)?;
        let client = https_client()?;
        let deadline = Instant::now() + window;
        let mut backoff = Duration::from_millis(250);
        let keys = loop {
            match fetch(&client, &url).await {
                Ok(keys) => break keys,
                Err(error) if Instant::now() + backoff >= deadline => {
                    return Err(error.context(format!(
                        "cannot fetch the identity provider's keys from {url} \
                         (CHANGECAST_JWKS_URL; tried for {}s)",
                        window.as_secs_f32()
                    )))
                }
                Err(error) => {
                    tracing::warn!(%url, "fetching the JWKS failed, retrying: {error:#}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        tracing::info!(%url, keys = keys.len(), "fetched the identity provider's keys");
        let remote = Arc::new(RemoteKeys {
            url,
            client,
            keys: Mutex::new(Arc::new(keys)),
            refetch: Mutex::default(),
        });
        tokio::spawn(refresh_periodically(Arc::downgrade(&remote)));
        Ok(remote)
    }

    /// Fetches the set and keeps it if the fetch succeeds.
    async fn update(&self, why: &str) {
        match fetch(&self.client, &self.url).await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), why, "fetched the identity provider's keys");
                *lock(&self.keys) = Arc::new(keys);
            }
            Err(error) => {
                tracing::warn!(url = %self.url, why, "fetching the JWKS failed; the last good keys keep serving: {error:#}");
            }
        }
    }

    pub fn current(&self) -> Arc<KeySet> {
        lock(&self.keys).clone()
    }

    /// Brings the set up to date for a token naming `kid`, unless a fetch for an unknown
    /// `kid` began less than [`REFETCH_INTERVAL`] ago (then that one's outcome answers).
    /// Waits at most [`FETCH_TIMEOUT`] and a little more. True when the set holds `kid`.
    pub async fn refresh_for(self: &Arc<Self>, kid: &str) -> bool {
        if self.current().has_kid(kid) {
            return true;
        }
        if let Some(mut done) = self.start_refetch() {
            let finished = done.wait_for(|done| *done);
            let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), finished).await;
        }
        self.current().has_kid(kid)
    }

    /// [`refresh_for`](Self::refresh_for) without waiting for it, from code that cannot
    /// wait; nothing happens outside a Tokio runtime.
    pub fn refresh_in_background(self: &Arc<Self>) {
        let _ = self.start_refetch();
    }

    /// The refetch under way, or a new one if none began within [`REFETCH_INTERVAL`];
    /// `None` when neither (or outside a Tokio runtime).
    fn start_refetch(self: &Arc<Self>) -> Option<watch::Receiver<bool>> {
        let mut refetch = lock(&self.refetch);
        let recent = refetch
            .last_began
            .is_some_and(|began| began.elapsed() < REFETCH_INTERVAL);
        if recent {
            // Under way: wait for it. Finished: its outcome stands until the interval ends.
            return refetch.done.clone().filter(|done| !*done.borrow());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (finished, done) = watch::channel(false);
        refetch.last_began = Some(Instant::now());
        refetch.done = Some(done.clone());
        let remote = self.clone();
        runtime.spawn(async move {
            remote.update("a token named an unknown kid").await;
            finished.send_replace(true);
        });
        Some(done)
    }
}

/// Fetches the set every [`REFRESH_EVERY`] while `remote` is in use.
async fn refresh_periodically(remote: Weak<RemoteKeys>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(remote) = remote.upgrade() else {
            return;
        };
        remote.update("periodic refresh").await;
    }
}

/// `https://` anywhere; plain `http://` only to this machine (a sidecar, a test), since
/// keys fetched in the clear could be swapped by anyone on the path.
pub fn parse_url(url: &str) -> anyhow::Result<hyper::Uri> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("CHANGECAST_JWKS_URL {url:?} is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => bail!(
            "CHANGECAST_JWKS_URL {url:?} is plain http: keys fetched in the clear could be \
             replaced on the way; use https (plain http is accepted only for 127.0.0.1, ::1 \
             and localhost)"
        ),
        _ => bail!("CHANGECAST_JWKS_URL {url:?} must be an https:// URL"),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn https_client() -> anyhow::Result<HttpsClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .context(
            "no trusted root certificates for fetching CHANGECAST_JWKS_URL (install the \
             system's CA certificates, or point SSL_CERT_FILE at a bundle)",
        )?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    // Fetches are rare; an idle pooled connection would mostly be a stale one by the
    // next fetch.
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector))
}

async fn fetch(client: &HttpsClient, url: &hyper::Uri) -> anyhow::Result<KeySet> {
    let request = hyper::Request::get(url.clone())
        .header(hyper::header::ACCEPT, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("changecast/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .context("building the JWKS request")?;
    let document = tokio::time::timeout(FETCH_TIMEOUT, async {
        let response = client.request(request).await.context("request failed")?;
        if response.status() != hyper::StatusCode::OK {
            bail!("answered {}", response.status());
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(
                |error| match error.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => {
                        anyhow::anyhow!("the document is larger than {MAX_DOCUMENT_BYTES} bytes")
                    }
                    Err(error) => anyhow::anyhow!("reading the document failed: {error}"),
                },
            )?;
        Ok(body.to_bytes())
    })
    .await
    .map_err(|_| anyhow::anyhow!("no complete answer within {}s", FETCH_TIMEOUT.as_secs()))??;
    let (keys, skipped) = KeySet::from_jwks(&document).map_err(anyhow::Error::msg)?;
    for note in skipped {
        tracing::debug!(%url, "JWKS entry not used: {note}");
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_machine() {
        for good in [
            "https://id.example.com/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9000/jwks",
        ] {
            assert!(parse_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://id.example.com/jwks",
            "http://10.0.0.1/jwks",
            "ftp://id.example.com/jwks",
            "id.example.com/jwks",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn start_gives_up_after_its_window_naming_the_url() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/jwks");
        let error = RemoteKeys::start(&url, Duration::from_millis(600))
            .await
            .err()
            .expect("nothing listens there");
        let message = format!("{error:#}");
        assert!(message.contains(&url), "{message}");
        assert!(message.contains("CHANGECAST_JWKS_URL"), "{message}");
    }
}
