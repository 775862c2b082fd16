#!/usr/bin/env python3
"""manifold beside what a platform team would run instead, on this machine, from a clone.

    cargo build --release
    python3 benches/compare.py [--rounds 3] [--duration 8] [--connections 64] [--json out.json]

Everything it runs is in benches/compare/: an upstream (nginx serving benches/data's
three JSON answers on 127.0.0.1:7001), nginx and HAProxy as plain reverse proxies, a Go
standard-library BFF (bff.go) and a Fastify + undici Node BFF (bff.mjs), both written
by hand to do what routes.toml tells manifold to do. Two scenarios:

- pass-through: GET /api/users/42 goes to the upstream's /users/42 and back unchanged;
- fan-out of three, a different id on every request (benches/distinct-ids.lua, so no
  target can share upstream calls): the user (four fields, one renamed), the orders'
  items and the recommendations (or [] when they fail), merged into one JSON answer.

With `cargo build --release --example hyper_floor` done, a sixth target, `floor`, is hyper
alone used as manifold uses it (examples/hyper_floor.rs): the same sockets, none of the
gateway's work (its fan-out joins the three answers unshaped). Its rows are what the HTTP
engine costs before manifold does anything of its own.

Before any timing, every target's answers are checked equal. Load is wrk (one thread,
`--connections`), target after target, the order reversed every round so drift hits all
alike; medians of the rounds. CPU µs per request is the target's own user + system time
(all its processes: nginx's and Node's workers) over the requests it answered — on a
2-core box where wrk and the upstream share the cores, the figure that moves least —
and that figure split into user space and the kernel (sockets, scheduling): the kernel's
part is what any proxy pays for the same sockets, the user part is the program's own.
The last line, `ratios ...`, is what the README and docs/operations.md quote.

Needs nginx and wrk (Debian `nginx-light`, `wrk`); HAProxy, Go and Node (with npm, to
fetch Fastify and undici) are each skipped when absent.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import children, stop_all, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONF = os.path.join(HERE, "compare")
DATA = os.path.join(HERE, "data")
UPSTREAM = "http://127.0.0.1:7001"
PORTS = {"nginx": 7101, "haproxy": 7106, "manifold": 7103, "go-bff": 7104, "node-bff": 7102,
         "floor": 7107}
PROXIES = ("nginx", "haproxy")  # pass-through only: they cannot merge
# Does the sockets' work only: its fan-out joins the answers unshaped (examples/hyper_floor.rs).
UNSHAPED = ("floor",)


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def cpu_ticks(pids):
    """(user, system) clock ticks of the processes and their children, so far."""
    user = system = 0
    for pid in pids:
        for p in [pid] + children(pid):
            try:
                fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            user += int(fields[11])
            system += int(fields[12])
    return user, system


def wrk(url, duration, connections, script):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    result = {"non2xx": 0}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif words[:1] in (["50%"], ["99%"]):
            value, unit = words[1].rstrip("usm"), words[1][len(words[1].rstrip("usm")):]
            result["p" + words[0][:2]] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
        elif line.startswith("  Non-2xx or 3xx responses:"):
            result["non2xx"] = int(words[-1])
    return result


def upstream_served():
    """Requests the upstream has answered so far (nginx's stub_status)."""
    _, body = get(UPSTREAM + "/status")
    return int(body.split(b"\n")[2].split()[2])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--json", help="also write the rows and ratios here")
    ap.add_argument("--floor", default=os.path.join(ROOT, "target/release/examples/hyper_floor"),
                    help="hyper alone, no gateway work (skipped if absent: "
                         "cargo build --release --example hyper_floor)")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y nginx-light wrk")
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} is missing: cargo build --release")

    work = tempfile.mkdtemp(prefix="manifold-compare-")
    os.makedirs(f"{work}/tmp")
    procs, targets = [], {}

    def start(name, cmd, **kw):
        log = open(f"{work}/{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        procs.append(p)
        return p

    def nginx(name, conf):
        text = open(f"{CONF}/{conf}").read().replace("__WORK__", work).replace("__DATA__", DATA)
        open(f"{work}/{conf}", "w").write(text)
        return start(name, ["nginx", "-p", work, "-c", f"{work}/{conf}"])

    try:
        upstream = nginx("upstream", "upstream.nginx.conf")
        wait_port(7001)
        targets["nginx"] = nginx("nginx", "proxy.nginx.conf")
        if shutil.which("haproxy"):
            targets["haproxy"] = start("haproxy", ["haproxy", "-db", "-f", f"{CONF}/haproxy.cfg"])
        if shutil.which("go"):
            env = {**os.environ, "GO111MODULE": "off", "GOCACHE": f"{work}/go-cache", "GOPATH": f"{work}/go"}
            subprocess.run(["go", "build", "-o", f"{work}/bff-go", f"{CONF}/bff.go"], check=True, env=env)
            targets["go-bff"] = start("go-bff", [f"{work}/bff-go"],
                                      env={**os.environ, "PORT": "7104", "UPSTREAM": UPSTREAM})
        if shutil.which("node") and shutil.which("npm"):
            for f in ("bff.mjs", "package.json"):
                shutil.copy(f"{CONF}/{f}", work)
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=work, check=True,
                           stdout=subprocess.DEVNULL)
            targets["node-bff"] = start("node-bff", ["node", "bff.mjs"], cwd=work,
                                        env={**os.environ, "WORKERS": "2", "PORT": "7102", "UPSTREAM": UPSTREAM})
        targets["manifold"] = start("manifold", [os.path.abspath(args.bin), "serve", "--config", f"{CONF}/routes.toml"])
        if os.path.exists(args.floor):
            targets["floor"] = start("floor", [os.path.abspath(args.floor)])
        for name in targets:
            wait_port(PORTS[name])
        time.sleep(0.5)  # nginx's and Node's workers up

        # The same answers from everyone before anything is timed.
        _, user = get(UPSTREAM + "/users/42")
        merged = None
        for name in targets:
            base = f"http://127.0.0.1:{PORTS[name]}"
            status, body = get(base + "/api/users/42")
            if status != 200 or json.loads(body) != json.loads(user):
                sys.exit(f"{name}: /api/users/42 is not the upstream's /users/42")
            if name not in PROXIES + UNSHAPED:
                answer = json.loads(get(base + "/api/dashboard/42")[1])
                merged = merged or answer
                if answer != merged:
                    sys.exit(f"{name}: /api/dashboard/42 differs:\n{answer}\nvs\n{merged}")

        distinct = os.path.join(HERE, "distinct-ids.lua")
        cases = [("direct", "upstream", UPSTREAM + "/users/42", None, upstream)]
        for name, proc in targets.items():
            base = f"http://127.0.0.1:{PORTS[name]}"
            cases.append(("pass-through", name, base + "/api/users/42", None, proc))
            if name not in PROXIES:
                cases.append(("fan-out", name, base + "/api/dashboard/", distinct, proc))
        runs = {case[:2]: [] for case in cases}
        hz = os.sysconf("SC_CLK_TCK")
        for rnd in range(args.rounds):
            for scenario, name, url, script, proc in (cases if rnd % 2 == 0 else cases[::-1]):
                calls, ticks = upstream_served(), cpu_ticks([proc.pid])
                r = wrk(url, args.duration, args.connections, script)
                served = max(1.0, r["rps"] * args.duration)
                after = cpu_ticks([proc.pid])
                r["user_us"] = (after[0] - ticks[0]) / hz * 1e6 / served
                r["sys_us"] = (after[1] - ticks[1]) / hz * 1e6 / served
                r["cpu_us"] = r["user_us"] + r["sys_us"]
                r["upstream_per_request"] = (upstream_served() - calls - 1) / served
                runs[(scenario, name)].append(r)

        rows = {}
        print(f"{'scenario':<13} {'target':<10} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'non2xx':>7} "
              f"{'up/req':>6} {'CPU µs/req':>10} {'user':>6} {'kernel':>6}")
        for (scenario, name), rs in runs.items():
            row = {k: statistics.median(r[k] for r in rs)
                   for k in ("rps", "p50", "p99", "non2xx", "cpu_us", "user_us", "sys_us",
                             "upstream_per_request")}
            rows[f"{scenario}/{name}"] = row
            print(f"{scenario:<13} {name:<10} {row['rps']:>9.0f} {row['p50']:>7.2f} {row['p99']:>7.2f} "
                  f"{row['non2xx']:>7.0f} {row['upstream_per_request']:>6.2f} {row['cpu_us']:>10.1f} "
                  f"{row['user_us']:>6.1f} {row['sys_us']:>6.1f}")

        ratios = {}

        def ratio(key, a, b, field="cpu_us"):
            if a in rows and b in rows and rows[b][field]:
                ratios[key] = round(rows[a][field] / rows[b][field], 2)

        # The issue-27 targets: ≤ 1.1, ≤ 2.5, ≤ 0.25 and p99 ≤ 0.3 (below 1: manifold spends less).
        ratio("cpu_passthrough_vs_nginx", "pass-through/manifold", "pass-through/nginx")
        ratio("cpu_fanout_vs_nginx_passthrough", "fan-out/manifold", "pass-through/nginx")
        ratio("cpu_fanout_vs_go", "fan-out/manifold", "fan-out/go-bff")
        ratio("p99_fanout_vs_go", "fan-out/manifold", "fan-out/go-bff", "p99")
        ratio("cpu_passthrough_vs_haproxy", "pass-through/manifold", "pass-through/haproxy")
        ratio("cpu_fanout_vs_node", "fan-out/manifold", "fan-out/node-bff")
        ratio("rps_passthrough_vs_nginx", "pass-through/manifold", "pass-through/nginx", "rps")
        # hyper alone: what the HTTP engine costs before any gateway work.
        ratio("cpu_floor_passthrough_vs_nginx", "pass-through/floor", "pass-through/nginx")
        ratio("cpu_floor_fanout_vs_nginx_passthrough", "fan-out/floor", "pass-through/nginx")
        ratio("user_passthrough_vs_floor", "pass-through/manifold", "pass-through/floor", "user_us")
        ratio("user_fanout_vs_floor", "fan-out/manifold", "fan-out/floor", "user_us")
        print("ratios " + " ".join(f"{k}={v}" for k, v in ratios.items()))
        if args.json:
            json.dump({"rows": rows, "ratios": ratios}, open(args.json, "w"), indent=2)
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
