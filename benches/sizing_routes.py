#!/usr/bin/env python3
"""What a config of N routes costs: the routes curve of docs/operations.md ("Sizing").

    cargo build --release
    apt-get install -y nginx-light wrk; pip install matplotlib
    python3 benches/sizing_routes.py [--bin target/release/manifold] [--png docs/sizing-routes.png]

For N routes (half pass-through, half a merge of two backends, over ten upstreams; all
answered by one nginx serving benches/data), it measures:

- `manifold check` wall time (read, parse, validate: what a reload does before it swaps);
- start to `/ready` (load, compile, bind);
- a reload: the `took_ms` of its "config reloaded" log line (read, check, build; the
  300 ms the gateway first waits for the file to settle is not in it);
- resident memory once started, and after the reload;
- CPU µs per request of a pass-through request that matches the last route (wrk, 64
  connections; the gateway's user + system time over requests answered).
"""
import json
import os
import signal
import statistics
import subprocess
import time
import urllib.request

from benchlib import cpu_seconds, data_upstream, plot, rss_kib, session, sizing_args, stop_all, wrk

HERE = os.path.dirname(os.path.abspath(__file__))


def config(n, stamp=""):
    parts = [f"""# {n} routes {stamp}
[server]
listen = "127.0.0.1:7103"
admin_listen = "127.0.0.1:7113"

[telemetry]
access_log = false
log_format = "json"
"""]
    for u in range(10):
        parts.append(f'[upstreams.svc{u}]\nurls = ["http://127.0.0.1:7001"]\ntimeout = "1s"\n')
    for i in range(n):
        up = f"svc{i % 10}"
        if i % 2 == 0:
            parts.append(f"""[[routes]]
path = "/api/r{i}/users/{{id}}"
  [[routes.backends]]
  upstream = "{up}"
  path = "/users/{{id}}"
  passthrough = true
""")
        else:
            parts.append(f"""[[routes]]
path = "/api/r{i}/dashboard/{{id}}"
  [[routes.backends]]
  name = "user"
  upstream = "{up}"
  path = "/users/{{id}}"
  allow = ["id", "name"]
  [[routes.backends]]
  name = "orders"
  upstream = "{up}"
  path = "/orders?customer={{id}}"
  target = "items"
""")
    return "\n".join(parts)


def reload_times(log):
    """The `took_ms` of every "config reloaded" line in the gateway's log so far."""
    times = []
    for line in open(log):
        if '"config reloaded"' in line:
            times.append(float(json.loads(line)["took_ms"]))
    return times


def main():
    args = sizing_args(__doc__, "sizing-routes.png", counts="10,1000,2500,5000,7500,10000", duration=5)
    work, procs, start = session("manifold-sizing-routes-")

    try:
        data_upstream(work, start)
        rows = []
        print(f"{'routes':>6} {'check ms':>9} {'start ms':>9} {'reload ms':>10} {'RSS MiB':>8} "
              f"{'after reload':>12} {'CPU µs/req':>10}")
        for n in [int(x) for x in args.counts.split(",")]:
            path = f"{work}/routes.toml"
            open(path, "w").write(config(n))
            checks = []
            for _ in range(3):
                t = time.monotonic()
                subprocess.run([args.bin, "check", "--config", path], check=True, capture_output=True)
                checks.append((time.monotonic() - t) * 1e3)
            starts, gw = [], None
            for k in range(3):  # the last start is the one measured further
                if gw:
                    gw.send_signal(signal.SIGKILL)
                    gw.wait()
                t = time.monotonic()
                log = f"{work}/gateway-{n}-{k}.log"
                gw = start([args.bin, "serve", "--config", path], open(log, "w"))
                while True:
                    try:
                        with urllib.request.urlopen("http://127.0.0.1:7113/ready", timeout=1) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        time.sleep(0.005)
                starts.append((time.monotonic() - t) * 1e3)
            started = statistics.median(starts)
            last = n - 2 if n % 2 == 0 else n - 1  # the last pass-through route
            url = f"http://127.0.0.1:7103/api/r{last}/users/42"
            urllib.request.urlopen(url, timeout=5).read()
            time.sleep(0.5)
            rss = rss_kib(gw.pid)

            for k in range(3):
                open(path, "w").write(config(n, f"reload {k}"))
                os.kill(gw.pid, signal.SIGHUP)
                while len(reload_times(log)) <= k:
                    time.sleep(0.05)
            reloads = reload_times(log)
            after = rss_kib(gw.pid)

            cpu = []
            for _ in range(2):
                c = cpu_seconds([gw.pid])
                rps, _ = wrk(url, args.duration)
                cpu.append((cpu_seconds([gw.pid]) - c) * 1e6 / max(1, rps * args.duration))
            row = (n, statistics.median(checks), started, statistics.median(reloads), rss / 1024, after / 1024,
                   statistics.median(cpu))
            rows.append(row)
            print(f"{n:>6} {row[1]:>9.0f} {row[2]:>9.0f} {row[3]:>10.0f} {row[4]:>8.1f} {row[5]:>12.1f} {row[6]:>10.1f}")
            gw.send_signal(signal.SIGKILL)
            gw.wait()

        ns = [r[0] for r in rows]
        base, ext = os.path.splitext(args.png)
        plot(args.png, "Config of N routes: check, start and reload time", "routes", "milliseconds",
             [("manifold check", ns, [r[1] for r in rows]), ("start to /ready", ns, [r[2] for r in rows]),
              ("reload (read, check, build)", ns, [r[3] for r in rows])],
             note="benches/sizing_routes.py")
        plot(f"{base}-memory{ext}", "Config of N routes: memory and CPU per request", "routes",
             "RSS MiB / CPU µs per request",
             [("RSS after start, MiB", ns, [r[4] for r in rows]), ("RSS after 3 reloads, MiB", ns, [r[5] for r in rows]),
              ("CPU µs per pass-through request", ns, [r[6] for r in rows])],
             note="benches/sizing_routes.py")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
