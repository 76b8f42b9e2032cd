#!/usr/bin/env python3
"""Watches rouse's replicas while an example runs: one line per second from
the controller's /api/v1/services (desired, ready, per pool, each scaling
signal's current value), then a chart of ready replicas over the whole run.

Stops when the load process has exited and, after having scaled, every
service has held a steady count (ready = desired) for --quiet seconds, or
after --settle seconds more."""

import argparse
import json
import os
import time
import urllib.request


def services(controller):
    try:
        with urllib.request.urlopen(controller + "/api/v1/services", timeout=2) as r:
            return json.load(r).get("services", [])
    except (OSError, ValueError):
        return []


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie child of the shell is finished too.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def describe(service):
    parts = [f"{service['name']}: desired {service['desired']:>2} ready {service['ready']:>2}"]
    for pool in service.get("pools") or []:
        parts.append(f"{pool['name']} {pool.get('replicas', 0)}")
    for metric in service.get("metrics") or []:
        current = metric.get("current")
        shown = "-" if current is None else f"{current:.0f}"
        parts.append(f"{metric['type']} {shown}/{metric['target']:.0f}")
    return "  ".join(parts)


def row_of(service):
    """What one chart row shows of a service: ready replicas, per pool, and
    each signal's current value against its target."""
    pools = " ".join(f"{p['name']}={p.get('replicas', 0)}" for p in service.get("pools") or [])
    metrics = " ".join(
        f"{m['type']} {'-' if m.get('current') is None else format(m['current'], '.0f')}/{m['target']:.0f}"
        for m in service.get("metrics") or []
    )
    return service["ready"], pools, metrics


def chart(samples, width=40):
    """Ready replicas per service over time, one row per time slice."""
    if not samples:
        return
    names = sorted({name for _, row in samples for name in row})
    step = max(1, len(samples) // 60)
    print(f"\nready replicas over time (one row per {step} s; # = 1 replica)")
    for name in names:
        print(f"\n  {name}")
        for i in range(0, len(samples), step):
            t, row = samples[i]
            ready, pools, metrics = row.get(name, (0, "", ""))
            bar = "#" * min(ready, width)
            print(f"  {t:>4.0f}s {ready:>3} {bar:<{width}} {pools} {metrics}".rstrip())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--controller", required=True)
    parser.add_argument("--load-pid", type=int, required=True)
    parser.add_argument("--settle", type=float, default=240)
    parser.add_argument("--quiet", type=float, default=45)
    args = parser.parse_args()
    start = time.monotonic()
    samples = []
    load_done_at = None
    last_change = 0.0
    previous = None
    while True:
        now = time.monotonic() - start
        current = services(args.controller)
        samples.append((now, {s["name"]: row_of(s) for s in current}))
        print(f"{now:>5.0f}s  " + "   ".join(describe(s) for s in current), flush=True)
        if load_done_at is None and not alive(args.load_pid):
            load_done_at = now
            print("       (load finished)", flush=True)
        counts = {s["name"]: (s["desired"], s["ready"]) for s in current}
        if counts != previous:
            last_change, previous = now, counts
        if load_done_at is not None:
            steady = all(s["ready"] == s["desired"] for s in current)
            quiet = now - max(last_change, load_done_at) >= args.quiet
            if (steady and quiet) or now - load_done_at > args.settle:
                break
        time.sleep(1)
    chart(samples)


if __name__ == "__main__":
    main()
