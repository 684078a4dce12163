//! Command line and environment: every option of `serve` also reads a variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::{ClaimPath, KeySource, TokenRules};
use crate::secret::Secret;

#[derive(Parser, Debug)]
#[command(
    name = "changecast",
    version,
    about = "Streams PostgreSQL row changes to browsers and backends over SSE and WebSocket, per tenant, losing none.",
    long_about = None
)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log collectors. Levels via RUST_LOG.
    #[arg(long, env = "CHANGECAST_LOG_FORMAT", default_value = "text", global = true, value_parser = ["text", "json"])]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the `serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
/// What an instance does while the standby it reads lags past CHANGECAST_READ_MAX_LAG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadFallback {
    /// Read the journal on the primary until the standby catches up.
    Primary,
    /// Wait for the standby, reporting the instance not ready meanwhile.
    Wait,
}

// Parsed once at start and matched once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply the migrations, follow the journal and serve subscribers.
    Serve(ServeConfig),
    /// Apply the migrations (schema `changecast`, example tables) and exit.
    Migrate(DatabaseArgs),
    /// Print a subscriber token for a tenant, signed with the configured secret.
    Token(TokenArgs),
    /// Ask a running `serve` whether it is healthy (exit 0) or not (exit 1): for
    /// container healthchecks, where no curl is installed.
    Healthcheck(HealthcheckArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string (URL or key=value form). The role needs CREATE on
    /// its database (owning it is enough; docs/roles.md); no superuser is required.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,
}

