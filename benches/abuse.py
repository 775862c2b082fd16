#!/usr/bin/env python3
"""What hostile clients and upstreams cost manifold: the gateway process's RSS (VmRSS)
and open descriptors before, during and after each attack, and what it answered.

    python3 benches/abuse.py idle
    python3 benches/abuse.py idle-conns --n 10000
    python3 benches/abuse.py half-heads --n 5000
    python3 benches/abuse.py h2-zero-window --conns 2 --streams 200
    python3 benches/abuse.py big-answers --n 100 --bytes 16777216
    python3 benches/abuse.py ratelimit-keys --seconds 10
    python3 benches/abuse.py compressed-streams --n 1000 --accept br

Every subcommand takes --bin PATH (default target/release/manifold) and --extra-server
'key = value' (repeatable: lines appended to the generated [server] table, to measure
builds with new keys, e.g. --extra-server 'header_read_timeout = "10s"'); every attack
(all but idle) also --settle SECONDS (the wait before the last measurement, default 15)
and --max-rss-mb.

Each run starts its own gateway on free 127.0.0.1 ports, with a config written to a
temp dir: the upstreams and routes of benches/compare/routes.toml, the access log
off, and the attack's own upstream and route. Its upstream is this file run as
`abuse.py upstream` (asyncio, HTTP/1.1 keep-alive; request bodies are read and dropped):

    /big?bytes=N        N bytes of valid JSON (an array of small records), chunked
    /stream?bytes=N&ms=M  N bytes of text, 16 KiB pieces M ms apart, chunked
    /flaky?p=P          503 with probability P, else small JSON
    /slow?ms=M&p=P      waits M ms first with probability P, then small JSON
    anything else       small JSON (/ok, and the bench's users, orders, recommendations)

"baseline" is measured 2 s after the gateway started, before any traffic; "end" 1 s
after the attack's clients are gone; "settled" --settle seconds after that. Peaks are
sampled every 0.2 s. A gateway whose RSS passes --max-rss-mb (default: half the
memory available at start) is killed, so an attack cannot take the machine down.
"""
import argparse
import asyncio
import collections
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCH_CONFIG = os.path.join(HERE, "compare", "routes.toml")


# ---------------------------------------------------------------------------
# The test upstream (`abuse.py upstream`, a process of its own so that it does not share
# the GIL with the attacking clients).

_json_bodies = {}


def json_of_size(n):
    """Exactly n bytes (at least 2) of JSON: an array of small records, padded with spaces."""
    n = max(n, 2)
    if n not in _json_bodies:
        records, size = [], 2  # the brackets
        while True:
            i = len(records)
            rec = b'{"id":%d,"name":"item-%d","price":%d.5,"tags":["a","b"]}' % (i, i, i % 1000)
            if size + len(rec) + (1 if records else 0) > n:
                break
            size += len(rec) + (1 if records else 0)
            records.append(rec)
        _json_bodies[n] = b"[" + b",".join(records) + b" " * (n - size) + b"]"
    return _json_bodies[n]


