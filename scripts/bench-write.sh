#!/usr/bin/env bash
# Write-path comparison (measurement 1 of BENCHMARKS.md): committed single-row INSERT
# transactions per second (synchronous_commit=on) into three tables of the same shape,
#   plain       no trigger
#   journalled  a copy of changecast.capture() without its pg_notify (sql/bench/setup.sql)
#   watched     changecast.watch()ed, with a changecast service attached and listening
# at 1, 8 and 32 writers, in interleaved rounds (the variant order rotates each round).
# Prints every cell, then a Markdown table of medians (min–max) and of the per-round
# ratios watched/journalled and journalled/plain.
#
#   cargo build --release --bins && scripts/bench-write.sh
#
# Environment: CHANGECAST_BENCH_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/changecast_bench; created if missing, emptied),
# ROUNDS (3), SECONDS_PER_CELL (10), WRITERS ("1 8 32"), CHANGECAST_BIN
# (target/release/changecast).
set -euo pipefail
cd "$(dirname "$0")/.."

url=${CHANGECAST_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/changecast_bench}
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_CELL:-10}
writers=${WRITERS:-"1 8 32"}
bin=${CHANGECAST_BIN:-target/release/changecast}
variants=(plain journalled watched)

for tool in psql pgbench; do
  command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install -y postgresql-client postgresql-contrib)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "no $bin: run cargo build --release --bins" >&2; exit 1; }

db=${url##*/}; db=${db%%\?*}
maintenance=${url%/*}/postgres
if [ "$(psql "$maintenance" -Atc "select 1 from pg_database where datname = '$db'")" != 1 ]; then
  psql "$maintenance" -qc "create database \"$db\""
fi
DATABASE_URL=$url RUST_LOG=warn "$bin" migrate >/dev/null
psql "$url" -q -v ON_ERROR_STOP=1 -c "set client_min_messages = warning" -f sql/bench/setup.sql >/dev/null
psql "$url" -q -v ON_ERROR_STOP=1 -f sql/bench/reset.sql

# The service, attached for the whole comparison (idle while nothing NOTIFYs it).
log=target/bench-write-service.log
DATABASE_URL=$url CHANGECAST_LISTEN=127.0.0.1:0 RUST_LOG=${CHANGECAST_BENCH_SERVICE_LOG:-warn} \
  CHANGECAST_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
  "$bin" serve >"$log" 2>&1 &
service=$!
trap 'kill -TERM $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  listening=$(psql "$url" -Atc "select count(*) from pg_stat_activity
    where application_name = 'changecast:listener' and datname = current_database()")
  [ "$listening" -ge 1 ] && break
  kill -0 $service 2>/dev/null || { echo "the service exited; see $log" >&2; exit 1; }
  sleep 0.2
done
[ "$listening" -ge 1 ] || { echo "the service did not attach; see $log" >&2; exit 1; }

echo "# write-path comparison — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine:  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "postgres: $(psql "$url" -Atc 'select version()')"
echo "settings: $(psql "$url" -Atc "select string_agg(name || '=' || setting, ', ') from pg_settings
  where name in ('fsync', 'wal_sync_method', 'shared_buffers', 'max_connections')"), synchronous_commit=on (forced)"
echo "cells:    ${seconds}s each, $rounds rounds, writers: $writers; service pid $service attached"
echo
results=$(mktemp)
for round in $(seq "$rounds"); do
  for w in $writers; do
    threads=$(( w < $(nproc) ? w : $(nproc) ))
    for i in 0 1 2; do
      v=${variants[$(( (i + round) % 3 ))]}
      tps=$(PGOPTIONS='-c synchronous_commit=on' pgbench -n -M prepared -c "$w" -j "$threads" \
              -T "$seconds" -f "sql/bench/insert_$v.sql" "$url" 2>&1 |
            sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
      [ -n "$tps" ] || { echo "pgbench failed for $v at $w writers" >&2; exit 1; }
      printf 'round %s  writers %2s  %-11s %10.1f tps   (load %s)\n' "$round" "$w" "$v" "$tps" "$(cut -d' ' -f1 /proc/loadavg)"
      echo "$round $w $v $tps" >>"$results"
    done
  done
done
kill -0 $service 2>/dev/null || echo "WARNING: the service died during the comparison; see $log" >&2

echo
awk -v writers="$writers" '
  function stats(list,    n, a, i, j, t, med) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    return sprintf(fmt, med) " (" sprintf(fmt, a[1]) "–" sprintf(fmt, a[n]) ")"
  }
  { tps[$1, $2, $3] = $4; rounds[$1] = 1 }
  END {
    print "| writers | plain tps | journalled tps | watched tps | watched / journalled | journalled / plain |"
    print "|---:|---:|---:|---:|---:|---:|"
    nw = split(writers, ws, " ")
    for (k = 1; k <= nw; k++) {
      w = ws[k]; p = j = wa = r1 = r2 = ""
      for (r in rounds) {
        p = p " " tps[r, w, "plain"]; j = j " " tps[r, w, "journalled"]; wa = wa " " tps[r, w, "watched"]
        r1 = r1 " " (100 * tps[r, w, "watched"] / tps[r, w, "journalled"])
        r2 = r2 " " (100 * tps[r, w, "journalled"] / tps[r, w, "plain"])
      }
      fmt = "%.0f"; line = "| " w " | " stats(substr(p, 2)) " | " stats(substr(j, 2)) " | " stats(substr(wa, 2))
      fmt = "%.0f%%"; line = line " | " stats(substr(r1, 2)) " | " stats(substr(r2, 2)) " |"
      print line
    }
  }' "$results"
rm -f "$results"