#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    /// PostgreSQL connection string (URL or key=value form). When unset, changecast
    /// starts a PostgreSQL of its own from this machine's server binaries, with its data
    /// in --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// PostgreSQL connection string for the connections that need a session of their
    /// own: LISTEN (which also reads the journal), the doorbell's advisory lock and the
    /// migrations' lock. Default: DATABASE_URL. Set it to a direct connection (or a
    /// session-mode pool) when DATABASE_URL goes through a pooler in transaction mode,
    /// e.g. PgBouncer, which cannot carry LISTEN: such a pooler is detected at start and
    /// refused. The pool's connections may go through it; PgBouncer then needs
    /// `max_prepared_statements` (1.21 or later) and a statement timeout of its own (see
    /// --statement-timeout).
    #[arg(long, env = "CHANGECAST_LISTEN_DATABASE_URL", hide_env_values = true)]
    pub listen_database_url: Option<Secret>,

    /// PostgreSQL connection string of a hot standby (streaming replica) of
    /// DATABASE_URL to read the journal from: live batches, replays and snapshots, so
    /// that instances added for subscribers load the standby, not the primary. LISTEN,
    /// the doorbell, migrations and pruning stay on DATABASE_URL. A multi-host URL
    /// (`postgres://u@standby1,standby2/db`, or `host=a,b` with `target_session_attrs`:
    /// `read-only` for standbys only, `any` to fall back to the primary) tries its hosts
    /// in order (`load_balance_hosts=random` spreads instances over them). At start the
    /// service checks that it reaches the same database cluster (system identifier) and
    /// database; before each batch it waits until the standby has replayed what the
    /// primary had written when the batch began, so nothing announced is missed. Unset:
    /// everything reads DATABASE_URL.
    #[arg(long, env = "CHANGECAST_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<Secret>,

    /// With CHANGECAST_READ_DATABASE_URL: how long a batch may wait for the standby to
    /// replay what the primary had written. Past it, the instance reads the journal on
    /// the primary until the standby catches up (CHANGECAST_READ_FALLBACK=primary), or
    /// keeps waiting and `/readyz` answers 503 (`wait`). Nothing is lost either way. See
    /// also the `changecast_standby_lag_bytes` and `changecast_standby_fallback` series.
    #[arg(long, env = "CHANGECAST_READ_MAX_LAG", default_value = "10s", value_parser = parse_positive_duration)]
    pub read_max_lag: Duration,

    /// With CHANGECAST_READ_DATABASE_URL: what an instance does while its standby lags
    /// more than CHANGECAST_READ_MAX_LAG. `primary`: live batches, replays and snapshots
    /// read the primary until the standby has caught up (delivery goes on; the primary
    /// carries this instance's reads meanwhile). `wait`: delivery waits for the standby
    /// and `/readyz` answers 503, so a load balancer moves subscribers elsewhere.
    #[arg(long, env = "CHANGECAST_READ_FALLBACK", value_enum, default_value_t = ReadFallback::Primary)]
    pub read_fallback: ReadFallback,

    /// Data folder of the embedded PostgreSQL (used only without DATABASE_URL); created
    /// and initialised on first run, kept between runs. The server binaries are found via
    /// CHANGECAST_PG_BINDIR, `pg_config --bindir`, PATH or /usr/lib/postgresql/*/bin.
    #[arg(
        long,
        env = "CHANGECAST_DATA_DIR",
        default_value = ".changecast/pgdata"
    )]
    pub data_dir: PathBuf,

    /// Address to serve HTTP on.
    #[arg(long, env = "CHANGECAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve `/metrics` (with `/healthz` and `/readyz`) on this address instead of on
    /// `--listen`, e.g. a private interface only the monitoring system reaches. Unset,
    /// `/metrics` is served on `--listen` without authentication.
    #[arg(long, env = "CHANGECAST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// HS256 secret that subscriber tokens are signed with, at least 32 bytes (e.g.
    /// `openssl rand -hex 32`); a shorter or empty one is refused. When unset, a random
    /// one is made at start (tokens then only work until the next restart) and a ready-
    /// to-open dashboard URL with a demo token is printed.
    #[arg(long, env = "CHANGECAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    #[command(flatten)]
    pub token_rules: TokenRuleArgs,

    #[command(flatten)]
    pub identity_provider: IdentityProviderArgs,

    /// Access policy: a JSON file of ordered rules deriving a token's scope (the
    /// `changecast` claim's shape: types, topics, filter, omit, stats) from its other
    /// claims, for tokens the application does not mint, e.g. role `customer` →
    /// `{"filter": {"ticket": ["requester=eq.{sub}"]}}`. The first rule whose `when`
    /// holds applies; a token no rule matches is refused. `serve` does not start with a
    /// policy it cannot read or check. See docs/authorization.md.
    #[arg(long, env = "CHANGECAST_POLICY")]
    pub policy: Option<PathBuf>,

    /// How long journal rows are kept (and so how long a disconnected subscriber can
    /// resume), e.g. `24h`, `90m`, `3600s`, `7d`, counted from the commit of the row's
    /// transaction. A row is gone by the retention plus 1/8 of it (or plus 250 ms, if
    /// more; see --prune-interval), later only while a transaction that started before
    /// the row's own is still open somewhere in the PostgreSQL cluster.
    #[arg(long, env = "CHANGECAST_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,

    /// How often this instance tries to prune (one instance at a time does), at most:
    /// it prunes at least 20 times per retention period (but never more often than every
    /// 100 ms), so a short retention is honoured promptly. A row may outlive the
    /// retention by up to two intervals.
    #[arg(long, env = "CHANGECAST_PRUNE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub prune_interval: Duration,

    /// Comma-separated origins whose browser pages may subscribe cross-origin, e.g.
    /// `https://app.example.com`. None by default.
    #[arg(long, env = "CHANGECAST_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Interval of SSE keepalive comments and WebSocket heartbeats.
    #[arg(long, env = "CHANGECAST_KEEPALIVE", default_value = "15s", value_parser = parse_positive_duration)]
    pub keepalive: Duration,

    /// Changes one subscriber may fall behind its tenant's newest before it is moved
    /// from live fan-out to a journal catch-up.
    #[arg(long, env = "CHANGECAST_SUBSCRIBER_BUFFER", default_value_t = 1024, value_parser = parse_positive_count)]
    pub subscriber_buffer: usize,

    /// Most subscribers (SSE streams and WebSocket subscriptions) served at once; beyond,
    /// new ones get 503 `server_full`.
    #[arg(long, env = "CHANGECAST_MAX_SUBSCRIBERS", default_value_t = 10_000)]
    pub max_subscribers: usize,

    /// Most subscribers one tenant may have at once; beyond, new ones get 429
    /// `too_many_subscribers`.
    #[arg(
        long,
        env = "CHANGECAST_MAX_SUBSCRIBERS_PER_TENANT",
        default_value_t = 1000
    )]
    pub max_subscribers_per_tenant: usize,

    /// Connections in the pool for replays, snapshots and pruning.
    #[arg(long, env = "CHANGECAST_POOL_SIZE", default_value_t = 16, value_parser = parse_positive_count)]
    pub pool_size: usize,

    /// Most TCP connections open at once (subscribers, requests and half-open ones
    /// alike); beyond, a new connection gets 503 `too_many_connections` and is closed.
    /// Keep it below the process's open-file limit.
    #[arg(long, env = "CHANGECAST_MAX_CONNECTIONS", default_value_t = 16_384, value_parser = parse_positive_count)]
    pub max_connections: usize,

    /// How long a client may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open); a slower one is disconnected.
    #[arg(long, env = "CHANGECAST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,

    /// How long a client may take none of a response's bytes while some wait to be sent
    /// (streams and WebSockets included); then its connection is closed, and a
    /// subscriber resumes with its cursor.
    #[arg(long, env = "CHANGECAST_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub write_timeout: Duration,

    /// Journal replays (resuming subscribers, lag recovery) running at once; more wait
    /// their turn, live delivery does not.
    #[arg(long, env = "CHANGECAST_MAX_REPLAYS", default_value_t = 8, value_parser = parse_positive_count)]
    pub max_replays: usize,

    /// Journal replays one tenant may run at once; its other subscribers wait their turn.
    #[arg(long, env = "CHANGECAST_MAX_REPLAYS_PER_TENANT", default_value_t = 2, value_parser = parse_positive_count)]
    pub max_replays_per_tenant: usize,

    /// Most snapshots in progress at once (each holds a pool connection until its client
    /// has read the answer); beyond, a new one waits up to 2 s for a place, then gets 503
    /// `snapshots_full` with `Retry-After`.
    /// Default: a quarter of --pool-size (at least 1), leaving the rest of the pool to
    /// journal reads.
    #[arg(long, env = "CHANGECAST_MAX_SNAPSHOTS", value_parser = parse_positive_count)]
    pub max_snapshots: Option<usize>,

    /// Most snapshots one tenant may have in progress at once; beyond, a new one waits up
    /// to 2 s for a place, then gets 429 `too_many_snapshots` with `Retry-After`. Default: half of --max-snapshots (at
    /// least 1).
    #[arg(long, env = "CHANGECAST_MAX_TENANT_SNAPSHOTS", value_parser = parse_positive_count)]
    pub max_tenant_snapshots: Option<usize>,

    /// Longest a snapshot's answer may take to be read and written, however slowly its
    /// client reads (it holds a pool connection and a database transaction meanwhile);
    /// beyond, the answer is cut short and the client retries.
    #[arg(long, env = "CHANGECAST_SNAPSHOT_TIMEOUT", default_value = "5m", value_parser = parse_positive_duration)]
    pub snapshot_timeout: Duration,

    /// Longest a replay or snapshot query may run before PostgreSQL cancels it
    /// (`statement_timeout` of the pool's connections, set at connection start). Through
    /// a pooler that refuses or drops that startup option (PgBouncer), the pooler's server
    /// connections must have a timeout of their own (its `connect_query`, or `ALTER ROLE
    /// … SET statement_timeout`); with none the service refuses to start.
    #[arg(long, env = "CHANGECAST_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub statement_timeout: Duration,

    /// Demo mode: write plausible activity (tickets moving across states, agents
    /// heartbeating, profiles edited, application events) for tenant `demo` into the
    /// example tables, and print a dashboard URL for it. For trying changecast out, never
    /// for a database with real data.
    #[arg(long, env = "CHANGECAST_DEMO")]
    pub demo: bool,

    #[command(flatten)]
    pub traces: TraceArgs,
}