async def read_body(reader, headers):
    """Reads and drops a request body framed by content-length or chunked encoding."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return
            await reader.readexactly(size + 2)
    length = int(headers.get("content-length", "0"))
    while length > 0:
        length -= len(await reader.readexactly(min(length, 1 << 16)))


async def upstream_connection(reader, writer):
    small = b'{"id":1,"name":"Ada","avatar":"/a/1.png","customer_id":7,"items":[{"sku":"a1","qty":2}],"ok":true}'
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            target = head[0].split(" ")[1]
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            await read_body(reader, headers)
            path, _, query = target.partition("?")
            q = dict(urllib.parse.parse_qsl(query))
            if path == "/stream":
                # Text a passthrough route compresses as it streams.
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                left, pause = int(q.get("bytes", "524288")), int(q.get("ms", "100")) / 1000
                n = 0
                while left > 0:
                    part = b"".join(b"line %d of a streamed log, status=ok latency=%dms\n" % (n + i, (n * 7 + i) % 300)
                                    for i in range(300))[:min(left, 1 << 14)]
                    n += 300
                    left -= len(part)
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                    await asyncio.sleep(pause)
                writer.write(b"0\r\n\r\n")
            elif path == "/big":
                # No content-length: the gateway cannot refuse the body before reading it.
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                body = memoryview(json_of_size(int(q.get("bytes", "1000"))))
                for i in range(0, len(body), 1 << 16):
                    part = body[i:i + (1 << 16)]
                    writer.write(b"%x\r\n" % len(part))
                    writer.write(part)
                    writer.write(b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                status = b"200 OK"
                if path == "/flaky" and random.random() < float(q.get("p", "0.333")):
                    status = b"503 Service Unavailable"
                if path == "/slow" and random.random() < float(q.get("p", "0.1")):
                    await asyncio.sleep(int(q.get("ms", "300")) / 1000)
                writer.write(b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (status, len(small), small))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError, ValueError):
        pass  # the gateway closed the connection, or sent something this upstream does not parse
    finally:
        writer.close()


async def run_upstream():
    server = await asyncio.start_server(upstream_connection, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)  # the parent reads the port here
    await server.serve_forever()


# ---------------------------------------------------------------------------
# Processes, ports and measurements, shared with soak.py.

def raise_fd_limit():
    """Raises this process's RLIMIT_NOFILE to its hard limit (the gateway inherits it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def need_tool(name, package):
    if not shutil.which(name):
        sys.exit(f"{name} is not installed: apt-get install {package}")


