"""Helpers the benchmark scripts share: ports, wrk runs and CPU time of processes."""
import os
import re
import socket
import subprocess
import sys
import time


def wait_port(port, seconds=15):
    end = time.time() + seconds
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def wrk(url, duration, connections=64, script=None):
    """One wrk run: (requests/s, p99 in ms)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", out, re.M)
    p99_ms = float(p99.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if failed:
        print(f"# {url}: {failed.group(1)} answers were not 2xx", file=sys.stderr)
    return rps, p99_ms


def cpu_seconds(pids):
    """User + system CPU of processes (and their threads) so far."""
    total = 0.0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def stop_all(procs, work):
    """Stops the started process groups and removes the work directory."""
    import shutil
    import signal
    for p in list(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    shutil.rmtree(work, ignore_errors=True)


def children(pid):
    """The child processes of `pid` (nginx's workers under its master)."""
    try:
        return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def rss_kib(pid):
    """Resident memory of a process now, in KiB (VmRSS)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def plot(path, title, xlabel, ylabel, lines, logx=False, note=None):
    """Draws `lines` ([(label, xs, ys)]) into the PNG at `path`: the sizing curves of
    docs/operations.md. Needs matplotlib (pip install matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for (label, xs, ys), marker in zip(lines, "osD^v"):
        ax.plot(xs, ys, marker=marker, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="gray")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def data_upstream(work, start, extra=""):
    """benches/compare/upstream.nginx.conf (benches/data's answers on :7001, one worker),
    with `extra` nginx directives added to its server block; started with `start`."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(f"{work}/tmp", exist_ok=True)
    text = open(f"{here}/compare/upstream.nginx.conf").read()
    text = text.replace("__WORK__", work).replace("__DATA__", f"{here}/data")
    text = text.replace("    location = /status", extra + "    location = /status", 1)
    open(f"{work}/upstream.conf", "w").write(text)
    p = start(["nginx", "-p", work, "-c", f"{work}/upstream.conf"])
    wait_port(7001)
    return p


def hwm_kib(pid):
    """Peak resident memory of a process so far, in KiB (VmHWM)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def session(prefix):
    """A temporary work directory, the list of processes started, and `start(cmd,
    stdout=DEVNULL)`, which starts one in its own process group (stderr with stdout when
    that is a file, else dropped) and keeps it for `stop_all(procs, work)`."""
    import tempfile
    work = tempfile.mkdtemp(prefix=prefix)
    procs = []

    def start(cmd, stdout=subprocess.DEVNULL):
        stderr = subprocess.STDOUT if hasattr(stdout, "write") else subprocess.DEVNULL
        p = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, start_new_session=True)
        procs.append(p)
        return p

    return work, procs, start


def sizing_args(doc, png, **options):
    """The sizing scripts' arguments: --bin, --png (docs/PNG by default) and `options`
    (name=default, typed by the default)."""
    import argparse
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(root, "target/release/manifold"))
    ap.add_argument("--png", default=os.path.join(root, "docs", png))
    for name, default in options.items():
        ap.add_argument(f"--{name}", type=type(default), default=default)
    return ap.parse_args()


def gateway_config(timeout="1s", upstream_extra=""):
    """The head of a benchmark gateway's routes.toml: public :7103, admin :7113, no access
    log, upstream `svc` = the data upstream on :7001. Routes are appended to it."""
    return f"""[server]
listen = "127.0.0.1:7103"
admin_listen = "127.0.0.1:7113"

[telemetry]
access_log = false

[upstreams.svc]
urls = ["http://127.0.0.1:7001"]
timeout = "{timeout}"
{upstream_extra}"""