/// OpenTelemetry traces, sent over OTLP/HTTP as JSON; off unless an endpoint is set.
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// Base URL of an OpenTelemetry Collector's (or Jaeger's, Tempo's) OTLP/HTTP
    /// receiver, e.g. `http://localhost:4318`: traces of changes, snapshots and replays
    /// are posted to `<it>/v1/traces` as OTLP JSON. Unset, nothing is traced or sent.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", hide_env_values = true)]
    pub otlp_endpoint: Option<String>,

    /// The full URL traces are posted to, as is; wins over OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        hide_env_values = true
    )]
    pub otlp_traces_endpoint: Option<String>,

    /// Headers sent with every export, `name=value,name2=value2` (values
    /// percent-encoded), e.g. a hosted collector's API key.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true)]
    pub otlp_headers: Option<Secret>,

    /// `http/json` (what is sent) or `http/protobuf` (a collector's OTLP/HTTP receiver
    /// takes JSON as well); `grpc` is refused.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// The traces' `service.name`.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "changecast")]
    pub service_name: String,

    /// Fraction of changes traced from journal read to socket write, 0 to 1. Chosen by
    /// the change's journal id, so every instance samples the same ones. Snapshots and
    /// replays are always traced.
    #[arg(long, env = "CHANGECAST_TRACE_SAMPLE", default_value = "0.01", value_parser = parse_ratio)]
    pub trace_sample: f64,
}

