//! Migrations: several instances starting at once on an empty database all succeed.

use crate::helpers::*;

#[tokio::test]
async fn concurrent_migrations_on_an_empty_database_all_succeed() {
    let url = server().empty_database().await;
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { changecast::db::migrate(&url).await })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.push(run.await.unwrap().expect("a concurrent migration failed"));
    }
    applied.sort();
    assert_eq!(
        applied,
        [0, 0, 3],
        "exactly one instance applies the three migrations"
    );
    assert_eq!(
        changecast::db::migrate(&url).await.unwrap(),
        0,
        "migrating again is a no-op"
    );
}
