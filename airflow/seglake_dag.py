"""Airflow DAG: the seglake pipeline, one spark-submit task per job, chained in flow order.

Copy this file into the Airflow ``dags/`` folder of a machine that has ``spark-submit`` on
its PATH and the seglake release unpacked at ``$SEGLAKE_HOME`` (``jobs/``, ``conf/`` and the
wheel ``dist/seglake-<version>-py3-none-any.whl``). Settings come from Airflow Variables or
the environment (never secrets in this file):

- ``SEGLAKE_HOME``         where jobs/, conf/ and dist/ live (default /opt/seglake)
- ``SEGLAKE_SPARK_MASTER`` the cluster (default ``yarn``; e.g. ``spark://host:7077``)
- ``SEGLAKE_ENV``          configuration overlay (default ``prod``: conf/prod.yaml, which reads
  SEGLAKE_LAKEHOUSE, MLFLOW_TRACKING_URI and SEGLAKE_PII_SALT from the task's environment)

Each run processes the data interval that just ended: ``--as-of`` is the interval's end date
(exclusive), so ingest takes the landing files of days before it (later days wait for their
runs) and features for the day are computed from events strictly before it. Every job is
idempotent, so a retry or a re-run of a day converges to the same tables.

The job order is ``seglake.registry.PIPELINE``; tests/test_runners.py checks this file
against it (Airflow is not a dependency of seglake).
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

SEGLAKE_HOME = os.environ.get("SEGLAKE_HOME", "/opt/seglake")
SPARK_MASTER = os.environ.get("SEGLAKE_SPARK_MASTER", "yarn")
SEGLAKE_ENV = os.environ.get("SEGLAKE_ENV", "prod")
SEGLAKE_VERSION = os.environ.get("SEGLAKE_VERSION", "0.1.0")
#: JVM packages (seglake.core.jvm.packages_arg()): Delta Lake for the Spark 4.1 line
SPARK_PACKAGES = os.environ.get("SEGLAKE_SPARK_PACKAGES", "io.delta:delta-spark_4.1_2.13:4.4.0")

WHEEL = f"{SEGLAKE_HOME}/dist/seglake-{SEGLAKE_VERSION}-py3-none-any.whl"
AS_OF = "{{ data_interval_end | ds }}"


def spark_submit(job: str) -> str:
    """The spark-submit command line of ``jobs/<job>.py``."""
    return (
        f"spark-submit --master {SPARK_MASTER} --name seglake-{job} "
        f"--py-files {WHEEL} --packages {SPARK_PACKAGES} "
        f"--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension "
        f"--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog "
        f"{SEGLAKE_HOME}/jobs/{job}.py --env {SEGLAKE_ENV} --conf-dir {SEGLAKE_HOME}/conf --as-of {AS_OF}"
    )


default_args = {
    "owner": "seglake",
    "retries": 2,
    "retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=4),
}

with DAG(
    dag_id="seglake_pipeline",
    description="seglake: ingest -> clean -> identity -> consent -> sessions -> features -> clv -> segments -> cluster -> propensity -> journeys -> experiments",
    schedule="@daily",
    start_date=datetime(2026, 8, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["seglake", "spark"],
) as dag:
    ingest = BashOperator(task_id="ingest", bash_command=spark_submit("ingest"))
    clean = BashOperator(task_id="clean", bash_command=spark_submit("clean"))
    identity = BashOperator(task_id="identity", bash_command=spark_submit("identity"))
    consent = BashOperator(task_id="consent", bash_command=spark_submit("consent"))
    sessions = BashOperator(task_id="sessions", bash_command=spark_submit("sessions"))
    features = BashOperator(task_id="features", bash_command=spark_submit("features"))
    clv = BashOperator(task_id="clv", bash_command=spark_submit("clv"))
    segments = BashOperator(task_id="segments", bash_command=spark_submit("segments"))
    cluster = BashOperator(task_id="cluster", bash_command=spark_submit("cluster"))
    propensity = BashOperator(task_id="propensity", bash_command=spark_submit("propensity"))
    journeys = BashOperator(task_id="journeys", bash_command=spark_submit("journeys"))
    experiments = BashOperator(task_id="experiments", bash_command=spark_submit("experiments"))

    ingest >> clean >> identity >> consent >> sessions >> features >> clv >> segments >> cluster >> propensity >> journeys >> experiments
