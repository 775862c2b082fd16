#!/usr/bin/env python3
"""What request validation costs per request end to end (docs/operations.md, "Request
validation: what it costs"): a POST of a 2 KB checkout body (benches/data/checkout.json)
to a one-backend merged route without `validate`, and to the same route with
`validate = { body = "data/checkout-schema.json" }` (16 properties, a nested array of
lines, patterns, formats, enums); manifold's CPU µs per request, medians of
interleaved rounds.

With `--baseline OLD_BINARY`, it also runs a GET and the unvalidated POST on both
binaries, interleaved, one gateway at a time: a route without `validate` must cost
what it cost before.

    cargo build --release
    python3 benches/validation_ab.py [--rounds 5] [--duration 4] [--bin PATH] [--baseline PATH]

The upstream is benches/abuse.py's (a small JSON answer); one worker loop, so CPU per
request is the gateway's own. Needs wrk.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_seconds, stop_all, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PORT, ADMIN = 7241, 7242

POST_LUA = """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local f = io.open("{body}", "r")
wrk.body = f:read("*a")
f:close()
"""


def config(upstream_port, validated):
    routes = """
[[routes]]
path = "/get"
  [[routes.backends]]
  upstream = "u"
  path = "/x"

[[routes]]
path = "/plain"
method = "POST"
  [[routes.backends]]
  upstream = "u"
  path = "/x"
"""
    if validated:
        routes += f"""
[[routes]]
path = "/checked"
method = "POST"
validate = {{ body = "{HERE}/data/checkout-schema.json" }}
  [[routes.backends]]
  upstream = "u"
  path = "/x"
"""
    return f"""[server]
listen = "127.0.0.1:{PORT}"
admin_listen = "127.0.0.1:{ADMIN}"
workers = 1

[telemetry]
access_log = false

[upstreams.u]
urls = ["http://127.0.0.1:{upstream_port}"]
{routes}"""


def run(binary, path, work, duration, script, validated, upstream_port):
    """CPU µs per request and req/s of one wrk run on a fresh gateway."""
    name = f"{work}/routes-{int(validated)}.toml"
    open(name, "w").write(config(upstream_port, validated))
    gw = subprocess.Popen([binary, "serve", "--config", name], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(PORT)
        time.sleep(0.3)
        cmd = ["wrk", "-t1", "-c16", f"-d{duration}s"]
        if script:
            cmd += ["-s", script]
        before = cpu_seconds([gw.pid])
        out = subprocess.run(cmd + [f"http://127.0.0.1:{PORT}{path}"], capture_output=True,
                             text=True, check=True).stdout
        cpu = cpu_seconds([gw.pid]) - before
        reqs = next(int(line.split()[0]) for line in out.splitlines() if "requests in" in line)
        non2xx = [line for line in out.splitlines() if "Non-2xx" in line]
        if non2xx:
            sys.exit(f"{binary} {path}: {non2xx[0].strip()}")
        return cpu * 1e6 / reqs, reqs / duration
    finally:
        os.killpg(gw.pid, signal.SIGTERM)
        gw.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    ap.add_argument("--baseline", help="an older binary: GET and unvalidated POST compared with --bin")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="manifold-validation-ab-")
    procs = []
    try:
        up = subprocess.Popen([sys.executable, os.path.join(HERE, "abuse.py"), "upstream"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(up)
        port = int(up.stdout.readline())
        script = f"{work}/post.lua"
        open(script, "w").write(POST_LUA.replace("{body}", os.path.join(HERE, "data/checkout.json")))
        cases = [("new", args.bin, "/plain", script, True), ("new", args.bin, "/checked", script, True)]
        if args.baseline:
            cases += [("new", args.bin, "/get", None, False), ("old", args.baseline, "/get", None, False),
                      ("new", args.bin, "/plain", script, False), ("old", args.baseline, "/plain", script, False)]
        results = {c[:3] + (c[4],): [] for c in cases}
        for r in range(args.rounds):
            order = cases if r % 2 == 0 else list(reversed(cases))
            for label, binary, path, s, validated in order:
                results[(label, binary, path, validated)].append(
                    run(binary, path, work, args.duration, s, validated, port))
        print("| binary | route | config has a validated route | CPU µs/request | req/s |")
        print("|---|---|---|---:|---:|")
        for (label, binary, path, validated), rs in results.items():
            print(f"| {label} | {path} | {'yes' if validated else 'no'} | "
                  f"{statistics.median(x[0] for x in rs):.1f} | {statistics.median(x[1] for x in rs):.0f} |")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
