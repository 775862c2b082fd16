#!/usr/bin/env python3
"""About ten minutes of mixed traffic against one gateway, sampling its RSS (VmRSS) and
open descriptors every 10 s, to tell a leak from a plateau.

    python3 benches/soak.py [--minutes 10] [--bin PATH] [--extra-server 'key = value' ...]

All at once, and moderate (the box has 2 cores), against the test upstream of abuse.py:
- wrk, 4 connections each pausing 10 ms between requests, on a merged route of three
  backends: a plain one; one whose upstream answers 503 a third of the time (optional,
  retried once, behind a circuit breaker); one sometimes slower than its upstream's
  timeout (optional, with a default);
- wrk, paced the same, on a passthrough route;
- h2load (h2c prior knowledge) on both routes, 2000 requests over 4 connections x 20
  streams, every 10 s;
- 8 slow clients at a time, each sending a request head a byte a second;
- 20 connections every 10 s that never send a byte and are abandoned: held until the
  gateway closes them or the soak ends;
- two uploads a second (a passthrough and a merged POST route, in turn) cut off after
  64 KiB of a 256 KiB body.

At the end: the samples, the verdict (mean RSS and fds of the last third of the samples
against the first third, leaving out the first minute as warm-up; "flat" when RSS grew
less than 5 %), and a last sample 15 s after the traffic stopped. --extra-server lines
are appended to the generated [server] table, as in abuse.py.
"""
import argparse
import asyncio
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from abuse import ROOT, Session, measure, need_tool, raise_fd_limit  # noqa: E402

ROUTES = """
[upstreams.users]
urls = ["UPSTREAM"]
timeout = "1s"

[upstreams.flaky]
urls = ["UPSTREAM"]
timeout = "1s"
retry = { attempts = 2 }
circuit_breaker = { consecutive_failures = 5, open_for = "1s" }

[upstreams.slow]
urls = ["UPSTREAM"]
timeout = "250ms"

[[routes]]
path = "/soak/merged/{id}"
timeout = "1s"

  [[routes.backends]]
  upstream = "users"
  path = "/users/{id}"
  group = "user"

  [[routes.backends]]
  upstream = "flaky"
  path = "/flaky?p=0.333&id={id}"
  group = "flaky"
  optional = true

  [[routes.backends]]
  upstream = "slow"
  path = "/slow?ms=400&p=0.1&id={id}"
  group = "slow"
  default = {}

[[routes]]
path = "/soak/users/{id}"

  [[routes.backends]]
  upstream = "users"
  path = "/users/{id}"
  passthrough = true

[[routes]]
method = "POST"
path = "/soak/upload"

  [[routes.backends]]
  upstream = "users"
  path = "/upload"
  passthrough = true

[[routes]]
method = "POST"
path = "/soak/upload-merged"

  [[routes.backends]]
  upstream = "users"
  path = "/upload"
"""

PACED_LUA = """\
-- Each connection waits 10 ms between requests; ids cycle through 1000 values so
-- identical-GET coalescing seldom applies. wrk.path is the route's prefix.
local n = 0
function request()
  n = n + 1
  return wrk.format("GET", wrk.path .. (n % 1000))
end
function delay()
  return 10
end
"""


