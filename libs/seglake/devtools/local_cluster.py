"""A real Spark standalone cluster on this machine (loopback), and spark-submit to it.

pyspark's pip distribution ships ``bin/spark-class`` but not ``sbin/start-master.sh``, so
the master and the workers are started directly as JVM processes::

    spark-class org.apache.spark.deploy.master.Master --host 127.0.0.1 --port P --webui-port W
    spark-class org.apache.spark.deploy.worker.Worker spark://127.0.0.1:P --cores 1 --memory 2g ...

Their pids, ports and log files are kept in a small state file (``cluster.json`` in the
cluster folder, default ``$SEGLAKE_CLUSTER_DIR`` or ``<tmp>/seglake-cluster-<uid>``), and
:func:`stop` ends exactly those pids (never processes found by name).

Command line (also ``scripts/cluster.sh``)::

    python -m seglake.devtools.local_cluster start [--workers 2]      # master + workers, waits until ALIVE
    python -m seglake.devtools.local_cluster status
    python -m seglake.devtools.local_cluster submit ingest --lakehouse ./lakehouse_cluster
    python -m seglake.devtools.local_cluster stop

``submit`` builds the wheel (into ``dist/``) and runs ``spark-submit --master spark://...
--py-files dist/seglake-*.whl --jars <Delta jars> jobs/<job>.py --env cluster --lakehouse DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seglake.devtools.procs import HOST, forget_state, free_port, read_state, send_term, state_dir, wait_or_kill, write_state
from seglake.devtools.procs import is_ours as _is_ours, tail as _tail

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or used; the message says why."""


# --------------------------------------------------------------------------- locations


def spark_home() -> Path:
    """``$SPARK_HOME`` when set, else the installed pyspark package (which holds bin/ and jars/)."""
    env = os.environ.get("SPARK_HOME")
    if env and (Path(env) / "bin" / "spark-class").exists():
        return Path(env)
    from pyspark.find_spark_home import _find_spark_home

    home = Path(_find_spark_home())
    if not (home / "bin" / "spark-class").exists():
        raise ClusterError(f"no bin/spark-class under {home}: is pyspark installed completely?")
    return home


def repo_root() -> Path:
    """The source tree this module was loaded from (setup.py, jobs/, conf/)."""
    return Path(__file__).resolve().parents[3]


def default_dir() -> Path:
    return state_dir("SEGLAKE_CLUSTER_DIR", "cluster")


def spark_env() -> dict[str, str]:
    """Environment for every Spark process: loopback, this python on driver and executors."""
    env = dict(os.environ)
    env.update({
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": HOST,
        "SPARK_MASTER_HOST": HOST,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    })
    return env


# --------------------------------------------------------------------------- processes


@dataclass
class Process:
    role: str
    pid: int
    log: str
    webui_port: int


@dataclass
class LocalCluster:
    """A running master and its workers (as recorded in ``<dir>/cluster.json``)."""

    dir: str
    master_port: int
    webui_port: int
    processes: list[Process] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.master_port}"

    @property
    def webui_url(self) -> str:
        return f"http://{HOST}:{self.webui_port}"

    def save(self) -> None:
        write_state(self.dir, STATE_FILE, asdict(self))

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "LocalCluster | None":
        data = read_state(folder or default_dir(), STATE_FILE)
        if data is None:
            return None
        data["processes"] = [Process(**p) for p in data.get("processes", [])]
        return cls(**data)

    def master_state(self, timeout: float = 3.0) -> dict:
        """The master's JSON status (``/json``): workers, their state, applications."""
        try:
            with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=timeout) as resp:
                return json.loads(resp.read().decode())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ClusterError(f"the master's web UI {self.webui_url} does not answer: {exc}") from None

    def alive_workers(self) -> int:
        return sum(1 for w in self.master_state().get("workers", []) if w.get("state") == "ALIVE")


def _class_of(role: str) -> str:
    return MASTER_CLASS if role == "master" else WORKER_CLASS


