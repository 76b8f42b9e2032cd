# load: 50 requests per second for 45 s, then 20 per second for 30 s
URL=http://127.0.0.1:18080/
rate() {
    if command -v bombardier >/dev/null; then bombardier -c 10 -r "$1" -d "$2" -H 'Host: rps.localhost' "$URL"
    elif command -v oha >/dev/null; then oha --no-tui -c 10 -q "$1" -z "$2" -H 'Host: rps.localhost' "$URL"
    else hey -c 10 -q $(( $1 / 10 )) -z "$2" -host rps.localhost "$URL"; fi
}
rate 50 45s
rate 20 30s
