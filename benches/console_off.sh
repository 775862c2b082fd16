#!/bin/bash
# A manifold "binary" for benches/passthrough_ab.py that runs BIN with the console off:
# `[admin] console = false` put before the config it is given. Compare a build with
# itself, console on and off:
#
#   printf '#!/bin/sh\nBIN=%s exec %s "$@"\n' "$PWD/target/release/manifold" \
#     "$PWD/benches/console_off.sh" > /tmp/manifold-off && chmod +x /tmp/manifold-off
#   python3 benches/passthrough_ab.py --bin /tmp/manifold-off --bin target/release/manifold
set -euo pipefail
: "${BIN:?set BIN to the manifold binary}"
cfg=""; args=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--config" ]; then cfg=$2; shift 2; else args+=("$1"); shift; fi
done
out=$(mktemp /tmp/manifold-console-off-XXXXXX.toml)
{ printf '[admin]\nconsole = false\n\n'; cat "$cfg"; } > "$out"
exec "$BIN" "${args[@]}" --config "$out"
