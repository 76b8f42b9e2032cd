#!/usr/bin/env bash
# Runs one example of deploy/examples: installs what is missing, builds,
# starts nats-server (JetStream), rouse-controller and rouse-proxy with the
# example's rouse.yaml, runs its load.sh, and shows the replicas second by
# second (watch.py), then a chart of the whole run. Everything it started is
# stopped on exit or Ctrl-C.
#
#   deploy/examples/run.sh cpu        # or rps, queue, memory-burst, cpu-memory
#
# ROUSE_BIN=DIR uses binaries already built in DIR instead of building
# release ones. The examples' ports: NATS 14222, proxy 18080, proxy admin
# 19090, controller admin 19091.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
NAME=${1:?usage: deploy/examples/run.sh EXAMPLE (one of: $(cd deploy/examples && ls -d */ | tr -d / | tr '\n' ' '))}
EXAMPLE=$ROOT/deploy/examples/$NAME
[ -f "$EXAMPLE/rouse.yaml" ] || { echo "no example called $NAME" >&2; exit 2; }

. deploy/local/lib.sh
if command -v python3 >/dev/null 2>&1; then install_missing; else install_missing python3; fi

if [ -n "${ROUSE_BIN:-}" ]; then
    BIN=$ROUSE_BIN
else
    say "building release binaries"
    scripts/release-build
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
# The example configs name `rouse-echo` and `rouse-controller` by name.
export PATH="$BIN:$PATH"

WORK=$(mktemp -d -t rouse-example-XXXXXX)
cleanup() {
    trap - EXIT INT TERM
    stop_started
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$WORK"
say "starting nats-server, rouse-controller and rouse-proxy with $NAME/rouse.yaml"
"$NATS_SERVER" -a 127.0.0.1 -p 14222 -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
rouse-controller --config "$EXAMPLE/rouse.yaml" >"$WORK/controller.log" 2>&1 &
PIDS+=($!)
rouse-proxy --config "$EXAMPLE/rouse.yaml" >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:19091/healthz"
wait_http "http://127.0.0.1:19090/readyz"

say "load: $(grep -m1 '^# load:' "$EXAMPLE/load.sh" | sed 's/^# load: //')"
# Two seconds late, so the chart starts from where the service was.
(sleep 2; exec bash "$EXAMPLE/load.sh") >"$WORK/load.txt" 2>&1 &
LOAD=$!
PIDS+=($LOAD)
python3 "$ROOT/deploy/examples/watch.py" --controller http://127.0.0.1:19091 \
    --load-pid "$LOAD" --settle "${ROUSE_EXAMPLE_SETTLE:-240}"
say "load generator output (tail)"
tail -n 15 "$WORK/load.txt" || true
