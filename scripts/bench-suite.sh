#!/usr/bin/env bash
# Runs every configuration of BENCHMARKS.md with `payhook bench`, each twice,
# and keeps every report as JSON. Given two binaries, it alternates them
# run by run (A, B, A, B), which is how BENCHMARKS.md compares a change with
# the binary before it on a machine whose speed drifts.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/bench-suite.sh [options] [BINARY [BINARY_B]]

Runs each configuration of BENCHMARKS.md twice with `payhook bench --json`
(BINARY defaults to ./target/dist/payhook; build it with
`cargo build --profile dist`). With BINARY_B, each configuration runs A, B, A, B.

Options:
  --only REGEX   run only the configurations whose name matches REGEX
                 (e.g. '^pg-' or 'dryad-64'); --list shows the names
  --list         print the configuration names and exit
  --requests N   send N callbacks per run instead of each configuration's
                 own count (a quick check of the suite itself)
  --out DIR      where the reports go (default: bench-results/<UTC time>)
  --postgres URL PostgreSQL admin URL for the scaled configurations
                 (default: $PAYHOOK_TEST_POSTGRES_URL or
                 postgres://postgres@127.0.0.1:5432/postgres)
  --amqp URL     RabbitMQ URL (default: $PAYHOOK_TEST_AMQP_URL or
                 amqp://guest:guest@127.0.0.1:5672/%2f)
  -h, --help     this text

Each run writes DIR/<configuration>.<binary>.<round>.json; with python3
present, a line per run summarizes it as it finishes.
EOF
}

cd "$(dirname "$0")/.."
only=""
requests=""
list=0
out=""
pg="${PAYHOOK_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
amqp="${PAYHOOK_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --only) only="$2"; shift 2 ;;
    --list) list=1; shift ;;
    --requests) requests="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --postgres) pg="$2"; shift 2 ;;
    --amqp) amqp="$2"; shift 2 ;;
    -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    *) bins+=("$1"); shift ;;
  esac
done
[ ${#bins[@]} -eq 0 ] && bins=(./target/dist/payhook)
if [ ${#bins[@]} -gt 2 ]; then echo "at most two binaries (see --help)" >&2; exit 2; fi

scaled=(--postgres "$pg" --amqp "$amqp")
# name | arguments (the first configuration also loads the no-work baseline)
configs=(
  "sqlite-dryad-64|-n 20000 -c 64"
  "sqlite-dryad-256|-n 20000 -c 256 --no-baseline"
  "sqlite-dryad-ingress|-n 20000 -c 64 --ingress-only --no-baseline"
  "sqlite-cbb-64|-n 20000 -c 64 --provider cbb --no-baseline"
  "sqlite-cbb-256|-n 20000 -c 256 --provider cbb --no-baseline"
  "sqlite-cbb-ingress|-n 20000 -c 64 --provider cbb --ingress-only --no-baseline"
  "sqlite-hostile-form|-n 5000 -c 16 --provider hostile-form --ingress-only --no-baseline"
  "pg-dryad-64|-n 20000 -c 64 --no-baseline SCALED"
  "pg-dryad-256|-n 30000 -c 256 --no-baseline SCALED"
  "pg-dryad-5000|-n 100000 -c 256 --rate 5000 --no-baseline SCALED"
  "pg-cbb-64|-n 20000 -c 64 --provider cbb --no-baseline SCALED"
  "pg-dryad-2500|-n 50000 -c 64 --rate 2500 --no-baseline SCALED"
  "pg-dryad-1500|-n 30000 -c 64 --rate 1500 --no-baseline SCALED"
  "sqlite-backlog-0|-n 30000 -c 64 --no-baseline"
  "sqlite-backlog-100k|-n 30000 -c 64 --no-baseline --backlog 100000"
  "sqlite-backlog-1m|-n 30000 -c 64 --no-baseline --backlog 1000000"
  "pg-backlog-0|-n 20000 -c 64 --no-baseline SCALED"
  "pg-backlog-100k|-n 20000 -c 64 --no-baseline --backlog 100000 SCALED"
  "pg-backlog-1m|-n 20000 -c 64 --no-baseline --backlog 1000000 SCALED"
)

if [ "$list" -eq 1 ]; then
  for c in "${configs[@]}"; do echo "${c%%|*}"; done
  exit 0
fi
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "$b: not an executable (cargo build --profile dist?)" >&2; exit 2; }
done
out="${out:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"

summary() {
  command -v python3 >/dev/null 2>&1 || { echo "$1"; return; }
  python3 - "$1" <<'PY'
import json, sys
path = sys.argv[1]
d = json.load(open(path))
rel, e2e, base = d["relay"], d.get("end_to_end") or {}, d.get("baseline")
line = "%s: ingress %.0f/s p50/p99 %.1f/%.1f ms" % (
    path.rsplit("/", 1)[-1], rel["throughput_per_s"], rel["latency_ms"]["p50"], rel["latency_ms"]["p99"])
if base:
    line += " (baseline %.0f/s, ratio %.3f)" % (base["throughput_per_s"], d["ratios"]["ingress_throughput"])
if e2e:
    line += "; delivered %.0f/s p50/p99 %.1f/%.1f ms, duplicates %d" % (
        e2e["throughput_per_s"], e2e["latency_ms"]["p50"], e2e["latency_ms"]["p99"], e2e["duplicates"])
line += "; relay CPU %.3f ms/event, RSS %.1f/%.1f MB, machine busy %.2f CPU-s" % (
    rel["process"]["cpu_seconds"] * 1000 / max(rel["accepted"], 1),
    rel["process"]["rss_idle_mb"], rel["process"]["rss_peak_mb"], rel["machine_cpu_busy_seconds"])
print(line)
PY
}

for c in "${configs[@]}"; do
  name="${c%%|*}"
  [ -n "$only" ] && ! [[ "$name" =~ $only ]] && continue
  read -r -a args <<<"${c#*|}"
  if [ -n "$requests" ]; then args[1]="$requests"; fi
  if [ "${args[-1]}" = SCALED ]; then
    unset 'args[-1]'
    args+=("${scaled[@]}")
  fi
  for round in 1 2; do
    for i in "${!bins[@]}"; do
      label=$([ "$i" -eq 0 ] && echo a || echo b)
      file="$out/$name.$label.$round.json"
      if "${bins[$i]}" bench --json "${args[@]}" >"$file" 2>"$file.log"; then
        summary "$file"
      else
        echo "$name.$label.$round: failed (see $file.log)" >&2
      fi
    done
  done
done
echo "reports in $out"
