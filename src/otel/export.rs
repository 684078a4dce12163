//! The exporter: every [`FLUSH_EVERY`] (and once more at shutdown) it closes the change
//! spans that are due and posts what is queued to `<endpoint>/v1/traces` in the OTLP
//! JSON encoding. A failed or slow export loses that batch (counted) and never holds up
//! anything but itself: the queue it drains stays bounded meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value as Json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Span, Tracer, Value};
use crate::config::TraceArgs;

/// How often queued spans are sent.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Longest one export may take, connecting included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the last export at shutdown may take: a dead collector must not hold it up.
const LAST_EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans per request.
const BATCH_SPANS: usize = 512;
/// How much of a collector's answer is read (it is only checked, not used).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Fewest seconds between two warnings about lost spans.
const WARN_EVERY: Duration = Duration::from_secs(60);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where traces go: the configured URL, checked.
pub(super) struct Endpoint(hyper::Uri);

impl Endpoint {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// with `/v1/traces` appended (the OpenTelemetry rules); `None` when neither is set.
    pub(super) fn from_config(args: &TraceArgs) -> anyhow::Result<Option<Endpoint>> {
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let (url, variable) = match (set(&args.otlp_traces_endpoint), set(&args.otlp_endpoint)) {
            (Some(url), _) => (url.trim().to_owned(), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            (None, Some(base)) => (
                format!("{}/v1/traces", base.trim().trim_end_matches('/')),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (None, None) => return Ok(None),
        };
        match set(&args.otlp_protocol).as_deref().map(str::trim) {
            None | Some("http/json") | Some("http/protobuf") => {}
            Some("grpc") => bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported: changecast sends OTLP over \
                 HTTP (JSON); point {variable} at the collector's OTLP/HTTP port (4318)"
            ),
            Some(other) => bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not one of http/json, http/protobuf"
            ),
        }
        let uri: hyper::Uri = url
            .parse()
            .ok()
            .filter(|uri: &hyper::Uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|host| !host.is_empty())
            })
            .with_context(|| format!("{variable} is not an http:// or https:// URL"))?;
        Ok(Some(Endpoint(uri)))
    }

    /// The URL without credentials or query, for logs.
    fn display(&self) -> String {
        let uri = &self.0;
        let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}://{}{port}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or_default(),
            uri.path()
        )
    }
}

/// Sends the spans a [`Tracer`] records; run it until shutdown with [`Exporter::run`].
pub struct Exporter {
    tracer: Arc<Tracer>,
    endpoint: Endpoint,
    headers: Vec<(HeaderName, HeaderValue)>,
    client: HttpsClient,
    resource: Json,
}

impl Exporter {
    pub(super) fn new(
        tracer: Arc<Tracer>,
        endpoint: Endpoint,
        args: &TraceArgs,
    ) -> anyhow::Result<Exporter> {
        let headers = match &args.otlp_headers {
            Some(headers) => parse_headers(headers.expose())?,
            None => Vec::new(),
        };
        let https = endpoint.0.scheme_str() == Some("https");
        let service = args.service_name.trim();
        let resource = json!({ "attributes": [
            attribute("service.name", &Value::from(if service.is_empty() { "changecast" } else { service })),
            attribute("service.version", &Value::from(env!("CARGO_PKG_VERSION"))),
        ]});
        Ok(Exporter {
            tracer,
            endpoint,
            headers,
            client: client(https)?,
            resource,
        })
    }

