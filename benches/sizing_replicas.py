#!/usr/bin/env python3
"""Replicas sharing one Redis: the replicas curve of docs/operations.md ("Sizing").

    cargo build --release
    apt-get install -y nginx-light wrk redis-server; pip install matplotlib
    python3 benches/sizing_replicas.py [--bin target/release/manifold] [--png docs/sizing-replicas.png]

R replicas (1 to 3, one worker each) share a Redis (`[shared]`): benches/compare's
fan-out of three with a shared route rate limit (high enough never to refuse) and the
user backend's answers cached in Redis. Every replica gets its own wrk (32
connections, a different id on every request: every cache lookup misses and is
written, the costliest case), all at once. Prints the total req/s, Redis commands per
request (`total_commands_processed`) and Redis's and the replicas' CPU µs per request.

On this 2-core machine the replicas, Redis, the upstream and wrk share the cores, so
total req/s cannot grow with R here; what the curve shows is that the work per request
(Redis commands, CPU) stays flat as replicas are added: it scales with machines.
"""
import os
import statistics
import subprocess
import threading
import time

from benchlib import cpu_seconds, data_upstream, plot, session, sizing_args, stop_all, wait_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
REDIS = 7379


def config(port):
    text = open(os.path.join(HERE, "compare/routes.toml")).read()
    text = text.replace('listen = "127.0.0.1:7103"', f'listen = "127.0.0.1:{port}"\nworkers = 1', 1)
    text = text.replace('admin_listen = "127.0.0.1:7113"', f'admin_listen = "127.0.0.1:{port + 10}"', 1)
    text = text.replace("[upstreams.svc]", f'[shared]\nredis = "redis://127.0.0.1:{REDIS}/0"\n\n[upstreams.svc]', 1)
    text = text.replace('path = "/api/dashboard/{id}"\n',
                        'path = "/api/dashboard/{id}"\nrate_limit = { per_second = 1000000, burst = 1000000 }\n', 1)
    return text.replace('  path = "/users/{id}"\n  group = "user"', '  path = "/users/{id}"\n  group = "user"\n'
                        '  cache_ttl = "60s"', 1)


def redis_commands():
    out = subprocess.run(["redis-cli", "-p", str(REDIS), "info", "stats"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    return 0


def main():
    args = sizing_args(__doc__, "sizing-replicas.png", duration=6, rounds=2)
    work, procs, start = session("manifold-sizing-replicas-")

    try:
        data_upstream(work, start)
        redis = start(["redis-server", "--port", str(REDIS), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        wait_port(REDIS)
        ports = [7103, 7203, 7303]
        replicas = []
        for port in ports:
            open(f"{work}/r{port}.toml", "w").write(config(port))
            replicas.append(start([args.bin, "serve", "--config", f"{work}/r{port}.toml"]))
            wait_port(port)
        script = os.path.join(HERE, "distinct-path.lua")
        rows = []
        print(f"{'replicas':>8} {'req/s total':>11} {'redis cmds/req':>14} {'redis µs/req':>12} {'replicas µs/req':>15}")
        for r in (1, 2, 3):
            runs = []
            for _ in range(args.rounds):
                results = {}
                pids = [p.pid for p in replicas[:r]]
                cmds, rcpu, gcpu = redis_commands(), cpu_seconds([redis.pid]), cpu_seconds(pids)

                def load(port):
                    # Each replica its own id range, so one's cache never answers another's.
                    results[port] = wrk(f"http://127.0.0.1:{port}/api/dashboard/{port}-", args.duration, 32, script)

                threads = [threading.Thread(target=load, args=(p,)) for p in ports[:r]]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                served = sum(rps for rps, _ in results.values()) * args.duration
                runs.append((served / args.duration, (redis_commands() - cmds) / served,
                             (cpu_seconds([redis.pid]) - rcpu) * 1e6 / served,
                             (cpu_seconds(pids) - gcpu) * 1e6 / served))
                time.sleep(1)
            row = tuple(statistics.median(x[i] for x in runs) for i in range(4))
            rows.append((r, *row))
            print(f"{r:>8} {row[0]:>11.0f} {row[1]:>14.2f} {row[2]:>12.1f} {row[3]:>15.1f}")
        rs = [row[0] for row in rows]
        plot(args.png, "Replicas sharing one Redis (fan-out of three, cache misses)", "replicas",
             "per request", [("Redis commands per request", rs, [row[2] for row in rows]),
                             ("Redis CPU µs per request", rs, [row[3] for row in rows]),
                             ("replicas' CPU µs per request / 10", rs, [row[4] / 10 for row in rows])],
             note="benches/sizing_replicas.py")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
