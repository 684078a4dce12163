#!/usr/bin/env bash
# One command per table of BENCHMARKS.md. Builds the release binaries, then runs:
#   scripts/bench.sh write        write-path comparison (pgbench; scripts/bench-write.sh)
#   scripts/bench.sh latency      live, S=1000 T=100 W=1000/s: changecast SSE and WS against the Node
#                                 LISTEN->SSE bridge and bare LISTEN: latency, PG CPU/change
#   scripts/bench.sh throughput   live, S=1000 T=10 W=1000/s: 100k deliveries/s, missing, service CPU,
#                                 against the Node bridge (benches/node-bridge: `npm ci` there once)
#   scripts/bench.sh replay       one subscriber 100,000 changes behind
#   scripts/bench.sh reconnect    2,000 subscribers reconnecting with cursors 1,000 changes old
#   scripts/bench.sh memory       RSS per idle subscriber, 10,000 SSE then 10,000 WS
#   scripts/bench.sh steady       1,000 changes/s for 30 min unwatched, then watched with a
#                                 10 min retention: journal size, WAL, autovacuum (one run, ~1 h)
#   scripts/bench.sh all          all of the above, in that order
# Extra arguments go to changecast-bench after the mode (e.g. --runs 5, --duration 20s).
# Output is also kept in target/bench-results/<name>-<time>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}; shift || true
cargo build --release --bins --quiet
bench=target/release/changecast-bench
mkdir -p target/bench-results
out() { tee "target/bench-results/$1-$(date -u +%Y%m%dT%H%M%SZ).md"; }

run() {
  local name=$1; shift
  case "$name" in
    write)      scripts/bench-write.sh | out write ;;
    latency)    "$bench" live --subscribers 1000 --tenants 100 --rate 1000 "$@" | out latency ;;
    throughput) "$bench" live --subscribers 1000 --tenants 10 --rate 1000 --no-bridge "$@" | out throughput ;;
    replay)     "$bench" replay --behind 100000 "$@" | out replay ;;
    reconnect)  "$bench" reconnect --subscribers 2000 --tenants 100 --behind 1000 "$@" | out reconnect ;;
    memory)     "$bench" idle-memory --subscribers 10000 --transport sse,ws "$@" | out memory ;;
    steady)     "$bench" --runs 1 steady --rate 1000 --duration 30m --retention 10m "$@" | out steady ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
}

if [ "$what" = all ]; then
  for name in write latency throughput replay reconnect memory steady; do run "$name" "$@"; done
else
  run "$what" "$@"
fi
