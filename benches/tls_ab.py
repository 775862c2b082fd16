#!/usr/bin/env python3
"""Ending TLS: manifold against nginx, both proxying the benchmark's pass-through route
(/api/users/42 to the upstream nginx on :7001) over HTTPS with the same certificate.

    cargo build --release
    python3 benches/tls_ab.py [--rounds 3] [--duration 5] [--rsa] [--bin target/release/manifold]

Cases, per target:
  h2        h2load, 32 connections x 10 streams, kept alive (ALPN h2)
  http1.1   h2load --h1, 32 connections, kept alive
  new       openssl s_time -new: a full handshake and one request per connection
  resumed   openssl s_time -reuse: a resumed session and one request per connection

Prints requests (or connections) per second and the proxy's CPU µs per request (or per
connection): user+system of its processes over what it served; medians over rounds, run
in alternating order. The certificate is ECDSA P-256 (--rsa: RSA 2048). Needs nginx
(with http_v2 and ssl), h2load (nghttp2-client) and openssl.
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import children, cpu_seconds, stop_all, data_upstream, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMPARE = os.path.join(HERE, "compare")  # the benchmark's routes.toml and upstream

NGINX_TLS = """worker_processes 2;
daemon off;
pid __DIR__/tls.pid;
error_log __DIR__/tls-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path __DIR__/tmp;
  proxy_temp_path __DIR__/tmp;
  fastcgi_temp_path __DIR__/tmp;
  uwsgi_temp_path __DIR__/tmp;
  scgi_temp_path __DIR__/tmp;
  upstream svc { server 127.0.0.1:7001; keepalive 128; }
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  server {
    listen 127.0.0.1:7443 ssl http2 reuseport backlog=4096;
    ssl_certificate __DIR__/cert.pem;
    ssl_certificate_key __DIR__/key.pem;
    location ~ ^/api/users/([^/]+)$ {
      proxy_pass http://svc/users/$1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
"""


def h2load(url, duration, h1):
    cmd = ["h2load", "-c", "32", "-D", str(duration), "--warm-up-time", "1"]
    cmd += ["--h1"] if h1 else ["-m", "10"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not m or not done or done.group(1) != done.group(2):
        sys.exit(f"h2load failed:\n{out}")
    return float(m.group(1)), int(done.group(1))


def s_time(port, duration, reuse):
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-www", "/api/users/42",
           "-time", str(duration), "-reuse" if reuse else "-new"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"(\d+) connections in ([\d.]+)s", out)
    if not m:
        sys.exit(f"s_time failed:\n{out}")
    return int(m.group(1)) / duration, int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rsa", action="store_true", help="an RSA 2048 certificate instead of ECDSA P-256")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} is missing: cargo build --release")
    work = tempfile.mkdtemp(prefix="manifold-tls-ab-")
    os.makedirs(f"{work}/tmp")
    procs = []

    def start(cmd):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        return p

    try:
        key = ["-newkey", "rsa:2048"] if args.rsa else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        subprocess.run(["openssl", "req", "-x509", *key, "-nodes", "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem"],
                       check=True, capture_output=True)
        data_upstream(work, start)
        open(f"{work}/tls-nginx.conf", "w").write(NGINX_TLS.replace("__DIR__", work))
        routes = open(f"{COMPARE}/routes.toml").read().replace(
            'admin_listen = "127.0.0.1:7113"',
            'admin_listen = "127.0.0.1:7113"\ntls = { cert = "cert.pem", key = "key.pem" }', 1)
        open(f"{work}/routes.toml", "w").write(routes)
        wait_port(7001)

        targets = [("nginx", 7443), ("manifold", 7103)]
        cases = ["h2", "http1.1", "new", "resumed"]
        results = {(t, c): [] for t, _ in targets for c in cases}
        for rnd in range(args.rounds):
            for name, port in (targets if rnd % 2 == 0 else list(reversed(targets))):
                if name == "nginx":
                    p = start(["nginx", "-p", work, "-c", f"{work}/tls-nginx.conf"])
                    wait_port(port)
                    time.sleep(0.3)
                    pids = [p.pid] + children(p.pid)
                else:
                    p = start([args.bin, "serve", "--config", f"{work}/routes.toml"])
                    wait_port(port)
                    time.sleep(0.3)
                    pids = [p.pid]
                url = f"https://127.0.0.1:{port}/api/users/42"
                for case in cases:
                    before = cpu_seconds(pids)
                    if case in ("h2", "http1.1"):
                        rate, n = h2load(url, args.duration, case == "http1.1")
                    else:
                        rate, n = s_time(port, args.duration, case == "resumed")
                    cpu_us = (cpu_seconds(pids) - before) / max(n, 1) * 1e6
                    results[(name, case)].append((rate, cpu_us))
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
                procs.remove(p)
                time.sleep(0.3)
        cert = "RSA 2048" if args.rsa else "ECDSA P-256"
        print(f"certificate: {cert}; h2/http1.1 per request, new/resumed per connection (one request each)")
        print(f"{'case':<9} {'nginx /s':>10} {'CPU µs':>8} {'manifold /s':>12} {'CPU µs':>8}  {'CPU ratio':>9}")
        for case in cases:
            row = []
            for name, _ in targets:
                runs = results[(name, case)]
                row.append((statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)))
            (nr, nc), (mr, mc) = row
            print(f"{case:<9} {nr:>10.0f} {nc:>8.1f} {mr:>12.0f} {mc:>8.1f}  {mc / nc:>8.2f}x")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