/// Optional claims every token must carry.
#[derive(Args, Debug, Clone)]
pub struct TokenRuleArgs {
    /// When set, tokens must carry this `aud` claim (minted ones do).
    #[arg(long, env = "CHANGECAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// When set, tokens must carry this `iss` claim (minted ones do).
    #[arg(long, env = "CHANGECAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Where in a token's claims its tenant id is: a claim name, or a dotted path into
    /// nested claims, e.g. `org.id` or `app_metadata.tenant_id` (a claim whose own name
    /// has dots, like `https://example.com/tenant_id`, is found as well). The value must
    /// be a non-empty string. Minted tokens put the tenant there too.
    #[arg(long, env = "CHANGECAST_TENANT_CLAIM", default_value = "tenant_id")]
    pub tenant_claim: ClaimPath,

    /// Where in a token's claims its scope is (what its holder may see beneath its
    /// tenant: `types`, `topics`, per-type `filter` and `omit`, `stats`; API.md §3c): a
    /// claim name or a dotted path, like --tenant-claim. A token without it sees its
    /// whole tenant; one whose scope is malformed is refused (401).
    #[arg(long, env = "CHANGECAST_SCOPE_CLAIM", default_value = "changecast")]
    pub scope_claim: ClaimPath,
}

/// As the flags' defaults are: each claim path where `TokenRules` has it by default.
impl Default for TokenRuleArgs {
    fn default() -> Self {
        let rules = TokenRules::default();
        TokenRuleArgs {
            jwt_audience: rules.audience,
            jwt_issuer: rules.issuer,
            tenant_claim: rules.tenant_claim,
            scope_claim: rules.scope_claim,
        }
    }
}

impl TokenRuleArgs {
    pub fn rules(&self) -> TokenRules {
        TokenRules {
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            tenant_claim: self.tenant_claim.clone(),
            scope_claim: self.scope_claim.clone(),
            policy: None,
        }
    }
}

