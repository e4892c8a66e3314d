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

# The project's vectors.json is vectors-trust.json merged with
# next/vectors.json (WeChat Pay and Alipay), as next/README.md says: a next
# vector that restates an older one (the same account and request) takes its
# place, so that its expectation replaces the old one; the others follow in
# their order.
merged="$(mktemp)"
trap 'rm -f "$merged"' EXIT
python3 - "$src/vectors/vectors-trust.json" "$src/vectors/next/vectors.json" "$merged" <<'PY'
import json, sys
old = json.load(open(sys.argv[1], encoding="utf-8"))
new = json.load(open(sys.argv[2], encoding="utf-8"))
same = lambda a, b: a["account"] == b["account"] and a["request"] == b["request"]
restated = [n for n in new if any(same(n, o) for o in old)]
out = [next((n for n in restated if same(n, o)), o) for o in old]
out += [n for n in new if n not in restated]
with open(sys.argv[3], "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False, indent=2)
    f.write("\n")
PY

# source (absolute, or below SHARED_DIR) -> vendored copy (below tests/fixtures)
pairs=(
  "$merged:vectors/vectors.json"
  "vectors/README.md:vectors/README.md"
  "vectors/next/README.md:vectors/next-README.md"
  "spec/README.md:spec/README.md"
  "spec/providers.md:spec/providers.md"
)
for key in "$src"/vectors/keys/* "$src"/vectors/next/keys/*; do
  name="$(basename "$key")"
  pairs+=("${key#"$src"/}:vectors/keys/$name")
done

differ=0
for pair in "${pairs[@]}"; do
  from="${pair%%:*}"
  case "$from" in /*) ;; *) from="$src/$from" ;; esac
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
  if [ ! -f "$src/vectors/keys/$name" ] && [ ! -f "$src/vectors/next/keys/$name" ]; then
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
