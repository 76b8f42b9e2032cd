#!/usr/bin/env python3
"""Watches rouse's replicas while an example runs: one line per second from
the controller's /api/v1/services (desired, ready, per pool, each scaling
signal's current value), then a chart of ready replicas over the whole run.

Stops when the load process has exited and every service is back where it
started (or after --settle seconds more)."""

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


def chart(samples, width=60):
    """Ready replicas per service over time, one row per time slice."""
    if not samples:
        return
    names = sorted({name for _, row in samples for name in row})
    step = max(1, len(samples) // 40)
    print(f"\nready replicas over time (one row per {step} s; # = 1 replica)")
    for name in names:
        print(f"\n  {name}")
        for i in range(0, len(samples), step):
            t, row = samples[i]
            n = row.get(name, 0)
            print(f"  {t:>4.0f}s {n:>3} {'#' * min(n, width)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--controller", required=True)
    parser.add_argument("--load-pid", type=int, required=True)
    parser.add_argument("--settle", type=float, default=240)
    args = parser.parse_args()
    start = time.monotonic()
    first = {s["name"]: s["desired"] for s in services(args.controller)}
    samples = []
    load_done_at = None
    while True:
        now = time.monotonic() - start
        current = services(args.controller)
        samples.append((now, {s["name"]: s["ready"] for s in current}))
        print(f"{now:>5.0f}s  " + "   ".join(describe(s) for s in current), flush=True)
        if load_done_at is None and not alive(args.load_pid):
            load_done_at = now
            print("       (load finished)", flush=True)
        if load_done_at is not None:
            back = all(s["desired"] == first.get(s["name"], 0) and s["ready"] == s["desired"]
                       for s in current)
            if (back and now - load_done_at > 5) or now - load_done_at > args.settle:
                break
        time.sleep(1)
    chart(samples)


if __name__ == "__main__":
    main()
