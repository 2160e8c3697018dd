#!/usr/bin/env bash
# Load test: h2load against `nbo serve` (private Redis, 10,000 synthetic customers, 100-offer
# catalog) and against the echo baseline (loadtest/echo_server.py), at several concurrency levels.
# Both servers run side by side and each level is run against one, then the other, so they see
# the same machine. Writes loadtest/results/summary.md (git-ignored) and prints it.
# See loadtest/README.md.
#
# Knobs (environment):
#   WORKERS=2 CUSTOMERS=10000 SEED=7
#   DURATION=6 WARMUP=2               (h2load -D / --warm-up-time per level, seconds)
#   LEVELS="1x1 4x1 16x1 16x4 16x8 32x16"   (h2load clients x streams per client)
#   REPEAT=2                          (passes over LEVELS; the summary uses the best clean run)
#   MULTI=4                           (customers of the extra multi-customer run; 0 = skip)
#   VERIFY_N=5000                     (requests of the exact-count verification run)
#   PROFILE=1                         (py-spy one NBO worker during an extra, unmeasured run;
#                                      needs .venv/bin/py-spy: .venv/bin/pip install py-spy)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
NBO="$ROOT/.venv/bin/nbo"
REDIS_SERVER="$ROOT/.venv/bin/redis-server"
LT="$ROOT/loadtest"
RESULTS="$LT/results"
RUNS="$RESULTS/runs"

WORKERS="${WORKERS:-2}"
CUSTOMERS="${CUSTOMERS:-10000}"
SEED="${SEED:-7}"
DURATION="${DURATION:-6}"
WARMUP="${WARMUP:-2}"
LEVELS="${LEVELS:-1x1 4x1 16x1 16x4 16x8 32x16}"
REPEAT="${REPEAT:-2}"
MULTI="${MULTI:-4}"
VERIFY_N="${VERIFY_N:-5000}"
PATH_RPC="/nbo.v1.Decisioning/Decide"
H2_HEADERS=(-H 'content-type: application/grpc' -H 'te: trailers')
TIME_BIN="$(command -v /usr/bin/time || true)"

command -v h2load >/dev/null || { echo "h2load not found: apt-get install -y nghttp2-client" >&2; exit 2; }
[ -x "$REDIS_SERVER" ] || REDIS_SERVER="$(command -v redis-server)" || { echo "no redis-server" >&2; exit 2; }

WORK="$(mktemp -d /tmp/nbo-loadtest.XXXXXX)"
rm -rf "$RESULTS"
mkdir -p "$RUNS"
: >"$RESULTS/runs.tsv"
: >"$RESULTS/checks.md"

REDIS_PID="" SERVER_PID="" ECHO_PID=""
H2_PIDS=()

