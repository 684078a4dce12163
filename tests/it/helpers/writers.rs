//! Writers that keep going through outages.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually, WAIT};

/// Tickets written by [`spawn_writers`], as the writers saw them committed.
pub struct Writing {
    stop: CancellationToken,
    tasks: Vec<(String, JoinHandle<Written>)>,
    /// Changes committed so far, all writers together.
    pub committed: Arc<AtomicUsize>,
    /// Failed attempts (statements or connections) so far.
    failures: Arc<AtomicUsize>,
}

struct Written {
    ids: HashSet<String>,
    /// Writes that succeeded only after failed attempts (made during the fault).
    retried: usize,
}

/// One writer per `(tenant, rows per transaction)`, each on a connection of its own,
/// inserting tickets until stopped. A write that fails (the database went away) is
/// retried on a new connection until it commits; one whose commit may have happened
/// before the connection died is looked up by its titles first, so every change counted
/// was committed exactly once.
pub fn spawn_writers(db_url: &str, writers: &[(&str, usize)]) -> Writing {
    let stop = CancellationToken::new();
    let committed = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let tasks = writers
        .iter()
        .enumerate()
        .map(|(n, &(tenant, rows))| {
            let task = tokio::spawn(retrying_writer(
                db_url.to_owned(),
                tenant.to_owned(),
                format!("w{n}"),
                rows,
                stop.clone(),
                committed.clone(),
                failures.clone(),
            ));
            (tenant.to_owned(), task)
        })
        .collect();
    Writing {
        stop,
        tasks,
        committed,
        failures,
    }
}

impl Writing {
    /// Waits until `n` more changes than now were committed.
    pub async fn until_more(&self, n: usize) {
        let target = self.committed.load(Ordering::SeqCst) + n;
        eventually(&format!("{target} changes committed"), || async {
            self.committed.load(Ordering::SeqCst) >= target
        })
        .await;
    }

    /// Waits until `n` more attempts than now failed.
    pub async fn until_failures(&self, n: usize) {
        let target = self.failures.load(Ordering::SeqCst) + n;
        eventually("writers failing during the fault", || async {
            self.failures.load(Ordering::SeqCst) >= target
        })
        .await;
    }

    /// Stops the writers; every id written, by tenant, and the writes that were retried.
    pub async fn finish(self) -> (HashMap<String, HashSet<String>>, usize) {
        self.stop.cancel();
        let mut by_tenant: HashMap<String, HashSet<String>> = HashMap::new();
        let mut retried = 0;
        for (tenant, task) in self.tasks {
            let written = tokio::time::timeout(WAIT, task)
                .await
                .expect("a writer did not stop")
                .unwrap();
            retried += written.retried;
            by_tenant.entry(tenant).or_default().extend(written.ids);
        }
        (by_tenant, retried)
    }
}

async fn retrying_writer(
    db_url: String,
    tenant: String,
    tag: String,
    rows: usize,
    stop: CancellationToken,
    committed: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
) -> Written {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut written = Written {
        ids: HashSet::new(),
        retried: 0,
    };
    let mut n = 0;
    while !stop.is_cancelled() {
        let titles: Vec<String> = (0..rows).map(|r| format!("{tag}-{n}-{r}")).collect();
        let mut failed = false;
        let ids: Vec<String> = loop {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio_postgres::connect(&db_url, NoTls),
                )
                .await
                {
                    Ok(Ok((c, connection))) => {
                        tokio::spawn(connection);
                        client = Some(c);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        failed = true;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let db = client.as_ref().unwrap();
            if failed {
                // The last attempt may have committed just before the connection died.
                match db
                    .query(
                        "select id::text from tickets where title = any($1)",
                        &[&titles],
                    )
                    .await
                {
                    Ok(found) if !found.is_empty() => {
                        break found.iter().map(|r| r.get(0)).collect();
                    }
                    Ok(_) => {}
                    Err(_) => {
                        client = None;
                        continue;
                    }
                }
            }
            match db
                .query(
                    "insert into tickets (tenant_id, title)
                     select $1, unnest($2::text[]) returning id::text",
                    &[&tenant, &titles],
                )
                .await
            {
                Ok(inserted) => break inserted.iter().map(|r| r.get(0)).collect(),
                Err(_) => {
                    failures.fetch_add(1, Ordering::SeqCst);
                    failed = true;
                    client = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(ids.len(), rows, "a transaction committed partly");
        written.retried += usize::from(failed);
        committed.fetch_add(ids.len(), Ordering::SeqCst);
        written.ids.extend(ids);
        n += 1;
        // A steady stream rather than a flood: the fault hits it mid-way.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    written
}
