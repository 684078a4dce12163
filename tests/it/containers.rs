//! The container files, checked without a Docker engine: the Dockerfile's stages, user,
//! port and healthcheck; `docker-compose.yml` parsed (the YAML subset it uses) and held
//! against `changecast serve --help`; and the `healthcheck` subcommand the image runs,
//! against a live service.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::helpers::spawn_app;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn changecast(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_changecast"));
    command.args(args).env_remove("CHANGECAST_LISTEN");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("running changecast")
}

/// Dockerfile instructions: (KEYWORD, arguments), continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, args) = current.trim().split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// Splits the instructions at each `FROM`.
fn stages(instructions: &[(String, String)]) -> Vec<&[(String, String)]> {
    let starts: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| &instructions[start..*starts.get(n + 1).unwrap_or(&instructions.len())])
        .collect()
}

#[test]
fn dockerfile_builds_in_rust_and_runs_slim_as_non_root_with_a_healthcheck() {
    let instructions = dockerfile_instructions(&read("Dockerfile"));
    let stages = stages(&instructions);
    assert_eq!(stages.len(), 2, "a builder stage and a final stage");
    let (builder, last) = (stages[0], stages[1]);
    let find = |stage: &[(String, String)], keyword: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.clone())
            .collect()
    };

    assert_eq!(find(builder, "FROM"), ["rust:1-bookworm AS builder"]);
    assert!(
        find(builder, "RUN")
            .iter()
            .any(|run| run.contains("cargo build --release --locked")),
        "the builder builds the locked release"
    );

    assert_eq!(find(last, "FROM"), ["debian:bookworm-slim"]);
    for run in find(last, "RUN") {
        if let Some((_, packages)) = run.split_once("apt-get install") {
            let packages: Vec<&str> = packages
                .split("&&")
                .next()
                .unwrap()
                .split_whitespace()
                .filter(|word| !word.starts_with('-'))
                .collect();
            assert_eq!(packages, ["ca-certificates"], "the final image stays small");
        }
    }
    assert!(find(last, "COPY")
        .iter()
        .any(|copy| copy.starts_with("--from=builder") && copy.contains("changecast")));
    let user = find(last, "USER");
    assert_eq!(user.len(), 1, "one USER in the final stage");
    let uid = user[0].split(':').next().unwrap();
    assert!(
        uid != "root" && uid != "0",
        "the final image runs as a non-root user, not {uid}"
    );
    assert_eq!(find(last, "EXPOSE"), ["8080"]);
    assert!(find(last, "ENV").contains(&"CHANGECAST_LISTEN=0.0.0.0:8080".to_owned()));
    let healthcheck = find(last, "HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1);
    assert!(
        healthcheck[0].contains(r#"CMD ["changecast", "healthcheck"]"#),
        "{}",
        healthcheck[0]
    );
    assert_eq!(find(last, "ENTRYPOINT"), [r#"["changecast"]"#]);
    assert_eq!(find(last, "CMD"), [r#"["serve"]"#]);

    let ignored = read(".dockerignore");
    for entry in ["target/", ".changecast/", ".git"] {
        assert!(ignored.lines().any(|l| l.trim() == entry), "{entry}");
    }
}

/// A node of the YAML subset the compose file uses: block mappings, block sequences of
/// scalars, flow sequences of scalars, quoted or plain scalars, `#` comments.
#[derive(Debug, PartialEq)]
enum Yaml {
    Scalar(String),
    List(Vec<String>),
    Map(BTreeMap<String, Yaml>),
}

impl Yaml {
    fn get(&self, path: &str) -> &Yaml {
        path.split('.').fold(self, |node, key| match node {
            Yaml::Map(map) => map
                .get(key)
                .unwrap_or_else(|| panic!("compose: no `{key}` in `{path}`")),
            other => panic!("compose: `{path}` goes through a non-mapping {other:?}"),
        })
    }

    fn str(&self, path: &str) -> &str {
        match self.get(path) {
            Yaml::Scalar(s) => s,
            other => panic!("compose: `{path}` is not a scalar: {other:?}"),
        }
    }

    fn list(&self, path: &str) -> &[String] {
        match self.get(path) {
            Yaml::List(items) => items,
            other => panic!("compose: `{path}` is not a list: {other:?}"),
        }
    }

    fn map(&self, path: &str) -> &BTreeMap<String, Yaml> {
        match self.get(path) {
            Yaml::Map(map) => map,
            other => panic!("compose: `{path}` is not a mapping: {other:?}"),
        }
    }
}

fn scalar(text: &str) -> String {
    let text = text.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return inner.to_owned();
        }
    }
    text.to_owned()
}

fn value(text: &str) -> Yaml {
    let text = text.trim();
    match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(items) => Yaml::List(items.split(',').map(scalar).collect()),
        None => Yaml::Scalar(scalar(text)),
    }
}

/// Parses the lines at `indent` starting at `*at` into one node.
fn parse_block(lines: &[(usize, &str)], at: &mut usize, indent: usize) -> Yaml {
    if lines[*at].1.starts_with("- ") {
        let mut items = Vec::new();
        while *at < lines.len() && lines[*at].0 == indent && lines[*at].1.starts_with("- ") {
            let item = &lines[*at].1[2..];
            assert!(
                !item.contains(": ") && !item.ends_with(':'),
                "compose: mappings inside lists are outside this parser's subset: {item}"
            );
            items.push(scalar(item));
            *at += 1;
        }
        return Yaml::List(items);
    }
    let mut map = BTreeMap::new();
    while *at < lines.len() && lines[*at].0 == indent {
        let line = lines[*at].1;
        let (key, rest) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("compose: expected `key: value`, got {line:?}"));
        *at += 1;
        let node = if rest.trim().is_empty() {
            match lines.get(*at) {
                Some(&(deeper, _)) if deeper > indent => parse_block(lines, at, deeper),
                _ => Yaml::Scalar(String::new()),
            }
        } else {
            value(rest)
        };
        assert!(
            map.insert(scalar(key), node).is_none(),
            "compose: duplicate key {key}"
        );
    }
    assert!(
        *at == lines.len() || lines[*at].0 < indent,
        "compose: bad indentation at {:?}",
        lines[*at].1
    );
    Yaml::Map(map)
}

fn parse_compose(text: &str) -> Yaml {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .map(|line| {
            // Only whole-line and ` #` comments; no `#` appears inside our values.
            let line = line.split(" #").next().unwrap();
            (line.len() - line.trim_start().len(), line.trim())
        })
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(
        lines.iter().all(|(_, l)| !l.contains('\t')),
        "compose: tabs are not YAML indentation"
    );
    let mut at = 0;
    let root = parse_block(&lines, &mut at, 0);
    assert_eq!(
        at,
        lines.len(),
        "compose: unparsed lines from {:?}",
        lines.get(at)
    );
    root
}

#[test]
fn compose_runs_postgres_and_changecast_with_healthchecks_and_documented_settings() {
    let compose = parse_compose(&read("docker-compose.yml"));

    // PostgreSQL: the image, a readiness healthcheck, data on a named volume.
    assert_eq!(compose.str("services.postgres.image"), "postgres:16-alpine");
    let pg_test = compose.list("services.postgres.healthcheck.test");
    assert!(
        pg_test.iter().any(|part| part.contains("pg_isready")),
        "{pg_test:?}"
    );
    let volume = compose.list("services.postgres.volumes")[0].clone();
    let (name, target) = volume.split_once(':').unwrap();
    assert_eq!(target, "/var/lib/postgresql/data");
    assert!(
        compose.map("volumes").contains_key(name),
        "named volume {name}"
    );

    // changecast: built here, started once PostgreSQL is healthy, pointed at it.
    assert_eq!(compose.str("services.changecast.build"), ".");
    assert_eq!(
        compose.str("services.changecast.depends_on.postgres.condition"),
        "service_healthy"
    );
    let env = compose.map("services.changecast.environment");
    let url = compose.str("services.changecast.environment.DATABASE_URL");
    let pg = |key: &str| compose.str(&format!("services.postgres.environment.{key}"));
    assert_eq!(
        url,
        format!(
            "postgres://{}:{}@postgres:5432/{}",
            pg("POSTGRES_USER"),
            pg("POSTGRES_PASSWORD"),
            pg("POSTGRES_DB")
        )
    );
    let secret = compose.str("services.changecast.environment.CHANGECAST_JWT_SECRET");
    assert!(
        secret.starts_with("${CHANGECAST_JWT_SECRET:?"),
        "the secret must come from the environment, with no public default: {secret}"
    );
    assert_eq!(
        compose.str("services.changecast.environment.CHANGECAST_LISTEN"),
        "0.0.0.0:8080"
    );
    assert!(compose
        .list("services.changecast.ports")
        .contains(&"8080:8080".to_owned()));
    assert_eq!(
        compose.list("services.changecast.healthcheck.test"),
        ["CMD", "changecast", "healthcheck"]
    );

    // Every variable compose sets is one `serve --help` documents.
    let help = changecast(&["serve", "--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for name in env.keys() {
        assert!(
            help.contains(&format!("[env: {name}")),
            "compose sets {name}, which `changecast serve --help` does not document"
        );
    }
}

#[tokio::test]
async fn healthcheck_subcommand_exits_0_for_a_live_service_and_1_otherwise() {
    let app = spawn_app().await;
    let url = app.url("/healthz");
    let ok = tokio::task::spawn_blocking(move || changecast(&["healthcheck", "--url", &url], &[]))
        .await
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // The image's form: no --url, the address from CHANGECAST_LISTEN, 0.0.0.0 → loopback.
    let listen = format!("0.0.0.0:{}", app.addr.port());
    let ok = tokio::task::spawn_blocking(move || {
        changecast(&["healthcheck"], &[("CHANGECAST_LISTEN", &listen)])
    })
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let missing = app.url("/no-such-route");
    let not_found =
        tokio::task::spawn_blocking(move || changecast(&["healthcheck", "--url", &missing], &[]))
            .await
            .unwrap();
    assert_eq!(not_found.status.code(), Some(1));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", closed.local_addr().unwrap());
    drop(closed);
    let down =
        tokio::task::spawn_blocking(move || changecast(&["healthcheck", "--url", &url], &[]))
            .await
            .unwrap();
    assert_eq!(down.status.code(), Some(1));
    app.stop().await;
}
