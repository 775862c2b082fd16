#!/usr/bin/env python3
"""What a token check costs: the benchmark's fan-out of three (distinct ids, nothing
coalesced) without auth, with one RS256 token on every request (the common case: a
client sends its token until it expires; manifold remembers it verified), and with a
different RS256 token on every request (12,000 tokens round robin, more than the 10,000
a validator remembers, so every request pays the signature check).

    cargo build --release
    pip install cryptography        # to mint the tokens
    python3 benches/auth_ab.py [--rounds 3] [--duration 5] [--bin target/release/manifold]

Prints req/s, p99 and manifold's CPU µs per request (user+system over requests served)
for each case, medians over rounds run in alternating order, and each case against
`none`. Uses benches/compare (upstream nginx on :7001, routes.toml).
"""
import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_seconds, stop_all, data_upstream, wait_port, wrk

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMPARE = os.path.join(HERE, "compare")  # the benchmark's routes.toml and upstream
TOKENS = 12_000


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(n):
    """An RSA key's JWKS and `n` RS256 tokens signed with it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    as_bytes = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
    jwks = {"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
                      "n": b64(as_bytes(pub.n)), "e": b64(as_bytes(pub.e))}]}
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
    exp = int(time.time()) + 24 * 3600
    tokens = []
    for i in range(n):
        claims = b64(json.dumps({"sub": f"user-{i}", "iss": "bench", "exp": exp, "scope": "read"}).encode())
        signing = f"{header}.{claims}".encode()
        sig = key.sign(signing, padding.PKCS1v15(), hashes.SHA256())
        tokens.append(f"{header}.{claims}.{b64(sig)}")
    return jwks, tokens


def lua(path, tokens):
    """A wrk script: distinct ids, and the tokens round robin (none: no header)."""
    with open(path, "w") as f:
        f.write("local tokens = {\n")
        for t in tokens:
            f.write(f'"{t}",\n')
        f.write("}\nlocal n = 0\nrequest = function()\n  n = n + 1\n")
        if tokens:
            f.write('  local t = tokens[(n % #tokens) + 1]\n')
            f.write('  return wrk.format("GET", "/api/dashboard/" .. n, {["authorization"] = "Bearer " .. t})\n')
        else:
            f.write('  return wrk.format("GET", "/api/dashboard/" .. n)\nend\n')
            return
        f.write("end\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/manifold"))
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} is missing: cargo build --release")
    work = tempfile.mkdtemp(prefix="manifold-auth-ab-")
    os.makedirs(f"{work}/tmp")
    procs = []

    def start(cmd):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        return p

    try:
        print(f"minting {TOKENS} RS256 tokens ...", flush=True)
        jwks, tokens = mint(TOKENS)
        json.dump(jwks, open(f"{work}/jwks.json", "w"))
        base = open(f"{COMPARE}/routes.toml").read()
        validator = '[auth.jwt.bench]\njwks_file = "jwks.json"\nissuer = "bench"\nalgorithms = ["RS256"]\n\n'
        authed = base.replace("[upstreams.svc]", validator + "[upstreams.svc]", 1).replace(
            'path = "/api/dashboard/{id}"\n', 'path = "/api/dashboard/{id}"\nauth = { jwt = "bench", scopes = ["read"] }\n', 1)
        open(f"{work}/plain.toml", "w").write(base)
        open(f"{work}/auth.toml", "w").write(authed)
        lua(f"{work}/none.lua", [])
        lua(f"{work}/one.lua", tokens[:1])
        lua(f"{work}/many.lua", tokens)

        data_upstream(work, start)

        cases = [("none", "plain.toml", "none.lua"),
                 ("rs256-one-token", "auth.toml", "one.lua"),
                 ("rs256-every-token-new", "auth.toml", "many.lua")]
        results = {c[0]: [] for c in cases}
        for rnd in range(args.rounds):
            for name, config, script in (cases if rnd % 2 == 0 else list(reversed(cases))):
                gw = start([args.bin, "serve", "--config", f"{work}/{config}"])
                wait_port(7103)
                time.sleep(0.3)
                # Warm: pools, and for the second case its one token remembered.
                wrk("http://127.0.0.1:7103/api/dashboard/1", 1, args.connections, f"{work}/{script}")
                before = cpu_seconds([gw.pid])
                rps, p99 = wrk("http://127.0.0.1:7103/api/dashboard/1", args.duration, args.connections, f"{work}/{script}")
                cpu_us = (cpu_seconds([gw.pid]) - before) / (rps * args.duration) * 1e6
                results[name].append((rps, p99, cpu_us))
                os.killpg(gw.pid, signal.SIGTERM)
                gw.wait(timeout=10)
                procs.remove(gw)
                time.sleep(0.3)
        print(f"{'case':<22} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11}  runs req/s")
        first = None
        for name, *_ in cases:
            runs = results[name]
            med = [statistics.median(r[i] for r in runs) for i in range(3)]
            first = first or med
            print(f"{name:<22} {med[0]:>9.0f} {med[1]:>8.2f} {med[2]:>11.1f}  "
                  f"{' '.join(f'{r[0]:.0f}' for r in runs)}  "
                  f"({med[0] / first[0]:.2f}x req/s, {med[2] / first[2]:.2f}x CPU of none)")
    finally:
        stop_all(procs, work)


if __name__ == "__main__":
    main()
