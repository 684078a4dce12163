//! The OpenAPI description at `/openapi.json` tells the truth: it names exactly the
//! routes served and the query parameters each takes, and schemathesis (from PyPI), run
//! against the live service, finds no server error and no response other than described.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// Every path the service serves (besides this list, everything is 404).
const SERVED: &[&str] = &[
    "/",
    "/changecast.d.ts",
    "/changecast.js",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/readyz",
    "/v1/events",
    "/v1/snapshot",
    "/v1/stats",
    "/v1/ws",
];

async fn description(app: &TestApp) -> Value {
    let (status, spec) = app.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    spec
}

/// The names of the query parameters the description gives `path`'s GET.
fn query_parameters(spec: &Value, path: &str) -> BTreeSet<String> {
    let parameters = spec["paths"][path]["get"]["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    parameters
        .iter()
        .map(|p| match p.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.rsplit('/').next().unwrap();
                spec["components"]["parameters"][name].clone()
            }
            None => p.clone(),
        })
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_description_names_every_route_and_each_ones_parameters() {
    let app = spawn_app().await;
    let spec = description(&app).await;
    let documented: BTreeSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(documented, SERVED.iter().copied().collect());
    for path in SERVED {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_ne!(
            response.status(),
            404,
            "{path} is documented but not served"
        );
    }
    let response = app.http.get(app.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    for (path, accepted) in [
        ("/v1/events", changecast::http::EVENTS_PARAMS),
        ("/v1/snapshot", changecast::http::SNAPSHOT_PARAMS),
        ("/v1/stats", changecast::http::STATS_PARAMS),
        ("/v1/ws", changecast::http::WS_PARAMS),
    ] {
        let accepted: BTreeSet<String> = accepted.iter().map(|p| p.to_string()).collect();
        assert_eq!(query_parameters(&spec, path), accepted, "{path}");
    }
}

/// Where schemathesis is: `CHANGECAST_SCHEMATHESIS`, else on the PATH.
fn schemathesis() -> Option<String> {
    if let Ok(path) = std::env::var("CHANGECAST_SCHEMATHESIS") {
        return Some(path);
    }
    std::process::Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| "schemathesis".to_owned())
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_only_described_responses() {
    let Some(schemathesis) = schemathesis() else {
        assert!(
            std::env::var_os("CHANGECAST_REQUIRE_SCHEMATHESIS").is_none(),
            "CHANGECAST_REQUIRE_SCHEMATHESIS is set but schemathesis was not found"
        );
        eprintln!("skipped: schemathesis not found (pip install schemathesis, or set CHANGECAST_SCHEMATHESIS)");
        return;
    };
    let app = spawn_app().await;
    app.insert_ticket("acme", "one").await;
    let url = app.url("/openapi.json");
    let run = tokio::process::Command::new(&schemathesis)
        .args([
            "--config-file",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/schemathesis/schemathesis.toml"
            ),
        ])
        .args(["run", &url])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", token("acme")),
        ])
        // An SSE stream does not end: the events endpoint is checked by its own tests.
        .args(["--exclude-operation-id", "events"])
        .args([
            "--max-time",
            "45",
            "--request-timeout",
            "10",
            "--workers",
            "2",
        ])
        .args(["--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("schemathesis ran past its time")
        .expect("running schemathesis");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}"
    );
    // The summary, for the log: operations, phases and test cases run.
    if let Some(summary) = report.find("SUMMARY") {
        eprintln!("{}", &report[summary..]);
    }
}
