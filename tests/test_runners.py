"""Scheduled runners: the Databricks Asset Bundle and the Airflow DAG chain the real jobs.

Neither Databricks nor Airflow is installed: databricks.yml is read as YAML, and the DAG
file is read with ``ast`` (its task chain) and executed against a tiny stand-in of the two
Airflow names it imports (to render each task's command line).
"""
from __future__ import annotations

import ast
import shlex
import sys
import types
from pathlib import Path

import pytest
import yaml

from seglake.core import jvm
from seglake import registry

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "databricks.yml"
DAG_FILE = REPO / "airflow" / "seglake_dag.py"


def console_scripts() -> dict[str, str]:
    """``name -> module:function`` of setup.py's console_scripts (read with ast, not run)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                if kw.arg == "entry_points":
                    entries = ast.literal_eval(kw.value)["console_scripts"]
                    return dict(e.replace(" ", "").split("=", 1) for e in entries)
    raise AssertionError("setup.py has no entry_points")


def bundle_tasks() -> list[dict]:
    data = yaml.safe_load(BUNDLE.read_text())
    jobs = data["resources"]["jobs"]
    assert len(jobs) == 1, f"expected one pipeline job in databricks.yml, got {list(jobs)}"
    return next(iter(jobs.values()))["tasks"]


def test_console_script_seglake_points_at_the_cli():
    target = console_scripts()["seglake"]
    module, func = target.split(":")
    import importlib
    assert callable(getattr(importlib.import_module(module), func))


def test_bundle_has_one_task_per_pipeline_job_in_order_with_dependencies():
    tasks = bundle_tasks()
    assert [t["task_key"] for t in tasks] == list(registry.PIPELINE)
    for previous, task in zip([None, *tasks], tasks):
        deps = [d["task_key"] for d in task.get("depends_on", [])]
        assert deps == ([previous["task_key"]] if previous else []), f"{task['task_key']} depends on {deps}"


def test_bundle_tasks_run_the_wheel_entry_point_with_a_known_job():
    scripts = console_scripts()
    data = yaml.safe_load(BUNDLE.read_text())
    artifacts = data.get("artifacts", {})
    assert any(a.get("type") == "whl" for a in artifacts.values()), "the bundle must build the wheel"
    for task in bundle_tasks():
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == "seglake"
        assert wheel_task["entry_point"] in scripts, f"{task['task_key']}: unknown entry point"
        params = wheel_task["parameters"]
        assert params[:2] == ["run", task["task_key"]] and params[1] in registry.JOBS
        assert params[params.index("--env") + 1] == "prod"
        libs = task["libraries"]
        assert any(str(lib.get("whl", "")).endswith(".whl") for lib in libs)
        maven = [lib["maven"]["coordinates"] for lib in libs if "maven" in lib]
        assert maven == list(jvm.COORDINATES), f"{task['task_key']}: Maven libraries {maven}"


def test_bundle_cli_arguments_parse():
    """Every task's parameters are accepted by the real CLI parser (no Spark needed)."""
    from seglake.cli import build_parser

    parser = build_parser()
    for task in bundle_tasks():
        args = parser.parse_args(task["python_wheel_task"]["parameters"])
        assert (args.verb, args.job, args.env) == ("run", task["task_key"], "prod")


# --------------------------------------------------------------------------- Airflow


def dag_tree() -> ast.Module:
    return ast.parse(DAG_FILE.read_text(), filename=str(DAG_FILE))


def dag_tasks(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """``variable -> (task_id, job argument of spark_submit(...))`` for every BashOperator."""
    tasks = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and getattr(node.value.func, "id", None) in ("BashOperator", "SparkSubmitOperator"):
            kw = {k.arg: k.value for k in node.value.keywords}
            task_id = ast.literal_eval(kw["task_id"])
            command = kw.get("bash_command") or kw.get("application")
            assert isinstance(command, ast.Call) and command.func.id == "spark_submit", \
                f"task {task_id}: its command must be spark_submit(<job>)"
            tasks[node.targets[0].id] = (task_id, ast.literal_eval(command.args[0]))
    return tasks


def dag_chain(tree: ast.Module) -> list[list[str]]:
    """The ``a >> b >> c`` statements, each as the list of variable names in order."""
    def flatten(node) -> list[str]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.RShift):
            return flatten(node.left) + flatten(node.right)
        assert isinstance(node, ast.Name), f"unexpected chain element {ast.dump(node)}"
        return [node.id]
    return [flatten(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.BinOp)]


def test_dag_chains_every_pipeline_job_in_order():
    tree = dag_tree()
    tasks = dag_tasks(tree)
    for var, (task_id, job) in tasks.items():
        assert task_id == job, f"task {task_id} runs job {job}"
        assert job in registry.JOBS
        assert (REPO / "jobs" / f"{job}.py").is_file(), f"task {task_id}: jobs/{job}.py missing"
    chains = dag_chain(tree)
    assert len(chains) == 1, f"expected one linear chain, got {chains}"
    assert [tasks[v][0] for v in chains[0]] == list(registry.PIPELINE)
    assert sorted(t for t, _ in tasks.values()) == sorted(registry.PIPELINE)


@pytest.fixture
def fake_airflow(monkeypatch):
    """Stand-ins for ``airflow.DAG`` and ``airflow.operators.bash.BashOperator``."""
    created: list = []

    class DAG:
        def __init__(self, dag_id, **kwargs):
            self.dag_id, self.kwargs = dag_id, kwargs

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class BashOperator:
        def __init__(self, task_id, bash_command, **kwargs):
            self.task_id, self.bash_command, self.downstream = task_id, bash_command, []
            created.append(self)

        def __rshift__(self, other):
            self.downstream.append(other)
            return other

    airflow = types.ModuleType("airflow")
    airflow.DAG = DAG
    operators = types.ModuleType("airflow.operators")
    bash = types.ModuleType("airflow.operators.bash")
    bash.BashOperator = BashOperator
    for name, mod in (("airflow", airflow), ("airflow.operators", operators), ("airflow.operators.bash", bash)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setenv("SEGLAKE_HOME", str(REPO))
    return created


def test_dag_commands_submit_existing_job_scripts(fake_airflow):
    namespace: dict = {"__name__": "seglake_dag"}
    exec(compile(DAG_FILE.read_text(), str(DAG_FILE), "exec"), namespace)
    tasks = fake_airflow
    assert [t.task_id for t in tasks] == list(registry.PIPELINE)
    for upstream, downstream in zip(tasks, tasks[1:]):
        assert upstream.downstream == [downstream]
    from seglake.cli import build_parser

    parser = build_parser()
    for task in tasks:
        # Airflow renders the Jinja template before bash runs the command
        assert "{{ data_interval_end | ds }}" in task.bash_command
        argv = shlex.split(task.bash_command.replace("{{ data_interval_end | ds }}", "2026-10-31"))
        assert argv[0] == "spark-submit"
        script = next(a for a in argv if a.endswith(".py"))
        assert Path(script) == REPO / "jobs" / f"{task.task_id}.py" and Path(script).is_file()
        assert argv[argv.index("--py-files") + 1].endswith(".whl")
        assert argv[argv.index("--packages") + 1] == jvm.packages_arg()
        # jobs/<job>.py calls the CLI with ["run", <job>, *its arguments]
        args = parser.parse_args(["run", task.task_id, *argv[argv.index(script) + 1:]])
        assert (args.job, args.env, str(args.as_of)) == (task.task_id, "prod", "2026-10-31")
        assert Path(args.conf_dir) == REPO / "conf"