def need_h2():
    """Imports hyper-h2, installing it from PyPI first if it is absent."""
    try:
        import h2  # noqa: F401
    except ImportError:
        print("installing the PyPI package h2 (hyper-h2)...", file=sys.stderr)
        # PIP_ROOT_USER_ACTION: no warning about running pip as root.
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "h2"],
                             env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})
        if pip.returncode:
            sys.exit("this subcommand needs hyper-h2 and `pip install h2` failed; install it by hand")


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_port(port, proc, log, seconds=15):
    """Waits for something to listen on `port`; exits with `proc`'s log if it died."""
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited with {proc.returncode}:\n{open(log).read()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def measure(pid):
    """(RSS in MB, open descriptors) of a process, or (None, None) when it is gone."""
    try:
        return rss_mb(pid), fd_count(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None, None


def available_mb():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024


class Gateway:
    def __init__(self, proc, port, admin, binary):
        self.proc, self.pid, self.port, self.admin, self.binary = proc, proc.pid, port, admin, binary

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"


class Session:
    """A temp dir and every process a run starts; leaving the `with` ends them all,
    also on Ctrl-C, SIGTERM or an error."""

    def __init__(self, prefix):
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.procs = []
        signal.signal(signal.SIGINT, self.interrupted)
        signal.signal(signal.SIGTERM, self.interrupted)

    def interrupted(self, signum, frame):
        # The processes go first: asyncio.run does not return while a thread still waits
        # for one (asyncio.to_thread(self.run, ...)), and wrk may have minutes to go.
        self.terminate()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + signum)

    def terminate(self):
        for p in list(self.procs):  # threads in run() add and remove entries
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()
        end = time.time() + 3
        for p in list(self.procs):  # threads in run() add and remove entries
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # a gateway draining stuck connections
                p.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    def spawn(self, cmd, name, stdout=None):
        """Starts cmd in a process group of its own; its stderr (and stdout unless
        piped) go to WORK/NAME.log."""
        log = open(f"{self.work}/{name}.log", "ab")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout or log, stderr=log,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def run(self, cmd, name):
        """Runs cmd to its end (also in its own process group); returns its stdout."""
        p = self.spawn(cmd, name, stdout=subprocess.PIPE)
        out = p.communicate()[0].decode(errors="replace")
        self.procs.remove(p)
        if p.returncode:
            sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{out}{open(f'{self.work}/{name}.log').read()}")
        return out

    def start_upstream(self):
        """Starts the test upstream; returns its base URL."""
        p = self.spawn([sys.executable, os.path.abspath(__file__), "upstream"], "upstream",
                       stdout=subprocess.PIPE)
        line = p.stdout.readline()
        if not line:
            sys.exit(f"the test upstream did not start:\n{open(f'{self.work}/upstream.log').read()}")
        return f"http://127.0.0.1:{int(line)}"

    def start_gateway(self, binary, body, extra_server=()):
        """Starts `binary serve` on a config of free ports, the access log off, `extra_server`
        lines in [server], and `body` (upstreams and routes) after."""
        if not os.path.exists(binary):
            sys.exit(f"{binary} is missing: build it (cargo build --release) or pass --bin PATH")
        port, admin = free_ports(2)
        config = f"{self.work}/routes.toml"
        with open(config, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n')
            f.write("".join(line + "\n" for line in extra_server))
            f.write("\n[telemetry]\naccess_log = false\n\n" + body)
        proc = self.spawn([binary, "serve", "--config", config], "gateway")
        log = f"{self.work}/gateway.log"
        wait_port(port, proc, log)
        wait_port(admin, proc, log)
        return Gateway(proc, port, admin, binary)


class Sampler(threading.Thread):
    """Reads a process's RSS and descriptors every `every` seconds and keeps the peaks.
    Kills the process (SIGKILL) if its RSS passes `cap_mb`."""

    def __init__(self, pid, cap_mb, every=0.2):
        super().__init__(daemon=True)
        self.pid, self.cap_mb, self.every = pid, cap_mb, every
        self.peak_rss = self.peak_fds = 0
        self.killed_at = None
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            rss, fds = measure(self.pid)
            if rss is None:
                return
            self.peak_rss, self.peak_fds = max(self.peak_rss, rss), max(self.peak_fds, fds)
            if rss > self.cap_mb:
                self.killed_at = rss
                os.kill(self.pid, signal.SIGKILL)
                return
            self.done.wait(self.every)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


def bench_routes(upstream):
    """The upstreams and routes of the benchmark's config, every upstream URL replaced by
    `upstream`. Its [server] and [telemetry] tables are left out: start_gateway writes them."""
    if not os.path.exists(BENCH_CONFIG):
        sys.exit(f"{BENCH_CONFIG} is missing ")
    text = open(BENCH_CONFIG).read()
    start = re.search(r"^\[\[?(upstreams|routes)\b", text, re.M).start()
    assert set(tomllib.loads(text[:start])) <= {"server", "telemetry"}, "unexpected table in the bench config"
    for up in tomllib.loads(text)["upstreams"].values():
        for url in up["urls"]:
            text = text.replace(f'"{url}"', f'"{upstream}"')
    return text[start:]


# ---------------------------------------------------------------------------
# The attacks. Each fills `out`: extra measurement rows and lines on what the gateway did.

class Outcome:
    def __init__(self):
        self.rows = []    # (label, RSS MB, fds) taken during the attack
        self.lines = []   # what the gateway answered, and when

    def row(self, label, pid):
        self.rows.append((label, *measure(pid)))


def histogram(counter):
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0])))


