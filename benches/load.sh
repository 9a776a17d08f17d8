#!/usr/bin/env bash
# Load measurement: the gateway vs. the mock upstream directly, same load tool, same run.
# Usage: benches/load.sh [concurrency] [seconds]      (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
C="${1:-32}"; D="${2:-10}"
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk"; exit 1; }
MOCK_PORT=19000; GW_PORT=19080; GW_METRICS_PORT=19081
./target/release/examples/mock_upstream "$MOCK_PORT" 2>/dev/null & MOCK=$!
env -i PATH="$PATH" RUST_LOG=warn SERVER_HOST=127.0.0.1 SERVER_PORT="$GW_PORT" SERVER_THREADS="${GW_THREADS:-1}" \
  OPENAI_API_URL="http://127.0.0.1:$MOCK_PORT/v1" OPENAI_API_KEY=sk-bench \
  ./target/release/inference-gateway 2>/tmp/igw-bench.log & GW=$!
# The same gateway with telemetry on, to measure what metrics cost.
env -i PATH="$PATH" RUST_LOG=warn SERVER_HOST=127.0.0.1 SERVER_PORT="$GW_METRICS_PORT" SERVER_THREADS="${GW_THREADS:-1}" \
  TELEMETRY_ENABLE=true TELEMETRY_METRICS_PORT=19464 \
  OPENAI_API_URL="http://127.0.0.1:$MOCK_PORT/v1" OPENAI_API_KEY=sk-bench \
  ./target/release/inference-gateway 2>/tmp/igw-bench-metrics.log & GW2=$!
# SIGINT: Pingora's SIGTERM waits out the whole grace period.
trap 'kill $MOCK 2>/dev/null; kill -INT $GW $GW2 2>/dev/null || true' EXIT
for port in "$GW_PORT" "$GW_METRICS_PORT"; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
done

# A ~1 KB chat request.
CONTENT=$(printf 'word %.0s' $(seq 180))
BODY="{\"model\":\"openai/gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"$CONTENT\"}]}"
LUA=$(mktemp --suffix=.lua)
cat > "$LUA" <<LUAEOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
LUAEOF
echo "request body: ${#BODY} bytes; concurrency $C; ${D}s each; wrk -t1"
run() {
  wrk -t1 -c"$C" -d"${D}s" --latency -s "$LUA" "$1" | awk -v name="$2" '
    /Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF}
    END {printf "%-28s RPS %10s   p50 %8s   p99 %8s   non-2xx %s\n", name, rps, p50, p99, (bad==""?0:bad)}'
}
run "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "mock upstream (direct)"
run "http://127.0.0.1:$GW_PORT/v1/chat/completions" "gateway -> mock"
run "http://127.0.0.1:$GW_METRICS_PORT/v1/chat/completions" "gateway + metrics -> mock"
run "http://127.0.0.1:$GW_PORT/v1/chat/completions" "gateway -> mock (again)"
