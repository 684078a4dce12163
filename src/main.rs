//! The `changecast` binary: parse the command line, set up logging, run a command.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

use changecast::auth::{random_secret, Authenticator, TenantId};
use changecast::config::{Cli, Command, ServeConfig, TokenArgs};
use changecast::App;

/// Lifetime of the demo token printed when the secret was generated.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(3600);
const DEMO_TENANT: &str = "demo";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    changecast::telemetry::init(&cli.log_format);
    let result = match cli.command {
        Command::Serve(config) => serve(config).await,
        Command::Migrate(args) => changecast::db::migrate(&args.database_url)
            .await
            .map(|applied| println!("migrations applied: {applied}")),
        Command::Token(args) => token(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("changecast: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let generated = config.jwt_secret.is_none();
    let secret = config.jwt_secret.clone().unwrap_or_else(random_secret);
    let shutdown = CancellationToken::new();
    let app = App::build(config, &secret, shutdown.clone()).await?;
    let addr = app.local_addr();
    println!("changecast listening on http://{addr}");
    if generated {
        let token = Authenticator::new(secret.as_bytes()).mint(
            &TenantId::new(DEMO_TENANT).expect("BUG: demo tenant id"),
            DEMO_TOKEN_TTL,
        );
        println!("no CHANGECAST_JWT_SECRET set: generated one for this run.");
        println!("demo tenant '{DEMO_TENANT}', token valid for 1h:");
        println!("  curl -N 'http://{addr}/v1/events?access_token={token}'");
        println!("  dashboard: http://{addr}/?access_token={token}");
    }
    tokio::spawn(signal_shutdown(shutdown));
    app.run().await.context("serving")
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let tenant = TenantId::new(&args.tenant)
        .map_err(|_| anyhow::anyhow!("--tenant must be a non-empty tenant id"))?;
    anyhow::ensure!(!args.jwt_secret.is_empty(), "the JWT secret is empty");
    println!(
        "{}",
        Authenticator::new(args.jwt_secret.as_bytes()).mint(&tenant, args.ttl)
    );
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn signal_shutdown(shutdown: CancellationToken) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
    }
    shutdown.cancel();
}
