"""A real local PostgreSQL 15 server on this machine, for the CRM destination's demo and tests.

It uses the Debian package's binaries (``apt-get install postgresql-15``; ``$SEGLAKE_POSTGRES_BIN``
points elsewhere). :func:`start` runs ``initdb`` once in ``<folder>/data`` (superuser ``postgres``,
password generated once and kept in ``<folder>/password``, mode 600; scram-sha-256 over TCP),
starts the server with ``pg_ctl`` on 127.0.0.1 (TCP only, no Unix socket; ``fsync=off``: a dev
server), creates the ``seglake`` database once, and records folder, port, postmaster pid and
password in ``postgres.json`` (mode 600). PostgreSQL refuses to run as root: as root the folder is
handed to the ``postgres`` user and initdb / pg_ctl run through ``runuser -u postgres --``.
:func:`stop` stops that server only through ``pg_ctl -m fast -w stop`` on its data directory and
waits until the recorded postmaster pid is gone. The data stays, so a restart keeps its tables.

Command line (``seglake postgres ...``)::

    seglake postgres start [--dir DIR]     # prints the JDBC URL (the password is in DIR/password)
    seglake postgres status [--dir DIR]
    seglake postgres stop [--dir DIR]

The folder defaults to ``$SEGLAKE_POSTGRES_DIR`` or ``<tmp>/seglake-postgres-<uid>``.
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from seglake.devtools.procs import HOST, free_port, is_ours, read_state, state_dir, tail

STATE_FILE = "postgres.json"
PASSWORD_FILE = "password"
USER = "postgres"
DATABASE = "seglake"
OS_USER = "postgres"     # the account the server runs as when started by root


class PostgresError(RuntimeError):
    """The server could not be found, started, reached or stopped; the message says why."""


def default_dir() -> Path:
    return state_dir("SEGLAKE_POSTGRES_DIR", "postgres")


def bin_dir() -> Path:
    return Path(os.environ.get("SEGLAKE_POSTGRES_BIN") or "/usr/lib/postgresql/15/bin")


def _binary(name: str) -> str:
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise PostgresError(f"PostgreSQL 15 is not installed ({path} is missing): apt-get install postgresql-15")
    return str(path)


@dataclass
class Server:
    folder: str
    port: int
    pid: int | None          # the postmaster's (from postmaster.pid); None once stopped
    password: str
    user: str = USER
    database: str = DATABASE
    log: str = ""
    started_at: float = 0.0

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://{HOST}:{self.port}/{self.database}"

    @property
    def data_dir(self) -> Path:
        return Path(self.folder) / "data"

    def running(self) -> bool:
        # the postmaster's command line holds its data directory (pg_ctl starts `postgres -D DIR`)
        return self.pid is not None and is_ours(self.pid, str(self.data_dir))

    def save(self) -> None:
        path = Path(self.folder) / STATE_FILE
        data = asdict(self) | {"jdbc_url": self.jdbc_url}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # it holds the password
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data, indent=2))

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "Server | None":
        data = read_state(folder or default_dir(), STATE_FILE)
        if data is None:
            return None
        data.pop("jdbc_url", None)
        return cls(**data)


def _as_root() -> bool:
    return os.geteuid() == 0


def _run(args: list[str], what: str, timeout: float = 120) -> str:
    """Run a server binary (as ``postgres`` through runuser when we are root)."""
    cmd = (["runuser", "-u", OS_USER, "--", *args]) if _as_root() else args
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise PostgresError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr).strip()[-1500:]}")
    return proc.stdout


def _hand_to_postgres(folder: Path) -> None:
    """As root: the folder and everything in it belong to the ``postgres`` account."""
    try:
        account = pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresError(f"there is no '{OS_USER}' account to run the server as (PostgreSQL refuses root): "
                            "apt-get install postgresql-15") from None
    for root, dirs, files in os.walk(folder):
        for path in [root, *(os.path.join(root, n) for n in dirs + files)]:
            if os.lstat(path).st_uid != account.pw_uid:
                os.lchown(path, account.pw_uid, account.pw_gid)
    probe = subprocess.run(["runuser", "-u", OS_USER, "--", "test", "-w", str(folder)], capture_output=True)
    if probe.returncode != 0:
        raise PostgresError(f"the '{OS_USER}' account cannot reach {folder} (a parent folder is not searchable "
                            "by others); pick a folder whose parents are, with --dir or $SEGLAKE_POSTGRES_DIR")


def _password(folder: Path) -> str:
    """The superuser password, generated once and kept in ``<folder>/password`` (mode 600)."""
    path = folder / PASSWORD_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def _initdb(folder: Path) -> None:
    """Create the cluster once (a data directory without PG_VERSION is a failed earlier attempt)."""
    data = folder / "data"
    if (data / "PG_VERSION").exists():
        return
    shutil.rmtree(data, ignore_errors=True)
    if _as_root():
        _hand_to_postgres(folder)
    _run([_binary("initdb"), "-D", str(data), "-U", USER, "--auth-local=trust", "--auth-host=scram-sha-256",
          f"--pwfile={folder / PASSWORD_FILE}", "-E", "UTF8", "--locale=C.UTF-8"], f"initdb in {data}")
    with open(data / "postgresql.conf", "a") as conf:   # appended after initdb: owner and mode stay
        conf.write("\n# seglake.devtools.postgres: loopback TCP only, a throwaway dev server\n"
                   f"listen_addresses = '{HOST}'\nunix_socket_directories = ''\nfsync = off\n")


def _postmaster(data: Path) -> tuple[int, int] | None:
    """(pid, port) from ``postmaster.pid`` while that postmaster runs, else None."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None
    return (pid, port) if is_ours(pid, str(data)) else None


