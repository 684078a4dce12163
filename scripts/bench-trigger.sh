#!/usr/bin/env bash
# The capture trigger's cost per row written: a 20,000-row INSERT into a watched copy of
# public.tickets under the current trigger, beside the same INSERT under migration V8's
# trigger (the last one without the table-owner checks), alternating, min of ROUNDS; and
# 2,000-row INSERTs into tables with an enum column owned by a superuser and by another
# role. Usage: scripts/bench-trigger.sh [ROUNDS]   (needs psql; builds the release binary)
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
drop trigger changecast_capture on public.t_v8;
create trigger changecast_capture after insert or update or delete on public.t_v8
  for each row execute function public.capture_v8('t_v8', 'tenant_id', 'id');
SQL
run() { # table rows -> ms
  psql -qtAX "$db" <<SQL | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
delete from changecast.change_log; delete from public.$1;
checkpoint;
\timing on
insert into public.$1 (tenant_id, title) select 't' || (g % 10), 'title ' || g from generate_series(1, $2) g;
SQL
}
min() { sort -n | head -1; }
declare -A ms
for table in t_v8 t_now t_enum_superuser t_enum_owned; do ms[$table]=""; done
for _ in $(seq "$rounds"); do
  for table in t_v8 t_now; do ms[$table]+="$(run $table 20000)"$'\n'; done
  for table in t_enum_superuser t_enum_owned; do ms[$table]+="$(run $table 2000)"$'\n'; done
done
echo "capture trigger, µs per row (min of $rounds; $(nproc) cores; $(psql -qtAX "$db" -c 'show server_version'))"
for table in t_v8 t_now; do
  printf '%-18s %8.1f  (20,000-row INSERT)\n' "$table" "$(echo "${ms[$table]}" | grep . | min | awk '{print $1/20}')"
done
for table in t_enum_superuser t_enum_owned; do
  printf '%-18s %8.1f  (2,000-row INSERT)\n' "$table" "$(echo "${ms[$table]}" | grep . | min | awk '{print $1/2}')"
done
[ -n "${KEEP:-}" ] || psql -qX "$admin" -c "drop database changecast_bench_trigger"