    /// Exports every [`FLUSH_EVERY`] until `stop` is cancelled, then once more with
    /// every change span closed, within [`LAST_EXPORT_TIMEOUT`].
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(endpoint = %self.endpoint.display(), "exporting traces (OTLP/HTTP JSON)");
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut report = Report::default();
        let mut last = false;
        while !last {
            last = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            self.tracer.close_changes(last);
            let spans = self.tracer.take_queued();
            let deadline = Instant::now()
                + if last {
                    LAST_EXPORT_TIMEOUT
                } else {
                    EXPORT_TIMEOUT
                };
            // Encoding thousands of spans takes milliseconds: not on a thread that
            // delivers.
            let resource = self.resource.clone();
            let encoded = tokio::task::spawn_blocking(move || {
                spans
                    .chunks(BATCH_SPANS)
                    .map(|batch| (batch.len(), encode(&resource, batch)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let mut batches = encoded.into_iter();
            while let Some((count, body)) = batches.next() {
                let sent = tokio::select! {
                    sent = tokio::time::timeout_at(deadline, self.send(body)) => sent,
                    // Shutdown does not wait for a slow collector: what is left of this
                    // flush is given up, and the last one gets its own short deadline.
                    _ = stop.cancelled(), if !last => {
                        let left = count + batches.map(|(count, _)| count).sum::<usize>();
                        self.tracer.dropped.fetch_add(left as u64, Ordering::Relaxed);
                        break;
                    }
                };
                let error = match sent {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) => Some(error),
                    Err(_) => Some(anyhow::anyhow!("no answer in time")),
                };
                if error.is_some() {
                    self.tracer
                        .dropped
                        .fetch_add(count as u64, Ordering::Relaxed);
                }
                let dropped = self.tracer.dropped.load(Ordering::Relaxed);
                report.after_export(error, &self.endpoint, dropped);
            }
        }
    }

    async fn send(&self, body: Vec<u8>) -> anyhow::Result<()> {
        let mut request = hyper::Request::post(self.endpoint.0.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("changecast/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .context("building the export request")?;
        let response = self
            .client
            .request(request)
            .await
            .context("request failed")?;
        let status = response.status();
        // Read (a bounded part of) the answer, so the connection can be used again.
        let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        if !status.is_success() {
            bail!("the collector answered {status}");
        }
        Ok(())
    }
}

/// Warnings about lost spans, at most every [`WARN_EVERY`].
#[derive(Default)]
struct Report {
    failing: bool,
    warned_at: Option<Instant>,
    dropped_reported: u64,
}

impl Report {
    fn after_export(&mut self, error: Option<anyhow::Error>, endpoint: &Endpoint, dropped: u64) {
        let now = Instant::now();
        let may_warn = self.warned_at.is_none_or(|at| now - at >= WARN_EVERY);
        match error {
            Some(error) if !self.failing || may_warn => {
                tracing::warn!(
                    endpoint = %endpoint.display(),
                    error = %format!("{error:#}"),
                    dropped,
                    "exporting traces failed; spans are dropped until the collector answers"
                );
                self.warned_at = Some(now);
                self.failing = true;
                self.dropped_reported = dropped;
            }
            Some(_) => {}
            None if self.failing => {
                tracing::info!(endpoint = %endpoint.display(), dropped, "exporting traces again");
                self.failing = false;
                self.dropped_reported = dropped;
            }
            None if dropped > self.dropped_reported && may_warn => {
                tracing::warn!(
                    dropped,
                    "spans dropped: more were recorded than the exporter's queue holds"
                );
                self.warned_at = Some(now);
                self.dropped_reported = dropped;
            }
            None => {}
        }
    }
}

fn client(https: bool) -> anyhow::Result<HttpsClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = if https {
        builder.with_provider_and_native_roots(provider).context(
            "no trusted root certificates for an https OTLP endpoint (install the system's CA \
             certificates, or point SSL_CERT_FILE at a bundle)",
        )?
    } else {
        // Plain http needs no roots; a machine without CA certificates must still work.
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        builder.with_tls_config(config)
    };
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `name=value` pairs separated by commas, values
/// percent-encoded. An error never repeats a value (it may be an API key).
fn parse_headers(text: &str) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    let mut headers = Vec::new();
    for (n, pair) in text
        .split(',')
        .enumerate()
        .filter(|(_, p)| !p.trim().is_empty())
    {
        let refused = || {
            anyhow::anyhow!(
                "OTEL_EXPORTER_OTLP_HEADERS: entry {} is not name=value",
                n + 1
            )
        };
        let (name, value) = pair.split_once('=').ok_or_else(refused)?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| refused())?;
        let value = percent_decode(value.trim()).ok_or_else(refused)?;
        let value = HeaderValue::from_str(&value).map_err(|_| refused())?;
        headers.push((name, value));
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The OTLP JSON encoding of an `ExportTraceServiceRequest` holding `spans`.
fn encode(resource: &Json, spans: &[Span]) -> Vec<u8> {
    let spans: Vec<Json> = spans.iter().map(span).collect();
    let request = json!({ "resourceSpans": [{
        "resource": resource,
        "scopeSpans": [{
            "scope": { "name": "changecast", "version": env!("CARGO_PKG_VERSION") },
            "spans": spans,
        }],
    }]});
    serde_json::to_vec(&request).expect("BUG: a JSON value always serialises")
}

fn span(span: &Span) -> Json {
    let trace_id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let mut json = json!({
        "traceId": trace_id,
        "spanId": format!("{:016x}", span.span_id),
        "name": span.name,
        "kind": span.kind,
        // 64-bit integers are strings in the protobuf JSON mapping.
        "startTimeUnixNano": span.start_unix_nanos.to_string(),
        "endTimeUnixNano": span.end_unix_nanos.to_string(),
        "attributes": span.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
    });
    if let Some(parent) = span.parent {
        json["parentSpanId"] = json!(format!("{parent:016x}"));
    }
    if let Some(message) = span.error {
        json["status"] = json!({ "code": 2, "message": message });
    }
    json
}

fn attribute(key: &str, value: &Value) -> Json {
    let value = match value {
        Value::Str(text) => json!({ "stringValue": text }),
        Value::Int(n) => json!({ "intValue": n.to_string() }),
        Value::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: Option<&str>, traces: Option<&str>, protocol: Option<&str>) -> TraceArgs {
        TraceArgs {
            otlp_endpoint: endpoint.map(Into::into),
            otlp_traces_endpoint: traces.map(Into::into),
            otlp_headers: None,
            otlp_protocol: protocol.map(Into::into),
            service_name: "changecast".into(),
            trace_sample: 1.0,
        }
    }

    fn url(args: &TraceArgs) -> Option<String> {
        Endpoint::from_config(args)
            .unwrap()
            .map(|e| e.0.to_string())
    }

    #[test]
    fn endpoints_follow_the_opentelemetry_rules() {
        assert_eq!(url(&args(None, None, None)), None);
        assert_eq!(url(&args(Some(" "), None, None)), None);
        assert_eq!(
            url(&args(Some("http://collector:4318/"), None, None)).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            url(&args(
                Some("http://a:4318"),
                Some("https://b/otlp/traces"),
                None
            ))
            .as_deref(),
            Some("https://b/otlp/traces")
        );
        assert!(Endpoint::from_config(&args(Some("collector:4318"), None, None)).is_err());
        assert!(Endpoint::from_config(&args(Some("http://c:4317"), None, Some("grpc"))).is_err());
        assert!(
            Endpoint::from_config(&args(Some("http://c"), None, Some("http/protobuf"))).is_ok()
        );
    }

    #[test]
    fn headers_are_decoded_and_errors_hide_values() {
        let headers = parse_headers("api-key=s3cr%3Dt, x-team = a b").unwrap();
        assert_eq!(headers[0].0, "api-key");
        assert_eq!(headers[0].1, "s3cr=t");
        assert_eq!(headers[1].1, "a b");
        let error = parse_headers("api-key=ok,bad header=s3cret").unwrap_err();
        assert!(!format!("{error:#}").contains("s3cret"));
        assert!(parse_headers("novalue").is_err());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let spans = [Span {
            name: "change.deliver",
            trace_id: [0xab; 16],
            span_id: 0x1234,
            parent: Some(0x99),
            kind: 1,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_000_000_500,
            attributes: vec![
                ("changecast.tenant", Value::from("acme")),
                ("changecast.subscribers", Value::from(3usize)),
            ],
            error: None,
        }];
        let json: Json = serde_json::from_slice(&encode(&json!({}), &spans)).unwrap();
        let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "abababababababababababababababab");
        assert_eq!(span["spanId"], "0000000000001234");
        assert_eq!(span["parentSpanId"], "0000000000000099");
        assert_eq!(span["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(span["attributes"][0]["value"]["stringValue"], "acme");
        assert_eq!(span["attributes"][1]["value"]["intValue"], "3");
        assert!(span.get("status").is_none());
    }
}
