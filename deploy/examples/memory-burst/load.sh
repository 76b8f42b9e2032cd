# load: 45 s of requests each holding 48 MiB for 2 s, 12 at once
URL='http://127.0.0.1:18080/mem/48?hold_ms=2000'
if command -v bombardier >/dev/null; then exec bombardier -c 12 -d 45s -H 'Host: heavy.localhost' "$URL"
elif command -v oha >/dev/null; then exec oha --no-tui -c 12 -z 45s -H 'Host: heavy.localhost' "$URL"
else exec hey -c 12 -z 45s -host heavy.localhost "$URL"; fi
