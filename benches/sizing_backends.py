#!/usr/bin/env python3
"""What each backend of a fan-out costs: the backends curve of docs/operations.md
("Sizing").

    cargo build --release
    apt-get install -y nginx-light wrk; pip install matplotlib
    python3 benches/sizing_backends.py [--bin target/release/manifold] [--png docs/sizing-backends.png]

One route per fan-out width K (1, 2, 4, 8, 16): K backends, each asking the upstream
(nginx serving benches/data) for the user with the request's id, two fields kept, each
in its own group of the merged answer. Each backend's URL differs (`?b=N`), so the K
calls are K upstream requests, not one shared by coalescing. A different id on every request
(benches/distinct-path.lua), so nothing is coalesced; 64 connections, wrk; medians of
the rounds. Prints and draws the gateway's CPU µs per request and p99 against K.
"""
import os
import statistics

from benchlib import cpu_seconds, data_upstream, gateway_config, plot, session, sizing_args, stop_all, wait_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTHS = (1, 2, 4, 8, 16)


def config():
    text = gateway_config()
    for k in WIDTHS:
        text += f'\n[[routes]]\npath = "/api/fan{k}/{{id}}"\ntimeout = "2s"\n'
        for b in range(k):
            text += (f'  [[routes.backends]]\n  name = "b{b}"\n  upstream = "svc"\n  path = "/users/{{id}}?b={b}"\n'
                     f'  group = "b{b}"\n  allow = ["id", "name"]\n')
    return text


def main():
    args = sizing_args(__doc__, "sizing-backends.png", rounds=3, duration=5)
    work, procs, start = session("manifold-sizing-backends-")

    try:
        data_upstream(work, start)
        open(f"{work}/routes.toml", "w").write(config())
        gw = start([args.bin, "serve", "--config", f"{work}/routes.toml"])
        wait_port(7103)
        script = os.path.join(HERE, "distinct-path.lua")
        runs = {k: [] for k in WIDTHS}
        for rnd in range(args.rounds):
            for k in (WIDTHS if rnd % 2 == 0 else WIDTHS[::-1]):
                c = cpu_seconds([gw.pid])
                rps, p99 = wrk(f"http://127.0.0.1:7103/api/fan{k}/", args.duration, script=script)
                runs[k].append(((cpu_seconds([gw.pid]) - c) * 1e6 / max(1, rps * args.duration), p99, rps))
        rows = []
        print(f"{'backends':>8} {'req/s':>8} {'p99 ms':>7} {'CPU µs/req':>10} {'µs per backend':>14}")
        for k in WIDTHS:
            cpu, p99, rps = (statistics.median(r[i] for r in runs[k]) for i in range(3))
            rows.append((k, cpu, p99, rps))
            print(f"{k:>8} {rps:>8.0f} {p99:>7.2f} {cpu:>10.1f} {cpu / k:>14.1f}")
        plot(args.png, "Fan-out of K backends: CPU per request and p99", "backends per route",
             "CPU µs per request / p99 in 0.1 ms",
             [("CPU µs per request", [r[0] for r in rows], [r[1] for r in rows]),
              ("p99, units of 0.1 ms (64 connections)", [r[0] for r in rows], [r[2] * 10 for r in rows])],
             note="benches/sizing_backends.py")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