async def hold_connections(gw, n, payload, hold, out):
    """Opens n connections that each send `payload` (maybe nothing) and then nothing more;
    holds them up to `hold` s after the last connect, noting which the gateway closes, when,
    and with what answer."""
    conns, failed = [], collections.Counter()
    gate = asyncio.Semaphore(256)

    async def open_one():
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 10)
            except (OSError, asyncio.TimeoutError) as e:
                failed[type(e).__name__] += 1
                return
            if payload:
                w.write(payload)
            conns.append((r, w, time.monotonic()))

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(n)))
    connected = time.monotonic()
    out.lines.append(f"{len(conns)} of {n} connected in {connected - t0:.1f} s"
                     + (f"; failed: {histogram(failed)}" if failed else ""))
    closes = []  # (s after the last connect, s after this connection's connect, answer)

    async def watch(reader, opened):
        answer = b""
        try:
            while chunk := await reader.read(65536):
                answer = answer or chunk
            what = answer.split(b"\r\n")[0].decode(errors="replace") if answer else "closed, no answer"
        except ConnectionResetError:
            what = "reset"
        now = time.monotonic()
        closes.append((now - connected, now - opened, what))

    watchers = [asyncio.create_task(watch(r, t)) for r, _, t in conns]
    await asyncio.sleep(1)
    out.row(f"{len(conns)} connections open (+1 s)", gw.pid)
    await asyncio.wait(watchers, timeout=max(0.0, hold - 1))
    for task in watchers:
        task.cancel()
    for _, w, _ in conns:
        w.close()
    out.lines.append(f"closed by the gateway within {hold} s of the last connect: {len(closes)} of {len(conns)}")
    if closes:
        out.lines.append("  answers: " + histogram(collections.Counter(c[2] for c in closes)))
        per_second = collections.Counter(int(c[0]) for c in closes)
        out.lines.append("  closed per second after the last connect: "
                         + ", ".join(f"{s}-{s + 1} s: {k}" for s, k in sorted(per_second.items())))
        ages = sorted(c[1] for c in closes)
        out.lines.append(f"  connection age when closed: min {ages[0]:.1f} s, median "
                         f"{statistics.median(ages):.1f} s, max {ages[-1]:.1f} s")


