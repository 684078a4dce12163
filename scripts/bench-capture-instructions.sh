#!/usr/bin/env bash
# The capture triggers' cost in CPU instructions (valgrind --tool=callgrind), which, unlike
# times, do not depend on what else the machine runs. On copies of public.tickets in a
# throwaway cluster, each run by a single-user backend under callgrind:
#   plain       not watched
#   row         watched through the row trigger changecast.capture() (ALWAYS), as before
#               statement capture
#   statement   watched (the statement triggers of changecast.watch())
# it counts the instructions of
#   - a single-row UPDATE by primary key and a single-row INSERT (the difference between
#     runs of 900 and 300 statements in one transaction, over 600);
#   - per row of a ROWS-row INSERT ... SELECT generate_series, and of an UPDATE of all
#     those rows (differences between runs with and without the statement).
# Instructions leave out waiting for temp-file I/O: a sort or hash that spills costs
# more time than its instructions say.
#
#   scripts/bench-capture-instructions.sh            # ROWS=20000
#
# Needs valgrind and PostgreSQL's server binaries (pg_config --bindir, else
# /usr/lib/postgresql/*/bin); run as root, it runs PostgreSQL as the user postgres.
# Builds the release binary (its migrations are the ones measured). About 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${ROWS:-20000}
bindir=$(pg_config --bindir 2>/dev/null || true)
[ -x "$bindir/postgres" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
cargo build --release --quiet --bin changecast
bin=$PWD/target/release/changecast
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- migrations || echo +changes)

dir=$(mktemp -d /tmp/changecast-instructions.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$1"; else bash -c "$1"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port=$(( 20000 + RANDOM % 20000 ))
cleanup() { as_pg "'$bindir/pg_ctl' -D '$dir/data' stop -m immediate" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
as_pg "'$bindir/initdb' -D '$dir/data' -A trust -U postgres" >/dev/null
as_pg "'$bindir/pg_ctl' -D '$dir/data' -o '-p $port -c autovacuum=off -c jit=off -k $dir' -l '$dir/log' -w start" >/dev/null
db="postgres://postgres@127.0.0.1:$port/postgres"
"$bin" migrate --database-url "$db" >/dev/null 2>&1
psql -qX -v ON_ERROR_STOP=1 "$db" >/dev/null <<'SQL'
create table public.seed (like public.tickets including all);
insert into public.seed (tenant_id, title) select 't1', 'title' from generate_series(1, 300);
create table public.plain (like public.tickets including all);
create table public.row (like public.tickets including all);
create table public.statement (like public.tickets including all);
select changecast.watch('public.row', 'row');
select changecast.watch('public.statement', 'statement');
drop trigger changecast_capture_insert on public.row;
drop trigger changecast_capture_update on public.row;
drop trigger changecast_capture_delete on public.row;
alter table public.row enable always trigger changecast_capture;
insert into public.plain select * from public.seed;
insert into public.row select * from public.seed;
insert into public.statement select * from public.seed;
checkpoint;
SQL
mapfile -t ids < <(psql -qtAX "$db" -c "select id from public.seed order by id")
version=$(psql -qtAX "$db" -c "show server_version")
as_pg "'$bindir/pg_ctl' -D '$dir/data' stop -m fast" >/dev/null

tables=(plain row statement)
for t in "${tables[@]}"; do
  for n in 300 900; do
    { echo "begin;"
      for i in $(seq 0 $((n - 1))); do
        echo "update public.$t set title = title || '!' where id = '${ids[i % 300]}';"
      done
      echo "rollback;"
    } > "$dir/$t.update.$n.sql"
    { echo "begin;"
      for _ in $(seq "$n"); do echo "insert into public.$t (tenant_id, title) values ('t1', 'title');"; done
      echo "rollback;"
    } > "$dir/$t.insert.$n.sql"
  done
  insert="insert into public.$t (tenant_id, title) select 't' || (g % 10), 'title ' || g from generate_series(1, $rows) g;"
  printf 'begin;\nrollback;\n' > "$dir/$t.bulk.0.sql"
  printf 'begin;\n%s\nrollback;\n' "$insert" > "$dir/$t.bulk.1.sql"
  printf 'begin;\n%s\nupdate public.%s set title = title || %s;\nrollback;\n' "$insert" "$t" "'!'" > "$dir/$t.bulk.2.sql"
done
[ "$(id -u)" = 0 ] && chown -R postgres "$dir"

instructions() { # script -> instructions of the single-user backend that ran it
  as_pg "valgrind --tool=callgrind --callgrind-out-file=/dev/null '$bindir/postgres' --single -D '$dir/data' -c jit=off postgres < '$dir/$1'" 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
declare -A per
for t in "${tables[@]}"; do
  for kind in update insert; do
    a=$(instructions "$t.$kind.300.sql"); b=$(instructions "$t.$kind.900.sql")
    per[$t.$kind]=$(( (b - a) / 600 ))
  done
  z=$(instructions "$t.bulk.0.sql"); i=$(instructions "$t.bulk.1.sql"); u=$(instructions "$t.bulk.2.sql")
  per[$t.bulk_insert]=$(( (i - z) / rows )); per[$t.bulk_update]=$(( (u - i) / rows ))
done

echo "capture instructions (callgrind; PostgreSQL $version; $rows-row bulk statements; migrations of $commit)"
printf '%-10s %16s %16s %18s %18s\n' table 'UPDATE (1 row)' 'INSERT (1 row)' 'bulk INSERT /row' 'bulk UPDATE /row'
for t in "${tables[@]}"; do
  printf '%-10s %16s %16s %18s %18s\n' "$t" "${per[$t.update]}" "${per[$t.insert]}" "${per[$t.bulk_insert]}" "${per[$t.bulk_update]}"
done
ratio() { echo "scale=2; $1 / $2" | bc; }
echo "statement / row:   single-row UPDATE $(ratio "${per[statement.update]}" "${per[row.update]}"), INSERT $(ratio "${per[statement.insert]}" "${per[row.insert]}")"
echo "statement / plain: bulk INSERT $(ratio "${per[statement.bulk_insert]}" "${per[plain.bulk_insert]}"), bulk UPDATE $(ratio "${per[statement.bulk_update]}" "${per[plain.bulk_update]}")"
echo "row / plain:       bulk INSERT $(ratio "${per[row.bulk_insert]}" "${per[plain.bulk_insert]}"), bulk UPDATE $(ratio "${per[row.bulk_update]}" "${per[plain.bulk_update]}")"
