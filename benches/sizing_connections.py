#!/usr/bin/env python3
"""Memory per open connection and per WebSocket tunnel: the connections curve of
docs/operations.md ("Sizing").

    cargo build --release
    apt-get install -y golang-go; pip install matplotlib
    python3 benches/sizing_connections.py [--bin target/release/manifold] [--png docs/sizing-connections.png]

For each count N, a fresh gateway (2 workers; one request answered first, so the
upstream pool and the loops are warm) is measured idle, then with N client connections
open (HTTP/1.1 keep-alive, each having had one pass-through answer and now idle), and,
separately, with N idle WebSocket tunnels (benches/traffic/hosts.go: an echo upstream
and the client). Prints resident memory and bytes per connection; draws the PNG.

Tunnels stop where the descriptor limit does: each holds two descriptors in the gateway
and its share is 3/8 of the client-facing ones (operations.md, "Descriptor shares").
"""
import asyncio
import os
import re
import resource
import subprocess
import sys
import time
import urllib.request

from benchlib import plot, rss_kib, session, sizing_args, stop_all, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = """
[server]
listen = "127.0.0.1:7103"
admin_listen = "127.0.0.1:7113"
workers = 2
max_connections = 20000

[telemetry]
access_log = false

[upstreams.svc]
urls = ["http://127.0.0.1:7201"]

[[routes]]
path = "/api/users/{id}"
  [[routes.backends]]
  upstream = "svc"
  path = "/users/{id}"
  passthrough = true

[[routes]]
path = "/ws/{room}"
passthrough = true
websocket = true
  [[routes.backends]]
  upstream = "svc"
  path = "/ws/{room}"
"""


async def hold_connections(n, settle, measure):
    """Opens n keep-alive connections, one answered request on each, then measures."""
    request = b"GET /api/users/7 HTTP/1.1\r\nhost: bench\r\n\r\n"

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", 7103)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        await reader.readexactly(length)
        return writer

    writers = []
    for start in range(0, n, 500):  # in batches: the accept queue is 4,096 deep
        writers += await asyncio.gather(*(one() for _ in range(start, min(n, start + 500))))
    await asyncio.sleep(settle)
    value = measure()
    for w in writers:
        w.close()
    return value


def metric(name):
    with urllib.request.urlopen("http://127.0.0.1:7113/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def main():
    args = sizing_args(__doc__, "sizing-connections.png", counts="100,1000,2500,5000,10000",
                       tunnels="100,1000,2500,5000")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work, procs, start = session("manifold-sizing-conn-")

    try:
        env = {**os.environ, "GO111MODULE": "off", "GOCACHE": f"{work}/go-cache", "GOPATH": f"{work}/go"}
        subprocess.run(["go", "build", "-o", f"{work}/hosts", os.path.join(HERE, "traffic/hosts.go")],
                       check=True, env=env)
        start([f"{work}/hosts", "-mode", "hosts", "-ports", "7201", "-share", "0"], stdout=subprocess.DEVNULL)
        wait_port(7201)
        open(f"{work}/routes.toml", "w").write(CONFIG)

        def gateway():
            gw = start([args.bin, "serve", "--config", f"{work}/routes.toml"], stdout=subprocess.DEVNULL)
            wait_port(7103)
            urllib.request.urlopen("http://127.0.0.1:7103/api/users/1", timeout=5).read()
            time.sleep(1)
            return gw, rss_kib(gw.pid)

        rows = {"connections": [], "tunnels": []}
        print(f"{'kind':<12} {'N':>6} {'idle MiB':>9} {'with N MiB':>11} {'KiB each':>9}  (counted by /metrics)")
        for n in [int(x) for x in args.counts.split(",")]:
            gw, idle = gateway()
            full, seen = asyncio.run(hold_connections(
                n, 2, lambda: (rss_kib(gw.pid), metric("manifold_client_connections"))))
            rows["connections"].append((n, idle, full))
            print(f"{'connections':<12} {n:>6} {idle / 1024:>9.1f} {full / 1024:>11.1f} {(full - idle) / n:>9.1f}"
                  f"  ({seen:.0f})")
            stop_all([gw], "/nonexistent")
            gw.wait()
        for n in [int(x) for x in args.tunnels.split(",")]:
            gw, idle = gateway()
            client = start([f"{work}/hosts", "-mode", "wsclient", "-addr", "127.0.0.1:7103", "-n", str(n)],
                           stdout=subprocess.PIPE)
            line = client.stdout.readline().decode().strip()
            time.sleep(2)
            full = rss_kib(gw.pid)
            opened = int(re.search(r"open (\d+)", line).group(1)) if "open" in line else 0
            rows["tunnels"].append((opened, idle, full))
            print(f"{'tunnels':<12} {opened:>6} {idle / 1024:>9.1f} {full / 1024:>11.1f} "
                  f"{(full - idle) / max(opened, 1):>9.1f}  (asked {n})")
            stop_all([client, gw], "/nonexistent")
            gw.wait()
            client.wait()

        plot(args.png, "Resident memory with N open (2 workers)", "open connections / tunnels", "RSS, MiB",
             [("idle HTTP/1.1 connections", [r[0] for r in rows["connections"]],
               [r[2] / 1024 for r in rows["connections"]]),
              ("idle WebSocket tunnels", [r[0] for r in rows["tunnels"]], [r[2] / 1024 for r in rows["tunnels"]])],
             note="benches/sizing_connections.py")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    sys.exit(main())