async def h2_zero_window(gw, conns, streams, seconds, out):
    """Prior-knowledge h2c connections with INITIAL_WINDOW_SIZE = 0 opening `streams` GETs
    each, never sending WINDOW_UPDATE; RSS every 2 s for `seconds`."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    import h2.settings

    t0 = time.monotonic()
    events = collections.Counter()        # (second, connection, event) -> count
    heads = collections.Counter()         # status -> count
    totals = collections.Counter()        # streams opened, reset, DATA bytes
    writers = []

    def log(ci, what):
        events[(int(time.monotonic() - t0), ci, what)] += 1

    async def connection(ci):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writers.append(writer)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        c.initiate_connection()
        # A second SETTINGS frame right behind the first, before any stream: the gateway
        # may send no DATA at all until a WINDOW_UPDATE that never comes.
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        writer.write(c.data_to_send())
        opened = False
        try:
            while data := await reader.read(65536):
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.RemoteSettingsChanged) and not opened:
                        opened = True
                        limit = c.remote_settings.max_concurrent_streams
                        n = min(streams, limit)
                        if n < streams:
                            log(ci, f"gateway's MAX_CONCURRENT_STREAMS is {limit}: opening {n}")
                        for _ in range(n):
                            c.send_headers(c.get_next_available_stream_id(),
                                           [(":method", "GET"), (":path", "/abuse/big"), (":scheme", "http"),
                                            (":authority", "x")], end_stream=True)
                        totals["streams opened"] += n
                    elif isinstance(ev, h2.events.ResponseReceived):
                        heads[dict(ev.headers)[":status"]] += 1
                    elif isinstance(ev, h2.events.DataReceived):
                        totals["DATA bytes"] += len(ev.data)
                    elif isinstance(ev, h2.events.StreamReset):
                        totals["streams reset"] += 1
                        log(ci, f"RST_STREAM {ev.error_code!r}")
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        log(ci, f"GOAWAY {ev.error_code!r}, last stream {ev.last_stream_id}")
                writer.write(c.data_to_send())
            log(ci, "connection closed by the gateway")
        except h2.exceptions.ProtocolError as e:
            log(ci, f"h2 protocol error: {e!r}")
        except ConnectionError as e:
            log(ci, f"connection error: {e!r}")

    tasks = [asyncio.create_task(connection(ci)) for ci in range(conns)]
    series = []
    for k in range(seconds // 2 + 1):
        await asyncio.sleep(max(0.0, t0 + 2 * k - time.monotonic()))
        series.append((round(time.monotonic() - t0), *measure(gw.pid), sum(heads.values()), totals["streams reset"]))
    for task in tasks:
        task.cancel()
    for w in writers:
        w.close()
    out.lines.append(f"streams opened: {totals['streams opened']}; response heads: {histogram(heads) or 'none'}; "
                     f"DATA bytes received: {totals['DATA bytes']}; streams reset: {totals['streams reset']}")
    out.lines.append(f"{'t s':>5} {'RSS MB':>8} {'fds':>6} {'heads':>6} {'resets':>7}")
    for t, rss, fds, h, resets in series:
        out.lines.append(f"{t:>5} {rss or 0:>8.1f} {fds or 0:>6} {h:>6} {resets:>7}")
    out.lines.append("events (s after start, connection):" if events else "events: none (no RST_STREAM, GOAWAY or close)")
    for (s, ci, what), k in sorted(events.items()):
        out.lines.append(f"  {s:>3} s  conn {ci}  {what}" + (f"  x{k}" if k > 1 else ""))


async def big_answers(gw, n, nbytes, out):
    """n concurrent requests, each to a different URL (so identical-GET coalescing cannot
    merge their upstream calls), whose backend answers nbytes of chunked JSON."""
    results = []

    async def one(i):
        t = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(f"GET /abuse/big-answer/{i} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            status = (await reader.readline()).split(b" ")[1].decode()
            size = 0
            while chunk := await reader.read(1 << 20):
                size += len(chunk)
            writer.close()
        except (OSError, IndexError) as e:
            status, size = type(e).__name__, 0
        results.append((status, size, time.monotonic() - t))

    await asyncio.gather(*(one(i) for i in range(n)))
    out.lines.append("statuses: " + histogram(collections.Counter(r[0] for r in results)))
    sizes = sorted(r[1] for r in results)
    secs = sorted(r[2] for r in results)
    out.lines.append(f"bytes received per answer (head included): min {sizes[0]}, max {sizes[-1]}; "
                     f"time per answer: min {secs[0]:.1f} s, max {secs[-1]:.1f} s")


async def compressed_streams(gw, n, accept, out):
    """n concurrent passthrough streams, each asking for `accept`, read as they come."""
    results = []

    async def one(i):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            ae = f"accept-encoding: {accept}\r\n" if accept != "identity" else ""
            writer.write(f"GET /abuse/stream/{i} HTTP/1.1\r\nhost: x\r\n{ae}connection: close\r\n\r\n".encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            status = head.split(" ")[1]
            coding = "identity"
            for line in head.split("\r\n"):
                if line.startswith("content-encoding:"):
                    coding = line.split(":", 1)[1].strip()
            size = 0
            while chunk := await reader.read(1 << 16):
                size += len(chunk)
            writer.close()
        except (OSError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            status, coding, size = type(e).__name__, "-", 0
        results.append((status, coding, size))

    await asyncio.gather(*(one(i) for i in range(n)))
    out.lines.append("statuses: " + histogram(collections.Counter(r[0] for r in results)))
    out.lines.append("encodings: " + histogram(collections.Counter(r[1] for r in results)))
    sizes = sorted(r[2] for r in results)
    out.lines.append(f"bytes received per stream: min {sizes[0]}, max {sizes[-1]}")


RATELIMIT_LUA = """\
-- A fresh x-api-key on every request. Each wrk thread has its own Lua state,
-- so keys carry the thread's number; statuses are counted per thread.
local n = 0
statuses = {}
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function request()
  n = n + 1
  return wrk.format("GET", wrk.path, { ["x-api-key"] = "key-" .. id .. "-" .. n })
end
function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end
function done()
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write("status ", status, " ", count, "\\n")
    end
  end
