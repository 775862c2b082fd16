#!/bin/bash
# Instructions per request under callgrind, which repeat exactly where wall-clock
# figures on a 2-core box do not: compare two builds of the request path.
#
#   apt-get install -y valgrind nghttp2-client
#   cargo build --profile profiling   # the release build with line tables
#   bash benches/callgrind.sh target/profiling/manifold PATH [N]
#
# PATH is a route of benches/compare/routes.toml (`/api/users/1`: pass-through),
# or `distinct` for the fan-out over 500 different ids. One worker; the upstream is
# benches/abuse.py's; N (2,000) h2c requests (h2load, 4 connections × 10 streams) after
# a warm-up of 200, counted from zeroed counters. KEEP=DIR keeps the profiles there.
# H1=1 sends HTTP/1.1 instead (h2load --h1, 40 connections), as run.py's wrk does.
# DATA=1 calls nginx serving benches/data's answers on :7001 instead (compare.py's and
# run.py's upstream: the same answer sizes, 189 B to 1.4 KB), where abuse.py's upstream
# answers 100 bytes to everything.
set -euo pipefail
BIN=$(realpath "$1"); URLPATH=$2; N=${3:-2000}
LOAD=(-c 4 -m 10); if [ -n "${H1:-}" ]; then LOAD=(--h1 -c 40 -m 1); fi
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/manifold-callgrind-XXXXXX)
cd "$WORK"
if [ -n "${DATA:-}" ]; then
  python3 -c "import sys, time, subprocess; sys.path.insert(0, '$HERE'); import benchlib
benchlib.data_upstream('$WORK', lambda cmd: subprocess.Popen(cmd, start_new_session=True)); print(7001, flush=True); time.sleep(1e9)" > up.port 2>/dev/null &
  UP=$!
  trap 'kill $UP 2>/dev/null; kill "$(cat "$WORK/upstream.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$WORK"' EXIT
else
  python3 "$HERE/abuse.py" upstream > up.port 2>/dev/null &
  UP=$!
  trap 'kill $UP 2>/dev/null; rm -rf "$WORK"' EXIT
fi
for _ in $(seq 1 50); do [ -s up.port ] && break; sleep 0.1; done
PORT=$(head -1 up.port)
sed "s#http://127.0.0.1:7001#http://127.0.0.1:$PORT#; s#^listen = .*#listen = \"127.0.0.1:7203\"\nworkers = 1#; s#^admin_listen = .*#admin_listen = \"127.0.0.1:7213\"#" \
  "$HERE/compare/routes.toml" > routes.toml
valgrind --tool=callgrind --callgrind-out-file=callgrind.out.run "$BIN" serve --config routes.toml > gw.log 2>&1 &
GW=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:7213/health && break; sleep 0.3; done
h2load -n 200 "${LOAD[@]}" http://127.0.0.1:7203/api/users/1 > /dev/null 2>&1
callgrind_control -z $GW > /dev/null 2>&1
if [ "$URLPATH" = distinct ]; then
  URIS=$(for i in $(seq 1 500); do echo -n "http://127.0.0.1:7203/api/dashboard/$i "; done)
else
  URIS=http://127.0.0.1:7203$URLPATH
fi
# shellcheck disable=SC2086
h2load -n "$N" "${LOAD[@]}" $URIS > h2.log 2>&1
callgrind_control -d $GW > /dev/null 2>&1
sleep 1
kill $GW; wait $GW 2>/dev/null || true
TOTAL=$(for f in callgrind.out.run.*; do callgrind_annotate "$f" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | awk '{gsub(",","",$1); print $1}'; done | sort -n | tail -1)
OK=$(grep -o '[0-9]* succeeded' h2.log | head -1)
# KEEP=DIR keeps the profiles, for callgrind_annotate.
if [ -n "${KEEP:-}" ]; then cp callgrind.out.run.* "$KEEP"/; fi
echo "$BIN $URLPATH total=$TOTAL ($OK) per_req=$((TOTAL / N))"
