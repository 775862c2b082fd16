#!/usr/bin/env python3
"""What the size of a merged answer costs: the answer-size curve of docs/operations.md
("Sizing").

    cargo build --release
    apt-get install -y nginx-light wrk; pip install matplotlib
    python3 benches/sizing_answers.py [--bin target/release/manifold] [--png docs/sizing-answers.png]

For each size S (1 KB to 1 MB), one route merges the user (benches/data) with a list of
S bytes of JSON items from the upstream (nginx serving files this script writes), so
the answer is about S bytes, parsed, merged and written again. Each size gets a fresh
gateway: wrk (--connections, 64, a different id on every request) for CPU µs per
request and per KB, and the peak resident memory above idle divided by the requests in
flight. Run it at two --connections values to get the marginal memory of one request.
"""
import json
import os
import statistics
import time
import urllib.request

from benchlib import (cpu_seconds, data_upstream, gateway_config, hwm_kib, plot, rss_kib, session, sizing_args, stop_all,
                      wait_port, wrk)

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = (1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20)


def items(size):
    """A JSON object {"items": [...]} of about `size` bytes."""
    one = {"sku": "sku-000000", "title": "A product title of a fair length", "price": 1999, "stock": 12,
           "tags": ["new", "sale"]}
    n = max(1, size // (len(json.dumps(one)) + 1))
    return json.dumps({"items": [{**one, "sku": f"sku-{i:06d}"} for i in range(n)]})


def config(size):
    return gateway_config("2s", 'max_response_body = "8MiB"\n') + f"""
[[routes]]
path = "/api/list/{{id}}"
timeout = "5s"
  [[routes.backends]]
  name = "user"
  upstream = "svc"
  path = "/users/{{id}}"
  group = "user"
  allow = ["id", "name"]
  [[routes.backends]]
  name = "items"
  upstream = "svc"
  path = "/lists/{size}.json?user={{id}}"
  target = "items"
  group = "items"
"""


def main():
    args = sizing_args(__doc__, "sizing-answers.png", duration=5, rounds=2, connections=64)
    work, procs, start = session("manifold-sizing-answers-")
    os.makedirs(f"{work}/lists")
    os.chmod(work, 0o755)  # nginx's worker runs as nobody
    try:
        for size in SIZES:
            open(f"{work}/lists/{size}.json", "w").write(items(size))
        data_upstream(work, start, f"    location /lists/ {{ root {work}; }}\n")
        script = os.path.join(HERE, "distinct-path.lua")
        rows = []
        print(f"{'answer KB':>9} {'req/s':>8} {'p99 ms':>7} {'CPU µs/req':>10} {'µs per KB':>9} "
              f"{'peak KiB per request':>20}")
        for size in SIZES:
            open(f"{work}/routes.toml", "w").write(config(size))
            gw = start([args.bin, "serve", "--config", f"{work}/routes.toml"])
            wait_port(7103)
            body = urllib.request.urlopen("http://127.0.0.1:7103/api/list/1", timeout=5).read()
            time.sleep(0.5)
            idle = rss_kib(gw.pid)
            runs = []
            for _ in range(args.rounds):
                c = cpu_seconds([gw.pid])
                rps, p99 = wrk("http://127.0.0.1:7103/api/list/", args.duration, args.connections, script)
                runs.append(((cpu_seconds([gw.pid]) - c) * 1e6 / max(1, rps * args.duration), p99, rps))
            peak = (hwm_kib(gw.pid) - idle) / args.connections
            cpu, p99, rps = (statistics.median(r[i] for r in runs) for i in range(3))
            kb = len(body) / 1024
            rows.append((kb, cpu, p99, rps, peak))
            print(f"{kb:>9.1f} {rps:>8.0f} {p99:>7.2f} {cpu:>10.1f} {cpu / kb:>9.2f} {peak:>20.0f}")
            gw.kill()
            gw.wait()
        base, ext = os.path.splitext(args.png)
        kbs = [r[0] for r in rows]
        plot(args.png, "Merged answer of S KB: CPU per request", "answer size, KB", "CPU µs per request",
             [("CPU µs per request", kbs, [r[1] for r in rows])], note="benches/sizing_answers.py")
        plot(f"{base}-memory{ext}", "Merged answer of S KB: peak memory per request in flight", "answer size, KB",
             "KiB per request", [(f"peak RSS above idle / {args.connections} in flight", kbs, [r[4] for r in rows]),
                                 ("the answer itself", kbs, kbs)], note="benches/sizing_answers.py")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
