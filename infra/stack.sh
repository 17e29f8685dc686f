#!/usr/bin/env bash
# The local stack: an S3 server (SeaweedFS), a Prefect server, an MLflow server whose
# artifacts live in S3, a process work pool and a worker, all on 127.0.0.1. Every process
# is started in the background with its PID written to .stack/<name>.pid, and `down`
# stops exactly those PIDs (never by name). `up` writes .stack/env: `source` it to point
# flows, workers and DVC at the stack (it holds the S3 identity; .stack/ is not in git).
#
#   bash infra/stack.sh up        # S3 (:8333), Prefect server (:4200), MLflow server (:5000)
#   bash infra/stack.sh remote    # the DVC remote s3://ice/dvc, in .dvc/config.local
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
STACK=${ICE_STACK_DIR:-$ROOT/.stack}
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
S3_PORT=${S3_PORT:-8333}
BUCKET=${ICE_BUCKET:-ice}
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
  echo "$name started (pid $!, log $STACK/$name.log)"
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

s3_up() {
  if [[ -f $STACK/s3.pid ]] && kill -0 "$(cat "$STACK/s3.pid")" 2>/dev/null; then
    echo "s3 already running (pid $(cat "$STACK/s3.pid"))"; return
  fi
  "$PY" infra/s3.py up --dir "$STACK/s3" --port "$S3_PORT" --bucket "$BUCKET" --env "$STACK/s3.env"
  cp "$STACK/s3/weed.pid" "$STACK/s3.pid"
}

write_env() {  # everything a flow, a worker or dvc on this machine needs to use the stack
  umask 077
  {
    cat "$STACK/s3.env"
    echo "export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$S3_PORT AWS_DEFAULT_REGION=us-east-1"
    echo "export PREFECT_API_URL=$PREFECT_API_URL MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    echo "export ICE_STORE_URL=s3://$BUCKET/store DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false"
  } >"$STACK/env"
}

case ${1:-help} in
  up)
    s3_up
    write_env
    # shellcheck disable=SC1091
    source "$STACK/s3.env"
    export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$S3_PORT MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_DEFAULT_REGION=us-east-1
    # nothing the servers or their UIs do leaves the machine: no telemetry (DO_NOT_TRACK above),
    # and Prefect's UI served from a copy with its analytics key blanked (infra/prefect_ui.py)
    export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_UI_STATIC_DIRECTORY=$STACK/prefect-ui
    export PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false
    "$PY" infra/prefect_ui.py "$PREFECT_SERVER_UI_STATIC_DIRECTORY"
    start prefect "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    # artifacts (registered models included) go to the bucket; clients reach them through the server
    start mlflow "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
      --backend-store-uri "sqlite:///${ICE_MLFLOW_DB:-$ROOT/mlflow.db}" --artifacts-destination "s3://$BUCKET/mlartifacts"
    wait_http "$PREFECT_API_URL/health" 120
    wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 120
    echo "S3: http://127.0.0.1:$S3_PORT (bucket $BUCKET)   Prefect UI: http://127.0.0.1:$PREFECT_PORT   MLflow UI: http://127.0.0.1:$MLFLOW_PORT"
    echo "to use the stack from a shell: source $STACK/env" ;;
  remote)
    [[ -f $STACK/env ]] || { echo "no $STACK/env: run make up first" >&2; exit 1; }
    # shellcheck disable=SC1091
    source "$STACK/env"
    "$BIN/dvc" remote add --local --force --default ice "s3://$BUCKET/dvc"
    "$BIN/dvc" remote modify --local ice endpointurl "$AWS_ENDPOINT_URL_S3"
    "$BIN/dvc" remote modify --local ice access_key_id "$AWS_ACCESS_KEY_ID"
    "$BIN/dvc" remote modify --local ice secret_access_key "$AWS_SECRET_ACCESS_KEY"
    echo "DVC remote ice: s3://$BUCKET/dvc (in .dvc/config.local, not committed); dvc push / dvc pull" ;;
  pool)
    "$BIN/prefect" work-pool inspect ice-pool >/dev/null 2>&1 || "$BIN/prefect" work-pool create ice-pool --type process
    # compute tasks carry the tag `compute`: at most GPU_SLOTS of them run at once across the pool
    "$BIN/prefect" concurrency-limit inspect compute >/dev/null 2>&1 || "$BIN/prefect" concurrency-limit create compute "${GPU_SLOTS:-1}"
    echo "work pool ice-pool; tasks tagged compute limited to ${GPU_SLOTS:-1} at a time (GPU_SLOTS=N make pool to change)" ;;
  deploy)
    "$BIN/prefect" --no-prompt deploy --all --prefect-file infra/prefect.yaml ;;
  worker)
    # shellcheck disable=SC1091
    [[ -f $STACK/env ]] && source "$STACK/env"
    start worker env -C "${WORKER_DIR:-/tmp}" "$BIN/prefect" worker start --pool ice-pool --type process ;;
  trigger)
    shift; "$BIN/prefect" deployment run "${1:-pipeline/pipeline}" "${@:2}" ;;
  status)
    for n in s3 prefect mlflow worker; do
      if [[ -f $STACK/$n.pid ]] && kill -0 "$(cat "$STACK/$n.pid")" 2>/dev/null; then echo "$n: running (pid $(cat "$STACK/$n.pid"))"; else echo "$n: stopped"; fi
    done ;;
  down)
    stop worker; stop mlflow; stop prefect; stop s3 ;;
  *)
    sed -n '2,17p' "$0" ;;
esac
