"""The local Kafka broker's CLI (``seglake kafka start|status|stop``): a real KRaft broker.

The broker itself (a second start finds the running one, its state file, stop by pid, a restart
on the same folder and port keeps its messages) is checked where the stream uses it:
``tests/test_stream.py::test_a_stream_run_while_the_broker_is_down_...``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seglake.devtools import kafka
from seglake.devtools.procs import is_ours

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_cli_starts_reports_and_stops_a_broker(tmp_path):
    folder = tmp_path / "kafka-cli"
    env = {**os.environ, "SEGLAKE_KAFKA_DIR": str(folder)}
    cli = [sys.executable, "-m", "seglake.cli", "kafka"]
    started = subprocess.run(cli + ["start"], capture_output=True, text=True, env=env, timeout=180)
    try:
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout.strip().splitlines()[-1])
        assert info["bootstrap_servers"].startswith("127.0.0.1:")
        st = json.loads(subprocess.run(cli + ["status"], capture_output=True, text=True, env=env).stdout)
        assert st["running"] and st["answers"] and st["pid"] == info["pid"]
    finally:
        stopped = subprocess.run(cli + ["stop"], capture_output=True, text=True, env=env, timeout=60)
    assert stopped.returncode == 0 and f"pid {info['pid']}" in stopped.stdout
    assert not is_ours(info["pid"], kafka.MAIN_CLASS)
    st = json.loads(subprocess.run(cli + ["status"], capture_output=True, text=True, env=env).stdout)
    assert st == {"running": False, "dir": str(folder)}
