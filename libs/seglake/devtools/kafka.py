"""A real single-node Apache Kafka broker (KRaft) on this machine, for the demo, the tests and a laptop.

There is no Debian package of Kafka; the broker jars come from Maven Central (resolved once
into the jar cache with Maven, like the Delta jars: ``org.apache.kafka:kafka_2.13`` plus
``slf4j-simple``, without which the broker logs nothing). :func:`start` writes a KRaft
configuration for one node that is both broker and controller on 127.0.0.1 with two free
ports, formats its storage once, starts ``java kafka.Kafka`` in the background, waits until it
answers, and records pid, ports and log in ``broker.json`` in its folder. :func:`stop` ends
exactly that pid (only while it still runs ``kafka.Kafka`` with that folder's configuration).
The data stays in the folder, so a stopped broker restarts with its topics and offsets.

Command line (also ``scripts/kafka.sh``, ``seglake kafka ...``)::

    seglake kafka start [--dir DIR]     # prints the bootstrap servers
    seglake kafka status [--dir DIR]
    seglake kafka stop [--dir DIR]

The folder defaults to ``$SEGLAKE_KAFKA_DIR`` or ``<tmp>/seglake-kafka-<uid>``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from seglake.core import jvm
from seglake.devtools.procs import (HOST, forget_state, free_port, is_ours, read_state, state_dir, tail,
                                    terminate, write_state)

KAFKA_VERSION = "4.1.1"
#: the broker and its logging binding (without slf4j-simple the broker prints nothing)
BROKER_COORDINATES = (f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}", "org.slf4j:slf4j-simple:1.7.36")
MAIN_CLASS = "kafka.Kafka"
STATE_FILE = "broker.json"


class KafkaError(RuntimeError):
    """The broker could not be resolved, started or reached; the message says why."""


def default_dir() -> Path:
    return state_dir("SEGLAKE_KAFKA_DIR", "kafka")


def broker_jars() -> list[Path]:
    """The broker's jars (Scala library included: nothing is excluded), resolved once."""
    return jvm.ensure_jars(BROKER_COORDINATES, exclude_groups="")


@dataclass
class Broker:
    dir: str
    pid: int
    port: int
    controller_port: int
    log: str
    started_at: float

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def config(self) -> Path:
        return Path(self.dir) / "server.properties"

    def running(self) -> bool:
        return is_ours(self.pid, str(self.config))

    def save(self) -> None:
        write_state(self.dir, STATE_FILE, asdict(self))

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "Broker | None":
        data = read_state(folder or default_dir(), STATE_FILE)
        return None if data is None else cls(**data)


