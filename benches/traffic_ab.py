#!/usr/bin/env python3
"""Upstream traffic (issue 14: balancing, hedging, h2c upstreams, WebSocket tunnels) measured.

    cargo build --release
    apt-get install -y wrk nginx-light golang-go
    python3 benches/traffic_ab.py hedge|balance|h2c|websocket [--bin target/release/manifold]

hedge      The benchmark's fan-out of three (distinct ids) over an upstream of three Go
           hosts, one of which adds 200 ms to 10 % of its answers; retry attempts = 2,
           without and with `hedge = { after = "25ms" }`. Prints req/s, p50/p99 and the
           upstream calls per client request (the extra load hedges cost).
balance    The same hosts, the third adding 20 ms to every answer: round_robin against
           least_request (share of calls the slow host got, p99); then three equal hosts
           (no delay) to price least_request: manifold's CPU µs per request for each.
h2c        The fan-out to the benchmark's nginx upstream over HTTP/1.1 and over h2c
           (nginx `listen ... http2`, prior knowledge): req/s, manifold and nginx CPU µs
           per request, and upstream connections nginx accepted.
websocket  Opens --tunnels (10,000) idle WebSocket tunnels through one gateway (one
           worker) to a Go echo host and prints manifold's resident memory per tunnel.
"""
import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import cpu_seconds, stop_all, wait_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMPARE = os.path.join(HERE, "compare")  # the benchmark's routes.toml and upstream
PORTS = ["7201", "7202", "7203"]


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def counts():
    with urllib.request.urlopen("http://127.0.0.1:7209/count") as r:
        return json.load(r)


