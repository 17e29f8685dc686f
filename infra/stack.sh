#!/usr/bin/env bash
# The local stack: a Prefect server, an MLflow server, a process work pool and a worker,
# all on 127.0.0.1. Every process is started in the background with its PID written to
# .stack/<name>.pid, and `down` stops exactly those PIDs (never by name).
#
#   bash infra/stack.sh up        # Prefect server (:4200) and MLflow server (:5000)
#   bash infra/stack.sh pool      # create the process work pool `ice-pool`
#   bash infra/stack.sh deploy    # deploy `pipeline` and `prune` from infra/prefect.yaml
#   bash infra/stack.sh worker    # start a worker on the pool (from any directory)
#   bash infra/stack.sh trigger prune/prune --param method=ice
#   bash infra/stack.sh status | down
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
BIN=$(dirname "$PY")
STACK=$ROOT/.stack
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:$PREFECT_PORT/api}
export PREFECT_HOME=${PREFECT_HOME:-$STACK/prefect-home}
export ICE_PROJECT_DIR=$ROOT DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$STACK"

start() {  # name, command...
  local name=$1; shift
  if [[ -f $STACK/$name.pid ]] && kill -0 "$(cat "$STACK/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$STACK/$name.pid"))"; return
  fi
  setsid "$@" >"$STACK/$name.log" 2>&1 < /dev/null &
  echo $! >"$STACK/$name.pid"
  echo "$name started (pid $!, log .stack/$name.log)"
}

wait_http() {  # url, seconds
  for _ in $(seq 1 "$2"); do
    "$PY" - "$1" <<'PY' && return 0
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except Exception:
    sys.exit(1)
PY
    sleep 1
  done
  echo "no answer from $1 after $2 s" >&2; return 1
}

stop() {  # name
  local f=$STACK/$1.pid
  [[ -f $f ]] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; }
    echo "$1 stopped (pid $pid)"
  fi
  rm -f "$f"
}

case ${1:-help} in
  up)
    start prefect "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    start mlflow "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
      --backend-store-uri "sqlite:///$ROOT/mlflow.db" --artifacts-destination "$ROOT/mlartifacts"
    wait_http "$PREFECT_API_URL/health" 120
    wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 120
    echo "Prefect UI: http://127.0.0.1:$PREFECT_PORT   MLflow UI: http://127.0.0.1:$MLFLOW_PORT"
    echo "export PREFECT_API_URL=$PREFECT_API_URL MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT" ;;
  pool)
    "$BIN/prefect" work-pool inspect ice-pool >/dev/null 2>&1 || "$BIN/prefect" work-pool create ice-pool --type process
    # compute tasks carry the tag `gpu`: at most GPU_SLOTS of them run at once across the pool
    "$BIN/prefect" concurrency-limit inspect gpu >/dev/null 2>&1 || "$BIN/prefect" concurrency-limit create gpu "${GPU_SLOTS:-1}"
    echo "work pool ice-pool; tasks tagged gpu limited to ${GPU_SLOTS:-1} at a time (GPU_SLOTS=N make pool to change)" ;;
  deploy)
    "$BIN/prefect" --no-prompt deploy --all --prefect-file infra/prefect.yaml ;;
  worker)
    start worker env -C "${WORKER_DIR:-/tmp}" "$BIN/prefect" worker start --pool ice-pool --type process ;;
  trigger)
    shift; "$BIN/prefect" deployment run "${1:-pipeline/pipeline}" "${@:2}" ;;
  status)
    for n in prefect mlflow worker; do
      if [[ -f $STACK/$n.pid ]] && kill -0 "$(cat "$STACK/$n.pid")" 2>/dev/null; then echo "$n: running (pid $(cat "$STACK/$n.pid"))"; else echo "$n: stopped"; fi
    done ;;
  down)
    stop worker; stop mlflow; stop prefect ;;
  *)
    sed -n '2,13p' "$0" ;;
esac
