#!/usr/bin/env python3
"""A gRPC backend in the benchmark's fan-out of three: CPU per request, req/s and p99 of

  manifold-grpc  the user from a gRPC service over h2c (benches/grpc/users.proto),
                 orders and recommendations from the JSON upstream;
  manifold-json  the same fan-out with the user from the JSON upstream over HTTP/1.1;
  node-grpc      a Node BFF doing the first with @grpc/grpc-js + @grpc/proto-loader
                 (benches/grpc/node-bff-grpc.mjs: Fastify + undici, as the shared
                 benchmark's Node peer).

    cargo build --release && cargo build --release --example bench_grpc_upstream
    python3 benches/grpc_ab.py [--rounds 5] [--duration 5] [--bin target/release/manifold]

Every request asks for another id (benches/distinct-ids.lua: nothing coalesced).
Upstreams: nginx on :7001 (benches/compare), the tonic service on :7005
(examples/bench_grpc_upstream.rs). Targets run one at a time, in alternating order each
round; medians. CPU µs/req is the target's own user+system time per request (Node: its
one process).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import cpu_seconds, stop_all, data_upstream, wait_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMPARE = os.path.join(HERE, "compare")  # the benchmark's routes.toml and upstream


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    ap.add_argument("--upstream", default=os.path.join(ROOT, "target/release/examples/bench_grpc_upstream"))
    args = ap.parse_args()
    for b in (args.bin, args.upstream):
        if not os.path.exists(b):
            sys.exit(f"{b} is missing: cargo build --release && cargo build --release --example bench_grpc_upstream")
    work = tempfile.mkdtemp(prefix="manifold-grpc-ab-")
    os.makedirs(f"{work}/tmp")
    procs = []

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        procs.append(p)
        return p

    try:
        data_upstream(work, start)
        start([args.upstream])
        wait_port(7005)
        node_dir = f"{work}/node"
        os.makedirs(node_dir)
        for f in ("package.json", "node-bff-grpc.mjs", "users.proto"):
            shutil.copy(f"{HERE}/grpc/{f}", node_dir)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=node_dir, check=True,
                       stdout=subprocess.DEVNULL)
        config = f"{HERE}/grpc/routes.grpc.toml"
        script = f"{HERE}/distinct-ids.lua"
        targets = [
            ("manifold-grpc", [args.bin, "serve", "--config", config], 7103, "/api/dashboard/"),
            ("manifold-json", [args.bin, "serve", "--config", config], 7103, "/api/dashboard-json/"),
            ("node-grpc", ["node", f"{node_dir}/node-bff-grpc.mjs"], 7102, "/api/dashboard/"),
        ]
        # The three give the same answer.
        answers = {}
        for name, cmd, port, path in targets:
            p = start(cmd)
            wait_port(port)
            time.sleep(0.3)
            answers[name] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}42").read())
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
            procs.remove(p)
            time.sleep(0.3)
        # (compared as values: 1.0 and 1 are one number, as a client reads them)
        if any(a != answers["manifold-grpc"] for a in answers.values()):
            sys.exit(f"the targets answer differently: {json.dumps(answers, indent=1)}")
        results = {t[0]: [] for t in targets}
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for name, cmd, port, path in order:
                p = start(cmd)
                wait_port(port)
                time.sleep(0.5)
                url = f"http://127.0.0.1:{port}{path}"
                wrk(url + "1", 1, args.connections, script)  # warm up
                before = cpu_seconds([p.pid])
                rps, p99 = wrk(url, args.duration, args.connections, script)
                cpu_us = (cpu_seconds([p.pid]) - before) / (rps * args.duration) * 1e6
                results[name].append((rps, p99, cpu_us))
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
                procs.remove(p)
                time.sleep(0.3)
        print(f"{'target':<14} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11}  runs req/s")
        med = {}
        for name, *_ in targets:
            runs = results[name]
            med[name] = [statistics.median(r[i] for r in runs) for i in range(3)]
            m = med[name]
            print(f"{name:<14} {m[0]:>9.0f} {m[1]:>8.2f} {m[2]:>11.1f}  {' '.join(f'{r[0]:.0f}' for r in runs)}")
        g, j, n = med["manifold-grpc"], med["manifold-json"], med["node-grpc"]
        print(f"ratios cpu_grpc_vs_json={g[2] / j[2]:.2f} cpu_grpc_vs_node={g[2] / n[2]:.2f} "
              f"rps_grpc_vs_node={g[0] / n[0]:.2f} p99_grpc_vs_node={g[1] / n[1]:.2f}")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
