#!/usr/bin/env bash
# A local Spark standalone cluster (master + 2 workers on 127.0.0.1) for seglake.
#   scripts/cluster.sh start [--workers 2] [--cores 1] [--memory 2g]
#   scripts/cluster.sh status
#   scripts/cluster.sh submit JOB [--lakehouse DIR] [-- JOB ARGS...]
#   scripts/cluster.sh stop
# State, pids and logs: $SEGLAKE_CLUSTER_DIR (default /tmp/seglake-cluster-$UID).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
exec "$PY" -m seglake.devtools.local_cluster "$@"
