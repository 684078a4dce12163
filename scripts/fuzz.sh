#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for SECONDS each (default 60) with cargo-fuzz on the
# nightly toolchain. Starts from the committed corpus (fuzz/corpus/<target>); a crash
# stops the run with the input saved in fuzz/artifacts/<target>/ and the reproducer
# command printed.
#
#   scripts/fuzz.sh 300              # five minutes per target
#   FUZZ_GROW=1 scripts/fuzz.sh 600  # also add the new interesting inputs to the corpus
#   FUZZ_TARGETS="cursor" scripts/fuzz.sh 60
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs cargo-fuzz on a nightly toolchain:" >&2
  echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 2
fi

cd fuzz
targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
  committed="corpus/$target"
  mkdir -p "$committed"
  if [ "${FUZZ_GROW:-0}" = 1 ]; then
    # libFuzzer writes new inputs into the first corpus folder.
    corpora=("$committed")
  else
    mkdir -p "$scratch/$target"
    corpora=("$scratch/$target" "$committed")
  fi
  echo "== fuzz target $target: ${seconds}s"
  log="$scratch/$target.log"
  status=0
  cargo +nightly fuzz run "$target" "${corpora[@]}" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target FAILED (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
