# Shared by the local demo (demo.sh) and the examples (deploy/examples/run.sh):
# messages, installing what is missing, stopping what was started, waiting
# for an HTTP endpoint. Source it; it defines functions and PIDS only.

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Installs nats-server, curl, a load generator (hey, unless bombardier or oha
# is there) and the packages given as arguments, when missing.
install_missing() {
    local missing=("$@")
    command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if ! command -v bombardier >/dev/null 2>&1 && ! command -v oha >/dev/null 2>&1 \
        && ! command -v hey >/dev/null 2>&1; then
        missing+=(hey)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
}

# Every process started, in start order; stop_started stops them in
# reverse (the proxy, then the controller, which on SIGTERM takes its
# replicas out of KV and stops them while NATS is still up, then NATS).
PIDS=()
stop_started() {
    say "stopping everything that was started"
    for ((i=${#PIDS[@]}-1; i>=0; i--)); do
        pid=${PIDS[$i]}
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

wait_http() {
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    return 1
}
