//! The `changecast` binary: parse the command line, set up logging, run a command.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

use changecast::auth::{check_secret, random_secret, Authenticator};
use changecast::config::{Cli, Command, HealthcheckArgs, ServeConfig, TokenArgs};
use changecast::db::embedded::{self, Embedded};
use changecast::db::keeper;
use changecast::secret::Secret;
use changecast::tenant::TenantId;
use changecast::App;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Lifetime of the demo token printed when the secret was generated.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(3600);
const DEMO_TENANT: &str = "demo";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    changecast::telemetry::init(&cli.log_format);
    let result = match cli.command {
        Command::Serve(config) => serve(config).await,
        Command::Migrate(args) => changecast::db::migrate(args.database_url.expose())
            .await
            .map(|applied| println!("migrations applied: {applied}")),
        Command::Token(args) => token(args),
        Command::Healthcheck(args) => healthcheck(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("changecast: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: ServeConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    // Handlers first, so a signal during startup is not the default (abrupt) exit.
    let signals = (
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
    );
    tokio::spawn(signal_shutdown(signals, shutdown.clone()));
    // A socket per subscriber: do not stop at a default soft limit of 1,024.
    let open_files = changecast::open_files::raise_to_hard_limit();
    tracing::info!(open_files, "open-file limit");
    // Before anything starts: a weak secret must not even bring up the database.
    if let Some(secret) = &config.jwt_secret {
        check_secret(secret)?;
    }
    let mut embedded = match &config.database_url {
        Some(_) => None,
        None => {
            let options = embedded::Options::new(&config.data_dir);
            let database = start_embedded(&options).await?;
            println!(
                "embedded PostgreSQL: {} (data in {}, password in {})",
                database.redacted_url(),
                config.data_dir.display(),
                database.password_file().display()
            );
            config.database_url = Some(Secret::new(database.url()));
            Some((database, options))
        }
    };
    let mut keeper = None;
    let result = serve_on(config, shutdown.clone(), |app| {
        // The service owns its database: restart it when it dies, or stop serving.
        if let Some((database, options)) = embedded.take() {
            let restarts = app.services().metrics.embedded_restarts.clone();
            keeper = Some(tokio::spawn(keeper::keep_running(
                database,
                options,
                move || restarts.inc(),
                shutdown.clone(),
            )));
        }
    })
    .await;
    // The service has let go of its connections: now the database may stop.
    shutdown.cancel();
    let database = match keeper {
        Some(keeper) => keeper.await.context("watching the embedded PostgreSQL")??,
        // Never handed to a keeper: the service did not get as far as serving.
        None => embedded.map(|(database, _)| database),
    };
    if let Some(database) = database {
        let stopped = tokio::task::spawn_blocking(move || database.stop()).await;
        stopped.context("stopping the embedded PostgreSQL")?;
    }
    result
}

/// Starts PostgreSQL from the machine's binaries with its data in `--data-dir`.
async fn start_embedded(options: &embedded::Options) -> anyhow::Result<Embedded> {
    let options = options.clone();
    // Blocking (initdb, readiness): off the runtime's worker threads. The server process
    // itself is spawned by a thread that lives as long as ours (see `spawn_owned`).
    let database = tokio::task::spawn_blocking(move || Embedded::start(&options))
        .await
        .context("starting the embedded PostgreSQL")??;
    Ok(database)
}

/// Builds the service, lets `started` see it, serves until shutdown.
async fn serve_on(
    config: ServeConfig,
    shutdown: CancellationToken,
    started: impl FnOnce(&App),
) -> anyhow::Result<()> {
    // With an identity provider's keys and no secret, HS256 is off: no demo token.
    let generated = config.jwt_secret.is_none() && config.identity_provider.key_source().is_none();
    let secret = config.jwt_secret.clone().unwrap_or_else(random_secret);
    let rules = config.token_rules.rules();
    let demo = match (config.demo, &config.database_url) {
        (true, Some(url)) => Some(changecast::db::pg_config(url.expose(), "changecast:demo")?),
        _ => None,
    };
    let app = App::build(config, &secret, shutdown.clone()).await?;
    started(&app);
    let addr = app.local_addr();
    println!("changecast listening on http://{addr}");
    // A token is printed only when it is signed with this run's own secret: one signed
    // with a configured secret would be a credential in the output and its logs.
    if generated {
        let token = Authenticator::new(&secret, rules)
            .expect("BUG: a generated secret is long enough")
            .mint(
                &TenantId::new(DEMO_TENANT).expect("BUG: demo tenant id"),
                DEMO_TOKEN_TTL,
            );
        println!("no CHANGECAST_JWT_SECRET set: generated one for this run.");
        println!("demo tenant '{DEMO_TENANT}', token valid for 1h:");
        println!("  curl -N 'http://{addr}/v1/events?access_token={token}'");
        println!("  dashboard: http://{addr}/?access_token={token}");
    } else if demo.is_some() {
        println!("demo tenant '{DEMO_TENANT}': mint a token with the configured secret and open");
        println!("  changecast token --tenant {DEMO_TENANT}");
        println!("  dashboard: http://{addr}/?access_token=<token>");
    }
    let writer = demo.map(|pg| {
        println!("demo mode: writing activity for tenant '{DEMO_TENANT}'");
        tokio::spawn(changecast::demo::run(
            pg,
            DEMO_TENANT.to_owned(),
            changecast::demo::STEP,
            shutdown.clone(),
        ))
    });
    let served = app.run().await.context("serving");
    if let Some(writer) = writer {
        // It watches the same shutdown token; bounded all the same.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
    served
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let tenant = TenantId::new(&args.tenant)
        .map_err(|_| anyhow::anyhow!("--tenant must be a non-empty tenant id"))?;
    let scope = args.scope.claim().map_err(anyhow::Error::msg)?;
    let (scope_path, tenant_path) = (
        args.token_rules.scope_claim.as_str(),
        args.token_rules.tenant_claim.as_str(),
    );
    let nested = |outer: &str, inner: &str| inner.starts_with(&format!("{outer}."));
    if scope.is_some()
        && (scope_path == tenant_path
            || nested(scope_path, tenant_path)
            || nested(tenant_path, scope_path))
    {
        anyhow::bail!("--scope-claim {scope_path:?} and --tenant-claim {tenant_path:?} overlap");
    }
    let authenticator = Authenticator::new(&args.jwt_secret, args.token_rules.rules())?;
    let extra: Vec<_> = scope
        .map(|scope| (args.token_rules.scope_claim.clone(), scope))
        .into_iter()
        .collect();
    println!(
        "{}",
        authenticator.mint_with_claims(&tenant, args.ttl, &extra)
    );
    Ok(())
}

async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let url = args.url.unwrap_or_else(|| {
        let mut addr = args.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}/healthz")
    });
    changecast::healthcheck::check(&url).await
}

/// Cancels `shutdown` on SIGTERM or SIGINT (Ctrl-C); a second signal exits at once
/// (the embedded database then stops through its parent-death signal).
async fn signal_shutdown(
    (mut terminate, mut interrupt): (Signal, Signal),
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::warn!("second signal: exiting without waiting");
    std::process::exit(1);
}