def wrk_full(url, seconds, connections, script):
    """wrk with its latency distribution: (req/s, p50 ms, p99 ms, requests)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, pct(50), pct(99), n


def config(upstream_extra, urls=None, listen=7103):
    base = open(f"{COMPARE}/routes.toml").read()
    urls = urls or [f"http://127.0.0.1:{p}" for p in PORTS]
    url_list = ", ".join(f'"{u}"' for u in urls)
    base = base.replace('urls = ["http://127.0.0.1:7001"]', f"urls = [{url_list}]\n{upstream_extra}", 1)
    return base


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["hedge", "balance", "h2c", "websocket"])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tunnels", type=int, default=10000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="manifold-traffic-ab-")
    os.makedirs(f"{work}/tmp")
    procs = []
    script = f"{HERE}/distinct-ids.lua"

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=kw.pop("stdout", subprocess.DEVNULL), stderr=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        procs.append(p)
        return p

    def stop(p):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        p.wait(timeout=15)
        procs.remove(p)

    def gateway(name, text):
        open(f"{work}/{name}.toml", "w").write(text)
        subprocess.run([args.bin, "check", "--config", f"{work}/{name}.toml"], check=True, capture_output=True)
        p = start([args.bin, "serve", "--config", f"{work}/{name}.toml"])
        wait_port(7103)
        time.sleep(0.5)
        return p

    def go_hosts(*flags):
        exe = f"{work}/hosts"
        if not os.path.exists(exe):
            subprocess.run(["go", "build", "-o", exe, f"{HERE}/traffic/hosts.go"], check=True,
                           env={**os.environ, "GO111MODULE": "off", "GOCACHE": f"{work}/gocache"})
        p = start([exe, "-mode", "hosts", *flags])
        for port in PORTS + ["7209"]:
            wait_port(int(port))
        return p

    try:
        if args.what == "hedge":
            go_hosts("-slow", "7203", "-delay", "200ms", "-share", "0.1")
            variants = {
                "no hedge": 'retry = { attempts = 2 }',
                "hedge 25ms": 'retry = { attempts = 2 }\nhedge = { after = "25ms" }',
            }
            results = {k: [] for k in variants}
            for rnd in range(args.rounds):
                for name in (list(variants) if rnd % 2 == 0 else list(reversed(variants))):
                    gw = gateway("hedge", config(variants[name]))
                    before = sum(counts().values())
                    rps, p50, p99, n = wrk_full("http://127.0.0.1:7103/api/dashboard/1", args.seconds, 32, script)
                    calls = sum(counts().values()) - before
                    results[name].append((rps, p50, p99, calls / n))
                    stop(gw)
            for name, rs in results.items():
                med = [statistics.median(r[i] for r in rs) for i in range(4)]
                print(f"{name:<11} {med[0]:>8.0f} req/s  p50 {med[1]:6.2f} ms  p99 {med[2]:7.2f} ms  "
                      f"upstream calls/request {med[3]:.3f} (3 without retries or hedges)")
        elif args.what == "balance":
            hosts = go_hosts("-slow", "7203", "-delay", "20ms", "-share", "1.0")
            for balance in ["round_robin", "least_request"]:
                gw = gateway("balance", config(f'balance = "{balance}"'))
                before = counts()
                rps, p50, p99, n = wrk_full("http://127.0.0.1:7103/api/dashboard/1", args.seconds, 32, script)
                after = counts()
                got = {p: after[p] - before[p] for p in PORTS}
                slow_share = got["7203"] / sum(got.values())
                print(f"slow host, {balance:<13} {rps:>8.0f} req/s  p99 {p99:6.2f} ms  "
                      f"calls to the slow host {100 * slow_share:4.1f} % (its share: 33.3 %)")
                stop(gw)
            stop(hosts)
            go_hosts("-slow", "", "-share", "0")
            cost = {"round_robin": [], "least_request": []}
            for rnd in range(args.rounds):
                for balance in (["round_robin", "least_request"] if rnd % 2 == 0 else ["least_request", "round_robin"]):
                    gw = gateway("cost", config(f'balance = "{balance}"'))
                    c0 = cpu_seconds([gw.pid])
                    rps, p50, p99, n = wrk_full("http://127.0.0.1:7103/api/dashboard/1", args.seconds, 64, script)
                    cost[balance].append((rps, (cpu_seconds([gw.pid]) - c0) / n * 1e6))
                    stop(gw)
            for balance, rs in cost.items():
                print(f"equal hosts, {balance:<13} {statistics.median(r[0] for r in rs):>8.0f} req/s  "
                      f"manifold {statistics.median(r[1] for r in rs):6.1f} µs CPU/request")
        elif args.what == "h2c":
            text = open(f"{COMPARE}/upstream.nginx.conf").read()
            text = text.replace("__WORK__", work).replace("__DATA__", f"{HERE}/data")
            h2 = text.replace("listen 127.0.0.1:7001 reuseport backlog=4096;", "listen 127.0.0.1:7001 http2 reuseport backlog=4096;\n    http2_max_concurrent_streams 1000;")
            h2 = h2.replace("location = /status { stub_status; }", "")
            status = "\n  server { listen 127.0.0.1:7002; location = /nginx_status { stub_status; } }\n}\n"
            variants = {"http1": (text.rstrip().rstrip("}") + status, ""),
                        "h2c": (h2.rstrip().rstrip("}") + status, 'protocol = "h2c"')}
            results = {k: [] for k in variants}
            for rnd in range(args.rounds):
                for name in (list(variants) if rnd % 2 == 0 else list(reversed(variants))):
                    conf, extra = variants[name]
                    open(f"{work}/up-{name}.conf", "w").write(conf)
                    up = start(["nginx", "-p", work, "-c", f"{work}/up-{name}.conf"])
                    wait_port(7001)
                    wait_port(7002)
                    gw = gateway(name, config(extra, urls=["http://127.0.0.1:7001"]))
                    from benchlib import children
                    ups = [up.pid] + children(up.pid)
                    c0, u0 = cpu_seconds([gw.pid]), cpu_seconds(ups)
                    rps, p50, p99, n = wrk_full("http://127.0.0.1:7103/api/dashboard/1", args.seconds, 64, script)
                    cpu = (cpu_seconds([gw.pid]) - c0) / n * 1e6
                    ucpu = (cpu_seconds(ups) - u0) / n * 1e6
                    with urllib.request.urlopen("http://127.0.0.1:7002/nginx_status") as r:
                        accepts = int(r.read().decode().split("\n")[2].split()[0])
                    results[name].append((rps, p99, cpu, ucpu, accepts))
                    stop(gw)
                    stop(up)
                    time.sleep(0.3)
            for name, rs in results.items():
                med = [statistics.median(r[i] for r in rs) for i in range(5)]
                print(f"{name:<6} {med[0]:>8.0f} req/s  p99 {med[1]:6.2f} ms  manifold {med[2]:6.1f} µs/req  "
                      f"nginx {med[3]:5.1f} µs/req  upstream connections {med[4]:.0f}")
        else:
            # Two descriptors per tunnel in manifold (client and upstream side): the
            # hard NOFILE limit may allow fewer than asked for.
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            if hard != resource.RLIM_INFINITY and 2 * args.tunnels + 500 > hard:
                args.tunnels = (hard - 500) // 2
                print(f"NOFILE hard limit {hard}: {args.tunnels} tunnels")
            go_hosts("-slow", "", "-share", "0")
            text = config("", urls=["http://127.0.0.1:7201"]).replace(
                'admin_listen = "127.0.0.1:7113"', 'admin_listen = "127.0.0.1:7113"\nworkers = 1', 1)
            text += ('\n[[routes]]\npath = "/ws/{room}"\npassthrough = true\nwebsocket = true\n'
                     '  [[routes.backends]]\n  upstream = "svc"\n  path = "/ws/{room}"\n')
            gw = gateway("ws", text)
            time.sleep(1)
            idle = rss_kib(gw.pid)
            client = start([f"{work}/hosts", "-mode", "wsclient", "-n", str(args.tunnels)], stdout=subprocess.PIPE)
            line = client.stdout.readline().decode().strip()
            time.sleep(2)
            full = rss_kib(gw.pid)
            with urllib.request.urlopen("http://127.0.0.1:7113/metrics") as r:
                gauge = re.search(r'manifold_websocket_tunnels\{route="GET /ws/\{room\}"\} (\d+)', r.read().decode())
            opened = int(re.search(r"open (\d+)", line).group(1))
            print(f"client: {line}; gauge: {gauge.group(1) if gauge else '?'}")
            print(f"manifold RSS idle {idle / 1024:.1f} MiB, with {opened} idle tunnels {full / 1024:.1f} MiB: "
                  f"{(full - idle) * 1024 / max(opened, 1):.0f} bytes per tunnel")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