end
"""


async def ratelimit_keys(gw, session, seconds, out):
    script = f"{session.work}/fresh-key.lua"
    open(script, "w").write(RATELIMIT_LUA)
    cmd = ["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", script, gw.url("/abuse/limited")]
    text = await asyncio.to_thread(session.run, cmd, "wrk")
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    statuses = collections.Counter()
    for status, count in re.findall(r"^status (\d+) (\d+)$", text, re.M):
        statuses[status] += int(count)
    errors = re.search(r"Socket errors:.*", text)
    out.lines.append(f"requests sent (each with a new key): {m.group(1)} in {m.group(2)}{m.group(3)}; "
                     f"statuses: {histogram(statuses)}" + (f"; {errors.group(0)}" if errors else ""))
    out.requests = int(m.group(1))


# ---------------------------------------------------------------------------

def run(args, extra_toml, attack):
    """Starts the upstream and a gateway, measures the baseline, runs `attack`, measures
    again at the end and after --settle, and prints the table."""
    hard = raise_fd_limit()
    with Session(f"manifold-abuse-{args.cmd}-") as session:
        upstream = session.start_upstream()
        body = bench_routes(upstream) + extra_toml.replace("UPSTREAM", upstream)
        gw = session.start_gateway(args.bin, body, args.extra_server)
        time.sleep(2)
        base = measure(gw.pid)
        out = Outcome()
        cap = args.max_rss_mb or available_mb() / 2
        with Sampler(gw.pid, cap) as sampler:
            asyncio.run(attack(gw, session, out))
            time.sleep(1)
            end = measure(gw.pid)
        time.sleep(args.settle)
        settled = measure(gw.pid)

        extra = "; ".join(args.extra_server) or "none"
        print(f"\n== {args.cmd}: {gw.binary} (pid {gw.pid}, RLIMIT_NOFILE {hard}, extra [server]: {extra})")
        rows = [("baseline (2 s after start)", *base), *out.rows,
                ("peak (sampled every 0.2 s)", sampler.peak_rss, sampler.peak_fds),
                ("end (1 s after the attack)", *end), (f"settled ({args.settle} s later)", *settled)]
        print(f"{'':<34} {'RSS MB':>8} {'fds':>7}")
        for label, rss, fds in rows:
            if rss is None:
                print(f"{label:<34} {'gone':>8} {'-':>7}")
            else:
                print(f"{label:<34} {rss:>8.1f} {fds:>7}")
        if sampler.killed_at:
            print(f"!! the gateway passed the RSS cap of {cap:.0f} MB ({sampler.killed_at:.0f} MB) and was killed")
        elif end[0] is None:
            print(f"!! the gateway died during the attack (exit {gw.proc.poll()}); its log:\n"
                  + open(f"{session.work}/gateway.log").read()[-2000:])
        for line in out.lines:
            print(line)
        return base, end, settled, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def command(name, help, attack=True):
        p = sub.add_parser(name, help=help)
        p.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"), help="manifold binary")
        p.add_argument("--extra-server", action="append", default=[], metavar="'KEY = VALUE'",
                       help="a line appended to the generated [server] table (repeatable)")
        if attack:
            p.add_argument("--settle", type=int, default=15, help="seconds between the end and the last measurement")
            p.add_argument("--max-rss-mb", type=float,
                           help="kill the gateway past this RSS (default: half of MemAvailable)")
        return p

    sub.add_parser("upstream", help="run the test upstream alone (prints its port)")
    command("idle", "RSS of a gateway on the bench config, no traffic", attack=False)
    p = command("idle-conns", "connections that never send a byte")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--hold", type=int, default=40, help="seconds to hold them after the last connect")
    p = command("half-heads", "connections that send an unfinished request head")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--hold", type=int, default=40, help="seconds to hold them after the last connect")
    p = command("h2-zero-window", "h2c streams the client never lets the gateway send on")
    p.add_argument("--conns", type=int, default=2)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--bytes", type=int, default=750000, help="size of the backend's answer")
    p.add_argument("--seconds", type=int, default=40)
    p = command("big-answers", "concurrent requests whose backend answers a big JSON body")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--bytes", type=int, default=16777216)
    p = command("compressed-streams", "concurrent passthrough streams compressed as they stream")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--accept", default="br", help="the clients' accept-encoding (identity: none)")
    p.add_argument("--bytes", type=int, default=524288, help="bytes of each stream")
    p.add_argument("--ms", type=int, default=100, help="pause between the upstream's 16 KiB pieces")
    p = command("ratelimit-keys", "a fresh rate-limit key on every request")
    p.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()

    if args.cmd == "upstream":
        asyncio.run(run_upstream())
    elif args.cmd == "idle":
        hard = raise_fd_limit()
        with Session("manifold-abuse-idle-") as session:
            gw = session.start_gateway(args.bin, bench_routes(session.start_upstream()), args.extra_server)
            time.sleep(2)
            rss, fds = measure(gw.pid)
            extra = "; ".join(args.extra_server) or "none"
            print(f"\n== idle: {gw.binary} (pid {gw.pid}, RLIMIT_NOFILE {hard}, extra [server]: {extra})")
            print(f"bench config, 2 s after start, no traffic: RSS {rss:.1f} MB, {fds} fds")
    elif args.cmd in ("idle-conns", "half-heads"):
        payload = b"" if args.cmd == "idle-conns" else b"GET /api/users/1 HTTP/1.1\r\nhost: x\r\n"
        run(args, "", lambda gw, s, out: hold_connections(gw, args.n, payload, args.hold, out))
    elif args.cmd == "h2-zero-window":
        need_h2()
        route = f"""
