"""One SparkSession per test run, Delta configured, temp dirs; MLflow pointed at a temp store."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("SEGLAKE_PII_SALT", "test-salt-not-secret")


def make_cfg(lakehouse: Path | str, **overrides):
    """A validated local config rooted at ``lakehouse`` (tests pass their own overrides)."""
    from seglake.core.config import load_config

    # one JVM runs the whole suite (~70 min, tens of thousands of small jobs): a 5g heap (and the
    # local profile's short job history), so the driver does not stall in full GCs late in the slow
    # suite (the 5 Dec CI run lost ~8 min to 40-100 s pauses on tiny writes after ~60 min with 3g)
    # codegen off: on the suite's small tables Spark spends most of its CPU generating and
    # compiling Java per query (JFR of a segments test: the JIT's threads busy ~1 core, Janino
    # and the code formatter ~30% of the rest); the interpreted path gives the same results and
    # `make demo` and the benchmarks keep codegen on
    base = {"paths": {"lakehouse": str(lakehouse)},
            "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "5g", "codegen": False}}
    for key, value in overrides.items():
        base.setdefault(key, {}).update(value)
    return load_config("local", REPO / "conf", overrides=base)


def c1_only(env: dict) -> dict:
    """``env`` with ``-XX:TieredStopAtLevel=1`` added to ``JDK_JAVA_OPTIONS``: a short-lived
    seglake process's JVM (the C1 compiler only) starts about a quarter faster."""
    env["JDK_JAVA_OPTIONS"] = (env.get("JDK_JAVA_OPTIONS", "") + " -XX:TieredStopAtLevel=1").strip()
    return env


@pytest.fixture(scope="session")
def spark_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spark")


@pytest.fixture(scope="session")
def spark(spark_home):
    from seglake.core.spark import get_spark

    session = get_spark(make_cfg(spark_home / "lakehouse"), app_name="seglake-tests")
    yield session
    session.stop()


@pytest.fixture
def lakehouse(tmp_path) -> Path:
    """A fresh, empty lakehouse folder for one test."""
    path = tmp_path / "lakehouse"
    path.mkdir()
    return path


