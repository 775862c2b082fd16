#!/usr/bin/env python3
"""Pass-through against nginx: the shared benchmark's pass-through case alone, with the
proxies' CPU per request, so a change to the hot path can be judged in a minute.

    cargo build --release
    python3 benches/passthrough_ab.py [--rounds 5] [--duration 5] [--bin A --bin B ...]
    python3 benches/passthrough_ab.py --fanout --bin A --bin B   # the fan-out instead

With --fanout, the binaries serve the benchmark's fan-out of three with a different id
on every request (distinct-ids.lua: nothing can be coalesced) and nginx is left out.

Each round runs nginx-as-proxy and every manifold binary given (default
target/release/manifold), in alternating order so machine drift hits all alike; medians.
CPU µs/req is the proxy's own user+system time (nginx: all its workers) divided by the
requests served: on a 2-core box, where wrk and the upstream share the cores, it is the
number a change moves. Uses benches/compare (upstream nginx on :7001, proxy.nginx.conf,
routes.toml: the same set-up as benches/compare.py).
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import children, cpu_seconds, data_upstream, stop_all, wait_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMPARE = os.path.join(HERE, "compare")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--bin", action="append", help="a manifold binary (repeat to compare)")
    ap.add_argument("--fanout", action="store_true", help="fan-out of three, distinct ids, instead of pass-through")
    args = ap.parse_args()
    bins = args.bin or [os.path.join(ROOT, "target/release/manifold")]
    for b in bins:
        if not os.path.exists(b):
            sys.exit(f"{b} is missing: cargo build --release")
    work = tempfile.mkdtemp(prefix="manifold-passthrough-ab-")
    os.makedirs(f"{work}/tmp")
    procs = []

    def start(cmd):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        return p

    try:
        data_upstream(work, start)
        text = open(f"{COMPARE}/proxy.nginx.conf").read().replace("__WORK__", work)
        open(f"{work}/proxy.nginx.conf", "w").write(text)
        proxy = start(["nginx", "-p", work, "-c", f"{work}/proxy.nginx.conf"])
        wait_port(7101)
        time.sleep(0.3)
        nginx_pids = [proxy.pid] + children(proxy.pid)
        targets = [] if args.fanout else [("nginx", "http://127.0.0.1:7101/api/users/42", nginx_pids, None)]
        config = f"{COMPARE}/routes.toml"
        url = "http://127.0.0.1:7103/api/dashboard/" if args.fanout else "http://127.0.0.1:7103/api/users/42"
        script = f"{HERE}/distinct-ids.lua" if args.fanout else None
        for i, b in enumerate(bins):
            targets.append((f"manifold{i}" if len(bins) > 1 else "manifold", url, None, b))
        results = {t[0]: [] for t in targets}
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for name, url, pids, binary in order:
                gw = None
                if binary:
                    gw = start([binary, "serve", "--config", config])
                    wait_port(7103)
                    time.sleep(0.3)
                    pids = [gw.pid]
                before = cpu_seconds(pids)
                rps, p99 = wrk(url, args.duration, args.connections, script if binary else None)
                cpu_us = (cpu_seconds(pids) - before) / (rps * args.duration) * 1e6
                results[name].append((rps, p99, cpu_us))
                if gw:
                    os.killpg(gw.pid, signal.SIGTERM)
                    gw.wait(timeout=10)
                    procs.remove(gw)
                    time.sleep(0.3)
        print(f"{'target':<10} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11}  runs req/s")
        base = None
        for name, *_ in targets:
            runs = results[name]
            med = [statistics.median(r[i] for r in runs) for i in range(3)]
            base = base or med[0]
            print(f"{name:<10} {med[0]:>9.0f} {med[1]:>8.2f} {med[2]:>11.1f}  "
                  f"{' '.join(f'{r[0]:.0f}' for r in runs)}  ({med[0] / base:.2f}x {targets[0][0]})")
        # The box drifts between rounds more than a small change moves the figure; a
        # round's targets run back to back, so each round's ratio to the first target
        # cancels most of the drift. Their median, and all of them, say how sure it is.
        first = targets[0][0]
        print(f"{'target':<10} CPU µs/req by round; CPU/{first} in the same round (median)")
        for name, *_ in targets:
            cpu = [r[2] for r in results[name]]
            ratios = [c / b[2] for c, b in zip(cpu, results[first])]
            print(f"{name:<10} {' '.join(f'{c:.1f}' for c in cpu)}  ratios "
                  f"{' '.join(f'{x:.3f}' for x in ratios)}  median {statistics.median(ratios):.3f}")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