stop_pid() {  # stop_pid PID NAME: SIGTERM, wait up to 15 s, then SIGKILL
  local pid="$1" name="$2" i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "warning: $name (pid $pid) did not stop on SIGTERM; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local code=$? pid
  trap - EXIT INT TERM
  for pid in "${H2_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  stop_pid "$ECHO_PID" "echo server"
  stop_pid "$SERVER_PID" "nbo serve"
  stop_pid "$REDIS_PID" "redis-server"
  rm -rf "$WORK"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {  # free_port [N]: a port P with P..P+N-1 all free
  "$PY" - "${1:-1}" <<'EOF'
import socket, sys
n = int(sys.argv[1])
for _ in range(100):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
    try:
        for q in range(p, p + n):
            with socket.socket() as t:
                t.bind(("127.0.0.1", q))
    except OSError:
        continue
    print(p)
    break
EOF
}
log() { echo "== $*" >&2; }
json_get() { "$PY" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# -- (a) private Redis ---------------------------------------------------------------------------
REDIS_PORT="$(free_port)"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
log "redis-server on $REDIS_PORT"
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" --daemonize no >/dev/null 2>&1 &
REDIS_PID=$!
"$PY" - "$REDIS_URL" <<'EOF'
import sys, time, redis
r = redis.Redis.from_url(sys.argv[1], socket_connect_timeout=0.2)
for _ in range(100):
    try:
        r.ping(); break
    except redis.exceptions.RedisError:
        time.sleep(0.1)
else:
    sys.exit("redis-server did not start")
EOF

# -- (b) customers and catalog -------------------------------------------------------------------
log "$CUSTOMERS synthetic customers (training.population, seed $SEED)"
"$PY" -c "from training.population import make_population as m; m($CUSTOMERS, seed=$SEED).write_csv('$WORK/customers.csv')"
REDIS_URL="$REDIS_URL" "$NBO" features load "$WORK/customers.csv" --categorical tier,preferred_channel
"$PY" "$LT/make_catalog.py" --out "$RESULTS/catalog.yaml"
REDIS_URL="$REDIS_URL" "$NBO" catalog validate "$RESULTS/catalog.yaml"
"$PY" "$LT/make_body.py" --pick "$(( MULTI > 1 ? MULTI : 1 ))" --population "$CUSTOMERS" --seed "$SEED" \
  --catalog "$RESULTS/catalog.yaml" --out-dir "$WORK/bodies" | tee "$WORK/bodies.txt"
mapfile -t CUSTOMER_IDS < <(cut -f1 "$WORK/bodies.txt")
mapfile -t BODIES < <(cut -f2 "$WORK/bodies.txt")
BODY="${BODIES[0]}"
CUSTOMER="${CUSTOMER_IDS[0]}"
cp "$BODY" "$RESULTS/body.bin"

# -- (c) the NBO server and (e) the echo baseline, side by side ------------------------------------
SERVER_PORT="$(free_port)"
METRICS_PORT="$(free_port "$WORKERS")"
METRICS_URLS=""
for (( i = 0; i < WORKERS; i++ )); do METRICS_URLS+="http://127.0.0.1:$((METRICS_PORT + i))/ "; done
log "nbo serve --workers $WORKERS on $SERVER_PORT (metrics $METRICS_PORT..)"
REDIS_URL="$REDIS_URL" "$NBO" serve --workers "$WORKERS" --port "$SERVER_PORT" --metrics-port "$METRICS_PORT" \
  --catalog "$RESULTS/catalog.yaml" --log-level WARNING >"$RESULTS/nbo-serve.log" 2>&1 &
SERVER_PID=$!
ECHO_PORT="$(free_port)"
log "echo server --workers $WORKERS on $ECHO_PORT"
"$PY" "$LT/echo_server.py" --port "$ECHO_PORT" --workers "$WORKERS" >"$RESULTS/echo-server.log" 2>&1 &
ECHO_PID=$!

# (f) one real Decide through the Python client on each (also the readiness wait)
if ! "$PY" "$LT/check.py" decide --target "127.0.0.1:$SERVER_PORT" --customer "$CUSTOMER" --wait 60 \
  | tee -a "$RESULTS/checks.md"; then
  tail -20 "$RESULTS/nbo-serve.log" >&2
  exit 1
fi
"$PY" "$LT/check.py" decide --target "127.0.0.1:$ECHO_PORT" --customer "$CUSTOMER" --wait 30 | tee -a "$RESULTS/checks.md"
# every NBO worker serving (its metrics endpoint starts after its gRPC server)
for _ in $(seq 100); do
  # shellcheck disable=SC2086
  "$PY" "$LT/check.py" metrics $METRICS_URLS | grep -q '"error"' || break
  sleep 0.2
done
NBO_TARGET="http://127.0.0.1:$SERVER_PORT$PATH_RPC"
ECHO_TARGET="http://127.0.0.1:$ECHO_PORT$PATH_RPC"
CPU_PROCS="nbo=$SERVER_PID+ redis=$REDIS_PID echo=$ECHO_PID+"

log "warm-up"
h2load -D 3 -c 16 -m 4 -t 1 "${H2_HEADERS[@]}" -d "$BODY" "$NBO_TARGET" >"$RUNS/nbo_warmup.out" 2>&1
h2load -D 3 -c 16 -m 4 -t 1 "${H2_HEADERS[@]}" -d "$BODY" "$ECHO_TARGET" >"$RUNS/echo_warmup.out" 2>&1

# -- (f) exact-count run: the stream grows by exactly VERIFY_N records, all with an offer ----------
log "verification run: $VERIFY_N requests"
before="$("$PY" "$LT/check.py" xlen --redis "$REDIS_URL")"
# shellcheck disable=SC2086
"$PY" "$LT/check.py" metrics $METRICS_URLS >"$WORK/verify.m0"
h2load -n "$VERIFY_N" -c 8 -m 4 -t 1 "${H2_HEADERS[@]}" -d "$BODY" "$NBO_TARGET" >"$RUNS/nbo_verify.out" 2>&1
"$PY" "$LT/check.py" stream --redis "$REDIS_URL" --last "$VERIFY_N" >"$WORK/verify.json"
# shellcheck disable=SC2086
"$PY" "$LT/check.py" metrics $METRICS_URLS >"$WORK/verify.m1"
"$PY" - "$before" "$VERIFY_N" "$WORK/verify.json" "$RUNS/nbo_verify.out" "$WORK/verify.m0" "$WORK/verify.m1" <<'EOF' | tee -a "$RESULTS/checks.md"
import json, sys
sys.path.insert(0, "loadtest")
from percentiles import parse_h2load
before, n = int(sys.argv[1]), int(sys.argv[2])
v = json.load(open(sys.argv[3]))
h = parse_h2load(open(sys.argv[4]).read())
m0, m1 = (json.load(open(p))["total"] for p in sys.argv[5:7])
d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1 if k.startswith("decisions")}
grew = v["xlen"] - before
ok = grew == n and v["with_offer"] == n and v["degraded"] == 0 and h.get("succeeded") == n and d.get("decisions") == n
print(f"{'OK' if ok else 'FAIL'}: verification run `h2load -n {n} -c 8 -m 4`: h2load {h.get('succeeded')} succeeded "
      f"({h.get('2xx')} HTTP 2xx); server metrics: {d.get('decisions', 0):.0f} decisions "
      f"({', '.join(f'{k[10:]} {x:.0f}' for k, x in d.items() if ':' in k and x)}); decision stream grew by {grew} "
      f"(expected {n}), of the last {v['tallied']} records {v['with_offer']} chose an offer")
EOF

# -- (d) h2load runs -------------------------------------------------------------------------------
# h2load_run NAME KIND CLIENTS STREAMS PORT REP BODY... : one h2load per body, side by side, the
# clients split between them; per-request logs, stdout, CPU and metrics snapshots in results/runs.
h2load_run() {
  local name="$1" kind="$2" clients="$3" streams="$4" port="$5" rep="$6"
  shift 6
  local bodies=("$@") n=$# i prefix per cmd timer
  prefix="$RUNS/${name}_${kind}_${clients}x${streams}_r${rep}"
  per=$(( clients / n )); (( per >= 1 )) || per=1
  # shellcheck disable=SC2086
  if [ "$name" = nbo ]; then "$PY" "$LT/check.py" metrics $METRICS_URLS >"$prefix.m0"; fi
  # shellcheck disable=SC2086
  "$PY" "$LT/check.py" cpu $CPU_PROCS >"$prefix.cpu0"
  H2_PIDS=()
  for i in "${!bodies[@]}"; do
    cmd=(h2load -D "$DURATION" --warm-up-time "$WARMUP" -c "$per" -m "$streams" -t 1 "${H2_HEADERS[@]}"
      -d "${bodies[$i]}" --log-file "$prefix.log.$i" "http://127.0.0.1:$port$PATH_RPC")
    [ "$i" = 0 ] && printf '%q ' "${cmd[@]}" >"$prefix.cmd"
    timer=()
    [ -n "$TIME_BIN" ] && timer=("$TIME_BIN" -f '%U %S %e' -o "$prefix.time.$i")
    "${timer[@]}" "${cmd[@]}" >"$prefix.out.$i" 2>&1 &
    H2_PIDS+=($!)
  done
  for i in "${!H2_PIDS[@]}"; do wait "${H2_PIDS[$i]}" || echo "h2load exited with $?" >>"$prefix.out.$i"; done
  H2_PIDS=()
  # shellcheck disable=SC2086
  "$PY" "$LT/check.py" cpu $CPU_PROCS >"$prefix.cpu1"
  # shellcheck disable=SC2086
  if [ "$name" = nbo ]; then "$PY" "$LT/check.py" metrics $METRICS_URLS >"$prefix.m1"; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$clients" "$streams" "$n" "$rep" "$prefix" >>"$RESULTS/runs.tsv"
  printf '   %-5s %-6s r%s c=%-3s m=%-3s x%s: ' "$name" "$kind" "$rep" "$clients" "$streams" "$n" >&2
  "$PY" "$LT/percentiles.py" "$prefix".log.* >&2
}

log "sweep: $LEVELS, $REPEAT pass(es), ${DURATION}s measured after ${WARMUP}s warm-up, NBO then echo per level"
XLEN_BEFORE="$("$PY" "$LT/check.py" xlen --redis "$REDIS_URL")"
# shellcheck disable=SC2086
"$PY" "$LT/check.py" metrics $METRICS_URLS >"$WORK/sweep.m0"
for (( rep = 1; rep <= REPEAT; rep++ )); do
  for level in $LEVELS; do
    h2load_run nbo sweep "${level%x*}" "${level#*x}" "$SERVER_PORT" "$rep" "$BODY"
    h2load_run echo sweep "${level%x*}" "${level#*x}" "$ECHO_PORT" "$rep" "$BODY"
  done
done
if (( MULTI > 1 )); then
  log "multi-customer run: $MULTI h2load processes, one customer each"
  h2load_run nbo multi 16 4 "$SERVER_PORT" 1 "${BODIES[@]}"
fi
"$PY" "$LT/check.py" stream --redis "$REDIS_URL" --last 20000 >"$WORK/sweep.json"
# shellcheck disable=SC2086
"$PY" "$LT/check.py" metrics $METRICS_URLS >"$WORK/sweep.m1"
"$PY" - "$XLEN_BEFORE" "$WORK/sweep.json" "$WORK/sweep.m0" "$WORK/sweep.m1" <<'EOF' | tee -a "$RESULTS/checks.md"
import json, sys
before = int(sys.argv[1])
v = json.load(open(sys.argv[2]))
m0, m1 = (json.load(open(p))["total"] for p in sys.argv[3:5])
d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
decisions, degraded = d.get("decisions", 0), d.get("decisions:degraded", 0)
grew = v["xlen"] - before
ok = grew == decisions and degraded == 0 and d.get("log_records_dropped", 0) == 0
reasons = ", ".join(f"{k[10:]} {x:.0f}" for k, x in d.items() if k.startswith("decisions:") and x)
errors = ", ".join(f"{k} {x:.0f}" for k, x in d.items() if k.startswith("redis_errors") and x) or "none"
print(f"{'OK' if ok else 'PROBLEM'}: whole sweep (warm-ups included): server metrics {decisions:.0f} decisions "
      f"({reasons}); Redis errors: {errors}; log records dropped {d.get('log_records_dropped', 0):.0f}; "
      f"decision stream grew by {grew} (every decision is logged, degraded ones flagged: expected {decisions:.0f})")
EOF

if [ -n "${PROFILE:-}" ] && [ -x "$ROOT/.venv/bin/py-spy" ]; then
  worker="$(pgrep -P "$SERVER_PID" -f spawn_main | head -1)"
  log "py-spy on NBO worker $worker during an unmeasured 16x4 run"
  h2load -D "$(( DURATION + 4 ))" -c 16 -m 4 -t 1 "${H2_HEADERS[@]}" -d "$BODY" "$NBO_TARGET" >"$RUNS/nbo_profile.out" 2>&1 &
  H2_PIDS=($!)
  sleep 2
  "$ROOT/.venv/bin/py-spy" record -p "$worker" -d "$DURATION" -r 100 -f raw -o "$RESULTS/profile.txt" --native \
    >"$RUNS/py-spy.out" 2>&1 || echo "py-spy failed: see $RUNS/py-spy.out" >&2
  wait "${H2_PIDS[0]}" || true
  H2_PIDS=()
  [ -s "$RESULTS/profile.txt" ] && "$PY" "$LT/profile_top.py" "$RESULTS/profile.txt" --top 40 >"$RESULTS/profile_top.txt"
fi

stop_pid "$SERVER_PID" "nbo serve"; SERVER_PID=""
stop_pid "$ECHO_PID" "echo server"; ECHO_PID=""
{ grep -E -i "error|traceback|warning" "$RESULTS/nbo-serve.log" | sed -E 's/^[0-9-]+ [0-9:,]+ [0-9]+ //' \
    | sort | uniq -c | sort -rn | head -5 | sed 's/^ */server log (count, message): /'; } \
  | tee -a "$RESULTS/checks.md" || true

# -- (g) summary ---------------------------------------------------------------------------------------
"$PY" "$LT/report.py" --results "$RESULTS" --workers "$WORKERS" --customers "$CUSTOMERS" \
  --duration "$DURATION" --warmup "$WARMUP" --customer "$CUSTOMER" --multi "${CUSTOMER_IDS[*]}"
echo
cat "$RESULTS/summary.md"
