# load: 40 connections for 60 s, each request burning 10 ms of CPU
URL=http://127.0.0.1:18080/cpu/10
if command -v bombardier >/dev/null; then exec bombardier -c 40 -d 60s -H 'Host: cpu.localhost' "$URL"
elif command -v oha >/dev/null; then exec oha --no-tui -c 40 -z 60s -H 'Host: cpu.localhost' "$URL"
else exec hey -c 40 -z 60s -host cpu.localhost "$URL"; fi
