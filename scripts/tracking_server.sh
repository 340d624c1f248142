#!/usr/bin/env bash
# A shared MLflow tracking server on 127.0.0.1 with a PostgreSQL backend (Debian's `postgresql`):
#   make tracking-server          # or: scripts/tracking_server.sh [start|stop]
#   MLFLOW_TRACKING_URI=http://127.0.0.1:5001 python -m fmnist_exp --multirun ...   # in every job
# Everything lives in $DIR (default mlruns/server): postgres/ (the database cluster, trust auth on
# 127.0.0.1 only), artifacts/ (served by the tracking server), *.log. For a team, run it on a shared host
# with HOST=0.0.0.0 behind your network's access control, or point --backend-store-uri at your own
# PostgreSQL. Needs: apt-get install postgresql; pip install "psycopg[binary]" (the `server` extra).
set -euo pipefail
ACTION=${1:-start}
DIR=$(realpath -m "${DIR:-mlruns/server}")
HOST=${HOST:-127.0.0.1}; PORT=${PORT:-5001}; PGPORT=${PGPORT:-5433}
WORKERS=${WORKERS:-4}  # server processes (MLflow's default); fewer for a small team or a test
PY=${PY:-.venv/bin/python}
# MLflow 3's server also starts job runners for its GenAI features (7 huey consumer processes, 1.6 GB
# in all here): nothing this project logs uses them. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true brings them back.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
case "$WORKERS" in
  *[!0-9]*|0|00*) echo "error: WORKERS=$WORKERS is not a number of server processes; set WORKERS to a whole number of 1 or more (default 4)." >&2; exit 2 ;;
esac
if [ "$PORT" = "$PGPORT" ]; then
  echo "error: PORT=$PORT and PGPORT=$PGPORT are the same port; the MLflow server and PostgreSQL each need their own. Set one of them to another free port." >&2
  exit 2
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PGBIN" ]; then
  echo "error: PostgreSQL is not installed (looked in /usr/lib/postgresql/*/bin). Run: apt-get install postgresql" >&2
  exit 2
fi
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }  # initdb refuses root

if [ "$ACTION" = stop ]; then
  as_postgres "$PGBIN/pg_ctl" -D "$DIR/postgres" -m fast stop || true
  exit 0
fi
mkdir -p "$DIR/artifacts"
if [ ! -f "$DIR/postgres/PG_VERSION" ]; then
  mkdir -p "$DIR/postgres"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR/postgres"
  as_postgres "$PGBIN/initdb" -D "$DIR/postgres" -U mlflow --auth=trust >"$DIR/initdb.log"
fi
if ! as_postgres "$PGBIN/pg_ctl" -D "$DIR/postgres" status >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] && touch "$DIR/postgres.log" && chown postgres "$DIR/postgres.log"
  as_postgres "$PGBIN/pg_ctl" -D "$DIR/postgres" -l "$DIR/postgres.log" -w \
    -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k /tmp" start >/dev/null
fi
"$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U mlflow mlflow 2>/dev/null || true  # exists: fine
echo "PostgreSQL on 127.0.0.1:$PGPORT ($DIR/postgres); MLflow server on http://$HOST:$PORT"
echo "use it: export MLFLOW_TRACKING_URI=http://$HOST:$PORT   (stop the database: $0 stop)"
exec "$PY" -m mlflow server --backend-store-uri "postgresql://mlflow@127.0.0.1:$PGPORT/mlflow" \
  --artifacts-destination "$DIR/artifacts" --host "$HOST" --port "$PORT" --workers "$WORKERS"