[upstreams.abuse]
urls = ["UPSTREAM"]

[[routes]]
path = "/abuse/big"
timeout = "30s"

  [[routes.backends]]
  upstream = "abuse"
  path = "/big?bytes={args.bytes}"
  group = "data"
"""
        run(args, route, lambda gw, s, out: h2_zero_window(gw, args.conns, args.streams, args.seconds, out))
    elif args.cmd == "big-answers":
        route = f"""
[upstreams.abuse]
urls = ["UPSTREAM"]
max_response_body = "32MiB"

[[routes]]
path = "/abuse/big-answer/{{n}}"
timeout = "60s"

  [[routes.backends]]
  upstream = "abuse"
  path = "/big?bytes={args.bytes}&n={{n}}"
  group = "data"
"""
        run(args, route, lambda gw, s, out: big_answers(gw, args.n, args.bytes, out))
    elif args.cmd == "compressed-streams":
        route = f"""
[upstreams.abuse]
urls = ["UPSTREAM"]
timeout = "30s"

[[routes]]
path = "/abuse/stream/{{n}}"
timeout = "60s"
passthrough = true

  [[routes.backends]]
  upstream = "abuse"
  path = "/stream?bytes={args.bytes}&ms={args.ms}&n={{n}}"
"""
        run(args, route, lambda gw, s, out: compressed_streams(gw, args.n, args.accept, out))
    elif args.cmd == "ratelimit-keys":
        need_tool("wrk", "wrk")
        route = """
[upstreams.abuse]
urls = ["UPSTREAM"]

[[routes]]
path = "/abuse/limited"
rate_limit = { per_second = 0.001, burst = 1, key = "header:x-api-key" }

  [[routes.backends]]
  upstream = "abuse"
  path = "/ok"
"""
        base, end, settled, out = run(args, route, lambda gw, s, out: ratelimit_keys(gw, s, args.seconds, out))
        if end[0] is not None and out.requests:
            print(f"RSS per key sent: {(end[0] - base[0]) * 1048576 / out.requests:.0f} bytes at the end, "
                  f"{(settled[0] - base[0]) * 1048576 / out.requests:.0f} bytes settled")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (every process it started was stopped)")
