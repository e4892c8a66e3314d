#!/usr/bin/env bash
# Refreshes the vendored copy of the shared contract in tests/fixtures/ from
# its source of truth, and reports every difference.
#
#   scripts/refresh-fixtures.sh [--check] [SHARED_DIR]
#
# SHARED_DIR is the contract's folder (the one holding spec/ and vectors/);
# by default the folder named "shared" beside this repository.
#
#   --check   change nothing; exit 1 if the vendored copy differs
#
# The build, the relay and the tests never read SHARED_DIR: they read only
# tests/fixtures/, so that a clone anywhere builds and tests on its own.
#
# Examples:
#   scripts/refresh-fixtures.sh                   # copy, then list what changed
#   scripts/refresh-fixtures.sh --check           # CI-style drift report
#   scripts/refresh-fixtures.sh /srv/payhook-shared
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

check=0
src=""
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option: $arg" >&2; usage >&2; exit 2 ;;
    *) src="$arg" ;;
  esac
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$src" ]; then src="$(dirname "$repo")/shared"; fi
if [ ! -d "$src/vectors" ] || [ ! -d "$src/spec" ]; then
  echo "no contract at $src (expected $src/vectors and $src/spec)" >&2
  exit 2
fi
dest="$repo/tests/fixtures"

# source (below SHARED_DIR) -> vendored copy (below tests/fixtures)
pairs=(
  "vectors/vectors-trust.json:vectors/vectors.json"
  "vectors/README.md:vectors/README.md"
  "spec/README.md:spec/README.md"
  "spec/providers.md:spec/providers.md"
)
for key in "$src"/vectors/keys/*; do
  name="$(basename "$key")"
  pairs+=("vectors/keys/$name:vectors/keys/$name")
done

differ=0
for pair in "${pairs[@]}"; do
  from="$src/${pair%%:*}"
  to="$dest/${pair##*:}"
  if [ -f "$to" ] && cmp -s "$from" "$to"; then continue; fi
  differ=1
  if [ -f "$to" ]; then
    echo "changed: tests/fixtures/${pair##*:}"
    diff -u "$to" "$from" | head -40 || true
  else
    echo "new: tests/fixtures/${pair##*:}"
  fi
  if [ "$check" -eq 0 ]; then
    mkdir -p "$(dirname "$to")"
    cp "$from" "$to"
    chmod u+w,a+r "$to"
  fi
done
# Keys that the source no longer has.
for key in "$dest"/vectors/keys/*; do
  [ -e "$key" ] || continue
  name="$(basename "$key")"
  if [ ! -f "$src/vectors/keys/$name" ]; then
    differ=1
    echo "gone upstream: tests/fixtures/vectors/keys/$name"
    [ "$check" -eq 0 ] && rm "$key"
  fi
done

if [ "$differ" -eq 0 ]; then
  echo "tests/fixtures matches $src"
elif [ "$check" -eq 1 ]; then
  echo "tests/fixtures differs from $src: run scripts/refresh-fixtures.sh" >&2
  exit 1
else
  echo "tests/fixtures refreshed from $src"
fi
