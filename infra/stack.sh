#!/usr/bin/env bash
# The local stack: an S3 server (SeaweedFS), PostgreSQL, a Prefect server and an MLflow server
# that both keep their data in PostgreSQL (ICE_STACK_DB=sqlite: in SQLite files instead), MLflow's
# artifacts in S3, a process work pool and a worker, all on 127.0.0.1. Every server is started
# in a process group of its own, its id written to .stack/<name>.pid; `status` and `down` act
# on those groups (never by name), so a server whose parent died is still found and stopped,
# and `up` refuses a port that something it did not start is serving. `up` writes .stack/env:
# `source` it to point flows, workers and DVC at the stack (it holds the S3 identity; .stack/
# is not in git). PostgreSQL's password and URLs stay in .stack/pg.env, read by the servers only.
#
#   bash infra/stack.sh up        # S3 (:8333), PostgreSQL (:5433), Prefect (:4200), MLflow (:5000)
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
PG_PORT=${PG_PORT:-5433}
DB=${ICE_STACK_DB:-postgres}  # postgres (the team stack) or sqlite (one machine, one writer at a time)
BUCKET=${ICE_BUCKET:-ice}
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:$PREFECT_PORT/api}
export PREFECT_HOME=${PREFECT_HOME:-$STACK/prefect-home}
export ICE_PROJECT_DIR=$ROOT DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$STACK"

# Every server runs in a process group of its own (setsid: its PID is the group's id), and
# everything here acts on the group, not on the leader alone: a server whose parent was killed
# still has its workers serving the port, and they belong to the same group.
state_of() {  # pid: its state letter (R, S, Z, ...), empty once it is gone
  local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }; echo "${stat%% *}"
}

live_members() {  # pgid: the processes of the group that still run (a killed leader may linger as a zombie),
  # and the leader's direct children: PostgreSQL puts each of its processes in a session of its own
  local p s
  for p in $( (pgrep -g "$1"; pgrep -P "$1") 2>/dev/null | sort -un); do
    s=$(state_of "$p"); [[ -n $s && $s != Z ]] && echo "$p"
  done
  return 0
}

group_alive() {  # name: true while any process of the group recorded in .stack/<name>.pid runs
  [[ -f $STACK/$1.pid ]] && [[ -n $(live_members "$(cat "$STACK/$1.pid")") ]]
}

