#!/usr/bin/env bash
# WAL the journal costs: per row written (a watched table's single-row transactions,
# against the same writes to an unwatched copy of the table), per row pruned (DELETE in
# the pruner's batches, and the VACUUM that follows it, against TRUNCATE and DROP of
# whole partitions), what each journal index adds per row, and whether lz4 compression
# of `resource` changes anything.
#
#   scripts/bench-journal-wal.sh [ROWS] [BODY_BYTES]
#
# ROWS (default 5000) single-row inserts per measurement; BODY_BYTES (default 0) of
# ticket body per row (a typical row is a few hundred bytes of JSON; TOAST compresses
# only values over ~2 kB). WAL positions are the cluster's, so by default the script
# starts a cluster of its own, autovacuum off so that only the measured statements
# write (binaries from $CHANGECAST_PG_BINDIR, else the machine's newest
# /usr/lib/postgresql/*/bin), and removes it at the end; $BENCH_PG (e.g.
# postgresql://postgres@127.0.0.1:5432) uses a server nobody else writes to instead,
# with scratch databases bench_journal_wal_*, dropped at the end. Applies migrations/
# with psql (no service needed): V1..V13 for the unpartitioned journal, every migration
# for the partitioned one. The pruning statements are the pruner's
# (src/journal/pruner.rs), run by hand. Each measurement starts after a CHECKPOINT, so
# full-page images of the pages it touches first count: the fixed cost per partition
# removed (catalog pages) is an upper bound.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=${1:-5000}
body=${2:-0}
prefix=bench_journal_wal

if [ -n "${BENCH_PG:-}" ]; then
  base=$BENCH_PG
