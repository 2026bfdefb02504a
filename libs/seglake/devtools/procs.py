"""Background JVM processes the dev tools start (Spark master and workers, the Kafka broker).

Each is recorded by pid when started and stopped by that pid only, and only while the pid
still runs the class it was started with (never processes found by name).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on loopback, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as the JVM's server sockets do: a port whose last connections are in TIME_WAIT (a broker
            # just stopped) can be listened on again; one that another process listens on cannot
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _cmdline_and_state(pid: int) -> tuple[str | None, str]:
    """The pid's command line (None when it does not run) and its state letter."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None, "?"
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = "?"
    return cmdline, state


def is_ours(pid: int, marker: str, exec_grace: float = 1.0) -> bool:
    """True when ``pid`` still runs and its command line holds ``marker`` (guards against pid reuse).

    A process in the middle of ``execve`` (``spark-class`` execs java, which a start-up check can
    meet) shows an empty command line for a moment: an empty one is read again for up to
    ``exec_grace`` seconds before the pid counts as not ours.
    """
    deadline = time.monotonic() + exec_grace
    while True:
        cmdline, state = _cmdline_and_state(pid)
        if cmdline is None or state == "Z":
            return False
        if cmdline or time.monotonic() >= deadline:
            return marker in cmdline
        time.sleep(0.02)


def reap(pid: int) -> None:
    """Collect the exit status when the pid is our own child (no zombie left behind)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def state_dir(env_var: str, name: str) -> Path:
    """``$env_var`` when set, else ``<tmp>/seglake-<name>-<uid>``: where a tool keeps its state."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser().resolve()
    return Path(tempfile.gettempdir()) / f"seglake-{name}-{os.getuid()}"


def write_state(folder: str | Path, name: str, data: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / name).write_text(json.dumps(data, indent=2))


def read_state(folder: str | Path, name: str) -> dict | None:
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.exists() else None


def forget_state(folder: str | Path, name: str) -> None:
    (Path(folder) / name).unlink(missing_ok=True)


def send_term(pid: int, marker: str) -> bool:
    """SIGTERM ``pid`` when it is ours; True when it was signalled."""
    if not is_ours(pid, marker):
        reap(pid)
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def wait_or_kill(pid: int, marker: str, deadline: float) -> None:
    """Wait until ``pid`` is gone, SIGKILL it when still ours at ``deadline`` (time.monotonic)."""
    while is_ours(pid, marker) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.2)
    if is_ours(pid, marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap(pid)


def terminate(pid: int, marker: str, grace: float = 20.0) -> bool:
    """SIGTERM ``pid`` when it is ours, SIGKILL after ``grace`` seconds; True when it was signalled."""
    if not send_term(pid, marker):
        return False
    wait_or_kill(pid, marker, time.monotonic() + grace)
    return True
