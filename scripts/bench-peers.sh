#!/usr/bin/env bash
# `make bench-peers`: installs the peers users compare the gateway with into a scratch folder
# (target/peers) and runs `BENCH_MODE=peers cargo bench --bench load` against them, the gateway
# and the in-tree Rust mock, all on this machine.
#   LiteLLM's proxy from PyPI, in a virtualenv (LITELLM_VERSION, default 1.108.7: the newest
#     whose `proxy` extra resolves on PyPI mirrors without litellm-proxy packages);
#   the Portkey gateway from npm (PORTKEY_VERSION, default 1.15.2), run on Debian's Node.
# Portkey's streamed answers fail as installed on Node ("TypeError: immutable": it appends
# headers to the upstream fetch Response, whose headers Node's undici makes immutable; its
# issues #1389 and #1550). The script applies a one-line patch to the installed bundle that
# re-wraps a streamed Response (`new Response(body, response)`) before its headers are set,
# and says so. Nothing here reaches anything but the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/target/peers"
litellm="${LITELLM_VERSION:-1.108.7}"
portkey="${PORTKEY_VERSION:-1.15.2}"
mkdir -p "$dir"

python3 -c "import venv, ensurepip" >/dev/null 2>&1 || {
  echo "bench-peers: installing python3-venv"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
}
command -v node >/dev/null && command -v npm >/dev/null || {
  echo "bench-peers: installing nodejs and npm"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -qq nodejs npm >/dev/null
}

if ! "$dir/venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$litellm')" 2>/dev/null; then
  echo "bench-peers: installing LiteLLM $litellm (PyPI)"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$litellm"
fi

bundle="$dir/portkey/node_modules/@portkey-ai/gateway/build/start-server.js"
if ! grep -q "\"version\": \"$portkey\"" "$dir/portkey/node_modules/@portkey-ai/gateway/package.json" 2>/dev/null; then
  echo "bench-peers: installing the Portkey gateway $portkey (npm)"
  mkdir -p "$dir/portkey"
  (cd "$dir/portkey" && npm install --silent --no-audit --no-fund "@portkey-ai/gateway@$portkey")
fi
python3 - "$bundle" <<'PY'
import sys
path = sys.argv[1]
s = open(path).read()
old = "this.updateHeaders(i,n.cacheStatus,o),{response:i"
new = "this.context.isStreaming&&(i=new Response(i.body,i))," + old
if new in s:
    print("bench-peers: Portkey stream patch already applied")
elif s.count(old) == 1:
    open(path, "w").write(s.replace(old, new))
    print("bench-peers: patched Portkey's bundle so streamed answers work on Node (its issues #1389, #1550)")
else:
    print("bench-peers: Portkey's bundle changed; its streams may fail on Node (patch not applied)")
PY

export PEERS_DIR="$dir"
export PEERS_LITELLM_VERSION="$("$dir/venv/bin/python" -c "import importlib.metadata as m; print(m.version('litellm'))")"
export PEERS_PORTKEY_VERSION="$portkey"
BENCH_MODE=peers cargo bench --bench load
