#!/usr/bin/env bash
# The one-command local demo of rouse.
#
# Installs what is missing (nats-server, a load generator, curl), builds
# release binaries, starts nats-server with JetStream, rouse-controller and
# rouse-proxy with a demo service at zero replicas, then:
#   1. sends one request: it is held, wakes the service, and is answered by a
#      freshly started replica (x-rouse-cold-start: true);
#   2. sends a burst of load and prints the replica count as it rises;
#   3. deploys a second service with the `rouse` CLI while rouse runs, wakes
#      it, lists the routes and the status table, and removes it again;
#   4. waits, printing the count as the service drains back to zero, then
#      shows the scale events (`rouse events`).
# Everything it started is stopped on exit or Ctrl-C.
#
# Ports (override through the environment): ROUSE_DEMO_NATS_PORT (14222),
# ROUSE_DEMO_PORT (18080), ROUSE_DEMO_ADMIN_PORT (19090),
# ROUSE_DEMO_CONTROLLER_PORT (19091). ROUSE_DEMO_LOAD_SECONDS (15).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

NATS_PORT=${ROUSE_DEMO_NATS_PORT:-14222}
PROXY_PORT=${ROUSE_DEMO_PORT:-18080}
ADMIN_PORT=${ROUSE_DEMO_ADMIN_PORT:-19090}
CONTROLLER_PORT=${ROUSE_DEMO_CONTROLLER_PORT:-19091}
LOAD_SECONDS=${ROUSE_DEMO_LOAD_SECONDS:-15}
HOST=echo.localhost

. deploy/local/lib.sh

# --- install what is missing ------------------------------------------------
install_missing

say "building release binaries"
scripts/release-build
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

# --- start everything -------------------------------------------------------
WORK=$(mktemp -d -t rouse-demo-XXXXXX)
cleanup() {
    trap - EXIT INT TERM
    stop_started
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat > "$WORK/rouse.yaml" <<YAML
nats:
  url: nats://127.0.0.1:$NATS_PORT
proxy:
  listen: 127.0.0.1:$PROXY_PORT
  admin_listen: 127.0.0.1:$ADMIN_PORT
  report_interval: 500ms
controller:
  admin_listen: 127.0.0.1:$CONTROLLER_PORT
  state_dir: $WORK/state
services:
  - name: echo
    hosts: [$HOST]
    backend:
      process:
        command: [$BIN/rouse-echo, --port, "{port}"]
    readiness: {http_get: /healthz}
    scaling:
      min_replicas: 0
      max_replicas: 5
      target_concurrency: 10
      scale_to_zero_after: 10s
      stable_window: 10s
      drain_timeout: 10s
    hold:
      timeout: 30s
      max_requests: 10000
      max_requests_per_client: 10000   # the demo's load all comes from 127.0.0.1
YAML

say "starting nats-server (JetStream) on 127.0.0.1:$NATS_PORT"
"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
say "starting rouse-controller (admin 127.0.0.1:$CONTROLLER_PORT)"
"$BIN/rouse-controller" --config "$WORK/rouse.yaml" >"$WORK/controller.log" 2>&1 &
PIDS+=($!)
say "starting rouse-proxy on 127.0.0.1:$PROXY_PORT (admin 127.0.0.1:$ADMIN_PORT)"
"$BIN/rouse-proxy" --config "$WORK/rouse.yaml" >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$CONTROLLER_PORT/healthz"
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"

replicas() {
    local json ready desired
    json=$(curl -fsS "http://127.0.0.1:$CONTROLLER_PORT/api/v1/services" 2>/dev/null || echo '{}')
    ready=$(grep -o '"ready": [0-9]*' <<<"$json" | grep -o '[0-9]*$' || echo '?')
    desired=$(grep -o '"desired": [0-9]*' <<<"$json" | grep -o '[0-9]*$' || echo '?')
    echo "${ready:-?} ${desired:-?}"
}
show() { read -r ready desired <<<"$(replicas)"; printf '  %s  replicas ready: %s  desired: %s\n' "$(date +%T)" "$ready" "$desired"; }

say "service 'echo' starts at zero replicas"
show

say "one request to the cold service (held until a replica is ready)"
curl -sS -D - -H "Host: $HOST" -w '  (answered in %{time_total}s)\n' "http://127.0.0.1:$PROXY_PORT/"
show

say "a second request is warm (no x-rouse-cold-start header)"
curl -sS -D - -H "Host: $HOST" "http://127.0.0.1:$PROXY_PORT/"

say "load: 50 concurrent clients for ${LOAD_SECONDS}s on /sleep/100 (target 10 in flight per replica)"
URL="http://127.0.0.1:$PROXY_PORT/sleep/100"
if command -v bombardier >/dev/null 2>&1; then
    bombardier -c 50 -d "${LOAD_SECONDS}s" -H "Host: $HOST" -p result "$URL" >"$WORK/load.txt" 2>&1 &
elif command -v oha >/dev/null 2>&1; then
    oha --no-tui -c 50 -z "${LOAD_SECONDS}s" -H "Host: $HOST" "$URL" >"$WORK/load.txt" 2>&1 &
else
    hey -c 50 -z "${LOAD_SECONDS}s" -host "$HOST" "$URL" >"$WORK/load.txt" 2>&1 &
fi
LOAD=$!
while kill -0 "$LOAD" 2>/dev/null; do show; sleep 1; done
wait "$LOAD" || true
say "load generator summary"
grep -E -i "requests/sec|reqs/sec|success rate|status code|\[[0-9]{3}\]|responses|Error" "$WORK/load.txt" | head -12 || cat "$WORK/load.txt"

ROUSE=("$BIN/rouse" --config "$WORK/rouse.yaml")
say "rouse status (the CLI; --watch redraws it)"
"${ROUSE[@]}" status

say "rouse deploy: a second service, added without restarting anything"
"${ROUSE[@]}" deploy hello --host hello.localhost --max 2 --scale-to-zero-after 10s \
    --command "$BIN/rouse-echo" --port '{port}'
"${ROUSE[@]}" routes
curl -sS -H "Host: hello.localhost" -w '  (answered in %{time_total}s)\n' "http://127.0.0.1:$PROXY_PORT/"
"${ROUSE[@]}" status
say "rouse remove hello: its route goes, its replica stops"
"${ROUSE[@]}" remove hello
curl -sS -o /dev/null -w '  hello.localhost now answers %{http_code}\n' -H "Host: hello.localhost" "http://127.0.0.1:$PROXY_PORT/"

say "traffic stopped: replicas drain and return to zero (scale_to_zero_after: 10s)"
for _ in $(seq 1 90); do
    read -r ready desired <<<"$(replicas)"
    printf '  %s  replicas ready: %s  desired: %s\n' "$(date +%T)" "$ready" "$desired"
    if [ "$ready" = "0" ] && [ "$desired" = "0" ]; then break; fi
    sleep 1
done
say "rouse events (the scale events of this run, from the ROUSE_EVENTS stream)"
"${ROUSE[@]}" events --service echo || true
say "proxy metrics (excerpt)"
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^rouse_(requests_total|cold_start_wait_seconds_count|hold_timeouts_total)' || true
say "done"
