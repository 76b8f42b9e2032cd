# load: 2,000 messages published at once to the JOBS stream (50 ms of work each)
exec rouse-echo publish --nats-url nats://127.0.0.1:14222 --stream JOBS --subject jobs.in \
    --consumer workers --create --count 2000
