#!/usr/bin/env bash
# A local single-node Apache Kafka broker (KRaft, 127.0.0.1, free ports) for seglake.
#   scripts/kafka.sh start     # resolves the broker jars from Maven Central once; prints bootstrap servers
#   scripts/kafka.sh status
#   scripts/kafka.sh stop      # stops exactly the recorded pid
# State, data, pid and log: --dir DIR or $SEGLAKE_KAFKA_DIR (default /tmp/seglake-kafka-$UID).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m seglake.devtools.kafka "$@"
