//! The dashboard in a real browser (headless Chromium via playwright-core): the snapshot
//! renders, live changes apply, and a dropped listener connection loses nothing.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CHANGECAST_CHROMIUM`) and `npm install` in
//! `tests/browser`. Without them the test says so and passes, unless
//! `CHANGECAST_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs them) demands it.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

use crate::helpers::*;

fn browser_available() -> Result<(), String> {
    let chromium =
        std::env::var("CHANGECAST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !Path::new(&chromium).exists() {
        return Err(format!("no Chromium at {chromium}"));
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Err("run `npm install` in tests/browser".into());
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("no node on PATH".into());
    }
    Ok(())
}

struct Browser {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    _child: tokio::process::Child,
}

impl Browser {
    async fn line(&mut self) -> String {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("the browser script answered nothing")
            .unwrap()
            .expect("the browser script ended");
        assert!(!line.starts_with("FAIL"), "{line}");
        assert!(
            !line.starts_with("PAGEERROR"),
            "JavaScript error in the dashboard: {line}"
        );
        line
    }

    async fn expect(&mut self, command: &str, answer: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(self.line().await, answer, "after {command}");
    }
}

#[tokio::test]
async fn the_dashboard_shows_the_snapshot_and_applies_live_changes() {
    if let Err(missing) = browser_available() {
        assert!(
            std::env::var_os("CHANGECAST_REQUIRE_BROWSER").is_none(),
            "browser test required: {missing}"
        );
        eprintln!("skipping the browser test: {missing}");
        return;
    }
    let app = spawn_app().await;
    app.insert_ticket("acme", "from the snapshot").await;
    app.insert_ticket("globex", "never shown").await;

    let mut child = Command::new("node")
        .arg("dashboard.mjs")
        .arg(format!("http://{}", app.addr))
        .arg(token("acme"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node");
    let mut browser = Browser {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
        _child: child,
    };
    assert_eq!(
        browser.line().await,
        "SNAPSHOT 1",
        "only acme's ticket is shown"
    );
    let url = browser.line().await;
    assert!(
        !url.contains("access_token"),
        "the token stays out of the address bar: {url}"
    );

    let id = app.insert_ticket("acme", "created live").await;
    browser
        .expect(&format!("WAIT_ROW ticket {id}"), &format!("ROW {id}"))
        .await;
    app.db
        .execute(
            "update tickets set state = 'closed' where id::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    browser
        .expect(
            &format!("WAIT_TEXT ticket {id} closed"),
            &format!("TEXT {id}"),
        )
        .await;

    // The listener's connection dies; a change written meanwhile still arrives.
    app.kill_listener().await;
    let during = app
        .insert_ticket("acme", "written while reconnecting")
        .await;
    browser
        .expect(
            &format!("WAIT_ROW ticket {during}"),
            &format!("ROW {during}"),
        )
        .await;

    app.db
        .execute("delete from tickets where id::text = $1", &[&id])
        .await
        .unwrap();
    browser
        .expect(&format!("WAIT_GONE ticket {id}"), &format!("GONE {id}"))
        .await;

    // The service restarts (same address); a change written while it is down arrives.
    let addr = app.addr;
    let db_url = app.stop().await;
    let writer = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(writer.1);
    let while_down: String = writer
        .0
        .query_one(
            "insert into tickets (tenant_id, title) values ('acme', 'while down') returning id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let _app = start_on(db_url, |c| c.listen = addr).await;
    browser
        .expect(
            &format!("WAIT_ROW ticket {while_down}"),
            &format!("ROW {while_down}"),
        )
        .await;
    browser.stdin.write_all(b"QUIT\n").await.unwrap();
}