@pytest.fixture
def cfg(lakehouse):
    return make_cfg(lakehouse)


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path, monkeypatch):
    """Point MLflow at a temp SQLite store so no test writes to ./mlruns."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


# --- one small generated dataset and one shared lakehouse per test run -----------------
#: size of the shared end-to-end dataset (small: CI runs every stage on it once)
E2E_EVENTS = 20_000
E2E_CUSTOMERS = 400
E2E_SEED = 7
E2E_PROPENSITY = {"grid_max_depth": [3], "grid_max_iter": [15], "cv_folds": 2}


class _Pipeline:
    """Runs the pipeline stages in order into one lakehouse, each stage at most once."""

    def __init__(self, spark, root: Path):
        from seglake.core.context import JobContext

        self.root = root
        self.gen_dir = root / "lakehouse" / "_input"
        # propensity's default grid (a holdout split, 2 depths, two targets) is the demo's slowest
        # stage; the e2e tests check its outputs, not its tuning, so they use a 1-point grid
        self.cfg = make_cfg(root / "lakehouse", propensity=E2E_PROPENSITY)
        self.ctx = JobContext(spark, self.cfg)
        self.spark = spark
        self.done: list[str] = []
        self.summaries: dict[str, dict] = {}
        self.counts: dict | None = None

    def generate(self) -> dict:
        if self.counts is None:
            from seglake.devtools.generate import generate

            self.counts = generate(self.spark, str(self.gen_dir), events=E2E_EVENTS,
                                   customers=E2E_CUSTOMERS, seed=E2E_SEED)
        return self.counts

    def through(self, stage: str):
        from seglake import registry
        from seglake.core.runner import run_chain

        order = list(registry.PIPELINE)
        if stage not in order:
            raise KeyError(f"{stage} is not a pipeline stage: {order}")
        self.generate()
        # the stages log to the lakehouse's own MLflow store, whichever test asks first
        store = Path(self.cfg.lakehouse) / "_mlflow"
        store.mkdir(parents=True, exist_ok=True)
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
        try:
            # the missing jobs as `seglake run all` runs them: side by side where they may be
            missing = [job for job in order[: order.index(stage) + 1] if job not in self.done]
            for result in run_chain(self.ctx, missing, echo=lambda _: None, skip_unavailable=False):
                self.summaries[result.job] = result.summary
                self.done.append(result.job)
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous
        return self.cfg, self.gen_dir


@pytest.fixture(scope="session")
def _pipeline(spark, tmp_path_factory):
    return _Pipeline(spark, tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="session")
def pipeline_through(_pipeline):
    """``cfg, gen_dir = pipeline_through("features")``: the shared e2e lakehouse, built up to a stage.

    ``gen_dir`` holds ``landing/`` and ``ground_truth/`` (with counts.json); stage summaries
    are in ``pipeline_through.summaries``.
    """
    def through(stage: str):
        return _pipeline.through(stage)

    through.summaries = _pipeline.summaries
    through.pipeline = _pipeline
    return through


# --- the reliability suite's uninterrupted chain (tests/reliability/) ---------------------
#: stages of the chain the kill and concurrency tests crash and compare, in order
CHAIN = ("ingest", "clean", "identity", "consent", "sessions", "features", "segments", "journeys")
CHAIN_ARGS = {"clean": {"skip_docs": True}}


@pytest.fixture(scope="session")
def chain_lakes(spark, tmp_path_factory):
    """Lakehouses after each stage of one uninterrupted in-process run on small generated data
    (1,500 events, 40 persons, 10 days): ``{"generated": folder, stage: folder}``."""
    import shutil
    from datetime import date

    from seglake.core.context import JobContext
    from seglake.core.runner import run_job
    from seglake.devtools.generate import generate

    root = tmp_path_factory.mktemp("chain")
    lake = root / "run"
    generate(spark, lake / "_input", 1500, 40, seed=11, start_date=date(2026, 9, 1), end_date=date(2026, 9, 10))
    out = {"generated": root / "generated"}
    shutil.copytree(lake, out["generated"])
    cfg = make_cfg(lake)
    for stage in CHAIN:
        run_job(JobContext(spark, cfg, args=CHAIN_ARGS.get(stage, {})), stage)
        out[stage] = root / f"after-{stage}"
        shutil.copytree(lake, out[stage])
    return out


def known_identities(chain_lakes, lake):
    """The stream lakehouse starts with the identity map a batch identity run built from the same
    persons' history (as in production: the stream looks known identifiers up)."""
    import shutil

    for table in ("identity_map", "identity_excluded"):
        src = chain_lakes["identity"] / "silver" / table
        if src.exists():
            shutil.copytree(src, lake / "silver" / table)


#: the trigger stream's micro-batch size: 1,500 generated events in 3 micro-batches (each costs
#: ~20 s of fixed work; 3 are what the kill points of test_kill_stream.py need: triggers fired
#: at the second, timers and progress committed by the third)
TRIGGER_STREAM = {"max_offsets_per_trigger": 500}


@pytest.fixture(scope="session")
def stream_triggered(spark, kafka_broker, chain_lakes, tmp_path_factory):
    """The chain's generated events produced into a one-partition topic and streamed once,
    uninterrupted, into a lakehouse that starts with the batch identity map: read by the trigger
    test (test_stream.py) and, as the reference of a killed stream, by test_kill_stream.py.
    ``{"cfg", "topic", "sent", "summary"}``; nobody writes to it."""
    from seglake.core.context import JobContext
    from seglake.core.runner import run_job
    from seglake.stages.stream import produce

    lake = tmp_path_factory.mktemp("stream-triggers") / "lake"
    known_identities(chain_lakes, lake)
    topic = "stream-triggers"
    sent = produce.produce(spark, str(chain_lakes["generated"] / "_input" / "landing"),
                           kafka_broker.bootstrap_servers, topic, partitions=1)
    cfg = make_cfg(lake, stream=TRIGGER_STREAM)
    summary = run_job(JobContext(spark, cfg, args={"bootstrap_servers": kafka_broker.bootstrap_servers,
                                                   "topic": topic}), "stream").summary
    return {"cfg": cfg, "topic": topic, "sent": sent, "summary": summary}


# --- one real Kafka broker per test run, for the tests that need one ------------------------
@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real single-node KRaft broker (seglake.devtools.kafka), stopped by its pid at the end."""
    from seglake.devtools import kafka

    folder = tmp_path_factory.mktemp("kafka")
    broker = kafka.start(folder)
    yield broker
    kafka.stop(broker)