else
  bindir=${CHANGECAST_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
  scratch=$(mktemp -d /tmp/bench-journal-wal.XXXXXX)
  as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  [ "$(id -u)" = 0 ] && chown postgres "$scratch"
  port=$(( 56000 + RANDOM % 1000 ))
  as_owner "$bindir/initdb" -D "$scratch/data" -U postgres -A trust >/dev/null
  as_owner "$bindir/pg_ctl" -D "$scratch/data" -l "$scratch/log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -c autovacuum=off -k $scratch" start >/dev/null
  trap 'as_owner "$bindir/pg_ctl" -D "$scratch/data" -m fast -w stop >/dev/null; rm -rf "$scratch"' EXIT
  base=postgresql://postgres@127.0.0.1:$port
fi

admin() { psql "$base/postgres" -X -q -v ON_ERROR_STOP=1 "$@"; }
sql() { local db=$1; shift; psql "$base/$db" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

# A database with the migrations up to $2 (a version number, or "all").
migrated() {
  local db=$1 upto=$2
  admin -c "drop database if exists $db" -c "create database $db"
  for file in $(ls migrations | sort -t V -k2 -n); do
    version=${file#V}; version=${version%%__*}
    if [ "$upto" != all ] && [ "$version" -gt "$upto" ]; then break; fi
    sql "$db" -1 -f "migrations/$file" >/dev/null
  done
  sql "$db" -c "create table plain_tickets (like tickets including all)"
}

# Bytes of WAL the command ($2...) writes in database $1 (after a checkpoint, so that
# full-page images of pages touched before do not count).
wal_of() {
  local db=$1; shift
  sql "$db" -c checkpoint
  local start
  start=$(sql "$db" -c "select pg_current_wal_insert_lsn()")
  "$@"
  sql "$db" -c "select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$start')"
}

# $rows single-row transactions inserting into table $2 of database $1.
write_rows() {
  local db=$1 table=$2
  awk -v n="$rows" -v t="$table" -v b="$body" 'BEGIN {
    pad = sprintf("%" b "s", ""); gsub(/ /, "x", pad)
    for (i = 0; i < n; i++)
      printf "insert into %s (tenant_id, title, body) values (\x27acme\x27, \x27ticket %d\x27, \x27%s%d\x27);\n", t, i, pad, i
  }' | sql "$db" >/dev/null
}

per_row() { echo "scale=1; $1 / $rows" | bc; }

# Every row written so far committed past the retention: a tick two hours old.
age() {
  sql "$1" -c "insert into changecast.journal_ticks (taken_at, horizon)
               values (now() - interval '2 hours', pg_snapshot_xmin(pg_current_snapshot()))"
}
horizon() { sql "$1" -c "select horizon::text from changecast.journal_ticks order by taken_at limit 1"; }

delete_pruning() {
  local db=$1 h deleted
  h=$(horizon "$db")
  while :; do
    deleted=$(sql "$db" -c "with doomed as (
                   delete from changecast.change_log
                   where id in (select id from changecast.change_log where xid < '$h' limit 5000)
                   returning 1)
                 select count(*) from doomed")
    [ "$deleted" -lt 5000 ] && break
  done
}

partition_pruning() {
  local db=$1 h
  h=$(horizon "$db")
  for p in $(sql "$db" -c "select partition from changecast.journal_partitions
                           where not is_default order by lower nulls first"); do
    if [ "$(sql "$db" -c "select not exists (select 1 from $p where xid >= '$h')")" = t ]; then
      sql "$db" -c "begin; set local lock_timeout = '100ms'; lock table $p in access exclusive mode;
                    truncate $p; commit"
      sql "$db" -c "begin; set local lock_timeout = '100ms';
                    lock table changecast.change_log in access exclusive mode; drop table $p; commit"
    fi
  done
  sql "$db" -c "delete from changecast.change_log_default where xid < '$h'"
}

# Partitions of $rows / 4 ids covering the next $rows ids, as the pruner makes them.
partitions_ahead() {
  local db=$1 next span=$(( rows / 4 ))
  next=$(sql "$db" -c "select coalesce(pg_sequence_last_value('changecast.change_log_id_seq'), 0) + 1")
  for i in 0 1 2 3 4; do
    lower=$(( next + i * span ))
    sql "$db" -c "create table changecast.change_log_p$lower (like changecast.change_log including all);
                  alter table changecast.change_log attach partition changecast.change_log_p$lower
                      for values from ($lower) to ($(( lower + span )))"
  done
}

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) rows=$rows body=$body"
echo "# $(sql postgres -c 'select version()')"
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"

before=${prefix}_unpartitioned
migrated "$before" 13
plain=$(wal_of "$before" write_rows "$before" plain_tickets)
watched=$(wal_of "$before" write_rows "$before" tickets)
echo "unpartitioned: WAL per write, unwatched table: $(per_row "$plain") B; watched: $(per_row "$watched") B; journal row: $(per_row $(( watched - plain ))) B"
age "$before"
deleted=$(wal_of "$before" delete_pruning "$before")
vacuumed=$(wal_of "$before" sql "$before" -c "vacuum changecast.change_log")
echo "unpartitioned: WAL per pruned row, DELETE: $(per_row "$deleted") B, then VACUUM: $(per_row "$vacuumed") B"

for index in change_log_xid change_log_tenant_id; do
  db=${prefix}_without_$index
  migrated "$db" 13
  sql "$db" -c "drop index changecast.$index"
  without=$(wal_of "$db" write_rows "$db" tickets)
  echo "index $index: WAL per journal row $(per_row $(( watched - without ))) B"
  admin -c "drop database $db"
done

after=${prefix}_partitioned
migrated "$after" all
partitions_ahead "$after"
plain=$(wal_of "$after" write_rows "$after" plain_tickets)
watched=$(wal_of "$after" write_rows "$after" tickets)
pglz_size=$(sql "$after" -c "select avg(pg_column_size(resource))::int from changecast.change_log")
echo "partitioned: WAL per write, unwatched table: $(per_row "$plain") B; watched: $(per_row "$watched") B; journal row: $(per_row $(( watched - plain ))) B"
age "$after"
partitions=$(sql "$after" -c "select count(*) from changecast.journal_partitions")
truncated=$(wal_of "$after" partition_pruning "$after")
left=$(sql "$after" -c "select count(*) from changecast.change_log")
removed=$(( partitions - $(sql "$after" -c "select count(*) from changecast.journal_partitions") ))
echo "partitioned: WAL per pruned row, TRUNCATE + DROP (+ DELETE of the DEFAULT partition's rows): $(per_row "$truncated") B; $removed partitions removed, $(( truncated / (removed > 0 ? removed : 1) )) B each ($left rows left)"

db=${prefix}_lz4
migrated "$db" all
if [ "$(sql postgres -c 'show server_version_num')" -lt 140000 ] \
   || ! sql "$db" -c "alter table changecast.change_log alter column resource set compression lz4" 2>/dev/null; then
  echo "lz4: not available on this server (PostgreSQL 14+ built with lz4)"
else
  partitions_ahead "$db"
  for p in $(sql "$db" -c "select partition from changecast.journal_partitions"); do
    sql "$db" -c "alter table $p alter column resource set compression lz4"
  done
  lz4=$(wal_of "$db" write_rows "$db" tickets)
  echo "lz4: WAL per write, watched: $(per_row "$lz4") B (pglz: $(per_row "$watched") B); resource bytes per row: lz4 $(sql "$db" -c "select avg(pg_column_size(resource))::int from changecast.change_log"), pglz $pglz_size, raw $(sql "$db" -c "select avg(octet_length(resource::text))::int from changecast.change_log")"
fi
admin -c "drop database $db"

admin -c "drop database $before" -c "drop database $after"
