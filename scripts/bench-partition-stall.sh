#!/usr/bin/env bash
# Writers' latency while the pruner creates journal partitions: single-row INSERTs into
# the watched example table `tickets` at a fixed rate (pgbench -R, 4 clients), the
# service attached, with a retention of 1 minute, so that a partition is created about
# every 10 s (a span is at least 10,000 ids) and the first ones are dropped. Run it with
# two builds, alternating, to compare them (latency on a shared machine drifts more
# between runs than within one).
#
#   scripts/bench-partition-stall.sh [BIN ...]     # default: target/release/changecast
#
# Prints per build: p50, p99, p99.9 and max of the writers' latency (pgbench's, which
# counts the schedule lag behind a stall), and how many transactions took over 100 ms.
# Uses the database changecast_stall on $BENCH_PG (default
# postgresql://postgres@127.0.0.1:5432), dropped and created for every run.
set -euo pipefail
cd "$(dirname "$0")/.."
server=${BENCH_PG:-postgresql://postgres@127.0.0.1:5432}
db=$server/changecast_stall
rate=${RATE:-1000}
seconds=${SECONDS_PER_RUN:-60}
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/changecast)
dir=$(mktemp -d /tmp/changecast-stall.XXXXXX)
port=$(( 20000 + RANDOM % 20000 ))
service=
cleanup() { [ -n "$service" ] && kill "$service" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
echo "insert into tickets (tenant_id, title) values ('t' || (random() * 10)::int, 'x');" > "$dir/insert.sql"
echo "$(date -u '+%F %R UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $rate rows/s for $seconds s per build"
for bin in "${bins[@]}"; do
  psql -qX "$server/postgres" -c "drop database if exists changecast_stall" -c "create database changecast_stall" >/dev/null
  "$bin" migrate --database-url "$db" >/dev/null 2>&1
  "$bin" serve --database-url "$db" --retention 1m --listen "127.0.0.1:$port" \
    --jwt-secret "$(head -c 32 /dev/urandom | base64)" > "$dir/service.log" 2>&1 &
  service=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  rm -f "$dir"/latency.log*
  (cd "$dir" && pgbench -n -f insert.sql -R "$rate" -c 4 -j 2 -T "$seconds" -l --log-prefix=latency.log "$db" >/dev/null)
  partitions=$(psql -qtAX "$db" -c "select count(*) from changecast.journal_partitions")
  kill "$service"; wait "$service" 2>/dev/null || true; service=
  cat "$dir"/latency.log* | awk '{print $3}' | sort -n > "$dir/sorted"
  n=$(wc -l < "$dir/sorted")
  at() { sed -n "$(( (n * $1 + 999) / 1000 ))p" "$dir/sorted"; }
  echo "$bin: $n transactions, $partitions partitions at the end; latency p50 $(at 500) µs, p99 $(at 990) µs, p99.9 $(at 999) µs, max $(tail -1 "$dir/sorted") µs; over 100 ms: $(awk '$1 > 100000' "$dir/sorted" | wc -l)"
done
psql -qX "$server/postgres" -c "drop database if exists changecast_stall" >/dev/null
