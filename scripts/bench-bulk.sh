#!/usr/bin/env bash
# Bulk statements on a watched table: a ROWS-row INSERT ... SELECT generate_series and an
# UPDATE of all those rows, in one transaction, on copies of public.tickets:
#   plain      not watched
#   watched    changecast.watch()ed (statement triggers)
#   row        watched through the row trigger changecast.capture() alone (which
#              watch() leaves for replica mode), as before statement capture
# in the same run, alternating, min of ROUNDS; prints ms per statement and the ratios
# watched/plain and row/plain, in time and in the backend's CPU time (when the server runs here).
#
#   scripts/bench-bulk.sh            # ROUNDS=1 ROWS=1000000
#   ROUNDS=3 ROWS=200000 scripts/bench-bulk.sh
#   TABLES="b_plain b_watched" ROUNDS=3 scripts/bench-bulk.sh   # without the row trigger
#
# Each round's times are printed as they come, then the min of the rounds.
# Needs psql; builds the release binary (its migrations are the ones measured).
# Environment: CHANGECAST_BENCH_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres),
# KEEP=1 keeps the database changecast_bench_bulk.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-1}
rows=${ROWS:-1000000}
read -r -a tables <<<"${TABLES:-b_plain b_watched b_row}"
for table in "${tables[@]}"; do
  case $table in b_plain | b_watched | b_row) ;; *) echo "TABLES: unknown table $table (b_plain, b_watched, b_row)" >&2; exit 2 ;; esac
done
[ "${tables[0]:-}" = b_plain ] || { echo "TABLES must start with b_plain (the ratios' base)" >&2; exit 2; }
admin=${CHANGECAST_BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=${admin%/*}/changecast_bench_bulk
cargo build --release --quiet --bin changecast
bin=target/release/changecast
psql -qX "$admin" -c "drop database if exists changecast_bench_bulk" -c "create database changecast_bench_bulk"
"$bin" migrate --database-url "$db" >/dev/null 2>&1
psql -qX -v ON_ERROR_STOP=1 "$db" >/dev/null <<'SQL'
create table public.b_plain (like public.tickets including all);
create table public.b_watched (like public.tickets including all);
create table public.b_row (like public.tickets including all);
select changecast.watch('public.b_watched', 'b_watched');
select changecast.watch('public.b_row', 'b_row');
drop trigger changecast_capture_insert on public.b_row;
drop trigger changecast_capture_update on public.b_row;
drop trigger changecast_capture_delete on public.b_row;
alter table public.b_row enable always trigger changecast_capture;
SQL
pid_file=$(mktemp /tmp/changecast-bench-bulk.XXXXXX)
trap 'rm -f "$pid_file"' EXIT
# The backend's CPU time in ms (utime + stime of /proc/PID/stat), or "-" when the server
# is not a process of this machine: unlike the times, it leaves out waiting for the CPU
# on a busy machine.
backend_cpu='\! pid=$(tr -d " \\n" < '"$pid_file"'); if grep -qa postgres /proc/$pid/cmdline 2>/dev/null; then awk -v hz=$(getconf CLK_TCK) "{print \"cpu\", (\$14 + \$15) * 1000 / hz}" /proc/$pid/stat; else echo "cpu -"; fi'
run() { # table -> "insert_ms update_ms insert_cpu_ms update_cpu_ms"
  psql -qtAX -v ON_ERROR_STOP=1 "$db" <<SQL | awk '
    /^Time: / { time[++t] = $2 } /^cpu / { cpu[++c] = $2 }
    END { d = (cpu[1] == "-") ? "-" : ""
          printf "%s %s %s %s\n", time[1], time[2], d == "" ? cpu[2] - cpu[1] : d, d == "" ? cpu[3] - cpu[2] : d }'
truncate public.$1; delete from changecast.change_log;
vacuum analyze public.$1; vacuum changecast.change_log;
checkpoint;
\o $pid_file
select pg_backend_pid();
\o
begin;
$backend_cpu
\timing on
insert into public.$1 (tenant_id, title) select 't' || (g % 10), 'title ' || g from generate_series(1, $rows) g;
\timing off
$backend_cpu
\timing on
update public.$1 set title = title || '!';
\timing off
$backend_cpu
commit;
SQL
}
declare -A ins upd ins_cpu upd_cpu
for round in $(seq "$rounds"); do
  for table in "${tables[@]}"; do
    read -r i u ic uc <<<"$(run "$table")"
    [ -n "$u" ] || { echo "round $round, $table: the statements failed" >&2; exit 1; }
    ins[$table]+="$i"$'\n'; upd[$table]+="$u"$'\n'
    ins_cpu[$table]+="$ic"$'\n'; upd_cpu[$table]+="$uc"$'\n'
    printf 'round %d %-10s insert %8.0f ms (CPU %s)  update %8.0f ms (CPU %s)  load %s\n' \
      "$round" "$table" "$i" "$ic" "$u" "$uc" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
min() { grep . | sort -n | head -1; }
ratio() { if [ "$1" = - ] || [ "$2" = - ]; then echo -; else printf '%.2f' "$(echo "$1 / $2" | bc -l)"; fi; }
echo "bulk statements, ms (min of $rounds; $rows rows; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(psql -qtAX "$db" -c 'show server_version'))"
printf '%-10s %8s %8s %8s %8s %10s %10s %14s %14s\n' table insert update 'ins CPU' 'upd CPU' ins/plain upd/plain 'ins/plain CPU' 'upd/plain CPU'
pi=$(echo "${ins[b_plain]}" | min); pu=$(echo "${upd[b_plain]}" | min)
pic=$(echo "${ins_cpu[b_plain]}" | min); puc=$(echo "${upd_cpu[b_plain]}" | min)
for table in "${tables[@]}"; do
  i=$(echo "${ins[$table]}" | min); u=$(echo "${upd[$table]}" | min)
  ic=$(echo "${ins_cpu[$table]}" | min); uc=$(echo "${upd_cpu[$table]}" | min)
  printf '%-10s %8.0f %8.0f %8s %8s %10s %10s %14s %14s\n' "$table" "$i" "$u" "$ic" "$uc" \
    "$(ratio "$i" "$pi")" "$(ratio "$u" "$pu")" "$(ratio "$ic" "$pic")" "$(ratio "$uc" "$puc")"
done
[ -n "${KEEP:-}" ] || psql -qX "$admin" -c "drop database changecast_bench_bulk"
