#!/usr/bin/env python3
"""The cost of tracing: manifold with tracing off and on (sample_ratio 1.0, a collector
reachable), interleaved round by round so machine drift hits both alike; medians.

    cargo build --release --example otlp_sink && cargo build --release
    python3 benches/tracing_ab.py [--rounds 5] [--duration 6]

Uses the shared benchmark's upstream (nginx on 127.0.0.1:7001) and routes.bench.toml;
the collector is examples/otlp_sink (takes every export, answers 200, does not decode:
a collector runs on other cores in production). Needs nginx and wrk.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_seconds, stop_all, data_upstream, wait_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMPARE = os.path.join(HERE, "compare")  # the benchmark's routes.toml and upstream


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=6)
    args = ap.parse_args()
    binary = os.path.join(ROOT, "target/release/manifold")
    sink = os.path.join(ROOT, "target/release/examples/otlp_sink")
    for b in (binary, sink):
        if not os.path.exists(b):
            sys.exit(f"{b} is missing: cargo build --release && cargo build --release --example otlp_sink")
    work = tempfile.mkdtemp(prefix="manifold-tracing-ab-")
    os.makedirs(f"{work}/tmp")
    procs = []

    def start(cmd, env=None):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        procs.append(p)
        return p

    def stop(p):
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
        procs.remove(p)

    try:
        data_upstream(work, start)
        start([sink, "127.0.0.1:4318"])
        wait_port(7001)
        wait_port(4318)
        config = f"{COMPARE}/routes.toml"
        cases = [("identical", "/api/dashboard/42", None),
                 ("distinct", "/api/dashboard/42", os.path.join(HERE, "distinct-ids.lua"))]
        results = {(mode, case): [] for mode in ("off", "on") for case, _, _ in cases}
        for rnd in range(args.rounds):
            modes = ("off", "on") if rnd % 2 == 0 else ("on", "off")
            for mode in modes:
                env = dict(os.environ)
                for k in list(env):
                    if k.startswith("OTEL_"):
                        del env[k]
                if mode == "on":
                    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:4318"
                gw = start([binary, "serve", "--config", config], env=env)
                wait_port(7103)
                time.sleep(0.3)
                for case, path, script in cases:
                    before = cpu_seconds([gw.pid])
                    rps, p99 = wrk("http://127.0.0.1:7103" + path, args.duration, script=script)
                    cpu_us = (cpu_seconds([gw.pid]) - before) / (rps * args.duration) * 1e6
                    results[(mode, case)].append((rps, p99, cpu_us))
                stop(gw)
                time.sleep(0.3)
        print(f"{'case':<10} {'tracing':<8} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11}")
        for case, _, _ in cases:
            med = {}
            for mode in ("off", "on"):
                runs = results[(mode, case)]
                med[mode] = tuple(statistics.median(r[i] for r in runs) for i in range(3))
                print(f"{case:<10} {mode:<8} {med[mode][0]:>9.0f} {med[mode][1]:>8.2f} {med[mode][2]:>11.1f}")
            print(f"{case:<10} cost of tracing: {100 * (1 - med['on'][0] / med['off'][0]):.1f}% of req/s, "
                  f"{med['on'][2] - med['off'][2]:.1f} µs of manifold CPU per request")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
