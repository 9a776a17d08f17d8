#!/usr/bin/env bash
# Instructions per request, counted by callgrind (repeatable: the same build gives the same
# count whatever else the machine is doing, unlike requests per second on a shared box).
#
#   benches/callgrind.sh bare|gateway [keys|redis|all|stream]     (N=2000 requests by default)
#
# Needs valgrind, python3, a release build (`cargo build --release`) and the load bench's
# binary for the mock and bare Pingora (`cargo bench --bench load --no-run`). Starts the mock,
# then bare Pingora or the gateway (one worker) under callgrind with instrumentation off, warms
# up with 300 sequential keep-alive requests (the bench's 1 KB chat body), counts N more, and
# prints the total and the count per request. `keys`: one virtual key with every limit (memory);
# `redis`: the same limits in a throwaway `redis-server` on a free port (also prints Redis's own
# time per script call); `all`: keys + JSON access log + metrics + request log and ledger on
# SQLite + tracing at 1%; `stream`: 200-chunk streams (38 KB) instead of 1 KB answers.
# `callgrind_annotate` on the printed file shows where the instructions go.
set -euo pipefail
what=${1:?bare or gateway}; feat=${2:-plain}; N=${N:-2000}
case "$what/$feat" in
  bare/plain | bare/stream | gateway/plain | gateway/keys | gateway/redis | gateway/all | gateway/stream) ;;
  *) echo "usage: $0 bare|gateway [keys|redis|all|stream]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
gw=target/release/inference-gateway
dir=$(mktemp -d)
mock_port=$((20000 + RANDOM % 10000)); port=$((mock_port + 1))
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
pids=(); trap cleanup EXIT
BENCH_ROLE=mock BENCH_PORT=$mock_port "$load" >/dev/null 2>&1 & pids+=($!)
out=$dir/callgrind.out
cg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out")
if [ "$what" = bare ]; then
  BENCH_ROLE=bare BENCH_PORT=$port BENCH_UPSTREAM=127.0.0.1:$mock_port BENCH_GATEWAY_THREADS=1 \
    "${cg[@]}" "$load" >"$dir/log" 2>&1 & pids+=($!)
else
  env=(SERVER_HOST=127.0.0.1 SERVER_PORT=$port SERVER_THREADS=1 SERVER_PID_FILE=$dir/pid
       SERVER_UPGRADE_SOCK=$dir/sock LOG_LEVEL=warn TELEMETRY_ENABLE=false
       TELEMETRY_METRICS_PORT=$((port + 1)) OPENAI_API_URL=http://127.0.0.1:$mock_port/v1
       OPENAI_API_KEY=sk-bench)
  args=()
  if [ "$feat" = redis ]; then
    redis_port=$((port + 7))
    redis-server --port "$redis_port" --save "" --appendonly no >"$dir/redis.log" 2>&1 & pids+=($!)
    env+=(REDIS_URL=redis://127.0.0.1:$redis_port)
  fi
  if [ "$feat" = keys ] || [ "$feat" = redis ] || [ "$feat" = all ]; then
    hash=$(echo igw-bench | "$gw" hash-key --stdin | grep -o 'sha256:[0-9a-f]*' | head -1)
    printf '[[keys]]\nname = "k"\nhash = "%s"\nrpm = 100000000\ntpm = 100000000000\nmax_concurrent = 100000\nbudget_usd = 1000000000.0\n' "$hash" >"$dir/keys.toml"
    args=(-c "$dir/keys.toml")
  fi
  if [ "$feat" = all ]; then
    env+=(LOG_LEVEL=info LOG_FORMAT=json TELEMETRY_ENABLE=true DATABASE_URL=sqlite://$dir/all.db
          ADMIN_API_KEY=bench-admin-key-0123456789 STORE_REQUEST_LOG_RETENTION=7d
          OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$mock_port OTEL_TRACES_SAMPLER=traceidratio
          OTEL_TRACES_SAMPLER_ARG=0.01)
  fi
  env -i PATH="$PATH" "${env[@]}" "${cg[@]}" "$gw" "${args[@]}" >"$dir/log" 2>&1 & pids+=($!)
fi
target=${pids[-1]}
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.3; done
client() {
  python3 - "$port" "$1" "$feat" <<'PY'
import http.client, sys
port, n, feat = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = ('{"model":"openai/gpt-4o","messages":[{"role":"user","content":"%s"}],"stream":%s}'
        % ("w" * 934, "true" if feat == "stream" else "false")).encode()
h = {"content-type": "application/json"}
if feat in ("keys", "redis", "all"):
    h["authorization"] = "Bearer igw-bench"
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, h)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
client 300
callgrind_control -i on "$target" >/dev/null 2>&1
client "$N"
callgrind_control -i off "$target" >/dev/null 2>&1
callgrind_control -d "$target" >/dev/null 2>&1
sleep 1
total=$(callgrind_annotate "$out.1" | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done=1}')
echo "$what $feat: $total instructions for $N requests, $((total / N)) per request ($out.1)"
if [ "$feat" = redis ]; then
  redis-cli -p "$redis_port" info commandstats | grep -o 'cmdstat_evalsha:calls=[0-9]*,usec=[0-9]*,usec_per_call=[0-9.]*' || true
fi
