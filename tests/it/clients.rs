//! The npm packages in `clients/js` (`@changecast/client`, `@changecast/react`,
//! `@changecast/tanstack-query`): `npm test` there builds them, checks that the service's
//! `src/http/assets/changecast.{js,d.ts}` are what the client's source makes, runs each
//! package's unit tests in Node, lints the `npm pack` tarballs (publint, Are the Types
//! Wrong) and installs them into a fresh project that imports them from ESM and CommonJS
//! and type-checks them with `tsc --strict`.
//!
//! Needs `node` and `npm`, and `npm ci` in `clients/js` (done here when it was not, from
//! npm's cache or registry). Without them the test says so and passes, unless
//! `CHANGECAST_REQUIRE_NODE=1` or `CHANGECAST_REQUIRE_BROWSER=1` (set by `.ci/run`, which
//! installs them) demands it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// Held while a node suite runs (this one, and the browser suite): both keep the CPU busy
/// for tens of seconds, and the browser suite's waits are bounded in time.
pub static NODE_SUITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `npm ci` from an empty cache, on a loaded machine.
const INSTALL_DEADLINE: Duration = Duration::from_secs(300);
/// Build, unit tests, packing and the fresh install (from npm's cache).
const TEST_DEADLINE: Duration = Duration::from_secs(240);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

fn required() -> bool {
    ["CHANGECAST_REQUIRE_NODE", "CHANGECAST_REQUIRE_BROWSER"]
        .iter()
        .any(|name| std::env::var_os(name).is_some())
}

/// Passes quietly where node cannot be had, fails where it is required.
fn unavailable(why: &str) {
    assert!(
        !required(),
        "the npm packages' tests are required (CHANGECAST_REQUIRE_NODE or \
         CHANGECAST_REQUIRE_BROWSER is set): {why}"
    );
    eprintln!("skipping the npm packages' tests: {why}");
}

async fn run(program: &str, args: &[&str], deadline: Duration) -> Result<Output, String> {
    let child = Command::new(program)
        .args(args)
        .current_dir(clients_dir())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(deadline, child).await {
        Err(_) => Err(format!(
            "`{program} {}` ran past {deadline:?}",
            args.join(" ")
        )),
        Ok(Err(error)) => Err(format!("cannot run `{program}`: {error}")),
        Ok(Ok(output)) => Ok(output),
    }
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn the_npm_packages_build_test_pack_and_install() {
    for tool in ["node", "npm"] {
        if let Err(error) = run(tool, &["--version"], Duration::from_secs(60)).await {
            return unavailable(&format!("{error} (install Node.js 18 or later with npm)"));
        }
    }
    let _turn = NODE_SUITE.lock().await;
    if !clients_dir()
        .join("node_modules/.package-lock.json")
        .exists()
    {
        let install = run(
            "npm",
            &["ci", "--prefer-offline", "--no-audit", "--no-fund"],
            INSTALL_DEADLINE,
        )
        .await;
        match install {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                return unavailable(&format!(
                    "`npm ci` in clients/js failed (no registry or cache?):\n{}",
                    printed(&output)
                ))
            }
            Err(error) => return unavailable(&error),
        }
    }
    let output = run("npm", &["test"], TEST_DEADLINE)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let report = printed(&output);
    for line in report.lines().filter(|line| line.starts_with("packed ")) {
        eprintln!("  {line}");
    }
    assert!(
        output.status.success(),
        "`npm test` in clients/js failed:\n{report}"
    );
}