/// Tokens signed by an identity provider (RS256, ES256, EdDSA), besides HS256 ones.
#[derive(Args, Debug, Clone, Default)]
pub struct IdentityProviderArgs {
    /// Public key(s) that verify an identity provider's RS256, ES256 or EdDSA tokens:
    /// the path of a PEM file (or the PEM text itself), holding one or more `PUBLIC KEY`
    /// or `CERTIFICATE` blocks (RSA of 2048 bits or more, P-256, Ed25519). With it (or
    /// --jwks-url) and no CHANGECAST_JWT_SECRET, HS256 tokens are refused.
    #[arg(
        long,
        env = "CHANGECAST_JWT_PUBLIC_KEY",
        conflicts_with = "jwks_url",
        hide_env_values = true
    )]
    pub jwt_public_key: Option<String>,

    /// The identity provider's JWKS document (e.g.
    /// `https://TENANT.auth0.com/.well-known/jwks.json`): fetched at start (`serve`
    /// fails if it cannot get it within 15 s), and again when a token names a `kid` it
    /// lacks, at most every 30 s, each fetch within 5 s and 256 KiB; a failed fetch
    /// keeps the last good keys. Must be https, except to 127.0.0.1, ::1 or localhost.
    #[arg(long, env = "CHANGECAST_JWKS_URL")]
    pub jwks_url: Option<String>,
}

impl IdentityProviderArgs {
    /// The configured source of public keys, if any.
    pub fn key_source(&self) -> Option<KeySource> {
        // An empty variable (as compose files leave them) means unset.
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        match (set(&self.jwt_public_key), set(&self.jwks_url)) {
            (Some(pem), _) => Some(KeySource::Pem(pem)),
            (None, Some(url)) => Some(KeySource::Jwks(url)),
            (None, None) => None,
        }
    }
}

impl ServeConfig {
    /// Snapshots allowed in progress: (overall, per tenant), with the defaults --help
    /// describes.
    pub fn snapshot_limits(&self) -> (usize, usize) {
        let overall = self.max_snapshots.unwrap_or((self.pool_size / 4).max(1));
        let per_tenant = self.max_tenant_snapshots.unwrap_or((overall / 2).max(1));
        (overall, per_tenant)
    }

    /// Defaults for everything but the database: what tests and embedders start from.
    pub fn new(database_url: impl Into<String>) -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let database_url = database_url.into();
        let mut config = Defaults::try_parse_from(["serve", "--database-url", &database_url])
            .expect("BUG: defaults of ServeConfig do not parse")
            .serve;
        config.database_url = Some(Secret::new(database_url));
        config
    }
}

#[derive(Args, Debug)]
pub struct HealthcheckArgs {
    /// The URL to GET (plain http); 200 means healthy. Default: `/healthz` on the
    /// address `serve` listens on (CHANGECAST_LISTEN; 0.0.0.0 becomes 127.0.0.1).
    #[arg(long)]
    pub url: Option<String>,

    /// The address `serve` listens on.
    #[arg(long, env = "CHANGECAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The tenant whose changes the token may subscribe to.
    #[arg(long)]
    pub tenant: String,

    /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// The secret `serve` verifies tokens with (at least 32 bytes).
    #[arg(long, env = "CHANGECAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Secret,

    #[command(flatten)]
    pub token_rules: TokenRuleArgs,

    #[command(flatten)]
    pub scope: TokenScopeArgs,
}

/// What a minted token's holder may see beneath its tenant (API.md §3c): either the
/// whole scope as JSON, or its parts as flags.
#[derive(Args, Debug, Default)]
pub struct TokenScopeArgs {
    /// The token's scope as JSON (API.md §3c), e.g.
    /// `{"types":["ticket"],"filter":{"ticket":["assignee=eq.dara"]}}`, put in the claim
    /// named by --scope-claim. Without it or the flags below, the token sees its whole
    /// tenant.
    #[arg(long, conflicts_with_all = ["types", "topics", "filter", "omit", "no_stats"])]
    pub scope: Option<String>,

    /// Scope: only these resource types (comma-separated). Naming types but no topics
    /// allows no application events, as in a request.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,

    /// Scope: only these topics (comma-separated; a prefix ends in `*`).
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,

    /// Scope: a row filter for one resource type, `<type>:<column>=<op>.<value>`, e.g.
    /// `ticket:assignee=eq.dara`; repeatable (all must hold).
    #[arg(long)]
    pub filter: Vec<String>,

