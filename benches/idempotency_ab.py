#!/usr/bin/env python3
"""What idempotency keys cost (docs/operations.md, "Idempotency keys: what they cost"):
POSTs to a one-backend route whose upstream answers in 20 ms, with `[shared]` on a
local redis-server:

- `first`: every request a new key (each reaches the upstream and is kept);
- `replayed`: one key for all (the first is kept, every other is a replay);
- `no key`: the route with `idempotency`, requests without a key;
- `plain`: the same route without `idempotency`.

Prints manifold's CPU µs per request, p50/p99 latency and Redis operations per request
(from manifold_shared_ops_total), medians of interleaved rounds.

    cargo build --release
    python3 benches/idempotency_ab.py [--rounds 3] [--duration 4] [--bin PATH]

Needs wrk and redis-server.
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
import time
import urllib.request

from benchlib import cpu_seconds, stop_all, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PORT, ADMIN = 7251, 7252

LUA = {
    "first": """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"amount": 1200, "currency": "EUR"}'
local n = 0
request = function()
  n = n + 1
  wrk.headers["idempotency-key"] = "RUN-" .. n
  return wrk.format()
end
""",
    "replayed": """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["idempotency-key"] = "the-one-key"
wrk.body = '{"amount": 1200, "currency": "EUR"}'
""",
    "nokey": """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"amount": 1200, "currency": "EUR"}'
""",
}
CASES = [("first", "/keyed", "first"), ("replayed", "/keyed", "replayed"),
         ("no key", "/keyed", "nokey"), ("plain", "/plain", "nokey")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ops():
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics").read().decode()
    return sum(float(m.group(1)) for m in
               re.finditer(r'^manifold_shared_ops_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))


def wrk(url, duration, script):
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{duration}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    reqs = next(int(line.split()[0]) for line in out.splitlines() if "requests in" in line)
    if "Non-2xx" in out:
        sys.exit("non-2xx answers:\n" + out)

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return reqs, pct(50), pct(99)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="manifold-idempotency-ab-")
    procs = []
    try:
        rport = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL, start_new_session=True))
        wait_port(rport)
        up = subprocess.Popen([sys.executable, os.path.join(HERE, "abuse.py"), "upstream"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(up)
        port = int(up.stdout.readline())
        route = """
[[routes]]
path = "{path}"
method = "POST"
{extra}
  [[routes.backends]]
  upstream = "pay"
  path = "/slow?ms=20&p=1"
"""
        config = f"""[server]
listen = "127.0.0.1:{PORT}"
admin_listen = "127.0.0.1:{ADMIN}"
workers = 1

[telemetry]
access_log = false

[shared]
redis = "redis://127.0.0.1:{rport}/0"

[upstreams.pay]
urls = ["http://127.0.0.1:{port}"]
{route.format(path="/keyed", extra='idempotency = { ttl = "1h" }')}
{route.format(path="/plain", extra="")}"""
        open(f"{work}/routes.toml", "w").write(config)
        scripts = {}
        for name, text in LUA.items():
            scripts[name] = f"{work}/{name}.lua"
            open(scripts[name], "w").write(text)
        gw = subprocess.Popen([args.bin, "serve", "--config", f"{work}/routes.toml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(gw)
        wait_port(PORT)
        time.sleep(1.0)
        # The one key's first request, kept before any round: every `replayed` request
        # is then a replay (during the first's 20 ms the others would get 409).
        warm = urllib.request.Request(f"http://127.0.0.1:{PORT}/keyed", method="POST",
                                      data=b'{"amount": 1200, "currency": "EUR"}',
                                      headers={"content-type": "application/json",
                                               "idempotency-key": "the-one-key"})
        urllib.request.urlopen(warm).read()
        time.sleep(0.2)
        results = {c[0]: [] for c in CASES}
        for r in range(args.rounds):
            order = CASES if r % 2 == 0 else list(reversed(CASES))
            for label, path, script in order:
                if script == "first":
                    # New keys in every run: a key of an earlier run would be replayed.
                    open(scripts[script], "w").write(LUA["first"].replace("RUN", f"r{r}-{time.time_ns()}"))
                ops0, cpu0 = redis_ops(), cpu_seconds([gw.pid])
                reqs, p50, p99 = wrk(f"http://127.0.0.1:{PORT}{path}", args.duration, scripts[script])
                cpu, ops = cpu_seconds([gw.pid]) - cpu0, redis_ops() - ops0
                results[label].append((cpu * 1e6 / reqs, p50, p99, ops / reqs, reqs / args.duration))
        print("| case | CPU µs/request | p50 ms | p99 ms | Redis ops/request | req/s |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, _, _ in CASES:
            rs = results[label]
            med = [statistics.median(x[i] for x in rs) for i in range(5)]
            print(f"| {label} | {med[0]:.1f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.2f} | {med[4]:.0f} |")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