def server_properties(folder: Path, port: int, controller_port: int) -> str:
    """The KRaft single-node configuration (see ../shared/STACK.md: verified on this machine)."""
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(folder / "data"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # topics are created on purpose (seglake stream produce / the tests), never by a typo
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def _java(classpath: str, *args: str, heap: str = "512m") -> list[str]:
    java = os.environ.get("JAVA_HOME")
    exe = str(Path(java) / "bin" / "java") if java else "java"
    return [exe, f"-Xmx{heap}", "-cp", classpath, *args]


def _format(folder: Path, classpath: str) -> None:
    """Format the KRaft storage once (a formatted folder keeps its cluster id and data)."""
    if (folder / "data" / "meta.properties").exists():
        return
    uuid = subprocess.run(_java(classpath, "kafka.tools.StorageTool", "random-uuid", heap="128m"),
                          capture_output=True, text=True)
    if uuid.returncode != 0 or not uuid.stdout.strip():
        raise KafkaError(f"kafka StorageTool random-uuid failed:\n{(uuid.stdout + uuid.stderr)[-1500:]}")
    fmt = subprocess.run(_java(classpath, "kafka.tools.StorageTool", "format", "-t", uuid.stdout.strip().splitlines()[-1],
                               "-c", str(folder / "server.properties"), heap="128m"),
                         capture_output=True, text=True)
    if fmt.returncode != 0:
        raise KafkaError(f"formatting the broker storage in {folder / 'data'} failed:\n{(fmt.stdout + fmt.stderr)[-1500:]}")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _ready(broker: Broker, proc: subprocess.Popen, timeout: float, log_offset: int) -> None:
    """Wait until the broker accepts connections and reports itself started in its log (in what
    this start wrote, from ``log_offset`` on: the log of an earlier start says "started" too)."""
    deadline = time.monotonic() + timeout
    started = False
    while time.monotonic() < deadline:
        # the exit status, not /proc: the java launcher re-executes itself right after the start
        if proc.poll() is not None:
            raise KafkaError(f"the Kafka broker (pid {broker.pid}) exited during start; end of {broker.log}:\n"
                             f"{tail(broker.log)}")
        if not started:
            with open(broker.log, "rb") as log:
                log.seek(log_offset)
                started = b"Kafka Server started" in log.read()
        if started and _answers(broker.port):
            return
        time.sleep(0.3)
    raise KafkaError(f"the Kafka broker did not start within {timeout:.0f} s; end of {broker.log}:\n{tail(broker.log)}")


def _previous_ports(folder: Path) -> tuple[int | None, int | None]:
    """The ports of the last broker of ``folder`` (its server.properties outlives a stop)."""
    import re
    props = folder / "server.properties"
    found = re.search(r"^listeners=PLAINTEXT://[^:]+:(\d+),CONTROLLER://[^:]+:(\d+)$",
                      props.read_text(), re.M) if props.exists() else None
    return (int(found.group(1)), int(found.group(2))) if found else (None, None)


def start(folder: str | Path | None = None, timeout: float = 90.0, heap: str = "512m") -> Broker:
    """Start a broker in ``folder`` (or return the one already running there)."""
    folder = Path(folder or default_dir()).resolve()
    running = Broker.load(folder)
    if running is not None and running.running():
        return running
    folder.mkdir(parents=True, exist_ok=True)
    classpath = str(broker_jars()[0].parent / "*")
    # ports: the previous ones when free (a restart keeps the address clients know), else new
    before = (running.port, running.controller_port) if running else _previous_ports(folder)
    port = free_port(before[0])
    controller_port = free_port(before[1])
    if controller_port == port:
        controller_port = free_port()
    (folder / "server.properties").write_text(server_properties(folder, port, controller_port))
    _format(folder, classpath)
    log_path = folder / "broker.log"
    with open(log_path, "ab") as log:
        log_offset = log.tell()
        proc = subprocess.Popen(_java(classpath, MAIN_CLASS, str(folder / "server.properties"), heap=heap),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    broker = Broker(str(folder), proc.pid, port, controller_port, str(log_path), time.time())
    broker.save()
    try:
        _ready(broker, proc, timeout, log_offset)
    except KafkaError:
        stop(broker)
        raise
    return broker


def stop(broker: Broker | str | Path | None = None, grace: float = 30.0) -> int | None:
    """Stop the recorded broker by its pid (TERM, then KILL after ``grace`` s); return the pid signalled."""
    if not isinstance(broker, Broker):
        broker = Broker.load(broker)
        if broker is None:
            return None
    signalled = terminate(broker.pid, str(broker.config), grace)
    forget_state(broker.dir, STATE_FILE)
    return broker.pid if signalled else None


def status(folder: str | Path | None = None) -> dict:
    broker = Broker.load(folder)
    if broker is None:
        return {"running": False, "dir": str(Path(folder or default_dir()))}
    return {"running": broker.running(), "answers": _answers(broker.port), "dir": broker.dir,
            "pid": broker.pid, "bootstrap_servers": broker.bootstrap_servers, "log": broker.log}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default=None, help="broker folder (default $SEGLAKE_KAFKA_DIR or <tmp>/seglake-kafka-<uid>)")


def command(args: argparse.Namespace) -> int:
    try:
        if args.action == "start":
            broker = start(args.dir)
            print(json.dumps({"bootstrap_servers": broker.bootstrap_servers, "pid": broker.pid,
                              "dir": broker.dir, "log": broker.log}))
        elif args.action == "stop":
            pid = stop(args.dir)
            print(f"stopped the broker (pid {pid})" if pid else "no broker running in that folder")
        else:
            print(json.dumps(status(args.dir)))
    except (KafkaError, jvm.JarResolutionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seglake kafka", description="A local single-node Kafka broker (KRaft).")
    add_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
