# load: 30 s of memory-heavy requests (32 MiB held 1 s, 8 at once), then 30 s of CPU (10 ms, 8 at once)
run() {
    if command -v bombardier >/dev/null; then bombardier -c 8 -d 30s -H 'Host: mixed.localhost' "$1"
    elif command -v oha >/dev/null; then oha --no-tui -c 8 -z 30s -H 'Host: mixed.localhost' "$1"
    else hey -c 8 -z 30s -host mixed.localhost "$1"; fi
}
run 'http://127.0.0.1:18080/mem/32?hold_ms=1000'
run http://127.0.0.1:18080/cpu/10