def _psql(server: Server, sql: str, database: str = "postgres") -> str:
    proc = subprocess.run([_binary("psql"), "-h", HOST, "-p", str(server.port), "-U", server.user, "-d", database,
                           "-v", "ON_ERROR_STOP=1", "-tAc", sql], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGPASSWORD": server.password}, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise PostgresError(f"psql on port {server.port} failed: {proc.stderr.strip()[-800:]}")
    return proc.stdout.strip()


def answers(server: Server) -> bool:
    """True when the server accepts connections (pg_isready; no password needed)."""
    proc = subprocess.run([_binary("pg_isready"), "-h", HOST, "-p", str(server.port), "-t", "2"],
                          capture_output=True, stdin=subprocess.DEVNULL)
    return proc.returncode == 0


def start(folder: str | Path | None = None, port: int | None = None, timeout: float = 60) -> Server:
    """Start the server of ``folder`` (or return it when it already runs); its database ``seglake`` exists."""
    folder = Path(folder or default_dir()).resolve()
    _binary("initdb")       # a missing package is one clear sentence before anything is created
    folder.mkdir(parents=True, exist_ok=True)
    recorded = Server.load(folder)
    if recorded is not None and recorded.running():
        return recorded
    password = _password(folder)
    _initdb(folder)
    data = folder / "data"
    log = folder / "postgres.log"
    running = _postmaster(data)         # started earlier but its state file was lost: adopt it
    if running is None:
        port = free_port(port or (recorded.port if recorded else None))
        if _as_root():
            _hand_to_postgres(folder)
        try:
            _run([_binary("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(int(timeout)),
                  "-o", f"-p {port}", "start"], f"starting PostgreSQL on port {port}", timeout=timeout + 30)
        except PostgresError as exc:
            raise PostgresError(f"{exc}\nend of {log}:\n{tail(log)}") from None
        running = _postmaster(data)
        if running is None:
            raise PostgresError(f"PostgreSQL did not stay up; end of {log}:\n{tail(log)}")
    server = Server(str(folder), running[1], running[0], password, log=str(log), started_at=time.time())
    server.save()
    if _psql(server, f"SELECT count(*) FROM pg_database WHERE datname = '{DATABASE}'") == "0":
        _psql(server, f'CREATE DATABASE "{DATABASE}"')
    return server


def stop(server: Server | str | Path | None = None, timeout: float = 60) -> int | None:
    """Stop the recorded server with ``pg_ctl -m fast -w stop`` and wait until its postmaster is gone;
    return that pid (None when nothing ran)."""
    if not isinstance(server, Server):
        server = Server.load(server)
        if server is None:
            return None
    pid = server.pid
    if not server.running():
        return None
    _run([_binary("pg_ctl"), "-D", str(server.data_dir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
         f"stopping PostgreSQL (pid {pid})", timeout=timeout + 30)
    deadline = time.monotonic() + timeout
    while server.running():      # a postmaster reparented to init may stay a zombie: is_ours says gone
        if time.monotonic() > deadline:
            raise PostgresError(f"PostgreSQL (pid {pid}) was still running {timeout:.0f} s after pg_ctl stop")
        time.sleep(0.1)
    server.pid = None           # the state stays: its port and password serve the next start
    server.save()
    return pid


def status(folder: str | Path | None = None) -> dict:
    server = Server.load(folder)
    if server is None:
        return {"running": False, "dir": str(Path(folder or default_dir()))}
    running = server.running()
    return {"running": running, "answers": running and answers(server), "dir": server.folder, "pid": server.pid,
            "jdbc_url": server.jdbc_url, "user": server.user,
            "password_file": str(Path(server.folder) / PASSWORD_FILE), "log": server.log}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default=None,
                        help="server folder (default $SEGLAKE_POSTGRES_DIR or <tmp>/seglake-postgres-<uid>)")


def command(args: argparse.Namespace) -> int:
    try:
        if args.action == "start":
            server = start(args.dir)
            print(json.dumps({"jdbc_url": server.jdbc_url, "user": server.user, "pid": server.pid, "dir": server.folder,
                              "password_file": str(Path(server.folder) / PASSWORD_FILE), "log": server.log}))
        elif args.action == "stop":
            pid = stop(args.dir)
            print(f"stopped PostgreSQL (pid {pid})" if pid else "no PostgreSQL server running in that folder")
        else:
            print(json.dumps(status(args.dir)))
    except PostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seglake postgres", description="A local PostgreSQL 15 server.")
    add_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