class Soak:
    def __init__(self, gw, session, seconds):
        self.gw, self.session, self.seconds = gw, session, seconds
        self.counts = {k: 0 for k in ("h2load runs", "h2load requests", "h2load failed", "slow clients",
                                      "slow answered", "slow cut off", "idle opened", "idle closed by gateway",
                                      "uploads aborted")}
        self.h2load_statuses = {}
        self.held = []  # (writer, task watching for the gateway's close) of each abandoned connection

    async def connect(self):
        return await asyncio.open_connection("127.0.0.1", self.gw.port)

    async def wrk(self, prefix, name):
        script = f"{self.session.work}/paced.lua"
        open(script, "w").write(PACED_LUA)
        cmd = ["wrk", "-t1", "-c4", f"-d{self.seconds}s", "-s", script, self.gw.url(prefix)]
        return await asyncio.to_thread(self.session.run, cmd, name)

    async def h2load(self):
        uris = [self.gw.url(f"/soak/merged/{i}") for i in range(5)] + \
               [self.gw.url(f"/soak/users/{i}") for i in range(5)]
        while True:
            text = await asyncio.to_thread(self.session.run, ["h2load", "-n", "2000", "-c", "4", "-m", "20", *uris],
                                           "h2load")
            m = re.search(r"requests: (\d+) total.*?(\d+) succeeded, (\d+) failed", text)
            self.counts["h2load runs"] += 1
            self.counts["h2load requests"] += int(m.group(1))
            self.counts["h2load failed"] += int(m.group(3))
            for k, cls in re.findall(r"(\d+) ([2-5]xx)", text.split("status codes:")[1].split("\n")[0]):
                self.h2load_statuses[cls] = self.h2load_statuses.get(cls, 0) + int(k)
            await asyncio.sleep(10)

    async def slow_client(self):
        head = b"GET /soak/users/1 HTTP/1.1\r\nhost: x\r\n\r\n"
        while True:
            self.counts["slow clients"] += 1
            reader, writer = await self.connect()
            try:
                for i in range(len(head)):
                    if reader.at_eof():  # the gateway gave up on this head
                        break
                    writer.write(head[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(1)
                answered = await reader.read(65536)
            except ConnectionError:
                answered = b""
            writer.close()
            self.counts["slow answered" if answered else "slow cut off"] += 1

    async def abandoned_connections(self):
        async def watch(reader):
            if await reader.read(1) == b"":
                self.counts["idle closed by gateway"] += 1

        while True:
            for _ in range(20):
                reader, writer = await self.connect()
                self.held.append((writer, asyncio.create_task(watch(reader))))
                self.counts["idle opened"] += 1
            await asyncio.sleep(10)

    async def aborted_uploads(self):
        paths = ["/soak/upload", "/soak/upload-merged"]
        while True:
            path = paths[self.counts["uploads aborted"] % 2]
            _, writer = await self.connect()
            writer.write(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         f"content-length: {256 * 1024}\r\n\r\n".encode() + b" " * (64 * 1024))
            try:
                await writer.drain()
                await asyncio.sleep(0.2)
            except ConnectionError:
                pass
            writer.close()
            self.counts["uploads aborted"] += 1
            await asyncio.sleep(0.3)

    async def run(self):
        """Runs the traffic for `seconds`, sampling every 10 s; returns the samples and wrk's outputs."""
        background = [asyncio.create_task(self.h2load()), asyncio.create_task(self.abandoned_connections()),
                      asyncio.create_task(self.aborted_uploads())]
        background += [asyncio.create_task(self.slow_client()) for _ in range(8)]
        wrks = [asyncio.create_task(self.wrk("/soak/merged/", "wrk-merged")),
                asyncio.create_task(self.wrk("/soak/users/", "wrk-users"))]
        samples, t0 = [], time.monotonic()
        for k in range(self.seconds // 10 + 1):
            await asyncio.sleep(max(0.0, t0 + 10 * k - time.monotonic()))
            rss, fds = measure(self.gw.pid)
            if rss is None:
                sys.exit(f"the gateway died at {10 * k} s:\n" + open(f"{self.session.work}/gateway.log").read()[-2000:])
            samples.append((10 * k, rss, fds))
            print(f"{10 * k:>5} s  RSS {rss:7.1f} MB  fds {fds:>6}", file=sys.stderr, flush=True)
        outputs = [await task for task in wrks]
        for task in background:
            task.cancel()
        for result in await asyncio.gather(*background, return_exceptions=True):
            if not isinstance(result, asyncio.CancelledError):
                print(f"!! a traffic task stopped early: {result!r}")
        for writer, task in self.held:
            task.cancel()
            writer.close()
        return samples, outputs


def wrk_summary(text):
    total = re.search(r"(\d+) requests in", text).group(1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return f"{total} requests, {non2xx.group(1) if non2xx else 0} non-2xx" + (f", {errors.group(0)}" if errors else "")


def verdict(samples):
    """Mean RSS and fds of the last third against the first third, after a 1-minute warm-up."""
    rest = [s for s in samples if s[0] >= 60]
    third = len(rest) // 3
    if third == 0:
        return "verdict: too few samples after the 1-minute warm-up (run at least --minutes 2)"
    first, last = rest[:third], rest[-third:]
    lines = [f"verdict: samples {first[0][0]}-{first[-1][0]} s against {last[0][0]}-{last[-1][0]} s"]
    for i, what, unit in ((1, "RSS", " MB"), (2, "fds", "")):
        a, b = statistics.mean(s[i] for s in first), statistics.mean(s[i] for s in last)
        lines.append(f"  {what}: {a:.1f}{unit} -> {b:.1f}{unit}, growth {b - a:+.1f}{unit} ({(b - a) / a * 100:+.1f} %)")
    a, b = statistics.mean(s[1] for s in first), statistics.mean(s[1] for s in last)
    lines.append("  RSS is " + ("flat (grew less than 5 %)" if (b - a) / a < 0.05 else "GROWING (5 % or more)"))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"), help="manifold binary")
    ap.add_argument("--extra-server", action="append", default=[], metavar="'KEY = VALUE'",
                    help="a line appended to the generated [server] table (repeatable)")
    args = ap.parse_args()
    need_tool("wrk", "wrk")
    need_tool("h2load", "nghttp2-client")
    hard = raise_fd_limit()
    seconds = max(10, int(args.minutes * 60) // 10 * 10)
    with Session("manifold-soak-") as session:
        upstream = session.start_upstream()
        gw = session.start_gateway(args.bin, ROUTES.replace("UPSTREAM", upstream), args.extra_server)
        time.sleep(2)
        base = measure(gw.pid)
        soak = Soak(gw, session, seconds)
        samples, (merged, users) = asyncio.run(soak.run())
        time.sleep(15)
        after = measure(gw.pid)

        extra = "; ".join(args.extra_server) or "none"
        print(f"\n== soak: {gw.binary} (pid {gw.pid}, {seconds} s, RLIMIT_NOFILE {hard}, extra [server]: {extra})")
        print(f"baseline (2 s after start): RSS {base[0]:.1f} MB, {base[1]} fds")
        print(f"{'t s':>5} {'RSS MB':>8} {'fds':>7}")
        for t, rss, fds in samples:
            print(f"{t:>5} {rss:>8.1f} {fds:>7}")
        print(verdict(samples))
        print(f"15 s after the traffic stopped: RSS {after[0]:.1f} MB, {after[1]} fds")
        print(f"wrk merged: {wrk_summary(merged)}")
        print(f"wrk passthrough: {wrk_summary(users)}")
        print(f"h2load statuses: {', '.join(f'{k} {v}' for k, v in sorted(soak.h2load_statuses.items()))}")
        print("; ".join(f"{k}: {v}" for k, v in soak.counts.items()))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (every process it started was stopped)")
