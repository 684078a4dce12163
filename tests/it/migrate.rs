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
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with('V') && name.ends_with(".sql")
        })
        .count();
    assert_eq!(
        applied,
        [0, 0, migrations],
        "exactly one instance applies every migration"
    );
    assert_eq!(
        changecast::db::migrate(&url).await.unwrap(),
        0,
        "migrating again is a no-op"
    );
}
