//! Delivery benchmark: changecast against a bare LISTEN client, measured in one run.
//!
//!     cargo bench --bench delivery            (CHANGECAST_BENCH_SUBSCRIBERS=50, _WRITES=2000)
//!
//! Finds a database like the tests do. Prints, for sequential single-row transactions,
//! commit-to-receipt latency percentiles of (a) a bare `LISTEN changecast` client — what
//! PostgreSQL itself delivers — and (b) changecast SSE subscribers; then the time to
//! deliver a burst of concurrent writes to every subscriber.

#[path = "../tests/it/helpers/mod.rs"]
#[allow(dead_code)]
mod helpers;

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{AsyncMessage, NoTls};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    format!(
        "p50 {:7.2} ms   p90 {:7.2} ms   p99 {:7.2} ms   max {:7.2} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

#[tokio::main]
async fn main() {
    let subscribers = env_usize("CHANGECAST_BENCH_SUBSCRIBERS", 50);
    let writes = env_usize("CHANGECAST_BENCH_WRITES", 2000);
    let app = helpers::spawn_app_with(|c| c.max_subscribers_per_tenant = subscribers + 10).await;

    // (a) The reference: a bare LISTEN client on the trigger's own channel.
    let (listen, mut connection) = tokio_postgres::connect(&app.db_url, NoTls).await.unwrap();
    let listen_times = Arc::new(Mutex::new(Vec::new()));
    let times = listen_times.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(_) = message {
                times.lock().unwrap().push(Instant::now());
            }
        }
    });
    listen.batch_execute("LISTEN changecast").await.unwrap();

    // (b) changecast subscribers, each recording when every resource arrived.
    let token = helpers::token("bench");
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let mut stream = app.sse(&token, "").await;
        readers.push(tokio::spawn(async move {
            let mut arrived = HashMap::new();
            while let Some(event) = stream.next_within(Duration::from_secs(10)).await {
                if event.event == "resource_change" {
                    let id = event.data["resource"]["id"].as_str().unwrap().to_owned();
                    arrived.entry(id).or_insert_with(Instant::now);
                }
            }
            arrived
        }));
    }

    // Sequential single-row transactions, each timed at commit.
    let mut committed = Vec::with_capacity(writes);
    for i in 0..writes {
        let row = app
            .db
            .query_one(
                "insert into tickets (tenant_id, title) values ('bench', $1) returning id::text",
                &[&format!("t{i}")],
            )
            .await
            .unwrap();
        committed.push((row.get::<_, String>(0), Instant::now()));
        // A pause like a real application's, so this measures latency, not queueing.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // A burst: 4 writers × 25 transactions × 20 rows, as fast as they can.
    let burst_start = Instant::now();
    let mut burst = Vec::new();
    for _ in 0..4 {
        burst.push(app.spawn_writer("bench", 25, 20).await);
    }
    let mut burst_ids = Vec::new();
    for writer in burst {
        burst_ids.extend(writer.await.unwrap());
    }
    let burst_written = burst_start.elapsed();

    let mut arrivals = Vec::new();
    for reader in readers {
        arrivals.push(reader.await.unwrap());
    }
    let listen_times = listen_times.lock().unwrap().clone();

    let listen_latency: Vec<Duration> = committed
        .iter()
        .zip(&listen_times)
        .map(|((_, at), got)| got.saturating_duration_since(*at))
        .collect();
    let mut cc_latency = Vec::new();
    let mut lost = 0;
    for arrived in &arrivals {
        for (id, at) in &committed {
            match arrived.get(id) {
                Some(got) => cc_latency.push(got.saturating_duration_since(*at)),
                None => lost += 1,
            }
        }
    }
    let burst_done = arrivals
        .iter()
        .flat_map(|a| burst_ids.iter().filter_map(|id| a.get(id)))
        .max()
        .map(|last| last.saturating_duration_since(burst_start));
    let burst_missing: usize = arrivals
        .iter()
        .map(|a| burst_ids.iter().filter(|id| !a.contains_key(*id)).count())
        .sum();

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!("changecast delivery benchmark — cargo bench --bench delivery");
    println!(
        "machine: {} cores, {cpu}; database: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        app.db_url.rsplit('@').next().unwrap_or("")
    );
    println!("{writes} sequential single-row transactions (2 ms apart), {subscribers} SSE subscribers of one tenant");
    println!(
        "  bare LISTEN client   ({:5} notifications): {}",
        listen_latency.len(),
        percentiles(listen_latency)
    );
    println!(
        "  changecast SSE       ({:5} deliveries):    {}",
        cc_latency.len(),
        percentiles(cc_latency)
    );
    println!("  changes lost: {lost}");
    println!(
        "burst: {} rows in 100 transactions from 4 writers, written in {:.0} ms; all {} subscribers had every row after {} ({} missing)",
        burst_ids.len(),
        burst_written.as_secs_f64() * 1000.0,
        subscribers,
        burst_done.map_or("never".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
        burst_missing
    );
    let _ = app.stop().await;
}
