#!/usr/bin/env bash
# Retention figures for BENCHMARKS.md ("Retention"), SQLite default config:
#
#   scripts/bench-retention.sh p99  [BINARY]   # ingest p99 at RATE/s, without and
#                                              # with a purge of COUNT old events running
#                                              # (KINDS="without with seeded": seeded is
#                                              # the same old events, retention and
#                                              # raw_retention 100d, so nothing is purged
#                                              # or blanked: the control for the
#                                              # file's size)
#   scripts/bench-retention.sh soak [BINARY]   # the SQLite file's size every 10 s over
#                                              # SOAK_SECONDS at RATE/s, retention 2m
#
# Environment: RATE (default 500; soak 200), N (requests per p99 run, default
# 20 x RATE), COUNT (old events, default 1000000), SOAK_SECONDS (default 600),
# OUT (default bench-results/retention-<UTC time>). BINARY defaults to
# ./target/dist/payhook. Each relay is a `payhook serve` of its own on
# 127.0.0.1, loaded by `payhook bench --target`; nothing leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

MODE=${1:?p99 or soak}
B=${2:-./target/dist/payhook}
B=$(realpath "$B")
OUT=${OUT:-bench-results/retention-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
LISTEN=127.0.0.1:18080
ADMIN=127.0.0.1:19090
SINK=127.0.0.1:18999

log() { printf '== %s\n' "$*" >&2; }

# relay.toml in $1 with extra [storage] lines $2.
write_config() {
  cat >"$1/relay.toml" <<EOF
[server]
listen = "$LISTEN"
admin_listen = "$ADMIN"
admin_token = "payhook-bench-admin-token"

[storage]
url = "sqlite://$1/payhook.db"
$2

[delivery]
retry_schedule = ["0s", "1m", "5m", "15m", "1h"]
concurrency = 256
per_endpoint_concurrency = 256
allow_private_targets = true

[[endpoints]]
id = "bench-sink"
url = "http://$SINK/bench"
secret = "whsec_YmVuY2gtZW5kcG9pbnQtc2VjcmV0"
accounts = ["*"]
events = ["payment.*", "refund.*"]

[[accounts]]
id = "bench-dryad"
provider = "dryad"
secret = "bench-dryad-secret"
# payhook bench signs every callback before the load starts: a soak's
# last ones are sent SOAK_SECONDS after they were signed.
max_clock_skew = "${SKEW:-300s}"
EOF
  # CBB notices carry no replay nonce: with PROVIDER=cbb the soak's file
  # holds only what retention manages.
  if [ "${PROVIDER:-dryad}" = cbb ]; then
    cat >>"$1/relay.toml" <<EOF

[[accounts]]
id = "bench-cbb"
provider = "cbb"
public_key_file = "$REPO/sandbox-keys/cbb_platform_pub.pem"
sandbox_private_key_file = "$REPO/sandbox-keys/cbb_sandbox_priv.pem"
EOF
  fi
}

RELAY_PID=""
start_relay() {
  PAYHOOK_LOG=info,payhook::retention=debug "$B" serve --config "$1/relay.toml" 2>"$1/relay.log" &
  RELAY_PID=$!
  for _ in $(seq 1 600); do
    curl -sf "http://$ADMIN/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "relay did not come up"; cat "$1/relay.log" >&2; return 1
}
stop_relay() {
  [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null || true
  RELAY_PID=""
}
trap stop_relay EXIT

load() { # dir requests rate
  "$B" bench --target "http://$LISTEN/" --config "$1/relay.toml" --pid "$RELAY_PID" \
    -n "$2" --rate "$3" -c 64 --no-baseline --sink-listen "$SINK" --provider "${PROVIDER:-dryad}" \
    >"$1/bench.txt" 2>"$1/bench.log"
}

case "$MODE" in
p99)
  RATE=${RATE:-500}
  N=${N:-$((RATE * 40))}
  COUNT=${COUNT:-1000000}
  for run in 1 2; do
    for kind in ${KINDS:-without with}; do
      dir="$OUT/$kind-$run"; mkdir -p "$dir"
      if [ "$kind" = seeded ]; then
        write_config "$dir" 'retention = "100d"
raw_retention = "100d"'
      else
        write_config "$dir" ""
      fi
      "$B" migrate --config "$dir/relay.toml" 2>/dev/null
      if [ "$kind" != without ]; then
        log "seeding $COUNT finished events received 40 days ago"
        python3 scripts/seed-expired.py "$dir/payhook.db" "$COUNT" 40 600
      fi
      ls -l "$dir/payhook.db" >"$dir/size-before.txt"
      start_relay "$dir"
      log "$kind purge, run $run: $N callbacks at $RATE/s"
      load "$dir" "$N" "$RATE"
      stop_relay
      ls -l "$dir/payhook.db" >"$dir/size-after.txt"
      grep -h -E '"retention pass"|retention pass' "$dir/relay.log" >"$dir/passes.txt" || true
      grep -E 'p99|accepted|delivered' "$dir/bench.txt" | head -20 >&2 || true
    done
  done
  ;;
soak)
  RATE=${RATE:-200}
  SECONDS_TOTAL=${SOAK_SECONDS:-600}
  SKEW="$((SECONDS_TOTAL + 300))s"
  dir="$OUT/soak"; mkdir -p "$dir"
  write_config "$dir" 'retention = "2m"
raw_retention = "1m"'
  "$B" migrate --config "$dir/relay.toml" 2>/dev/null
  start_relay "$dir"
  load "$dir" "$((RATE * SECONDS_TOTAL))" "$RATE" &
  LOAD=$!
  echo "elapsed_s,db_bytes,wal_bytes,page_count,freelist,events" >"$dir/size.csv"
  t0=$(date +%s)
  while kill -0 "$LOAD" 2>/dev/null; do
    python3 - "$dir/payhook.db" "$(( $(date +%s) - t0 ))" >>"$dir/size.csv" <<'PY'
import os, sqlite3, sys
path, elapsed = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
pages = conn.execute("PRAGMA page_count").fetchone()[0]
free = conn.execute("PRAGMA freelist_count").fetchone()[0]
events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
conn.close()
wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
print(f"{elapsed},{os.path.getsize(path)},{wal},{pages},{free},{events}")
PY
    sleep 10
  done
  wait "$LOAD" || true
  stop_relay
  grep -c 'retention pass' "$dir/relay.log" >"$dir/passes.txt" || true
  ;;
*)
  log "unknown mode $MODE"; exit 2
  ;;
esac
log "reports in $OUT"