def _launch(role: str, args: list[str], log_path: Path, webui_port: int) -> Process:
    cmd = [str(spark_home() / "bin" / "spark-class"), _class_of(role), *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # spark-class ends with `exec java ...`, so this pid is the JVM itself.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=spark_env(), start_new_session=True)
    return Process(role, proc.pid, str(log_path), webui_port)


def start(folder: str | Path | None = None, workers: int = 2, cores: int = 1, memory: str = "2g",
          port: int | None = None, webui_port: int | None = None, timeout: float = 120.0) -> LocalCluster:
    """Start a master and ``workers`` workers on loopback; return once all workers are ALIVE.

    Args:
        folder: state, logs and worker work dirs (default :func:`default_dir`).
        workers: number of worker processes.
        cores: cores each worker offers.
        memory: memory each worker offers (``2g``).
        port: master port (default 7077 when free, else any free port).
        webui_port: master web UI port (default 8080 when free, else any free port).
        timeout: seconds to wait for the workers to register.

    Raises:
        ClusterError: a cluster recorded in ``folder`` is still running, a process died at
            start (the message holds the end of its log), or the workers did not register.
    """
    folder = Path(folder or default_dir()).resolve()
    running = LocalCluster.load(folder)
    if running is not None and any(_is_ours(p.pid, _class_of(p.role)) for p in running.processes):
        raise ClusterError(f"a local cluster recorded in {folder} is still running "
                           f"({running.master_url}); stop it first")
    if workers < 1:
        raise ClusterError(f"workers must be at least 1, got {workers}")
    logs = folder / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    master_port = free_port(port or 7077)
    ui_port = free_port(webui_port or 8080)
    cluster = LocalCluster(str(folder), master_port, ui_port)
    try:
        cluster.processes.append(_launch(
            "master", ["--host", HOST, "--port", str(master_port), "--webui-port", str(ui_port)],
            logs / "master.log", ui_port))
        cluster.save()
        for i in range(1, workers + 1):
            wport = free_port()
            work = folder / f"worker-{i}"
            work.mkdir(parents=True, exist_ok=True)
            cluster.processes.append(_launch(
                f"worker-{i}", [cluster.master_url, "--host", HOST, "--cores", str(cores),
                                "--memory", memory, "--work-dir", str(work), "--webui-port", str(wport)],
                logs / f"worker-{i}.log", wport))
            cluster.save()
        _wait_alive(cluster, workers, timeout)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _wait_alive(cluster: LocalCluster, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        for p in cluster.processes:
            if not _is_ours(p.pid, _class_of(p.role)):
                raise ClusterError(f"the {p.role} process (pid {p.pid}) exited during start; "
                                   f"end of {p.log}:\n{_tail(p.log)}")
        try:
            alive = cluster.alive_workers()
            if alive >= workers:
                return
            last = f"{alive} of {workers} workers ALIVE"
        except ClusterError as exc:
            last = str(exc)
        time.sleep(1.0)
    raise ClusterError(f"the local cluster did not become ready in {timeout:.0f} s ({last}); "
                       f"logs in {Path(cluster.dir) / 'logs'}")


def stop(cluster: LocalCluster | str | Path | None = None, grace: float = 20.0) -> list[int]:
    """Stop the recorded processes by their pids (workers first); return the pids signalled.

    Only pids recorded at start are signalled, and only while they still run the Spark class
    they were started with. SIGTERM first, SIGKILL after ``grace`` seconds.
    """
    if not isinstance(cluster, LocalCluster):
        cluster = LocalCluster.load(cluster)
        if cluster is None:
            return []
    # every process signalled first (workers first), then all waited for against one deadline
    signalled = [p.pid for p in sorted(cluster.processes, key=lambda p: p.role == "master")
                 if send_term(p.pid, _class_of(p.role))]
    deadline = time.monotonic() + grace
    for p in cluster.processes:
        wait_or_kill(p.pid, _class_of(p.role), deadline)
    forget_state(cluster.dir, STATE_FILE)
    return signalled


def status(folder: str | Path | None = None) -> dict:
    """What is recorded and what runs: master URL, each process alive or not, ALIVE workers."""
    cluster = LocalCluster.load(folder)
    if cluster is None:
        return {"running": False, "dir": str(Path(folder or default_dir()))}
    procs = {p.role: {"pid": p.pid, "running": _is_ours(p.pid, _class_of(p.role)), "log": p.log}
             for p in cluster.processes}
    out = {"running": any(p["running"] for p in procs.values()), "dir": cluster.dir,
           "master_url": cluster.master_url, "webui_url": cluster.webui_url, "processes": procs}
    try:
        out["alive_workers"] = cluster.alive_workers()
    except ClusterError as exc:
        out["alive_workers"] = 0
        out["master_error"] = str(exc)
    return out


# --------------------------------------------------------------------------- packaging + submit


def build_wheel(dist: str | Path | None = None, source: str | Path | None = None) -> Path:
    """Build the seglake wheel from a clean copy of the source tree; return its path.

    The copy keeps setuptools' build/ cache out of the (shared) working tree, so the wheel
    holds exactly the current modules.
    """
    source = Path(source or repo_root())
    dist = Path(dist or source / "dist").resolve()
    dist.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seglake-wheel-") as tmp:
        tree = Path(tmp) / "src"
        tree.mkdir()
        for name in ("setup.py", "README.md", "setup.cfg", "pyproject.toml", "MANIFEST.in"):
            if (source / name).exists():
                shutil.copy2(source / name, tree / name)
        shutil.copytree(source / "libs", tree / "libs",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
        out = Path(tmp) / "dist"
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "--quiet", "-w", str(out), str(tree)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ClusterError("building the seglake wheel failed:\n" + (proc.stdout + proc.stderr)[-2000:])
        wheels = sorted(out.glob("seglake-*.whl"))
        if not wheels:
            raise ClusterError(f"pip wheel produced no seglake-*.whl in {out}")
        target = dist / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def job_script(job: str, source: str | Path | None = None) -> Path:
    """``jobs/<job>.py`` of the source tree (ClusterError when it does not exist)."""
    script = Path(source or repo_root()) / "jobs" / f"{job}.py"
    if not script.exists():
        raise ClusterError(f"no entry point {script}: job '{job}' has no jobs/{job}.py")
    return script


def submit_command(master_url: str, job: str, wheel: str | Path, jars: list[str | Path],
                   job_args: list[str], source: str | Path | None = None,
                   driver_memory: str = "2g", executor_memory: str = "1g",
                   extra_conf: dict[str, str] | None = None, script: str | Path | None = None) -> list[str]:
    """The spark-submit command line for ``jobs/<job>.py`` (or ``script``) on ``master_url``."""
    script = Path(script) if script else job_script(job, source)
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", master_url,
           "--name", f"seglake-{job}", "--deploy-mode", "client",
           "--driver-memory", driver_memory, "--executor-memory", executor_memory,
           "--py-files", str(wheel)]
    if jars:
        cmd += ["--jars", ",".join(str(j) for j in jars)]
    conf = {"spark.ui.showConsoleProgress": "false", "spark.ui.enabled": "false"}
    conf.update(extra_conf or {})
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + [str(script), *job_args]


def submit(master_url: str, job: str, lakehouse: str | Path, wheel: str | Path | None = None,
           jars: list[str | Path] | None = None, env: str = "cluster", extra_args: list[str] | None = None,
           extra_env: dict[str, str] | None = None, source: str | Path | None = None,
           log_path: str | Path | None = None, timeout: float | None = None,
           script: str | Path | None = None) -> subprocess.CompletedProcess:
    """spark-submit ``jobs/<job>.py --env <env> --lakehouse <lakehouse>`` to ``master_url``.

    The driver runs here (client mode) with this python; executors use the same python
    (``PYSPARK_PYTHON``), import seglake from the shipped wheel, and get the Delta jars
    (:func:`seglake.core.jvm.ensure_jars`) with ``--jars``. Output goes to ``log_path`` when given
    (else it is captured). ``script`` replaces ``jobs/<job>.py`` (e.g. a smoke-test script;
    ``job`` then only names the application). Raises ClusterError naming the job and the end of its output when
    spark-submit exits non-zero.
    """
    from seglake.core import jvm

    source = Path(source or repo_root())
    script = Path(script) if script else job_script(job, source)
    wheel = Path(wheel) if wheel else build_wheel(source=source)
    jars = jars if jars is not None else jvm.ensure_jars() + jvm.kafka_source_jars() + jvm.postgres_jdbc_jars()
    lakehouse = Path(lakehouse).expanduser().resolve()
    args = ["--env", env, "--lakehouse", str(lakehouse), "--conf-dir", str(source / "conf"),
            *(extra_args or [])]
    cmd = submit_command(master_url, job, wheel, jars, args, source, script=script,
                         extra_conf={"spark.sql.warehouse.dir": str(lakehouse / "_checkpoints" / "warehouse")})
    proc_env = spark_env()
    proc_env["SEGLAKE_LAKEHOUSE"] = str(lakehouse)
    proc_env.update(extra_env or {})
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=proc_env, cwd=source,
                                  timeout=timeout, text=True)
        output = Path(log_path).read_text(errors="replace")
        proc = subprocess.CompletedProcess(cmd, proc.returncode, output, "")
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=proc_env, cwd=source, timeout=timeout)
        output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise ClusterError(f"spark-submit of job '{job}' to {master_url} exited with {proc.returncode}:\n{tail}")
    return proc


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster.sh",
                                     description="A local Spark standalone cluster (loopback) for seglake.")
    parser.add_argument("--dir", default=None, help=f"state/log folder (default {default_dir()})")
    verbs = parser.add_subparsers(dest="verb", required=True)
    p_start = verbs.add_parser("start", help="start a master and workers, wait until they are ALIVE")
    p_start.add_argument("--workers", type=int, default=2)
    p_start.add_argument("--cores", type=int, default=1, help="cores per worker")
    p_start.add_argument("--memory", default="2g", help="memory per worker")
    p_start.add_argument("--port", type=int, default=None, help="master port (default 7077 if free)")
    p_start.add_argument("--webui-port", type=int, default=None, help="master web UI port (default 8080 if free)")
    verbs.add_parser("stop", help="stop the recorded master and workers (by pid)")
    verbs.add_parser("status", help="show the recorded processes and the ALIVE workers")
    p_sub = verbs.add_parser("submit", help="build the wheel and spark-submit jobs/<JOB>.py to the cluster")
    p_sub.add_argument("job")
    p_sub.add_argument("--lakehouse", default=os.environ.get("SEGLAKE_LAKEHOUSE", "./lakehouse"))
    p_sub.add_argument("--env", default="cluster", help="configuration overlay (default cluster)")
    p_sub.add_argument("job_args", nargs=argparse.REMAINDER, help="further job arguments (after --)")
    args = parser.parse_args(argv)

    try:
        if args.verb == "start":
            cluster = start(args.dir, workers=args.workers, cores=args.cores, memory=args.memory,
                            port=args.port, webui_port=args.webui_port)
            print(f"master {cluster.master_url} (web UI {cluster.webui_url}), "
                  f"{len(cluster.processes) - 1} workers ALIVE; pids "
                  + ", ".join(f"{p.role}={p.pid}" for p in cluster.processes)
                  + f"; logs in {Path(cluster.dir) / 'logs'}")
        elif args.verb == "stop":
            pids = stop(args.dir)
            print(f"stopped pids {', '.join(map(str, pids))}" if pids else "no recorded cluster process was running")
        elif args.verb == "status":
            info = status(args.dir)
            print(json.dumps(info, indent=2))
            return 0 if info.get("running") else 1
        elif args.verb == "submit":
            cluster = LocalCluster.load(args.dir)
            if cluster is None:
                raise ClusterError("no local cluster is recorded: run `scripts/cluster.sh start` first")
            extra = [a for a in args.job_args if a != "--"]
            started = time.perf_counter()
            proc = submit(cluster.master_url, args.job, args.lakehouse, env=args.env, extra_args=extra)
            sys.stdout.write(proc.stdout)
            print(f"{args.job} on {cluster.master_url} finished in {time.perf_counter() - started:.1f} s")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
