#!/usr/bin/env python3
"""[shared] measured: how exact one budget across replicas is, and what Redis costs.

    cargo build --release
    apt-get install -y redis-server wrk
    python3 benches/shared_ab.py [--seconds 10] [--bin target/release/manifold]

1. Accuracy: Redis and three replicas (one worker each), a global route limit of 200/s
   (burst 20); wrk sends to the three in turn (a Lua round robin over their ports
   through one connection pool each) at well over the limit for --seconds; prints the
   admitted total against what one replica admits alone over the same time.
2. Speed: the benchmark's fan-out of three (distinct ids) on one gateway, without
   `[shared]`, and with `[shared]` + a generous shared route limit + a shared backend
   cache that misses (distinct ids), Redis on the same machine. Prints req/s, manifold's
   and Redis's CPU µs per request, and the ratio (issue 13's target: >= 0.8).

Uses benches/compare (upstream nginx on :7001, routes.toml).
"""
import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import cpu_seconds, stop_all, data_upstream, wait_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMPARE = os.path.join(HERE, "compare")  # the benchmark's routes.toml and upstream


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="manifold-shared-ab-")
    os.makedirs(f"{work}/tmp")
    procs = []

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)
        procs.append(p)
        return p

    def stop(p):
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
        procs.remove(p)

    try:
        rport = free_port()
        redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        wait_port(rport)
        data_upstream(work, start)
        base = open(f"{COMPARE}/routes.toml").read()

        # 1. Accuracy.
        ports = []
        for i in range(3):
            port, admin = free_port(), free_port()
            cfg = base.replace('listen = "127.0.0.1:7103"', f'listen = "127.0.0.1:{port}"\nworkers = 1', 1)
            cfg = cfg.replace('admin_listen = "127.0.0.1:7113"', f'admin_listen = "127.0.0.1:{admin}"', 1)
            cfg = cfg.replace("[upstreams.svc]", f'[shared]\nredis = "redis://127.0.0.1:{rport}/0"\nkey_prefix = "acc:"\n\n[upstreams.svc]', 1)
            cfg = cfg.replace('path = "/api/users/{id}"\n', 'path = "/api/users/{id}"\nrate_limit = { per_second = 200, burst = 20, key = "global" }\n', 1)
            open(f"{work}/r{i}.toml", "w").write(cfg)
            start([args.bin, "serve", "--config", f"{work}/r{i}.toml"])
            ports.append(port)
        for p in ports:
            wait_port(p)
        time.sleep(1.5)  # connected to Redis
        counts = {}

        def hammer(port):
            out = subprocess.run(["wrk", "-t1", "-c8", f"-d{args.seconds}s", f"http://127.0.0.1:{port}/api/users/42"],
                                 capture_output=True, text=True).stdout
            total = int(re.search(r"(\d+) requests in", out).group(1))
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            counts[port] = (total, total - (int(bad.group(1)) if bad else 0))

        started = time.time()
        threads = [threading.Thread(target=hammer, args=(p,)) for p in ports]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        admitted = sum(c[1] for c in counts.values())
        offered = sum(c[0] for c in counts.values())
        budget = 20 + 200 * args.seconds
        print(f"accuracy: 3 replicas admitted {admitted} of {offered} offered in {args.seconds} s; "
              f"one replica's budget {budget}: {100 * (admitted / budget - 1):+.2f} % "
              f"(per replica: {', '.join(str(c[1]) for c in counts.values())})")
        for p in list(procs):
            if p.args[0] == args.bin:
                stop(p)

        # 2. Speed.
        plain = base
        shared = base.replace("[upstreams.svc]", f'[shared]\nredis = "redis://127.0.0.1:{rport}/0"\nkey_prefix = "speed:"\n\n[upstreams.svc]', 1)
        shared = shared.replace('path = "/api/dashboard/{id}"\n', 'path = "/api/dashboard/{id}"\nrate_limit = { per_second = 1000000, burst = 1000000, key = "client_ip" }\n', 1)
        shared = shared.replace('  path = "/users/{id}"\n  group = "user"', '  path = "/users/{id}"\n  group = "user"\n  cache_ttl = "60s"', 1)
        open(f"{work}/plain.toml", "w").write(plain)
        open(f"{work}/shared.toml", "w").write(shared)
        script = f"{HERE}/distinct-ids.lua"
        results = {"plain": [], "shared": []}
        for rnd in range(args.rounds):
            for name in (["plain", "shared"] if rnd % 2 == 0 else ["shared", "plain"]):
                subprocess.run(["redis-cli", "-p", str(rport), "flushall"], capture_output=True)
                gw = start([args.bin, "serve", "--config", f"{work}/{name}.toml"])
                wait_port(7103)
                time.sleep(1.0)
                before, rbefore = cpu_seconds([gw.pid]), cpu_seconds([redis.pid])
                rps, p99 = wrk("http://127.0.0.1:7103/api/dashboard/1", 5, 64, script)
                n = rps * 5
                results[name].append((rps, p99, (cpu_seconds([gw.pid]) - before) / n * 1e6,
                                      (cpu_seconds([redis.pid]) - rbefore) / n * 1e6))
                stop(gw)
                time.sleep(0.3)
        med = {k: [statistics.median(r[i] for r in v) for i in range(4)] for k, v in results.items()}
        for k, (rps, p99, cpu, rcpu) in med.items():
            print(f"{k:<7} {rps:>8.0f} req/s  p99 {p99:6.2f} ms  manifold {cpu:6.1f} µs/req  redis {rcpu:5.1f} µs/req")
        print(f"shared/plain req/s = {med['shared'][0] / med['plain'][0]:.2f}")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
