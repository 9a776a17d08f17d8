#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian/Ubuntu machine with Rust:
#   build: a C compiler and cmake (pingora-core builds zlib-ng with cmake)
#   test:  python3 + the official `openai`, `anthropic`, `mcp` (2.x) and `a2a-sdk` (1.x) SDKs (compatibility tests), promtool (Debian package
#          `prometheus`) to validate the metrics exposition, systemd-analyze (package `systemd`)
#          to verify the unit file, redis-server (shared limits across replicas), openssl
#          (RSA keys for the OIDC tests), the PostgreSQL server (the store's tests start a
#          cluster of their own on a free port, run as the `postgres` user), Chromium and
#          ChromeDriver (the web UI's tests drive a headless browser through WebDriver), tmux
#          (igw's interactive chat is tested in a real terminal), opentelemetry-proto (the
#          OTLP receiver of the tracing tests decodes spans with OpenTelemetry's own bindings)
# Usage: scripts/deps.sh build|test
set -euo pipefail
what="${1:-build}"

sudo_cmd=""
if [ "$(id -u)" != "0" ]; then sudo_cmd="sudo"; fi

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ "$what" = "test" ]; then
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  command -v tmux >/dev/null 2>&1 || missing+=(tmux)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$what" = "test" ]; then
  if ! python3 -c "import openai" >/dev/null 2>&1; then
    echo "deps: installing the openai Python SDK"
    python3 -m pip install -q --disable-pip-version-check "openai>=1.40" 2>/dev/null \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages "openai>=1.40"
  fi
  python3 -c "import openai; print('deps: openai SDK', openai.__version__)"
  if ! python3 -c "import anthropic" >/dev/null 2>&1; then
    echo "deps: installing the anthropic Python SDK"
    python3 -m pip install -q --disable-pip-version-check "anthropic>=0.40" 2>/dev/null \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages "anthropic>=0.40"
  fi
  python3 -c "import anthropic; print('deps: anthropic SDK', anthropic.__version__)"
  # The official MCP SDK, 2.x: its client speaks the stateless 2026-07-28 protocol and the
  # handshake (mode="legacy"), the two generations /mcp serves.
  if ! python3 -c "import mcp, httpx2, sys; from importlib.metadata import version; sys.exit(not version('mcp').startswith('2.'))" >/dev/null 2>&1; then
    echo "deps: installing the MCP Python SDK"
    python3 -m pip install -q --disable-pip-version-check "mcp>=2.3,<3" 2>/dev/null \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages "mcp>=2.3,<3"
  fi
  python3 -c "from importlib.metadata import version; print('deps: mcp SDK', version('mcp'))"
  # The official A2A SDK (1.x serves A2A 1.0, and 0.3 through its compatibility adapter): the
  # tests' agent. uvicorn serves it.
  if ! python3 -c "import a2a.server.routes, uvicorn" >/dev/null 2>&1; then
    echo "deps: installing the A2A Python SDK"
    python3 -m pip install -q --disable-pip-version-check "a2a-sdk[http-server]>=1.3,<2" uvicorn 2>/dev/null \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages "a2a-sdk[http-server]>=1.3,<2" uvicorn
  fi
  python3 -c "from importlib.metadata import version; print('deps: a2a-sdk', version('a2a-sdk'))"
  # OpenTelemetry's published protobuf bindings: the tests' OTLP receiver decodes the exported
  # spans with them (not with the gateway's own message types).
  if ! python3 -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2" >/dev/null 2>&1; then
    echo "deps: installing opentelemetry-proto"
    python3 -m pip install -q --disable-pip-version-check "opentelemetry-proto>=1.30" 2>/dev/null \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages "opentelemetry-proto>=1.30"
  fi
  python3 -c "from importlib.metadata import version; print('deps: opentelemetry-proto', version('opentelemetry-proto'))"
  # The browser must be a real one: Ubuntu's `chromium` package is a stub that wants snapd.
  for b in chromium chromedriver; do
    p="$(readlink -f "$(command -v "$b")")"
    case "$p" in /snap/*) echo "deps: $b is a snap ($p); install Debian's chromium and chromium-driver" >&2; exit 1 ;; esac
  done
  chromium --version 2>/dev/null | grep -q '^Chromium [0-9]' \
    || { echo "deps: 'chromium --version' does not name a Chromium: $(chromium --version 2>&1 | head -1)" >&2; exit 1; }
  chromedriver --version 2>/dev/null | grep -q '^ChromeDriver [0-9]' \
    || { echo "deps: 'chromedriver --version' does not name a ChromeDriver" >&2; exit 1; }
  chromium --version | sed 's/^/deps: /'
  # PostgreSQL refuses to run as root: the tests run it as this user.
  id postgres >/dev/null 2>&1 || $sudo_cmd useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  ls -d /usr/lib/postgresql/*/bin | tail -1 | sed 's/^/deps: postgresql /'
fi
