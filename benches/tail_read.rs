//! The tailer's read alone: what PostgreSQL spends on one read that finds nothing new
//! (the common case: one read per wake-up), as the journal's partitions grow in number,
//! with the index planner settings set once for the connection (as the tailer does),
//! the same with an id floor at the newest partition (the tailer's floor in the steady
//! state: the partitions below are skipped) and, for comparison, the settings set for
//! every read in a transaction of its own.
//!
//!     cargo bench --bench tail_read           (CHANGECAST_BENCH_READS=20000)
//!
//! Finds a database like the tests do. The backend's CPU time is read from /proc, so the
//! server must run on this machine, in its process namespace (not in a container). Reads
//! are sequential, each awaited: wall time per read includes the round trip. The two
//! ways alternate, in halves, so a machine that drifts favours neither.

#[path = "../tests/it/helpers/mod.rs"]
#[allow(dead_code)]
mod helpers;

use std::time::Instant;

use tokio_postgres::{Client, NoTls, Statement};

use changecast::journal::{hot_statements, INDEX_PLANNER_SETTINGS, INDEX_PLANNER_SETTINGS_LOCAL};

/// Ids per partition added by the bench, and rows written into each.
const SPAN: i64 = 10_000;
const ROWS_PER_PARTITION: i64 = 1_000;

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// CPU time (user + system, in µs) the backend serving `client` has used so far.
async fn backend_cpu_us(client: &Client) -> f64 {
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    // A server in a container reports a pid of its own namespace, which here is another
    // process or none: refuse rather than measure the wrong one.
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        command.starts_with(b"postgres"),
        "backend {pid} is not a PostgreSQL process of this machine: the server must run \
         here, outside a container (set CHANGECAST_TEST_DATABASE_URL)"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name (which may hold spaces): utime and stime are the
    // 12th and 13th, in USER_HZ (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 * 10_000.0
}

/// Backend CPU and wall time per read, in µs, over `reads` reads of nothing new, none
/// below `floor`.
async fn measure(
    client: &Client,
    statement: &Statement,
    (per_read_settings, floor): (bool, i64),
    reads: usize,
) -> (f64, f64) {
    let xmax: String = client
        .query_one("select pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await
        .unwrap()
        .get(0);
    let running: Vec<String> = Vec::new();
    let begin = format!("begin; {}", *INDEX_PLANNER_SETTINGS_LOCAL);
    let (cpu_before, started) = (backend_cpu_us(client).await, Instant::now());
    for _ in 0..reads {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&xmax, &running, &1000_i64, &(1_i64 << 20), &floor];
        let rows = if per_read_settings {
            let (_, rows, _) = futures_util::future::try_join3(
                client.batch_execute(&begin),
                client.query(statement, &params),
                client.batch_execute("commit"),
            )
            .await
            .unwrap();
            rows
        } else {
            client.query(statement, &params).await.unwrap()
        };
        assert_eq!(rows.len(), 1, "nothing new: the snapshot row alone");
    }
    let wall = started.elapsed().as_secs_f64() * 1e6;
    let cpu = backend_cpu_us(client).await - cpu_before;
    (cpu / reads as f64, wall / reads as f64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let reads: usize = std::env::var("CHANGECAST_BENCH_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let url = helpers::server().fresh_database().await;
    let admin = connect(&url).await;
    let tail_new = hot_statements()
        .into_iter()
        .find(|(name, _)| *name == "tail_new")
        .expect("the tailer's read")
        .1;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "tail read: {reads} reads of nothing new each, {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "partitions | settings per connection: CPU, wall | the same, id floor at the newest \
         partition: CPU, wall | per read: CPU, wall (µs per read)"
    );
    let mut partitions_added = 0;
    for added in [0, 2, 6, 10] {
        while partitions_added < added {
            let lower = 1 + partitions_added * SPAN;
            admin
                .batch_execute(&format!(
                    "create table changecast.bench_tail_p{partitions_added}
                         (like changecast.change_log including all);
                     alter table changecast.change_log attach partition
                         changecast.bench_tail_p{partitions_added}
                         for values from ({lower}) to ({});
                     select setval('changecast.change_log_id_seq', {lower}, false);
                     insert into changecast.change_log (tenant_id, resource_type, event, resource_id, resource)
                     select 't' || g % 100, 'ticket', 'created', g::text, jsonb_build_object('id', g)
                     from generate_series(1, {ROWS_PER_PARTITION}) g;",
                    lower + SPAN
                ))
                .await
                .expect("adding a partition");
            partitions_added += 1;
        }
        admin
            .batch_execute("analyze changecast.change_log")
            .await
            .unwrap();
        let partitions: i64 = admin
            .query_one("select count(*) from changecast.journal_partitions", &[])
            .await
            .unwrap()
            .get(0);
        // Fresh connections: each plans the read once, for this journal.
        let session = connect(&url).await;
        session.batch_execute(INDEX_PLANNER_SETTINGS).await.unwrap();
        let session_read = session.prepare(&tail_new).await.unwrap();
        let per_read = connect(&url).await;
        let per_read_statement = per_read.prepare(&tail_new).await.unwrap();
        let newest: i64 = admin
            .query_one(
                "select coalesce(max(lower), 1) from changecast.journal_partitions",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let ways = [
            (&session, &session_read, (false, i64::MIN)),
            (&session, &session_read, (false, newest)),
            (&per_read, &per_read_statement, (true, i64::MIN)),
        ];
        for (client, statement, way) in ways {
            measure(client, statement, way, reads / 10).await;
        }
        // (CPU, wall) per way; each way's reads in two halves, in rotated order.
        let mut figures = [(0.0, 0.0); 3];
        for rotation in 0..2 {
            for n in 0..ways.len() {
                let at = (n + rotation) % ways.len();
                let (client, statement, way) = ways[at];
                let (cpu, wall) = measure(client, statement, way, reads / 2).await;
                figures[at].0 += cpu / 2.0;
                figures[at].1 += wall / 2.0;
            }
        }
        let [(session_cpu, session_wall), (floor_cpu, floor_wall), (per_read_cpu, per_read_wall)] =
            figures;
        println!(
            "{partitions:10} | {session_cpu:6.1} {session_wall:6.1} | {floor_cpu:6.1} {floor_wall:6.1} | {per_read_cpu:6.1} {per_read_wall:6.1}"
        );
    }
}
