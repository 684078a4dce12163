//! The `changecast` binary's command line: tokens, help, clear failures.

use std::process::Command;

use changecast::auth::Authenticator;

fn changecast(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_changecast"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("CHANGECAST_JWT_SECRET");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running changecast")
}

#[test]
fn token_mints_a_token_the_service_accepts() {
    let out = changecast(
        &["token", "--tenant", "acme", "--ttl", "5m"],
        &[("CHANGECAST_JWT_SECRET", "s3cret")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let identity = Authenticator::new(b"s3cret").verify(token.trim()).unwrap();
    assert_eq!(identity.tenant.as_str(), "acme");
    let ttl = identity
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(ttl.as_secs() <= 300 && ttl.as_secs() > 280, "{ttl:?}");
}

#[test]
fn token_without_secret_or_tenant_fails_clearly() {
    let out = changecast(&["token", "--tenant", "acme"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwt-secret"));
    let out = changecast(&["token", "--tenant", "", "--jwt-secret", "x"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant"));
    let out = changecast(
        &["token", "--tenant", "acme", "--ttl", "soon"],
        &[("CHANGECAST_JWT_SECRET", "x")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}

#[test]
fn help_documents_every_option_and_never_prints_secrets() {
    let secrets = [
        ("DATABASE_URL", "postgres://user:hunter2@db/x"),
        ("CHANGECAST_JWT_SECRET", "topsecret"),
    ];
    let out = changecast(&["serve", "--help"], &secrets);
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "DATABASE_URL",
        "CHANGECAST_LISTEN",
        "CHANGECAST_JWT_SECRET",
        "CHANGECAST_RETENTION",
        "CHANGECAST_CORS_ORIGINS",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
    assert!(
        !help.contains("hunter2") && !help.contains("topsecret"),
        "--help leaks a secret:\n{help}"
    );
}

#[test]
fn serve_with_an_unreachable_database_exits_with_a_message() {
    let out = changecast(
        &["serve", "--listen", "127.0.0.1:0"],
        &[(
            "DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none?connect_timeout=2",
        )],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("changecast:") && stderr.contains("PostgreSQL"),
        "{stderr}"
    );
}
