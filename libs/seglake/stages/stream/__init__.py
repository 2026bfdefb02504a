"""Streaming: Kafka -> bronze -> silver -> real-time segment triggers.

- :mod:`seglake.stages.stream.job` — `seglake run stream`: the Kafka source through the batch
  ingest parse and the batch clean, exactly once per micro-batch;
- :mod:`seglake.stages.stream.triggers` — the real-time segment triggers evaluated on each
  micro-batch;
- :mod:`seglake.stages.stream.produce` — `seglake stream produce`: replays raw landing files
  into a Kafka topic.
"""
from seglake.stages.stream.job import add_arguments, run  # noqa: F401 - the job's entry points
