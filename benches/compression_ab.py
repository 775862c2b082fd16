#!/usr/bin/env python3
"""What compression costs per request end to end: a merged route answering 2 KB, 20 KB
and 200 KB of JSON, asked for with no `accept-encoding` (nothing compressed) and with
each of gzip, br and zstd; manifold's CPU µs per request and the bytes sent, medians
of interleaved rounds.

    cargo build --release
    python3 benches/compression_ab.py [--rounds 3] [--duration 4] [--bin PATH]

The upstream is benches/abuse.py's (`/big?bytes=N`: N bytes of JSON records); one
worker loop, so CPU per request is the gateway's own. Needs wrk.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_seconds, stop_all, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = [2000, 20000, 200000]
CODINGS = ["identity", "gzip", "br", "zstd"]


def wrk_bytes(url, duration, accept):
    """(requests/s, bytes per response) of one wrk run asking for `accept`."""
    cmd = ["wrk", "-t1", "-c16", f"-d{duration}s"]
    if accept != "identity":
        cmd += ["-H", f"accept-encoding: {accept}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    reqs = None
    total = None
    for line in out.splitlines():
        parts = line.split()
        if "requests in" in line:
            reqs = int(parts[0])
            size = parts[4].rstrip(",")
            unit = {"B": 1, "KB": 1024, "MB": 1 << 20, "GB": 1 << 30}
            for u, m in sorted(unit.items(), key=lambda x: -len(x[0])):
                if size.endswith(u):
                    total = float(size[: -len(u)]) * m
                    break
    return reqs, (total / reqs if reqs and total else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="manifold-compression-ab-")
    procs = []
    try:
        up = subprocess.Popen([sys.executable, os.path.join(HERE, "abuse.py"), "upstream"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(up)
        port = int(up.stdout.readline())
        routes = "".join(f"""
[[routes]]
path = "/c/{n}"
  [[routes.backends]]
  upstream = "big"
  path = "/big?bytes={n}"
  group = "data"
""" for n in SIZES)
        config = f"""[server]
listen = "127.0.0.1:7231"
admin_listen = "127.0.0.1:7232"
workers = 1

[telemetry]
access_log = false

[upstreams.big]
urls = ["http://127.0.0.1:{port}"]
{routes}"""
        open(f"{work}/routes.toml", "w").write(config)
        gw = subprocess.Popen([args.bin, "serve", "--config", f"{work}/routes.toml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(gw)
        wait_port(7231)
        time.sleep(0.5)
        results = {(n, c): [] for n in SIZES for c in CODINGS}
        for r in range(args.rounds):
            for n in SIZES:
                order = CODINGS if r % 2 == 0 else list(reversed(CODINGS))
                for c in order:
                    before = cpu_seconds([gw.pid])
                    reqs, per = wrk_bytes(f"http://127.0.0.1:7231/c/{n}", args.duration, c)
                    cpu = cpu_seconds([gw.pid]) - before
                    results[(n, c)].append((cpu * 1e6 / reqs, reqs / args.duration, per))
        print("| answer | asked | CPU µs/request | req/s | bytes/response (head included) |")
        print("|---|---|---:|---:|---:|")
        for n in SIZES:
            for c in CODINGS:
                rs = results[(n, c)]
                print(f"| {n // 1000} KB | {c} | {statistics.median(x[0] for x in rs):.1f} | "
                      f"{statistics.median(x[1] for x in rs):.0f} | {statistics.median(x[2] for x in rs):.0f} |")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
