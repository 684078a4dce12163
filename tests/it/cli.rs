//! The `changecast` binary's command line: tokens, help, clear failures.

use std::process::Command;

use crate::helpers::{authenticator, SECRET};

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
        &[("CHANGECAST_JWT_SECRET", SECRET)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let identity = authenticator().verify(token.trim()).unwrap();
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
    let out = changecast(&["token", "--tenant", "", "--jwt-secret", SECRET], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant"));
    let out = changecast(
        &["token", "--tenant", "acme", "--ttl", "soon"],
        &[("CHANGECAST_JWT_SECRET", SECRET)],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}

/// An empty or short signing secret would let anyone mint tokens.
#[test]
fn serve_and_token_refuse_an_empty_or_short_secret_without_printing_it() {
    for secret in ["", "short-but-not-empty-31-bytes-xx"] {
        // The database is unreachable on purpose: the refusal must come first, not after
        // a connection attempt (and not as a connection error).
        let out = changecast(
            &["serve", "--listen", "127.0.0.1:0"],
            &[
                ("CHANGECAST_JWT_SECRET", secret),
                (
                    "DATABASE_URL",
                    "postgres://nobody@127.0.0.1:1/none?connect_timeout=2",
                ),
            ],
        );
        assert!(
            !out.status.success(),
            "serve accepted a {}-byte secret",
            secret.len()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least 32 bytes"), "{stderr}");
        assert!(
            !stderr.contains("PostgreSQL"),
            "it tried the database first: {stderr}"
        );
        assert!(
            secret.is_empty() || !stderr.contains(secret),
            "the secret was printed: {stderr}"
        );

        let out = changecast(
            &["token", "--tenant", "acme"],
            &[("CHANGECAST_JWT_SECRET", secret)],
        );
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32 bytes"));
        assert!(
            out.stdout.is_empty(),
            "a token was minted with a weak secret"
        );
    }
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
        "CHANGECAST_JWT_AUDIENCE",
        "CHANGECAST_JWT_ISSUER",
        "CHANGECAST_MAX_CONNECTIONS",
        "CHANGECAST_HEADER_TIMEOUT",
        "CHANGECAST_MAX_REPLAYS",
        "CHANGECAST_STATEMENT_TIMEOUT",
        "CHANGECAST_POLICY",
        "CHANGECAST_SCOPE_CLAIM",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
    assert!(
        !help.contains("hunter2") && !help.contains("topsecret"),
        "--help leaks a secret:\n{help}"
    );
}

#[test]
fn help_explains_when_rows_past_retention_are_pruned() {
    let out = changecast(&["serve", "--help"], &[]);
    let help = String::from_utf8(out.stdout).unwrap();
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for phrase in [
        "counted from the commit of the row's transaction",
        "A row is gone by the retention plus 1/8 of it",
        "at least 20 times per retention period",
        "A row may outlive the retention by up to two intervals",
    ] {
        assert!(help.contains(phrase), "--help does not say {phrase:?}");
    }
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

/// The claims of a token, read without checking its signature.
fn payload(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.trim().split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn mint(args: &[&str], env: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    let mut all = vec!["token", "--tenant", "acme"];
    all.extend_from_slice(args);
    let mut env = env.to_vec();
    env.push(("CHANGECAST_JWT_SECRET", SECRET));
    let out = changecast(&all, &env);
    if out.status.success() {
        let token = String::from_utf8(out.stdout).unwrap();
        // Still a token the service accepts, for the same tenant.
        assert_eq!(
            authenticator()
                .verify(token.trim())
                .unwrap()
                .tenant
                .as_str(),
            "acme"
        );
        Ok(payload(&token))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn token_mints_scoped_tokens() {
    let scope = serde_json::json!({
        "types": ["ticket"], "topics": ["user.42.*"],
        "filter": {"ticket": ["assignee=eq.dara", "state=in.(open,pending)"]},
        "omit": {"ticket": ["body"]}, "stats": false
    });
    let claims = mint(&["--scope", &scope.to_string()], &[]).unwrap();
    assert_eq!(claims["changecast"], scope);
    assert_eq!(claims["tenant_id"], "acme");

    // The same scope from flags.
    let flags = mint(
        &[
            "--types",
            "ticket",
            "--topics",
            "user.42.*",
            "--filter",
            "ticket:assignee=eq.dara",
            "--filter",
            "ticket:state=in.(open,pending)",
            "--omit",
            "ticket:body",
            "--no-stats",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(flags["changecast"], scope);

    // Where CHANGECAST_SCOPE_CLAIM says, nested as a dotted path.
    let nested = mint(
        &["--types", "ticket,agent"],
        &[("CHANGECAST_SCOPE_CLAIM", "app.scope")],
    )
    .unwrap();
    assert_eq!(
        nested["app"]["scope"],
        serde_json::json!({"types": ["ticket", "agent"]})
    );
    assert!(nested.get("changecast").is_none());

    // No scope asked for: no claim, the whole tenant.
    let plain = mint(&[], &[]).unwrap();
    assert!(plain.get("changecast").is_none(), "{plain}");
}

#[test]
fn token_refuses_a_bad_scope_with_a_message() {
    for (args, says) in [
        (vec!["--scope", "{\"types\": [\"ticket\""], "not JSON"),
        (vec!["--scope", "[\"ticket\"]"], "must be an object"),
        (vec!["--scope", "{\"type\": [\"ticket\"]}"], "unknown field"),
        (vec!["--scope", "{\"stats\": \"no\"}"], "scope.stats"),
        (
            vec![
                "--scope",
                "{\"filter\": {\"ticket\": [\"state=like.open\"]}}",
            ],
            "unknown operator",
        ),
        (vec!["--filter", "state=eq.open"], "<type>:"),
        (vec!["--omit", "internal_note"], "e.g. ticket:internal_note"),
        (
            vec!["--filter", "ticket:state=like.open"],
            "unknown operator",
        ),
        (vec!["--topics", "User.*"], "invalid topic"),
        (
            vec!["--scope", "{}", "--types", "ticket"],
            "cannot be used with",
        ),
    ] {
        let refused = mint(&args, &[]).expect_err(&format!("{args:?} was accepted"));
        assert!(refused.contains(says), "{args:?}: {refused}");
    }
    let refused = mint(
        &["--types", "ticket"],
        &[("CHANGECAST_SCOPE_CLAIM", "tenant_id")],
    )
    .unwrap_err();
    assert!(refused.contains("overlap"), "{refused}");
}