    /// Scope: columns of one resource type left out of every event and snapshot,
    /// `<type>:<column>[,<column>...]`, e.g. `ticket:body`; repeatable.
    #[arg(long)]
    pub omit: Vec<String>,

    /// Scope: refuse the holder `/v1/stats` and WebSocket `get_stats`.
    #[arg(long)]
    pub no_stats: bool,
}

impl TokenScopeArgs {
    /// The scope claim these arguments ask for (`None`: the whole tenant), checked.
    pub fn claim(&self) -> Result<Option<serde_json::Value>, String> {
        use serde_json::{Map, Value};
        let scope = match &self.scope {
            Some(text) => serde_json::from_str::<Value>(text)
                .map_err(|error| format!("--scope is not JSON: {error}"))?,
            None => {
                let mut scope = Map::new();
                if !self.types.is_empty() {
                    scope.insert("types".into(), self.types.clone().into());
                }
                if !self.topics.is_empty() {
                    scope.insert("topics".into(), self.topics.clone().into());
                }
                for (flag, field, example, entries) in [
                    ("--filter", "filter", "ticket:state=eq.open", &self.filter),
                    ("--omit", "omit", "ticket:internal_note", &self.omit),
                ] {
                    let mut by_type = Map::new();
                    for entry in entries {
                        let (resource_type, rest) = entry
                            .split_once(':')
                            .filter(|(t, rest)| !t.is_empty() && !rest.is_empty())
                            .ok_or_else(|| {
                                format!(
                                    "{flag} {entry:?}: expected <type>:<{field}>, e.g. {example}"
                                )
                            })?;
                        let list = by_type
                            .entry(resource_type)
                            .or_insert_with(|| Value::Array(Vec::new()))
                            .as_array_mut()
                            .expect("BUG: made as an array");
                        if field == "omit" {
                            list.extend(rest.split(',').map(|c| Value::from(c.trim())));
                        } else {
                            list.push(rest.into());
                        }
                    }
                    if !by_type.is_empty() {
                        scope.insert(field.into(), Value::Object(by_type));
                    }
                }
                if self.no_stats {
                    scope.insert("stats".into(), false.into());
                }
                if scope.is_empty() {
                    return Ok(None);
                }
                Value::Object(scope)
            }
        };
        crate::auth::policy::check_scope(&scope)
            .map_err(|why| format!("not a valid scope: {why}"))?;
        Ok(Some(scope))
    }
}

/// `90s`, `15m`, `24h`, `7d`, `250ms`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 24h or 7d"))?;
    let seconds = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(number)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be more than zero".into()),
        duration => Ok(duration),
    }
}

fn parse_positive_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{text:?} is not a fraction from 0 to 1, like 0.01")),
    }
}

fn parse_origin(text: &str) -> Result<String, String> {
    let origin = text.trim().trim_end_matches('/');
    let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
        && !origin
            .split_once("://")
            .is_some_and(|(_, host)| host.is_empty() || host.contains('/'))
        && warp::http::HeaderValue::from_str(origin).is_ok();
    if valid {
        Ok(origin.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an origin like https://app.example.com"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn zero_buffers_and_intervals_are_refused() {
        assert!(parse_positive_count("0").is_err());
        assert_eq!(parse_positive_count("8"), Ok(8));
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn sample_ratios() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
    }

    #[test]
    fn origins() {
        assert_eq!(
            parse_origin("https://app.example.com/"),
            Ok("https://app.example.com".into())
        );
        assert!(parse_origin("app.example.com").is_err());
        assert!(parse_origin("https://a.com/path").is_err());
    }

    #[test]
    fn defaults_parse() {
        let config = ServeConfig::new("postgres://localhost/db");
        assert_eq!(config.retention, Duration::from_secs(86_400));
        assert!(config.cors_origins.is_empty());
        assert_eq!(
            config.database_url.as_ref().map(Secret::expose),
            Some("postgres://localhost/db")
        );
        assert!(!format!("{config:?}").contains("localhost/db"));
        assert_eq!(config.data_dir, PathBuf::from(".changecast/pgdata"));
    }
}
