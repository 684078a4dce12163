#!/usr/bin/env bash
# The capture triggers' cost, on copies of public.tickets, alternating, min of ROUNDS:
# - per row of a 20,000-row INSERT: watched (t_now: the statement triggers of V14), the
#   row trigger changecast.capture() attached instead (t_row), and migration V8's row
#   trigger (t_v8, the last one without the table-owner checks);
# - per single-row statement (2,000 INSERTs, then 2,000 UPDATEs of one row by primary
#   key, in one transaction, from a PL/pgSQL loop): unwatched (t_plain), t_row, t_now;
# - per row of 2,000-row INSERTs into watched tables with an enum column owned by a
#   superuser and by another role.
# Usage: scripts/bench-trigger.sh [ROUNDS]   (needs psql; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
admin=${CHANGECAST_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=${admin%/*}/changecast_bench_trigger
cargo build --release --quiet --bin changecast   # its migrations are the ones measured
bin=target/release/changecast
psql -qX "$admin" -c "drop database if exists changecast_bench_trigger" -c "create database changecast_bench_trigger"
"$bin" migrate --database-url "$db" >/dev/null 2>&1
v8=$(sed -n '/^create or replace function changecast.capture()/,/^\$\$;/p' migrations/V8__capture_rings_inline.sql \
     | sed 's/function changecast.capture()/function public.capture_v8()/')
psql -qX -v ON_ERROR_STOP=1 "$db" >/dev/null <<SQL
$v8
create table public.t_v8 (like public.tickets including all);
create table public.t_now (like public.tickets including all);
create table public.t_row (like public.tickets including all);
create table public.t_plain (like public.tickets including all);
do \$\$ begin
  if not exists (select from pg_roles where rolname = 'changecast_bench_type_owner') then
    create role changecast_bench_type_owner nologin;
  end if;
end \$\$;
create type public.mood_superuser as enum ('a', 'b');
create type public.mood_owned as enum ('a', 'b');
alter type public.mood_owned owner to changecast_bench_type_owner;
create table public.t_enum_superuser (like public.tickets including all, mood public.mood_superuser default 'a');
create table public.t_enum_owned (like public.tickets including all, mood public.mood_owned default 'a');
select changecast.watch('public.t_now', 't_now');
select changecast.watch('public.t_enum_superuser', 't_enum_superuser');
select changecast.watch('public.t_enum_owned', 't_enum_owned');
select changecast.watch('public.t_v8', 't_v8');
select changecast.watch('public.t_row', 't_row');
do \$\$ declare t text; op text; begin
  foreach t in array array['t_v8', 't_row'] loop
    foreach op in array array['insert', 'update', 'delete'] loop
      execute format('drop trigger changecast_capture_%s on public.%I', op, t);
    end loop;
  end loop;
end \$\$;
create trigger changecast_capture after insert or update or delete on public.t_v8
  for each row execute function public.capture_v8('t_v8', 'tenant_id', 'id');
create trigger changecast_capture after insert or update or delete on public.t_row
  for each row execute function changecast.capture('t_row', 'tenant_id', 'id');
-- Single-row statements: µs per statement of n INSERTs, then of n UPDATEs by key.
create function public.single_rows(tbl text, n int, out insert_us float, out update_us float)
language plpgsql as \$\$
declare t0 timestamptz; ids uuid[];
begin
  t0 := clock_timestamp();
  for i in 1..n loop
    execute format('insert into public.%I (tenant_id, title) values (''t1'', ''title'')', tbl);
  end loop;
  insert_us := extract(epoch from clock_timestamp() - t0) * 1e6 / n;
  execute format('select array(select id from public.%I)', tbl) into ids;
  t0 := clock_timestamp();
  for i in 1..n loop
    execute format('update public.%I set title = title || ''!'' where id = \$1', tbl) using ids[i];
  end loop;
  update_us := extract(epoch from clock_timestamp() - t0) * 1e6 / n;
end \$\$;
SQL
run() { # table rows -> ms
  psql -qtAX "$db" <<SQL | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
delete from changecast.change_log; delete from public.$1;
checkpoint;
\timing on
insert into public.$1 (tenant_id, title) select 't' || (g % 10), 'title ' || g from generate_series(1, $2) g;
SQL
}
single() { # table -> "insert_us update_us"
  psql -qtAX -F' ' "$db" -c "delete from changecast.change_log; delete from public.$1" -c checkpoint \
    -c "begin" -c "select * from public.single_rows('$1', 2000)" -c "commit"
}
min() { sort -n | head -1; }
declare -A ms sins supd
for table in t_v8 t_row t_now t_enum_superuser t_enum_owned; do ms[$table]=""; done
for table in t_plain t_row t_now; do sins[$table]=""; supd[$table]=""; done
for _ in $(seq "$rounds"); do
  for table in t_v8 t_row t_now; do ms[$table]+="$(run $table 20000)"$'\n'; done
  for table in t_enum_superuser t_enum_owned; do ms[$table]+="$(run $table 2000)"$'\n'; done
  for table in t_plain t_row t_now; do
    read -r i u <<<"$(single $table | grep .)"
    sins[$table]+="$i"$'\n'; supd[$table]+="$u"$'\n'
  done
done
echo "capture triggers, µs (min of $rounds; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(psql -qtAX "$db" -c 'show server_version'))"
for table in t_v8 t_row t_now; do
  printf '%-18s %8.1f  per row (20,000-row INSERT)\n' "$table" "$(echo "${ms[$table]}" | grep . | min | awk '{print $1/20}')"
done
for table in t_plain t_row t_now; do
  printf '%-18s %8.1f  per single-row INSERT %8.1f  per single-row UPDATE\n' "$table" \
    "$(echo "${sins[$table]}" | grep . | min)" "$(echo "${supd[$table]}" | grep . | min)"
done
for table in t_enum_superuser t_enum_owned; do
  printf '%-18s %8.1f  per row (2,000-row INSERT)\n' "$table" "$(echo "${ms[$table]}" | grep . | min | awk '{print $1/2}')"
done
[ -n "${KEEP:-}" ] || psql -qX "$admin" -c "drop database changecast_bench_trigger"