port_busy() {  # port: true when something listens on 127.0.0.1:port
  "$PY" - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

start() {  # name, port, command...
  local name=$1 port=$2; shift 2
  if group_alive "$name"; then
    echo "$name already running (process group $(cat "$STACK/$name.pid"))"; return
  fi
  if port_busy "$port"; then
    echo "error: port $port ($name) is taken by a process this stack did not start; stop it, or set ${name^^}_PORT" >&2
    exit 1
  fi
  setsid "$@" >"$STACK/$name.log" 2>&1 < /dev/null &
  echo $! >"$STACK/$name.pid"
  echo "$name started (process group $!, log $STACK/$name.log)"
}

check_started() {  # name: the server we started must be the one answering (it may have died at once)
  group_alive "$1" && return 0
  echo "error: $1 exited at start: $(tail -n 1 "$STACK/$1.log" 2>/dev/null)" >&2
  exit 1
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

stop() {  # name: the whole process group, even once its leader is gone
  local f=$STACK/$1.pid
  [[ -f $f ]] || return 0
  local pgid; pgid=$(cat "$f")
  if group_alive "$1"; then
    if [[ $1 == postgres ]]; then  # SIGINT to the postmaster: a fast shutdown, which stops its children itself
      kill -INT "$pgid" 2>/dev/null || kill -TERM -- "-$pgid" 2>/dev/null || true
    else
      kill -TERM -- "-$pgid" 2>/dev/null || true
    fi
    for _ in $(seq 1 20); do group_alive "$1" || break; sleep 0.5; done
    group_alive "$1" && kill -KILL -- "-$pgid" 2>/dev/null
    for _ in $(seq 1 10); do group_alive "$1" || break; sleep 0.2; done
    echo "$1 stopped (process group $pgid)"
  fi
  rm -f "$f"
}

pg_up() {  # PostgreSQL, its data under $STACK/pg; pg.env (mode 600) holds the password and both servers' URLs
  if group_alive postgres; then
    echo "postgres already running (process group $(cat "$STACK/postgres.pid"))"; return
  fi
  if port_busy "$PG_PORT"; then
    echo "error: port $PG_PORT (postgres) is taken by a process this stack did not start; stop it, or set PG_PORT" >&2
    exit 1
  fi
  if ! "$PY" infra/pg.py check 2>"$STACK/pg.check"; then
    echo "$(sed 's/^error: //' "$STACK/pg.check"); or ICE_STACK_DB=sqlite for a stack on SQLite files" | sed 's/^/error: /' >&2
    exit 1
  fi
  "$PY" infra/pg.py up --dir "$STACK/pg" --port "$PG_PORT" --env "$STACK/pg.env"
  cp "$STACK/pg/postgres.pid" "$STACK/postgres.pid"
}

s3_up() {
  if group_alive s3; then
    echo "s3 already running (process group $(cat "$STACK/s3.pid"))"; return
  fi
  if port_busy "$S3_PORT"; then
    echo "error: port $S3_PORT (s3) is taken by a process this stack did not start; stop it, or set S3_PORT" >&2
    exit 1
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
    case $DB in
      postgres) pg_up ;;
      sqlite) ;;
      *) echo "error: ICE_STACK_DB=$DB: allowed values are postgres, sqlite" >&2; exit 1 ;;
    esac
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
    if [[ $DB == postgres ]]; then
      # the URLs (with the password) reach the servers through their environment, never a command line
      # shellcheck disable=SC1091
      source "$STACK/pg.env"
      export MLFLOW_BACKEND_STORE_URI PREFECT_API_DATABASE_CONNECTION_URL
    else
      export MLFLOW_BACKEND_STORE_URI=sqlite:///${ICE_MLFLOW_DB:-$ROOT/mlflow.db}
    fi
    start prefect "$PREFECT_PORT" "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    # artifacts (registered models included) go to the bucket; clients reach them through the server
    start mlflow "$MLFLOW_PORT" "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
      --artifacts-destination "s3://$BUCKET/mlartifacts"
    wait_http "$PREFECT_API_URL/health" 120
    wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 120
    check_started prefect; check_started mlflow
    echo "database: $DB$([[ $DB == postgres ]] && echo " on 127.0.0.1:$PG_PORT (data $STACK/pg/data)")"
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
    start worker 0 env -C "${WORKER_DIR:-/tmp}" "$BIN/prefect" worker start --pool ice-pool --type process ;;
  trigger)
    shift; "$BIN/prefect" deployment run "${1:-pipeline/pipeline}" "${@:2}" ;;
  status)
    for n in postgres:$PG_PORT s3:$S3_PORT prefect:$PREFECT_PORT mlflow:$MLFLOW_PORT worker:0; do
      name=${n%%:*} port=${n##*:}
      if group_alive "$name"; then
        pgid=$(cat "$STACK/$name.pid")
        alive=$(live_members "$pgid" | wc -l)
        state=$(state_of "$pgid")
        leader=$([[ -n $state && $state != Z ]] && echo "" || echo ", its leader gone")
        echo "$name: running (process group $(cat "$STACK/$name.pid"), $alive processes$leader)"
      elif [[ $port != 0 ]] && port_busy "$port"; then
        echo "$name: stopped, but port $port is served by a process this stack did not start"
      else
        echo "$name: stopped"
      fi
    done ;;
  down)
    stop worker; stop mlflow; stop prefect; stop s3; stop postgres ;;
  *)
    sed -n '2,17p' "$0" ;;
esac
