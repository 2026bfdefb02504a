"""The dev tools' pid checks: a process met in the middle of exec is not taken for a dead one."""
from __future__ import annotations

import subprocess
import sys

from seglake.devtools import procs


def test_is_ours_reads_an_empty_command_line_again_before_calling_the_pid_gone(monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "seglake-marker"])
    try:
        assert procs.is_ours(proc.pid, "seglake-marker")
        assert not procs.is_ours(proc.pid, "another-marker", exec_grace=0.1)

        # as /proc shows a process between execve's swap of its memory and its new arguments
        real = procs._cmdline_and_state
        reads = []

        def mid_exec(pid):
            reads.append(pid)
            return ("", "R") if len(reads) <= 3 else real(pid)

        monkeypatch.setattr(procs, "_cmdline_and_state", mid_exec)
        assert procs.is_ours(proc.pid, "seglake-marker")
        assert len(reads) == 4

        # an empty command line that stays empty (a kernel thread took the pid) is not ours
        monkeypatch.setattr(procs, "_cmdline_and_state", lambda pid: ("", "S"))
        assert not procs.is_ours(proc.pid, "seglake-marker", exec_grace=0.1)
        monkeypatch.setattr(procs, "_cmdline_and_state", real)
    finally:
        proc.kill()
        proc.wait()
    assert not procs.is_ours(proc.pid, "seglake-marker")
